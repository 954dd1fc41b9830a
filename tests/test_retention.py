"""`bridge retention check` against a real server, and retention settings refused at start-up.

Overdue messages are found by looking at the store as it will be later (the check's clock is
injectable), never by waiting: the store's own expiry is what makes the healthy case healthy.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import msgspec
import pytest
from adapter_helpers import JOBCENTER, SUCHT, agency_seed, make_agency
from adapter_helpers import fed as adapter_fed
from envelope_helpers import federation
from nats.js import api
from policy_helpers import POLICY, signed_policy
from test_adapter_status import Sender
from test_broker import broker_policy, make_broker, wait_for, write_config

from bridge.adapters.service import Adapter
from bridge.consent.record import new_consent_id
from bridge.crypto import DEFAULT_LIMITS
from bridge.errors import ConfigError, PolicyFileError, SignedPolicyError
from bridge.ids import new_message_id
from bridge.nats.identities import Identity
from bridge.nats.provision import ProvisionSettings
from bridge.nats.retention import check_retention
from bridge.nats.subjects import (
    AUDIT_STREAM,
    PENDING_STREAM,
    audit_subject,
    consent_subject,
    inbox_stream,
    inbox_subject,
    kv_bucket,
    status_stream,
    status_subject,
)
from bridge.nats.transport import publish_durable
from bridge.policy import (
    PolicyHolder,
    PolicySerialState,
    limit_for,
    parse_policy,
    provision_settings,
    store_limits,
)

if TYPE_CHECKING:
    from conftest import NatsEnv

CONSENT = "BRIDGE_CONSENT_jobcenter-unna"
DAY = 86400
STATUS = status_stream("jobcenter-unna")  # one agency's status events


async def run_check(env: NatsEnv, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`bridge retention check` as an operator runs it, with the federation's signed policy."""
    fed = federation()
    (tmp_path / "policy.bin").write_bytes(signed_policy(fed)[0])
    (tmp_path / "anchor.json").write_bytes(msgspec.json.encode(fed.anchor.public_record()))
    command = [
        *(sys.executable, "-m", "bridge", "retention", "check", "--nats-url", env.url),
        *("--seed", str(env.seed_file(Identity.admin()))),
        *("--policy", str(tmp_path / "policy.bin"), "--anchor", str(tmp_path / "anchor.json")),
    ]
    return await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=120, check=False
    )


async def test_a_healthy_store_lists_nothing(nats_env: NatsEnv, tmp_path: Path) -> None:
    broker = await nats_env.connect(Identity.broker())
    mid = new_message_id()
    await publish_durable(broker.js, inbox_subject("spdi-unna"), b"x", msg_id=mid, ttl=3600)
    await publish_durable(
        broker.js, status_subject("jobcenter-unna", mid), b"{}", msg_id=f"s-{mid}"
    )
    admin = await nats_env.admin()
    kv = await admin.js.key_value("adapter-spdi-unna")
    await kv.put("probe", b"1")
    report = await check_retention(
        admin.js, now=time.time, limits=store_limits(parse_policy(POLICY))
    )
    assert report.healthy, report.lines()
    assert report.streams[inbox_stream("spdi-unna")] == 1
    assert report.streams["KV_adapter-spdi-unna"] == 1
    done = await run_check(nats_env, tmp_path)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "nothing older than its limit" in out


async def test_whatever_outlives_its_limit_is_named(nats_env: NatsEnv) -> None:
    broker = await nats_env.connect(Identity.broker())
    mid = new_message_id()
    await publish_durable(broker.js, inbox_subject("spdi-unna"), b"x", msg_id=mid, ttl=3600)
    await publish_durable(
        broker.js, status_subject("jobcenter-unna", mid), b"{}", msg_id=f"s-{mid}"
    )
    admin = await nats_env.admin()

    # Two hours on, the inbox copy (TTL one hour) would be overdue if the store had not removed
    # it; 31 days on, so would the status event (stream max_age 30 days).
    later = await check_retention(admin.js, now=lambda: time.time() + 2 * 3600)
    assert [(o.stream, o.kind, o.limit) for o in later.overdue] == [
        (inbox_stream("spdi-unna"), "ttl", 3600)
    ]
    assert later.overdue[0].subject == inbox_subject("spdi-unna")
    much_later = await check_retention(admin.js, now=lambda: time.time() + 31 * DAY)
    assert (STATUS, "max_age") in {(o.stream, o.kind) for o in much_later.overdue}
    assert not much_later.healthy

    # A stream with no limit at all is reported too.
    await admin.js.add_stream(api.StreamConfig(name="FOREVER", subjects=["forever"]))
    report = await check_retention(admin.js, now=time.time)
    assert report.no_limit == ["FOREVER"]
    assert not report.healthy


@pytest.mark.parametrize(
    ("old", "new", "fragment"),
    [
        ('inbox_ttl = "7d"', "inbox_ttl = 0", "at least one second"),  # zero
        ('inbox_ttl = "7d"', 'inbox_ttl = "15d"', "longer than max_lifetime"),  # past its life
        ("[types.feedback]", "[types.feedback-gone]", "unknown message type"),  # missing
    ],
)
def test_bad_retention_settings_are_refused(old: str, new: str, fragment: str) -> None:
    """Retention limits live in the routing policy, which refuses them with the line."""
    assert old in POLICY
    with pytest.raises(PolicyFileError) as info:
        parse_policy(POLICY.replace(old, new, 1))
    assert fragment in str(info.value)
    assert parse_policy(POLICY).limits["referral"].inbox_ttl == 14 * DAY


def test_a_lifetime_beyond_the_envelope_maximum_is_refused_at_start_up(tmp_path: Path) -> None:
    fed = federation()
    path = tmp_path / "policy.bin"
    path.write_bytes(signed_policy(fed, POLICY.replace('"30d"', '"31d"'))[0])
    with pytest.raises(SignedPolicyError) as info:
        PolicyHolder(
            path,
            fed.anchor.public_record(),
            PolicySerialState(tmp_path / "serial"),
            federation=lambda: fed.directory.body.federation,
            max_lifetime=DEFAULT_LIMITS.max_lifetime,
        )
    assert info.value.reason == "policy.limits"
    assert "envelope maximum" in str(info.value)


# -- every limit from the signed policy ------------------------------------------------------


def test_the_policy_sets_how_long_records_are_kept() -> None:
    rules = parse_policy(POLICY)
    assert (rules.retention.status, rules.retention.consent, rules.retention.audit) == (
        30 * DAY,
        2190 * DAY,
        730 * DAY,
    )
    assert rules.limits["referral"].pull_wait == 7 * DAY
    assert rules.limits["receipt"].pull_wait == 7 * DAY
    assert rules.longest("inbox_ttl") == 30 * DAY
    # The inbox wait of one copy: the type's, cut to what is left of the message's life.
    referral = rules.limits["referral"]
    assert referral.inbox_wait(expires_at=1000 + 3 * DAY, now=1000) == 3 * DAY
    assert referral.inbox_wait(expires_at=1000 + 20 * DAY, now=1000) == 14 * DAY


@pytest.mark.parametrize(
    ("old", "new", "reason", "fragment"),
    [
        ("[retention]", "[retention-gone]", "policy.file_invalid", "unknown table"),
        ('status = "30d"      #', "# status", "policy.file_invalid", "[retention] needs status"),
        ('audit = "730d"', "audit = 0", "policy.file_invalid", "at least one second"),
        ('consent = "2190d"', 'consent = "300d"', "policy.contradiction", "max_consent_validity"),
        ('status = "30d"', 'status = "20d"', "policy.contradiction", "longest max_lifetime"),
        ('audit = "730d"', 'audit = "29d"', "policy.contradiction", "longest max_lifetime"),
        ('pull_wait = "7d"        #', "#", "policy.file_invalid", "needs pull_wait"),
        ('pull_wait = "7d"', 'pull_wait = "0s"', "policy.file_invalid", "at least one second"),
    ],
)
def test_a_missing_or_unsafe_retention_setting_is_refused(
    old: str, new: str, reason: str, fragment: str
) -> None:
    """A store without a limit keeps for ever: no default stands in for a missing setting."""
    assert old in POLICY
    with pytest.raises(PolicyFileError) as info:
        parse_policy(POLICY.replace(old, new, 1))
    assert info.value.reason == reason
    assert fragment in str(info.value)
    assert info.value.line is not None


def test_a_policy_written_before_the_retention_settings_is_refused() -> None:
    start = POLICY.index("# How long the records")
    older = POLICY[:start] + POLICY[POLICY.index("[[flows]]") :]
    with pytest.raises(PolicyFileError) as info:
        parse_policy(older)
    assert info.value.reason == "policy.file_invalid"
    assert "a [retention] table is required" in str(info.value)


def test_the_store_limits_follow_the_policy() -> None:
    rules = parse_policy(
        POLICY.replace('status = "30d"', 'status = "40d"', 1)
        .replace('consent = "2190d"', 'consent = "400d"', 1)
        .replace('audit = "730d"', 'audit = "800d"', 1)
    )
    limits = store_limits(rules)
    expected = {
        "BRIDGE_SUBMIT_jobcenter-unna": ("[types.*] max_lifetime", 30 * DAY),
        "BRIDGE_ATTACH_jobcenter-unna": ("[types.*] max_lifetime", 30 * DAY),
        "BRIDGE_INBOX_spdi-unna": ("[types.*] inbox_ttl", 30 * DAY),
        PENDING_STREAM: ("plus a day", 31 * DAY),
        STATUS: ("[retention] status", 40 * DAY),
        "BRIDGE_CONSENT_jobcenter-unna": ("[retention] consent", 400 * DAY),
        "BRIDGE_WITHDRAWAL_jobcenter-unna": ("[retention] consent", 400 * DAY),
        AUDIT_STREAM: ("[retention] audit", 800 * DAY),
    }
    for stream, (setting, seconds) in expected.items():
        limit = limit_for(limits, stream)
        assert limit is not None, stream
        assert setting in limit.setting
        assert limit.seconds == seconds
    assert limit_for(limits, "KV_adapter-spdi-unna") is None
    assert limit_for(limits, "BRIDGE_SUBMIT_") is None
    with pytest.raises(ConfigError) as info:
        ProvisionSettings(status_max_age=0.0)
    assert info.value.reason == "retention.unlimited"
    assert "status_max_age" in str(info.value)


async def test_provisioning_sets_the_policy_limits(nats_env: NatsEnv) -> None:
    rules = parse_policy(
        POLICY.replace('status = "30d"', 'status = "40d"', 1)
        .replace('consent = "2190d"', 'consent = "400d"', 1)
        .replace('audit = "730d"', 'audit = "800d"', 1)
    )
    await nats_env.provision(settings=provision_settings(rules))
    admin = await nats_env.admin()
    for stream in (
        STATUS,
        "BRIDGE_CONSENT_spdi-unna",
        "BRIDGE_WITHDRAWAL_spdi-unna",
        AUDIT_STREAM,
        inbox_stream("spdi-unna"),
        PENDING_STREAM,
        "BRIDGE_SUBMIT_spdi-unna",
        "BRIDGE_ATTACH_spdi-unna",
    ):
        info = await admin.js.stream_info(stream)
        limit = limit_for(store_limits(rules), stream)
        assert limit is not None
        assert int(info.config.max_age or 0) == limit.seconds, stream


async def _misconfigure(env: NatsEnv, stream: str, max_age: float) -> None:
    """What a careless operator might do: change a stream's age limit by hand."""
    admin = await env.admin()
    info = await admin.js.stream_info(stream)
    await admin.js.update_stream(info.config.evolve(max_age=max_age))
    await env.close_client(admin)


async def test_the_broker_refuses_to_start_on_streams_that_keep_too_long(
    nats_env: NatsEnv, tmp_path: Path
) -> None:
    fed = federation()
    config = write_config(tmp_path, nats_env, fed)
    await _misconfigure(nats_env, STATUS, 60 * DAY)
    with pytest.raises(ConfigError) as info:
        await make_broker(config).run()
    assert info.value.reason == "retention.too_long"
    assert f"{STATUS} keeps 5184000s" in str(info.value)
    assert "[retention] status allows 2592000s" in str(info.value)

    await _misconfigure(nats_env, AUDIT_STREAM, 0.0)  # zero: JetStream keeps for ever
    with pytest.raises(ConfigError) as info:
        await make_broker(config).run()
    assert info.value.reason == "retention.too_long"  # the first named; both are listed
    assert "BRIDGE_AUDIT keeps for ever" in str(info.value)
    assert "[retention.unlimited]" in str(info.value)

    # Provisioned again with the policy, the same broker starts.
    await nats_env.provision(settings=provision_settings(parse_policy(POLICY)))
    async with make_broker(config) as broker:
        assert broker.started


async def test_a_reloaded_policy_that_shortens_a_limit_is_logged(
    nats_env: NatsEnv, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Running brokers keep routing on a new policy, but say loudly what the store keeps too
    long for it (the streams need provisioning with it)."""
    fed = federation()
    config = write_config(tmp_path, nats_env, fed)
    shorter = broker_policy().replace('"30d"', '"20d"')  # status too: 20 days
    caplog.set_level(logging.ERROR, logger="bridge.broker")
    async with make_broker(config) as broker:
        assert not caplog.records
        (tmp_path / "policy.bin").write_bytes(signed_policy(fed, shorter, serial=2)[0])

        def logged() -> bool:
            return any("keeps longer than the new policy" in r.message for r in caplog.records)

        await wait_for("the error about the streams", logged, within=60)
        assert broker.statistics().policy_serial == 2
    (record,) = [r for r in caplog.records if "new policy" in r.message]
    assert f"{STATUS} keeps 2592000s" in record.message
    assert "[retention] status allows 1728000s" in record.message


async def test_the_check_finds_records_kept_past_the_policy(
    nats_env: NatsEnv, tmp_path: Path
) -> None:
    """A status event, a consent record and an audit record, each in a stream whose own age
    limit was raised by hand past the policy's: the check names them and the streams."""
    limits = store_limits(parse_policy(POLICY))
    broker = await nats_env.connect(Identity.broker())
    jobcenter = await nats_env.connect(Identity.for_agency("jobcenter-unna"))
    mid = new_message_id()
    await publish_durable(
        broker.js, status_subject("jobcenter-unna", mid), b"{}", msg_id=f"s-{mid}"
    )
    await publish_durable(broker.js, audit_subject(), b"{}", msg_id=f"a-{mid}")
    consent = consent_subject("jobcenter-unna", new_consent_id(), "record")
    await publish_durable(jobcenter.js, consent, b"{}", msg_id=f"c-{mid}")
    admin = await nats_env.admin()
    assert (await check_retention(admin.js, now=time.time, limits=limits)).healthy

    await _misconfigure(nats_env, STATUS, 60 * DAY)
    await _misconfigure(nats_env, CONSENT, 3000 * DAY)
    await _misconfigure(nats_env, AUDIT_STREAM, 1000 * DAY)
    now = await check_retention(admin.js, now=time.time, limits=limits)
    assert not now.overdue
    assert {(p.stream, p.reason) for p in now.ages} == {
        (STATUS, "retention.too_long"),
        (CONSENT, "retention.too_long"),
        (AUDIT_STREAM, "retention.too_long"),
    }
    assert not now.healthy
    done = await run_check(nats_env, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"LIMIT TOO LONG {STATUS} keeps 5184000s" in done.stdout

    # Later than each record's limit in the policy, though within the streams' own.
    for days, stream, setting, subject in (
        (31, STATUS, "[retention] status", status_subject("jobcenter-unna", mid)),
        (731, AUDIT_STREAM, "[retention] audit", audit_subject()),
        (2191, CONSENT, "[retention] consent", consent),
    ):
        later = await check_retention(admin.js, now=in_days(days), limits=limits)
        found = [(o.kind, o.subject) for o in later.overdue if o.stream == stream]
        assert found == [(setting, subject)], later.lines()
        assert any(line.startswith(f"OVERDUE {stream} seq") for line in later.lines())


def in_days(days: int) -> Callable[[], float]:
    """A clock `days` ahead of the real one: the store as it will be then."""
    return lambda: time.time() + days * DAY


async def test_an_adapter_refuses_a_default_lifetime_no_type_allows(tmp_path: Path) -> None:
    agency = make_agency(tmp_path, "nats://127.0.0.1:1", tmp_path / "no.seed", SUCHT)
    config = msgspec.structs.replace(agency.config, default_lifetime_seconds=31 * DAY)
    with pytest.raises(ConfigError) as info:
        await Adapter(config).start()  # refused before anything connects
    assert info.value.reason == "retention.too_long"
    assert "default_lifetime_seconds" in str(info.value)


async def test_a_sent_messages_timeline_is_kept_as_the_policy_says(
    tmp_path: Path, nats_env: NatsEnv
) -> None:
    """The adapter's own status record of a sent message: until the message ends, then for
    `[retention] status` (the store's per-entry TTL enforces it)."""
    agency = make_agency(tmp_path, nats_env.url, agency_seed(nats_env, JOBCENTER), JOBCENTER)
    policy = POLICY.replace('status = "30d"', 'status = "40d"', 1)
    (tmp_path / JOBCENTER / "policy.bin").write_bytes(signed_policy(adapter_fed(), policy)[0])
    admin = await nats_env.admin()
    async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
        message_id = await Sender(agency, adapter, http, admin).send()
    bucket = kv_bucket(JOBCENTER)
    entry = await admin.js.get_last_msg(f"KV_{bucket}", f"$KV.{bucket}.msg.{message_id}")
    record = msgspec.json.decode(entry.data)
    ttl = int(entry.headers["Nats-TTL"].removesuffix("s"))
    keep = record["expires_at"] - int(entry.time.timestamp()) + 40 * DAY
    assert keep - 60 <= ttl <= keep + 60
