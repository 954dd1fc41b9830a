"""The broker against a real nats-server: routing, every rejection, redelivery, sharing, restart.

Envelopes are sealed with the real keys of the test federation (tests/envelope_helpers.py) and
submitted by the agencies' own NATS identities; inboxes and status events are read through the
agencies' own consumers, exactly as their adapters would. Waits poll with deadlines; no sleep is
an assertion.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from envelope_helpers import (
    CATEGORIES,
    CONSENT,
    DAY,
    PLAINTEXT,
    PURPOSE,
    RECIPIENTS,
    SENDER,
    STRANGER,
    Federation,
    build,
    federation,
    seal_referral,
)
from policy_helpers import POLICY, legacy_fault_line, signed_legacy_policy, signed_policy
from prometheus_client import generate_latest

from bridge.audit import AuditKind, decode_record, generate_audit_key
from bridge.audit.reader import stream_records
from bridge.broker import Broker, BrokerStatistics, parse_submission
from bridge.config import load_broker_config
from bridge.crypto import seal
from bridge.errors import (
    ConfigError,
    DirectoryError,
    ProtocolError,
    SignedPolicyError,
    TransportError,
)
from bridge.federation.directory import sign_directory
from bridge.federation.holder import DirectoryHolder
from bridge.ids import new_message_id
from bridge.nats.identities import Identity
from bridge.nats.subjects import (
    BROKER_CONSUMER,
    HDR_MSG_ID,
    HDR_TTL,
    inbox_consumer,
    inbox_stream,
    inbox_subject,
    status_consumer,
    status_stream,
    submit_stream,
    submit_subject,
)
from bridge.nats.transport import bind_pull, fetch, publish_durable
from bridge.wire import DeliveryState, StatusEvent, decode_status_event

if TYPE_CHECKING:
    from conftest import NatsClient, NatsEnv

COUNSELLING = RECIPIENTS[0]  # suchtberatung-unna, role counselling
SPDI = RECIPIENTS[1]  # spdi-unna, role social-psychiatric-service
NOW = int(time.time())
INBOX_TTL = 3600  # referral: seconds a routed copy may wait (shorter than the envelopes' life)
MAX_LIFETIME = 10 * DAY  # referral: the longest lifetime a sender may give it

MAX_BYTES = 65536  # referral: the largest envelope


def broker_policy(referral_ttl: int = INBOX_TTL) -> str:
    """The demo policy with tighter referral limits, so that tests can cross them."""
    text = (
        POLICY.replace(
            'max_lifetime = "30d"    # the longest', 'max_lifetime = "10d"    # the longest', 1
        )
        .replace(
            'inbox_ttl = "14d"       # the longest', f"inbox_ttl = {referral_ttl}  # the longest", 1
        )
        .replace(
            "max_bytes = 1048576     # the whole", f"max_bytes = {MAX_BYTES}     # the whole", 1
        )
    )
    assert text.count('"10d"') == 1
    assert text.count(f"inbox_ttl = {referral_ttl} ") == 1
    return text


BROKER_POLICY = broker_policy()


@pytest.fixture
def fed() -> Federation:
    return federation(NOW)


def clock() -> float:
    return float(NOW)


def write_config(
    tmp_path: Path,
    env: NatsEnv,
    fed: Federation,
    *,
    batch_size: int = 8,
    name: str = "broker",
    reload_seconds: int = 1,
    enforce_consent: bool = False,
    referral_ttl: int = INBOX_TTL,
    extra: str = "",
) -> Path:
    """A broker config as an operator would write it, with paths relative to the file."""
    base = tmp_path / name
    base.mkdir(exist_ok=True)
    directory = tmp_path / "directory.bin"
    if not directory.exists():
        directory.write_bytes(fed.directory_bytes)
        (tmp_path / "anchor.json").write_bytes(msgspec.json.encode(fed.anchor.public_record()))
        generate_audit_key(tmp_path / "audit.key", tmp_path / "audit.pub.json")
        (tmp_path / "policy.bin").write_bytes(signed_policy(fed, broker_policy(referral_ttl))[0])
    path = base / "broker.toml"
    path.write_text(
        f"batch_size = {batch_size}\n"
        "publish_timeout_seconds = 5\n"
        "\n[nats]\n"
        f'url = "{env.url}"\n'
        f'seed_file = "{env.seed_file(Identity.broker())}"\n'
        "\n[directory]\n"
        'file = "../directory.bin"\n'
        'anchor = "../anchor.json"\n'
        'serial_state = "directory.serial"\n'
        f"reload_seconds = {reload_seconds}\n"
        "\n[audit]\n"
        'key_file = "../audit.key"\n' + extra +
        # Off unless a test is about consent: the others send under a made-up consent id.
        f"\n[consent]\nenforce = {'true' if enforce_consent else 'false'}\n"
        "\n[policy]\n"
        'file = "../policy.bin"\n'
        'serial_state = "policy.serial"\n'
    )
    return path


def make_broker(path: Path, **options: Any) -> Broker:
    options.setdefault("clock", clock)
    options.setdefault("fetch_wait", 0.5)
    options.setdefault("retry_delay", 0.1)
    return Broker(load_broker_config(path), **options)


async def wait_for(what: str, check: Callable[[], bool], within: float = 15.0) -> None:
    try:
        async with asyncio.timeout(within):
            while True:  # polled: the broker's counters have no change notification
                if check():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def handled(*brokers: Broker) -> int:
    stats = [b.statistics() for b in brokers]
    return sum(s.routed + s.rejected_total + s.terminated for s in stats)


class Agency:
    """One agency's view of NATS: submit as itself, read its own inbox and status events."""

    def __init__(self, client: NatsClient, agency: str) -> None:
        self.client = client
        self.agency = agency

    @classmethod
    async def connect(cls, env: NatsEnv, agency: str) -> Agency:
        return cls(await env.connect(Identity.for_agency(agency)), agency)

    async def submit(self, data: bytes, msg_id: str) -> None:
        ack = await publish_durable(
            self.client.js, submit_subject(self.agency), data, msg_id=msg_id
        )
        assert not ack.duplicate

    async def _drain(self, stream: str, consumer: str) -> list[Any]:
        """Everything the consumer holds right now, acknowledged."""
        sub = await bind_pull(self.client.js, stream, consumer)
        out: list[Any] = []
        try:
            while batch := await fetch(sub, 64, 0.3):
                for msg in batch:
                    await msg.ack()
                out.extend(batch)
        finally:
            await sub.unsubscribe()
        return out

    async def inbox(self) -> list[Any]:
        return await self._drain(inbox_stream(self.agency), inbox_consumer(self.agency))

    async def statuses(self) -> list[StatusEvent]:
        msgs = await self._drain(status_stream(self.agency), status_consumer(self.agency))
        return [decode_status_event(m.data) for m in msgs]


def referral(fed: Federation, message_id: str, **kwargs: Any) -> bytes:
    kwargs.setdefault("purpose", "counselling")  # the vectors' purpose is outside the vocabulary
    return seal_referral(fed, message_id=message_id, now=NOW, **kwargs)


def ids(msgs: Iterable[Any]) -> list[str]:
    return sorted(m.headers[HDR_MSG_ID] for m in msgs)


# -- without NATS -----------------------------------------------------------------------------


def test_parse_submission() -> None:
    mid = new_message_id()
    got = parse_submission(submit_subject(SENDER), {HDR_MSG_ID: mid})
    assert (got.sender, got.message_id) == (SENDER, mid)
    for subject, headers, reason in (
        (submit_subject(SENDER), None, "id.message_malformed"),
        (submit_subject(SENDER), {HDR_MSG_ID: mid.upper()}, "id.message_malformed"),
        ("bridge.inbox.jobcenter-unna", {HDR_MSG_ID: mid}, "broker.subject"),
        ("bridge.submit.Jobcenter", {HDR_MSG_ID: mid}, "id.agency_malformed"),
    ):
        with pytest.raises(ProtocolError) as info:
            parse_submission(subject, headers)
        assert info.value.reason == reason


def test_the_documented_config_loads(tmp_path: Path) -> None:
    doc = (Path(__file__).parent.parent / "docs" / "broker.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "broker.toml"
    path.write_text(example)
    config = load_broker_config(path)
    assert config.policy.file == "../federation/policy.bin"


@pytest.mark.parametrize(
    "old",
    [
        '[[routes]]\nfrom_role = "jobcenter"\nto_roles = ["counselling"]\ntypes = ["referral"]\n',
        "[retention]\ninbox_ttl_seconds = 3600\n",
    ],
    ids=["routes", "retention"],
)
def test_a_config_with_the_old_routes_is_refused_pointing_to_the_policy(
    tmp_path: Path, old: str
) -> None:
    path = tmp_path / "broker.toml"
    path.write_text(
        '[nats]\nurl = "nats://127.0.0.1:4222"\nseed_file = "x.nk"\n'
        '[directory]\nfile = "d"\nanchor = "a"\nserial_state = "s"\n'
        '[audit]\nkey_file = "k"\n'
        '[policy]\nfile = "p"\nserial_state = "ps"\n' + old
    )
    with pytest.raises(ConfigError) as info:
        load_broker_config(path)
    assert "replaced by the signed routing policy" in str(info.value)
    assert info.value.reason == "config.invalid"


def test_directory_reload_refuses_bad_files_and_rollback(tmp_path: Path, fed: Federation) -> None:
    anchor_path = tmp_path / "anchor.json"
    anchor_path.write_bytes(msgspec.json.encode(fed.anchor.public_record()))
    path, state = tmp_path / "directory.bin", tmp_path / "serial"

    def write(serial: int) -> None:
        body = msgspec.structs.replace(fed.directory.body, serial=serial)
        tmp = tmp_path / "directory.tmp"
        tmp.write_bytes(sign_directory(body, fed.anchor))
        os.replace(tmp, path)  # a new inode, as an operator's tools would leave it

    write(2)
    holder = DirectoryHolder.open(path, anchor_path, state, clock=clock)
    assert holder.current.serial == 2
    assert not holder.reload_if_changed()  # unchanged file
    write(3)
    assert holder.reload_if_changed()
    assert holder.current.serial == 3
    write(1)  # rollback
    assert not holder.reload_if_changed()
    path.write_bytes(b"BRDD garbage")
    assert not holder.reload_if_changed()
    assert holder.current.serial == 3
    write(1)
    with pytest.raises(DirectoryError) as info:  # a restart cannot be rolled back either
        DirectoryHolder.open(path, anchor_path, state, clock=clock)
    assert info.value.reason == "directory.rollback"


def test_expired_directory_pauses_routing(tmp_path: Path, fed: Federation) -> None:
    anchor_path = tmp_path / "anchor.json"
    anchor_path.write_bytes(msgspec.json.encode(fed.anchor.public_record()))
    path = tmp_path / "directory.bin"
    path.write_bytes(fed.directory_bytes)
    now = [float(NOW)]
    holder = DirectoryHolder.open(path, anchor_path, tmp_path / "serial", clock=lambda: now[0])
    assert holder.usable() is holder.current
    now[0] = float(fed.directory.body.expires_at)
    assert holder.usable() is None


# -- routing ----------------------------------------------------------------------------------


async def test_routes_a_referral_to_every_recipient(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    jobcenter = await Agency.connect(nats_env, SENDER)
    long = new_message_id()
    short = new_message_id()  # expires before the type's inbox limit: its TTL is cut
    sealed = {long: referral(fed, long), short: referral(fed, short, lifetime=1800)}
    for mid, data in sealed.items():
        await jobcenter.submit(data, mid)
    async with make_broker(write_config(tmp_path, nats_env, fed)) as broker:
        await wait_for("two routed", lambda: broker.statistics().routed == 2)
    assert broker.statistics() == BrokerStatistics(
        routed=2,
        rejected={},
        redelivered=0,
        deferred=0,
        terminated=0,
        internal_errors=0,
        directory_serial=1,
        policy_serial=1,
        policy_hash=signed_policy(fed, BROKER_POLICY)[1].hash,
    )
    for recipient in RECIPIENTS:
        copies = await (await Agency.connect(nats_env, recipient)).inbox()
        assert ids(copies) == sorted(f"{SENDER}.{m}.{recipient}" for m in (long, short))
        for msg in copies:
            message_id = msg.headers[HDR_MSG_ID].split(".")[1]
            assert msg.data == sealed[message_id]  # the exact bytes, not a re-encoding
            assert msg.headers[HDR_TTL] == str(1800 if message_id == short else INBOX_TTL)
    events = await jobcenter.statuses()
    assert sorted((e.message_id, e.recipient, e.state) for e in events) == sorted(
        (m, r, DeliveryState.ROUTED) for m in (long, short) for r in RECIPIENTS
    )
    assert all(e.sender == SENDER and e.component == "broker" for e in events)
    assert all(e.message_type == "referral" and e.reason is None for e in events)
    assert {e.policy for e in events} == {broker.statistics().policy_hash}


async def test_routed_bytes_are_the_submitted_bytes(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    jobcenter = await Agency.connect(nats_env, SENDER)
    mid = new_message_id()
    data = referral(fed, mid, recipients=[SPDI])
    await jobcenter.submit(data, mid)
    async with make_broker(write_config(tmp_path, nats_env, fed)) as broker:
        await wait_for("routed", lambda: broker.statistics().routed == 1)
    (copy,) = await (await Agency.connect(nats_env, SPDI)).inbox()
    assert copy.data == data
    assert await (await Agency.connect(nats_env, COUNSELLING)).inbox() == []


# -- rejections -------------------------------------------------------------------------------


async def test_every_rejection_reaches_the_sender_and_no_inbox(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    jobcenter = await Agency.connect(nats_env, SENDER)
    counselling = await Agency.connect(nats_env, COUNSELLING)

    expected: dict[str, tuple[Agency, str]] = {}  # message id -> (who is told, reason)

    async def submit(agency: Agency, data: bytes, reason: str, mid: str | None = None) -> str:
        mid = mid or new_message_id()
        await agency.submit(data, mid)
        expected[mid] = (agency, reason)
        return mid

    # First in the stream: a submission without a valid message id (cannot be reported) and
    # bytes that are no envelope at all. Neither may hold up what comes behind them.
    await jobcenter.submit(b"\x00" * 100, "not-a-message-id")
    await submit(jobcenter, b"certainly not an envelope", "envelope.malformed")

    mid = new_message_id()
    flipped = bytearray(referral(fed, mid))
    flipped[len(flipped) // 2] ^= 0x01  # inside the ciphertext, under both signatures
    await submit(jobcenter, bytes(flipped), "envelope.signature_invalid", mid)

    mid = new_message_id()  # a recipient replays the Jobcenter's envelope as its own
    await submit(counselling, referral(fed, mid), "broker.sender_mismatch", mid)

    mid = new_message_id()  # counselling may answer the Jobcenter, not refer onwards
    onward = seal(
        PLAINTEXT,
        message_type="referral",
        sender=fed.keyring(COUNSELLING),
        recipients=[SPDI],
        directory=fed.directory,
        consent=CONSENT,
        purpose=PURPOSE,
        categories=list(CATEGORIES),
        lifetime=DAY,
        message_id=mid,
        now=NOW,
    )
    await submit(counselling, onward, "policy.route_denied", mid)

    mid = new_message_id()  # 20 days: within the envelope limit, above the referral's 10
    await submit(jobcenter, referral(fed, mid, lifetime=20 * DAY), "policy.lifetime", mid)

    mid = new_message_id()  # the vectors' purpose code is in no rule
    await submit(jobcenter, referral(fed, mid, purpose=PURPOSE), "policy.purpose_denied", mid)

    mid = new_message_id()  # no rule lets a referral declare delivery metadata
    odd = referral(fed, mid, categories=["contact", "delivery-metadata"])
    await submit(jobcenter, odd, "policy.category_denied", mid)

    mid = new_message_id()  # within the envelope limit, above the policy's for a referral
    big = referral(fed, mid, plaintext=b"x" * MAX_BYTES)
    await submit(jobcenter, big, "policy.too_large", mid)

    mid = new_message_id()
    stranger = build(
        fed,
        recipients=[(STRANGER, fed.record(f"{STRANGER}/enc"))],
        message_id=mid,
        iat=NOW - 60,
    )
    await submit(jobcenter, stranger, "envelope.unknown_recipient", mid)

    mid = new_message_id()
    expired = build(fed, message_id=mid, iat=NOW - 10 * DAY, exp=NOW - DAY)
    await submit(jobcenter, expired, "envelope.expired", mid)

    await submit(jobcenter, referral(fed, new_message_id()), "broker.id_mismatch")

    good = new_message_id()  # and behind all of them, one that is fine
    await jobcenter.submit(referral(fed, good), good)

    async with make_broker(write_config(tmp_path, nats_env, fed, batch_size=1)) as broker:
        await wait_for("all handled", lambda: handled(broker) == len(expected) + 2)
    stats = broker.statistics()
    assert stats.terminated == 1
    assert stats.routed == 1
    wanted_reasons: dict[str, int] = {}
    for _, reason in expected.values():
        wanted_reasons[reason] = wanted_reasons.get(reason, 0) + 1
    assert dict(stats.rejected) == wanted_reasons

    told: dict[str, str] = {}
    for agency in (jobcenter, counselling):
        for event in await agency.statuses():
            assert event.sender == agency.agency  # only the submitter hears of it
            if event.state == DeliveryState.REJECTED:
                assert event.recipient is None
                assert event.policy == stats.policy_hash  # the version that decided
                told[event.message_id] = event.reason or ""
    assert told == {mid: reason for mid, (_, reason) in expected.items()}

    spdi = await Agency.connect(nats_env, SPDI)
    assert ids(await counselling.inbox()) == [f"{SENDER}.{good}.{COUNSELLING}"]
    assert ids(await spdi.inbox()) == [f"{SENDER}.{good}.{SPDI}"]
    admin = await nats_env.admin()
    assert (await admin.js.stream_info(submit_stream(SENDER))).state.messages == 0  # all settled


# -- exactly once -----------------------------------------------------------------------------


async def test_partly_routed_submission_is_retried_without_duplicates(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    """One inbox copy is stored, the other refused: the submission comes back, nothing doubles."""
    admin = await nats_env.admin()
    full = RECIPIENTS[-1]  # its inbox holds one message, and is at a quota of one
    await publish_durable(admin.js, inbox_subject(full), b"filler", msg_id="filler")
    inbox = await admin.js.stream_info(inbox_stream(full))
    await admin.js.update_stream(inbox.config.evolve(max_msgs=1))
    jobcenter = await Agency.connect(nats_env, SENDER)
    mid = new_message_id()
    await jobcenter.submit(referral(fed, mid), mid)
    async with make_broker(write_config(tmp_path, nats_env, fed)) as broker:
        await wait_for("a deferral", lambda: broker.statistics().deferred >= 1)
        assert broker.statistics().routed == 0
        await admin.js.update_stream(inbox.config)  # the operator makes room
        await wait_for("routed", lambda: broker.statistics().routed == 1)
    stats = broker.statistics()
    assert stats.redelivered >= 1
    assert stats.rejected == {}
    for recipient in RECIPIENTS:
        copies = await (await Agency.connect(nats_env, recipient)).inbox()
        filler = ["filler"] if recipient == full else []
        assert ids(copies) == sorted([f"{SENDER}.{mid}.{recipient}", *filler])
    events = await jobcenter.statuses()
    assert sorted((e.recipient or "", e.state) for e in events) == [
        (r, DeliveryState.ROUTED) for r in sorted(RECIPIENTS)
    ]


async def test_redelivered_after_a_crash_before_the_ack(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    """What a broker that died between publishing and acknowledging leaves behind.

    The first delivery is taken as the broker identity and one inbox copy published under the
    broker's msg id convention, then handed back unacknowledged; a real broker finishes it.
    """
    jobcenter = await Agency.connect(nats_env, SENDER)
    mid = new_message_id()
    data = referral(fed, mid)
    await jobcenter.submit(data, mid)
    crashed = await nats_env.connect(Identity.broker())
    sub = await bind_pull(crashed.js, submit_stream(SENDER), BROKER_CONSUMER)
    (first,) = await fetch(sub, 1, 2.0)
    await publish_durable(
        crashed.js, inbox_subject(COUNSELLING), first.data, msg_id=f"{SENDER}.{mid}.{COUNSELLING}"
    )
    await first.nak()
    await crashed.nc.flush()
    await nats_env.close_client(crashed)
    async with make_broker(write_config(tmp_path, nats_env, fed)) as broker:
        await wait_for("routed", lambda: broker.statistics().routed == 1)
    assert broker.statistics().redelivered == 1
    for recipient in RECIPIENTS:
        copies = await (await Agency.connect(nats_env, recipient)).inbox()
        assert ids(copies) == [f"{SENDER}.{mid}.{recipient}"]


async def test_two_brokers_route_each_submission_once(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    jobcenter = await Agency.connect(nats_env, SENDER)
    sent = [new_message_id() for _ in range(24)]
    for mid in sent:
        await jobcenter.submit(referral(fed, mid), mid)
    a = make_broker(write_config(tmp_path, nats_env, fed, batch_size=3, name="a"), name="a")
    b = make_broker(write_config(tmp_path, nats_env, fed, batch_size=3, name="b"), name="b")
    async with a, b:
        await wait_for("all routed", lambda: handled(a, b) == len(sent))
    assert a.statistics().routed + b.statistics().routed == len(sent)
    for recipient in RECIPIENTS:
        copies = await (await Agency.connect(nats_env, recipient)).inbox()
        assert ids(copies) == sorted(f"{SENDER}.{m}.{recipient}" for m in sent)
    events = await jobcenter.statuses()
    assert len(events) == len(sent) * len(RECIPIENTS)


class HoldingBroker(Broker):
    """A real broker whose routing of one submission hangs until the broker is stopped: it holds
    that submission, fetched and unsettled, as a broker busy with a slow batch does."""

    def __init__(self, *args: Any, hold: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.holding = asyncio.Event()
        self._hold = hold

    async def _process(self, js: Any, msg: Any, submission: Any, directory: Any) -> None:
        if submission.message_id == self._hold:
            self.holding.set()
            await asyncio.Event().wait()  # until the stop cancels it
        await super()._process(js, msg, submission, directory)


async def test_a_stopping_broker_hands_back_what_it_holds_to_the_other(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    admin = await nats_env.admin()
    # An ack wait far beyond this test's waits: the submission can reach the other broker
    # only through the stopping one's nak.
    info = await admin.js.consumer_info(submit_stream(SENDER), BROKER_CONSUMER)
    info.config.ack_wait = 300.0
    await admin.js.add_consumer(submit_stream(SENDER), info.config)
    jobcenter = await Agency.connect(nats_env, SENDER)
    held = new_message_id()
    path_a = write_config(tmp_path, nats_env, fed, name="a")
    # The stop waits publish_timeout_seconds + 2 for a batch in hand, then cuts it short.
    path_a.write_text(
        path_a.read_text().replace("publish_timeout_seconds = 5", "publish_timeout_seconds = 1")
    )
    a = HoldingBroker(load_broker_config(path_a), name="a", clock=clock, fetch_wait=0.5, hold=held)
    b = make_broker(write_config(tmp_path, nats_env, fed, name="b"), name="b")
    async with a:
        await jobcenter.submit(referral(fed, held), held)
        await asyncio.wait_for(a.holding.wait(), 30)
        async with b:
            await a.__aexit__(None, None, None)
            await wait_for(
                "the held submission routed by b", lambda: b.statistics().routed == 1, 60
            )
    assert a.statistics().routed == 0
    assert b.statistics().redelivered == 1  # it came to b as a second delivery: a's nak
    for recipient in RECIPIENTS:
        copies = await (await Agency.connect(nats_env, recipient)).inbox()
        assert ids(copies) == [f"{SENDER}.{held}.{recipient}"]


async def test_restart_continues_where_it_stopped(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    jobcenter = await Agency.connect(nats_env, SENDER)
    path = write_config(tmp_path, nats_env, fed)
    before = [new_message_id() for _ in range(4)]
    after = [new_message_id() for _ in range(4)]
    for mid in before:
        await jobcenter.submit(referral(fed, mid), mid)
    async with make_broker(path) as first:
        await wait_for("first routed", lambda: first.statistics().routed == len(before))
    for mid in after:  # submitted while no broker runs
        await jobcenter.submit(referral(fed, mid), mid)
    async with make_broker(path) as second:
        await wait_for("second routed", lambda: second.statistics().routed == len(after))
    assert second.statistics().redelivered == 0
    for recipient in RECIPIENTS:
        copies = await (await Agency.connect(nats_env, recipient)).inbox()
        assert ids(copies) == sorted(f"{SENDER}.{m}.{recipient}" for m in before + after)


async def test_keeps_routing_across_a_nats_restart(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    jobcenter = await Agency.connect(nats_env, SENDER)
    async with make_broker(write_config(tmp_path, nats_env, fed)) as broker:
        first = new_message_id()
        await jobcenter.submit(referral(fed, first), first)
        await wait_for("first routed", lambda: broker.statistics().routed == 1)
        await nats_env.server.restart()
        second = new_message_id()

        async def submit_when_back() -> None:
            while True:  # the agency's own client reconnects on its own schedule
                try:
                    await jobcenter.submit(referral(fed, second), second)
                    return
                except TransportError:
                    await asyncio.sleep(0.1)

        await _within(30, submit_when_back())
        await wait_for("second routed", lambda: broker.statistics().routed == 2, within=30)
    for recipient in RECIPIENTS:
        copies = await (await Agency.connect(nats_env, recipient)).inbox()
        assert ids(copies) == sorted(f"{SENDER}.{m}.{recipient}" for m in (first, second))


# -- directory and process --------------------------------------------------------------------


async def test_broker_picks_up_a_new_directory(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    path = write_config(tmp_path, nats_env, fed)
    async with make_broker(path, clock=time.time) as broker:
        new = tmp_path / "directory.new"
        body = msgspec.structs.replace(fed.directory.body, serial=2)
        new.write_bytes(sign_directory(body, fed.anchor))
        os.replace(new, tmp_path / "directory.bin")
        await wait_for("serial 2", lambda: broker.statistics().directory_serial == 2)
    assert (path.parent / "directory.serial").read_text().strip() == "2"


async def test_unknown_recipient_triggers_a_directory_check(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    """A sender that already has the directory naming a new agency is not refused for it."""
    path = write_config(tmp_path, nats_env, fed, reload_seconds=3600)
    without_spdi = msgspec.structs.replace(
        fed.directory.body, agencies=[a for a in fed.directory.body.agencies if a.id != SPDI]
    )
    (tmp_path / "directory.bin").write_bytes(sign_directory(without_spdi, fed.anchor))
    jobcenter = await Agency.connect(nats_env, SENDER)
    async with make_broker(path) as broker:
        new = tmp_path / "directory.new"
        full = msgspec.structs.replace(fed.directory.body, serial=2)
        new.write_bytes(sign_directory(full, fed.anchor))
        os.replace(new, tmp_path / "directory.bin")
        mid = new_message_id()
        await jobcenter.submit(referral(fed, mid, recipients=[SPDI]), mid)
        await wait_for("routed", lambda: broker.statistics().routed == 1)
        assert broker.statistics().directory_serial == 2
    assert ids(await (await Agency.connect(nats_env, SPDI)).inbox()) == [f"{SENDER}.{mid}.{SPDI}"]


async def _run_cli(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _within(seconds: float, what: Awaitable[Any]) -> Any:
    async with asyncio.timeout(seconds):
        return await what


async def test_cli_runs_until_sigterm(nats_env: NatsEnv, tmp_path: Path, fed: Federation) -> None:
    jobcenter = await Agency.connect(nats_env, SENDER)
    mid = new_message_id()
    data = referral(fed, mid)  # sealed now-ish: the CLI broker uses the real clock
    await jobcenter.submit(data, mid)
    proc = await _run_cli("broker", "-c", str(write_config(tmp_path, nats_env, fed)))
    try:
        events: list[StatusEvent] = []

        async def routed() -> None:
            while len(events) < len(RECIPIENTS):
                events.extend(await jobcenter.statuses())
                await asyncio.sleep(0.05)

        await _within(30, routed())
        assert {e.state for e in events} == {DeliveryState.ROUTED}
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await _within(20, proc.communicate())
    assert proc.returncode == 0, err.decode()
    log = err.decode()
    assert f"routed id={mid} sender={SENDER}" in log
    assert "stopped" in log


async def test_cli_config_error_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "broker.toml"
    bad.write_text("batch_size = 0\n")
    proc = await _run_cli("broker", "-c", str(bad))
    _, err = await _within(20, proc.communicate())
    assert proc.returncode == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("bridge: error:")
    assert "[config.invalid]" in lines[0]


async def test_cli_refuses_a_policy_text_with_the_line_at_fault(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    """`bridge broker` given a signed policy whose text this version refuses (one signed before
    `[retention]` existed) stops at start-up with one line naming the line at fault."""
    path = write_config(tmp_path, nats_env, fed)
    (tmp_path / "policy.bin").write_bytes(signed_legacy_policy(fed))
    proc = await _run_cli("broker", "-c", str(path))
    _, err = await _within(30, proc.communicate())
    assert proc.returncode == 2
    (line,) = err.decode().strip().splitlines()
    assert line.startswith("bridge: error: signed policy text is refused: ")
    assert f"line {legacy_fault_line()}: [types.referral] needs pull_wait" in line
    assert line.endswith("[policy.malformed]")


# -- the policy -------------------------------------------------------------------------------


def _install(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a new inode, as an operator's tools would leave it


async def test_a_running_broker_keeps_its_last_good_policy(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_config(tmp_path, nats_env, fed)
    policy_file = tmp_path / "policy.bin"
    jobcenter = await Agency.connect(nats_env, SENDER)
    first = signed_policy(fed, BROKER_POLICY)[1]
    # Serial 2 no longer lets the Jobcenter refer to the social-psychiatric service.
    stricter_text = BROKER_POLICY.replace(
        'to = ["counselling", "social-psychiatric-service"]', 'to = ["counselling"]', 1
    )
    assert stricter_text != BROKER_POLICY
    stricter_data, stricter = signed_policy(fed, stricter_text, serial=2)
    tampered = bytearray(stricter_data)
    tampered[100] ^= 1
    caplog.set_level(logging.INFO, logger="bridge.policy")
    async with make_broker(path) as broker:
        _install(policy_file, bytes(tampered))
        await wait_for("refusal", lambda: "[policy.signature_invalid]" in caplog.text)
        assert f"new policy refused, keeping serial 1 ({first.hash})" in caplog.text
        kept = new_message_id()
        await jobcenter.submit(referral(fed, kept), kept)
        await wait_for("routed", lambda: broker.statistics().routed == 1)
        assert broker.statistics().policy_hash == first.hash

        _install(policy_file, stricter_data)
        await wait_for("serial 2", lambda: broker.statistics().policy_serial == 2)
        _install(policy_file, signed_policy(fed, BROKER_POLICY, serial=1)[0])
        await wait_for("rollback refused", lambda: "[policy.rollback]" in caplog.text)
        assert f"new policy refused, keeping serial 2 ({stricter.hash})" in caplog.text
        denied = new_message_id()
        await jobcenter.submit(referral(fed, denied), denied)
        await wait_for("rejected", lambda: broker.statistics().rejected_total == 1)
    assert broker.statistics().policy_hash == stricter.hash
    assert broker.statistics().rejected == {"policy.route_denied": 1}
    events = {(e.message_id, e.state): e for e in await jobcenter.statuses()}
    assert events[(kept, DeliveryState.ROUTED)].policy == first.hash
    assert events[(denied, DeliveryState.REJECTED)].policy == stricter.hash
    assert events[(denied, DeliveryState.REJECTED)].reason == "policy.route_denied"
    for recipient in RECIPIENTS:  # the denied flow reached no inbox, not even the allowed one
        copies = await (await Agency.connect(nats_env, recipient)).inbox()
        assert ids(copies) == [f"{SENDER}.{kept}.{recipient}"]
    assert (tmp_path / "broker" / "policy.serial").read_text().strip() == "2"


async def test_a_broker_behind_the_senders_policy_looks_again_before_refusing(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    """A sender's adapter may enforce a newer policy than a broker between its reloads: the
    broker looks at the file again before a `policy.*` refusal, and the audit trail names the
    version that decided on each decision itself (the `policy-changed` record of the new
    version comes only after it)."""
    path = write_config(tmp_path, nats_env, fed, reload_seconds=3600)
    # Serial 1 does not let the Jobcenter refer to the social-psychiatric service; serial 2 does.
    stricter = BROKER_POLICY.replace(
        'to = ["counselling", "social-psychiatric-service"]', 'to = ["counselling"]', 1
    )
    _install(tmp_path / "policy.bin", signed_policy(fed, stricter)[0])
    first = signed_policy(fed, stricter)[1]
    newer_data, newer = signed_policy(fed, BROKER_POLICY, serial=2)
    jobcenter = await Agency.connect(nats_env, SENDER)
    async with make_broker(path) as broker:
        assert broker.statistics().policy_hash == first.hash
        denied = new_message_id()
        await jobcenter.submit(referral(fed, denied, purpose="delivery-confirmation"), denied)
        await wait_for("refused", lambda: broker.statistics().rejected_total == 1)
        _install(tmp_path / "policy.bin", newer_data)
        mid = new_message_id()
        await jobcenter.submit(referral(fed, mid, recipients=[SPDI]), mid)
        await wait_for("routed", lambda: broker.statistics().routed == 1)
        assert broker.statistics().policy_serial == 2
    events = {(e.message_id, e.state): e for e in await jobcenter.statuses()}
    assert events[(mid, DeliveryState.ROUTED)].policy == newer.hash
    assert events[(denied, DeliveryState.REJECTED)].policy == first.hash
    assert ids(await (await Agency.connect(nats_env, SPDI)).inbox()) == [f"{SENDER}.{mid}.{SPDI}"]
    ops = await nats_env.connect(Identity.ops())
    trail = [e async for _, data in stream_records(ops.js) for e in decode_record(data).all_events]
    decided = {
        (e.kind, e.message_id, e.recipient): e.version
        for e in trail
        if e.kind in (AuditKind.SUBMITTED, AuditKind.ACCEPTED, AuditKind.ROUTED, AuditKind.REJECTED)
    }
    assert decided == {
        (AuditKind.SUBMITTED, denied, None): None,  # not a decision
        (AuditKind.REJECTED, denied, None): first.hash,
        (AuditKind.SUBMITTED, mid, None): None,
        (AuditKind.ACCEPTED, mid, None): newer.hash,
        (AuditKind.ROUTED, mid, SPDI): newer.hash,
    }
    changed = [e.version for e in trail if e.kind is AuditKind.POLICY_CHANGED]
    assert changed == [first.hash, newer.hash]


async def test_a_broker_does_not_start_without_a_good_policy(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    path = write_config(tmp_path, nats_env, fed)
    policy_file = tmp_path / "policy.bin"
    other = BROKER_POLICY.replace('federation = "kreis-unna"', 'federation = "kreis-soest"', 1)
    tampered = bytearray(signed_policy(fed, BROKER_POLICY, serial=6)[0])
    tampered[-200] ^= 1  # inside the ML-DSA-65 signature
    state = tmp_path / "broker" / "policy.serial"
    state.write_text("5\n")  # this broker enforced serial 5 before it stopped
    for data, reason in (
        (signed_policy(fed, other, serial=6)[0], "policy.federation"),
        (policy_file.read_bytes()[:-1], "policy.malformed"),
        (bytes(tampered), "policy.signature_invalid"),
        (signed_policy(fed, BROKER_POLICY, serial=4)[0], "policy.rollback"),
        (signed_legacy_policy(fed, serial=6), "policy.malformed"),
    ):
        _install(policy_file, data)
        with pytest.raises(SignedPolicyError) as info:
            make_broker(path)
        assert info.value.reason == reason
    # A signed text this version refuses names the line at fault in it.
    assert f"line {legacy_fault_line()}: " in str(info.value)
    assert state.read_text() == "5\n"  # nothing refused raised the bar
    _install(policy_file, signed_policy(fed, BROKER_POLICY, serial=5)[0])
    assert make_broker(path).statistics().policy_serial == 5
    policy_file.unlink()
    with pytest.raises(SignedPolicyError) as info:
        make_broker(path)
    assert info.value.reason == "policy.missing"


async def test_a_sender_over_its_rejection_budget_waits_while_the_others_are_routed(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    """Each rejection writes a status event and an audit record, and the audit trail is shared:
    a sender may cause only so many, then its submissions wait in its own stream."""
    flooder = await Agency.connect(nats_env, COUNSELLING)
    for _ in range(6):
        await flooder.submit(b"certainly not an envelope", new_message_id())
    jobcenter = await Agency.connect(nats_env, SENDER)
    good = new_message_id()
    await jobcenter.submit(referral(fed, good), good)
    budget = "\n[quota]\nrejections_per_minute = 1\nrejection_burst = 2\n"
    async with make_broker(write_config(tmp_path, nats_env, fed, extra=budget)) as broker:

        def held() -> bool:
            stats = broker.statistics()
            # The two rejections within the budget may still be writing when the rest is
            # already handed back: wait for them too.
            return stats.routed == 1 and stats.over_budget >= 4 and stats.rejected_total == 2

        await wait_for("the good one routed and the flood held", held)
        stats = broker.statistics()
        metrics = generate_latest(broker.metrics.registry).decode()
    assert stats.rejected == {"envelope.malformed": 2}
    assert f'bridge_broker_over_rejection_budget_total{{sender="{COUNSELLING}"}}' in metrics
    assert len(await flooder.statuses()) == 2  # told of the two it was rejected for
    admin = await nats_env.admin()
    waiting = await admin.js.stream_info(submit_stream(COUNSELLING))
    assert waiting.state.messages == 4  # nothing lost: they wait for its budget to refill
