"""The embedded server, its files, durability, provisioning and the transport helpers."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import nats.js.errors
import pytest
from envelope_helpers import federation
from nats.js import api
from policy_helpers import signed_policy

from bridge.cli import main
from bridge.errors import ConfigError, ProtocolError, TransportError
from bridge.nats.identities import Credentials, Identity
from bridge.nats.provision import Action, Change, ProvisionSettings
from bridge.nats.server import NatsServer, ServerLayout, ServerSettings, configure, load_settings
from bridge.nats.subjects import (
    AUDIT_STREAM,
    PENDING_STREAM,
    attach_stream,
    consent_stream,
    consent_streams,
    inbox_consumer,
    inbox_stream,
    inbox_subject,
    kv_bucket,
    report_stream,
    status_stream,
    submit_stream,
    submit_subject,
)
from bridge.nats.transport import bind_pull, connect, fetch, publish_durable

if TYPE_CHECKING:
    from conftest import NatsEnv

JOBCENTER = "jobcenter-unna"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_server_starts_with_jetstream(nats_env: NatsEnv) -> None:
    assert nats_env.server.running
    assert nats_env.url.startswith("nats://127.0.0.1:")
    admin = await nats_env.admin()
    info = await admin.js.account_info()
    assert info.streams >= 3
    streams = {s.config.name for s in await admin.js.streams_info()}
    per_agency = {f(a) for a in nats_env.agencies for f in (submit_stream, inbox_stream)}
    assert {status_stream(a) for a in nats_env.agencies} | per_agency <= streams


async def test_config_has_public_keys_only_and_files_are_private(nats_env: NatsEnv) -> None:
    layout = nats_env.layout
    config = layout.config_file.read_text()
    identities = [Identity.admin(), Identity.broker(), Identity.ops()]
    identities += [Identity.for_agency(a) for a in nats_env.agencies]
    for identity in identities:
        seed = nats_env.seed_file(identity).read_text().strip()
        assert seed.startswith("SU")
        assert seed not in config
        assert nats_env.credentials.public_key(identity) in config
        assert _mode(nats_env.seed_file(identity)) == 0o600
    assert re.search(r"\bS[A-Z2-7]{57}\b", config) is None  # nothing shaped like a seed
    assert 'sync_interval: "always"' in config
    assert '"127.0.0.1:' in config
    for path in (layout.config_file, layout.settings_file, layout.log_file):
        assert _mode(path) == 0o600, path
    for directory in (layout.root, layout.creds_dir, layout.store_dir):
        assert _mode(directory) == 0o700, directory


async def test_acknowledged_message_survives_restart_and_kill(nats_env: NatsEnv) -> None:
    agency = await nats_env.connect(Identity.for_agency(JOBCENTER))
    first = await publish_durable(
        agency.js, submit_subject(JOBCENTER), b"before restart", msg_id="m-1"
    )
    port = nats_env.server.url
    await nats_env.server.restart()
    assert nats_env.server.url == port
    # The agency's client reconnects by itself (reconnect attempts are unlimited).
    second = await publish_durable(
        agency.js, submit_subject(JOBCENTER), b"before kill", msg_id="m-2", timeout=10
    )
    await nats_env.server.kill()  # no clean shutdown: what was acknowledged must be on disk
    await nats_env.server.start()
    admin = await nats_env.admin()
    assert (await admin.js.get_msg(submit_stream(JOBCENTER), first.seq)).data == b"before restart"
    assert (await admin.js.get_msg(submit_stream(JOBCENTER), second.seq)).data == b"before kill"


async def test_restart_on_same_store_and_port_from_layout(nats_env: NatsEnv) -> None:
    agency = await nats_env.connect(Identity.for_agency(JOBCENTER))
    ack = await publish_durable(agency.js, submit_subject(JOBCENTER), b"x", msg_id="m-1")
    await nats_env.close()
    again = NatsServer.from_layout(nats_env.layout)
    assert again.url == nats_env.url
    async with again:
        nc = await connect(
            again.url, nats_env.seed_file(Identity.admin()), "_INBOX.admin", "test-admin"
        )
        try:
            msg = await nc.jetstream().get_msg(submit_stream(JOBCENTER), ack.seq)
            assert msg.data == b"x"
        finally:
            await nc.close()


def test_malformed_agency_is_rejected_before_anything_is_written(tmp_path: Path) -> None:
    layout = ServerLayout.in_state(tmp_path / "state")
    for bad in ("bad.id", "x*", ">", "", "Upper", "-lead", "a b", "a" * 64):
        with pytest.raises(ConfigError) as info:
            configure(layout, ServerSettings(), ["jobcenter-unna", bad])
        assert info.value.reason == "id.agency_malformed"
        assert not layout.root.exists()
    with pytest.raises(ProtocolError):
        Identity.for_agency("evil.>")
    with pytest.raises(ConfigError, match="repeated"):
        configure(layout, ServerSettings(), ["a", "a"])
    assert not layout.root.exists()


def test_settings_are_validated() -> None:
    for kwargs in (
        {"host": "not a host"},
        {"port": 0},
        {"port": 70000},
        {"max_payload": 10},
        {"monitor_port": 0},
        {"max_file_store": 1},
    ):
        with pytest.raises(ConfigError):
            ServerSettings(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="differ"):
        ServerSettings(port=4222, monitor_port=4222)
    assert ServerSettings(host="::1", port=4222).url == "nats://[::1]:4222"


def test_reconfigure_keeps_port_and_seeds_and_adds_agency(tmp_path: Path) -> None:
    layout = ServerLayout.in_state(tmp_path / "state")
    first = configure(layout, ServerSettings(), ["a1"])
    seed = (layout.creds_dir / "agency-a1.nk").read_bytes()
    second = configure(layout, ServerSettings(sync_always=False), ["a1", "a2"])
    assert second.port == first.port == load_settings(layout).port
    assert (layout.creds_dir / "agency-a1.nk").read_bytes() == seed
    assert Credentials(layout.creds_dir).agencies() == ("a1", "a2")
    assert "sync_interval" not in layout.config_file.read_text()


def test_loose_permissions_are_refused(tmp_path: Path) -> None:
    layout = ServerLayout.in_state(tmp_path / "state")
    configure(layout, ServerSettings(), ["a1"])
    creds = Credentials(layout.creds_dir)
    seed = creds.seed_file(Identity.for_agency("a1"))
    seed.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        creds.seed_file(Identity.for_agency("a1"))
    assert info.value.reason == "nats.creds_permissions"
    assert "SU" not in str(info.value)
    layout.creds_dir.chmod(0o755)
    with pytest.raises(ConfigError, match="0700"):
        Credentials(layout.creds_dir)


def test_garbage_seed_is_refused_without_echoing_it(tmp_path: Path) -> None:
    layout = ServerLayout.in_state(tmp_path / "state")
    configure(layout, ServerSettings(), ["a1"])
    creds = Credentials(layout.creds_dir)
    path = creds.path(Identity.for_agency("a1"))
    path.write_text("SUSECRETSECRETSECRET\n")
    with pytest.raises(ConfigError) as info:
        creds.public_key(Identity.for_agency("a1"))
    assert "SECRET" not in str(info.value)
    assert info.value.__cause__ is None


async def test_second_server_on_same_state_is_refused(nats_env: NatsEnv) -> None:
    twin = NatsServer.from_layout(nats_env.layout, start_timeout=5.0)
    with pytest.raises(ConfigError) as info:
        await twin.start()
    assert info.value.reason == "natsd.locked"
    assert not twin.running
    assert nats_env.server.running


async def test_port_taken_by_another_server_is_refused(nats_env: NatsEnv, tmp_path: Path) -> None:
    layout = ServerLayout.in_state(tmp_path / "other")
    port = int(nats_env.url.rsplit(":", 1)[1])
    configure(layout, ServerSettings(port=port), ["a1"])
    other = NatsServer.from_layout(layout, start_timeout=5.0)
    with pytest.raises(ConfigError) as info:
        await other.start()
    assert info.value.reason == "natsd.port_in_use"
    assert not other.running


async def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    layout = ServerLayout.in_state(tmp_path / "state")
    configure(layout, ServerSettings(), ["a1"])
    layout.config_file.write_text(layout.config_file.read_text() + "\nno_such_option: 1\n")
    server = NatsServer.from_layout(layout, start_timeout=5.0)
    with pytest.raises(ConfigError) as info:
        await server.start()
    assert info.value.reason == "natsd.exited"
    assert "no_such_option" in str(info.value)
    assert not server.running
    # The lock was released: a fixed config starts.
    configure(layout, ServerSettings(), ["a1"])
    async with server:
        assert server.running


async def test_missing_binary_is_a_clear_error(tmp_path: Path) -> None:
    layout = ServerLayout.in_state(tmp_path / "state")
    configure(layout, ServerSettings(), ["a1"])
    server = NatsServer.from_layout(layout, binary=tmp_path / "no-such-nats-server")
    with pytest.raises(ConfigError) as info:
        await server.start()
    assert info.value.reason == "nats.binary_missing"


# -- provisioning -----------------------------------------------------------------------------


async def test_provisioning_is_idempotent(nats_env: NatsEnv) -> None:
    report = await nats_env.provision()
    assert not report.changed, str(report)
    # Shared: pending and audit streams. Per agency: its submit stream with the broker's
    # consumer, its attachment stream, its inbox stream and consumer, its status stream and
    # consumer, its report stream, its bucket, its record and withdrawal streams with the
    # broker's registrations and withdrawals consumers.
    assert len(report.changes) == 2 + 13 * len(nats_env.agencies)


async def test_provisioning_retires_the_shared_submit_stream_only_when_empty(
    nats_env_unprovisioned: NatsEnv,
) -> None:
    env = nats_env_unprovisioned
    admin = await env.admin()
    await admin.js.add_stream(name="BRIDGE_SUBMIT", subjects=["bridge.submit.*"])
    await publish_durable(admin.js, submit_subject(JOBCENTER), b"old", msg_id="m-1")
    with pytest.raises(ConfigError) as info:
        await env.provision()
    assert info.value.reason == "provision.legacy_submit"
    assert (await admin.js.stream_info("BRIDGE_SUBMIT")).state.messages == 1  # nothing lost
    await admin.js.purge_stream("BRIDGE_SUBMIT")  # as if the earlier broker had routed it
    report = await env.provision()
    assert [str(c) for c in report.by_action(Action.REMOVED)] == [
        str(Change("stream", "BRIDGE_SUBMIT", Action.REMOVED))
    ]
    assert (await admin.js.stream_info(submit_stream(JOBCENTER))).config.subjects == [
        submit_subject(JOBCENTER)
    ]


async def test_provisioning_retires_the_shared_inbox_stream_only_when_empty(
    nats_env_unprovisioned: NatsEnv,
) -> None:
    env = nats_env_unprovisioned
    admin = await env.admin()
    await admin.js.add_stream(
        name="BRIDGE_INBOX", subjects=["bridge.inbox.*"], retention=api.RetentionPolicy.WORK_QUEUE
    )
    await admin.js.add_consumer(
        "BRIDGE_INBOX",
        api.ConsumerConfig(durable_name=inbox_consumer(JOBCENTER), filter_subject="bridge.inbox.*"),
    )
    await publish_durable(admin.js, inbox_subject(JOBCENTER), b"old", msg_id="m-1")
    with pytest.raises(ConfigError) as info:
        await env.provision()
    assert info.value.reason == "provision.legacy_inbox"
    assert "adapters" in str(info.value)  # what to do about it
    assert (await admin.js.stream_info("BRIDGE_INBOX")).state.messages == 1  # nothing lost
    with pytest.raises(nats.js.errors.NotFoundError):  # and nothing created beside it
        await admin.js.stream_info(inbox_stream(JOBCENTER))

    # The earlier adapter takes what waits for it; then provisioning goes ahead.
    agency = await env.connect(Identity.for_agency(JOBCENTER))
    old = await bind_pull(admin.js, "BRIDGE_INBOX", inbox_consumer(JOBCENTER))
    [msg] = await fetch(old, 1, 5.0)
    assert msg.data == b"old"
    await msg.ack_sync()
    report = await env.provision()
    assert [str(c) for c in report.by_action(Action.REMOVED)] == [
        str(Change("stream", "BRIDGE_INBOX", Action.REMOVED))
    ]
    info_ = await admin.js.stream_info(inbox_stream(JOBCENTER))
    assert info_.config.subjects == [inbox_subject(JOBCENTER)]
    mine = await bind_pull(agency.js, inbox_stream(JOBCENTER), inbox_consumer(JOBCENTER))
    assert await fetch(mine, 1, 0.5) == []


async def test_provisioning_rejects_malformed_agency_before_touching_the_server(
    nats_env_unprovisioned: NatsEnv,
) -> None:
    with pytest.raises(ConfigError):
        await nats_env_unprovisioned.provision(["jobcenter-unna", "evil.*"])
    admin = await nats_env_unprovisioned.admin()
    with pytest.raises(nats.js.errors.NotFoundError):
        await admin.js.stream_info(submit_stream("jobcenter-unna"))


async def test_adding_an_agency_leaves_the_others_alone(nats_env: NatsEnv) -> None:
    broker = await nats_env.connect(Identity.broker())
    await publish_durable(broker.js, inbox_subject(JOBCENTER), b"waiting", msg_id="i-1")
    agency = await nats_env.connect(Identity.for_agency(JOBCENTER))
    kv = await agency.js.key_value(kv_bucket(JOBCENTER))
    await kv.put("k", b"kept")

    newcomer = "beratung-kamen"
    configure(nats_env.layout, ServerSettings(), [*nats_env.agencies, newcomer])
    nats_env.server.reload()
    # A reload is a signal the server applies when it gets to it; until then neither the newcomer
    # nor the admin's permissions for the newcomer's streams exist. The newcomer connecting shows
    # the reloaded server knows its identity.
    for _ in range(300):
        try:
            joined = await nats_env.connect(Identity.for_agency(newcomer))
            break
        except TransportError:
            await asyncio.sleep(0.1)
    else:
        pytest.fail("the new agency could not connect after the reload")
    report = await nats_env.provision([*nats_env.agencies, newcomer])
    created = {c.name for c in report.by_action(Action.CREATED)}
    assert created == {
        submit_stream(newcomer),
        attach_stream(newcomer),
        *consent_streams(newcomer),
        f"{consent_stream(newcomer, 'record')}/broker-registrations",
        f"{consent_stream(newcomer, 'withdrawal')}/broker-withdrawals",
        f"{submit_stream(newcomer)}/broker",
        inbox_stream(newcomer),
        f"{inbox_stream(newcomer)}/inbox-{newcomer}",
        status_stream(newcomer),
        f"{status_stream(newcomer)}/status-{newcomer}",
        report_stream(newcomer),
        f"adapter-{newcomer}",
    }
    # Only the pending notes grow, with room for the newcomer's inbox quota.
    updated = {c.name: c.fields for c in report.by_action(Action.UPDATED)}
    assert updated == {PENDING_STREAM: ("max_bytes",)}

    admin = await nats_env.admin()
    info = await admin.js.consumer_info(inbox_stream(JOBCENTER), inbox_consumer(JOBCENTER))
    assert info.num_pending == 1
    assert (await kv.get("k")).value == b"kept"
    await (await joined.js.key_value(kv_bucket(newcomer))).put("k", b"v")


async def test_provisioning_updates_a_changed_limit(nats_env: NatsEnv) -> None:
    report = await nats_env.provision(settings=ProvisionSettings(duplicate_window=3600.0))
    updated = {c.name: c.fields for c in report.by_action(Action.UPDATED)}
    assert updated == {
        **{submit_stream(a): ("duplicate_window",) for a in nats_env.agencies},
        **{attach_stream(a): ("duplicate_window",) for a in nats_env.agencies},
        **{inbox_stream(a): ("duplicate_window",) for a in nats_env.agencies},
        **{status_stream(a): ("duplicate_window",) for a in nats_env.agencies},
        **{report_stream(a): ("duplicate_window",) for a in nats_env.agencies},
        AUDIT_STREAM: ("duplicate_window",),
        **{s: ("duplicate_window",) for a in nats_env.agencies for s in consent_streams(a)},
        PENDING_STREAM: ("duplicate_window",),
    }
    again = await nats_env.provision(settings=ProvisionSettings(duplicate_window=3600.0))
    assert not again.changed


def test_provision_settings_are_validated() -> None:
    with pytest.raises(ConfigError):
        ProvisionSettings(replicas=2)
    with pytest.raises(ConfigError):
        ProvisionSettings(duplicate_window=90 * 86400.0)
    with pytest.raises(ConfigError):
        ProvisionSettings(max_msg_size=1000)
    for bad in (0, -2):
        with pytest.raises(ConfigError):
            ProvisionSettings(max_deliver=bad)
    assert ProvisionSettings(max_deliver=5).max_deliver == 5


async def test_consumers_redeliver_without_limit(nats_env: NatsEnv) -> None:
    # A message waiting for an unreachable local system must not be abandoned after N tries;
    # its TTL or the stream's age limit is what ends it.
    admin = await nats_env.admin()
    for stream, consumer in (
        (inbox_stream(JOBCENTER), inbox_consumer(JOBCENTER)),
        (submit_stream(JOBCENTER), "broker"),
    ):
        info = await admin.js.consumer_info(stream, consumer)
        assert info.config.max_deliver == -1, consumer


# -- transport --------------------------------------------------------------------------------


async def test_publish_durable_deduplicates_by_msg_id(nats_env: NatsEnv) -> None:
    agency = await nats_env.connect(Identity.for_agency(JOBCENTER))
    subject = submit_subject(JOBCENTER)
    first = await publish_durable(agency.js, subject, b"x", msg_id="same")
    again = await publish_durable(agency.js, subject, b"x", msg_id="same")
    assert (first.stream, first.duplicate) == (submit_stream(JOBCENTER), False)
    assert (again.seq, again.duplicate) == (first.seq, True)


async def test_per_message_ttl_is_enforced_by_the_store(nats_env: NatsEnv) -> None:
    broker = await nats_env.connect(Identity.broker())
    ack = await publish_durable(
        broker.js,
        inbox_subject(JOBCENTER),
        b"short-lived",
        msg_id="ttl-1",
        ttl=1,
        expected_stream=inbox_stream(JOBCENTER),
    )
    admin = await nats_env.admin()
    msg = await admin.js.get_msg(inbox_stream(JOBCENTER), ack.seq)
    assert msg.headers is not None
    assert msg.headers["Nats-TTL"] == "1"
    for _ in range(60):
        if (await admin.js.stream_info(inbox_stream(JOBCENTER))).state.messages == 0:
            return
        await asyncio.sleep(0.1)
    pytest.fail("the message outlived its TTL")


async def test_publish_errors_are_translated(nats_env: NatsEnv) -> None:
    agency = await nats_env.connect(Identity.for_agency(JOBCENTER))
    admin = await nats_env.admin()
    subject = submit_subject(JOBCENTER)
    with pytest.raises(TransportError) as info:
        await publish_durable(agency.js, subject, b"x", msg_id="t", ttl=60)
    assert info.value.reason == "transport.publish_rejected"  # SUBMIT allows no TTLs
    with pytest.raises(TransportError) as info:
        await publish_durable(admin.js, "nobody.listens", b"x", msg_id="n", timeout=2)
    assert info.value.reason == "transport.no_stream"
    with pytest.raises(TransportError) as info:
        await publish_durable(
            agency.js, subject, b"x", msg_id="w", expected_stream=inbox_stream(JOBCENTER)
        )
    assert info.value.reason == "transport.publish_rejected"
    with pytest.raises(TransportError) as info:
        await publish_durable(agency.js, subject, b"x" * (3 * 1024 * 1024), msg_id="big")
    assert info.value.reason == "transport.payload_too_large"
    assert isinstance(info.value.__cause__, Exception)


async def test_publish_arguments_are_checked(nats_env: NatsEnv) -> None:
    agency = await nats_env.connect(Identity.for_agency(JOBCENTER))
    subject = submit_subject(JOBCENTER)
    bad_calls: list[dict[str, object]] = [
        {"msg_id": ""},
        {"msg_id": "has space"},
        {"msg_id": "x" * 257},
        {"msg_id": "ok", "ttl": 0},
        {"msg_id": "ok", "ttl": 1.5},
        {"msg_id": "ok", "headers": {"Nats-Msg-Id": "other"}},
        {"msg_id": "ok", "headers": {"nats-ttl": "5"}},
        {"msg_id": "ok", "headers": {"X-Ok": "line\r\nInjected: yes"}},
        {"msg_id": "ok", "headers": {"Bad:Name": "v"}},
    ]
    for kwargs in bad_calls:
        with pytest.raises(ProtocolError):
            await publish_durable(agency.js, subject, b"x", **kwargs)  # type: ignore[arg-type]
    for bad_subject in ("bridge.submit.*", "bridge..x", "with space", ""):
        with pytest.raises(ProtocolError):
            await publish_durable(agency.js, bad_subject, b"x", msg_id="ok")
    ack = await publish_durable(
        agency.js, subject, b"x", msg_id="ok", headers={"Bridge-Type": "referral"}
    )
    admin = await nats_env.admin()
    stored = await admin.js.get_msg(submit_stream(JOBCENTER), ack.seq)
    assert stored.headers == {"Bridge-Type": "referral", "Nats-Msg-Id": "ok"}


async def test_connect_refuses_wrong_seed_and_bad_arguments(
    nats_env: NatsEnv, tmp_path: Path
) -> None:
    stranger = Credentials.create(tmp_path / "stranger")
    stranger.ensure(Identity.ops())
    with pytest.raises(TransportError) as info:
        await connect(
            nats_env.url,
            stranger.seed_file(Identity.ops()),
            "_INBOX.ops",
            "stranger",
            first_connect_timeout=2.0,
        )
    assert info.value.reason == "transport.unauthorized"
    seed = nats_env.seed_file(Identity.ops())
    with pytest.raises(ProtocolError):
        await connect("http://example.org", seed, "_INBOX.ops", "x")
    with pytest.raises(ProtocolError):
        await connect(nats_env.url, seed, "_INBOX.>", "x")
    with pytest.raises(ConfigError):
        await connect(nats_env.url, tmp_path / "missing.nk", "_INBOX.ops", "x")


async def test_connect_to_nothing_fails_in_bounded_time(nats_env: NatsEnv) -> None:
    seed = nats_env.seed_file(Identity.ops())
    await nats_env.server.stop()
    with pytest.raises(TransportError) as info:
        await connect(nats_env.url, seed, "_INBOX.ops", "x", first_connect_timeout=1.5)
    assert info.value.reason == "transport.connect_failed"


async def test_fetch_returns_empty_on_timeout_and_checks_batch(nats_env: NatsEnv) -> None:
    agency = await nats_env.connect(Identity.for_agency(JOBCENTER))
    sub = await bind_pull(agency.js, inbox_stream(JOBCENTER), inbox_consumer(JOBCENTER))
    assert await fetch(sub, 5, 0.5) == []
    with pytest.raises(ValueError, match="batch"):
        await fetch(sub, 0, 1.0)
    with pytest.raises(ValueError, match="batch"):
        await fetch(sub, 10_000, 1.0)


# -- command line -----------------------------------------------------------------------------


def test_cli_config_serve_provision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state"
    assert main(["nats", "config", "--state", str(state), "--agency", "Bad.x"]) == 2
    assert "id.agency_malformed" in capsys.readouterr().err
    assert not state.exists()
    assert main(["nats", "config", "--state", str(state), "--agency", "a1"]) == 0
    assert main(["nats", "config", "--state", str(state), "--agency", "a2"]) == 0
    assert Credentials(ServerLayout.in_state(state).creds_dir).agencies() == ("a1", "a2")

    serve = subprocess.Popen(
        [sys.executable, "-m", "bridge", "nats", "serve", "--state", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert serve.stdout is not None
        assert "ready on nats://127.0.0.1:" in serve.stdout.readline()
        capsys.readouterr()
        # Every age limit comes from the signed policy: without one, nothing is provisioned.
        assert main(["nats", "provision", "--state", str(state)]) == 2
        assert "retention.no_policy" in capsys.readouterr().err
        fed = federation()
        (tmp_path / "policy.bin").write_bytes(signed_policy(fed)[0])
        (tmp_path / "anchor.json").write_bytes(msgspec.json.encode(fed.anchor.public_record()))
        given = [
            "--policy",
            str(tmp_path / "policy.bin"),
            "--anchor",
            str(tmp_path / "anchor.json"),
        ]
        assert main(["nats", "provision", "--state", str(state), *given]) == 0
        out = capsys.readouterr().out
        assert "created   kv       adapter-a2" in out
        assert main(["nats", "provision", "--state", str(state), *given]) == 0
        assert "created" not in capsys.readouterr().out
    finally:
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=20) == 0
    assert "Server Exiting" in ServerLayout.in_state(state).log_file.read_text()


async def test_provisioning_lifts_an_old_redelivery_limit(nats_env: NatsEnv) -> None:
    await nats_env.provision(settings=ProvisionSettings(max_deliver=20))
    admin = await nats_env.admin()
    assert (
        await admin.js.consumer_info(inbox_stream(JOBCENTER), inbox_consumer(JOBCENTER))
    ).config.max_deliver == 20
    report = await nats_env.provision()
    assert report.changed
    info = await admin.js.consumer_info(inbox_stream(JOBCENTER), inbox_consumer(JOBCENTER))
    assert info.config.max_deliver == -1


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_server_does_not_outlive_a_killed_parent(tmp_path: Path) -> None:
    layout = ServerLayout.in_state(tmp_path / "state")
    configure(layout, ServerSettings(), [JOBCENTER])
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from bridge.nats.server import NatsServer, ServerLayout\n"
        "async def main():\n"
        "    server = NatsServer.from_layout(ServerLayout(Path(sys.argv[1])))\n"
        "    await server.start()\n"
        "    print(server.pid, flush=True)\n"
        "    await asyncio.sleep(120)\n"
        "asyncio.run(main())\n"
    )
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, str(layout.root), stdout=subprocess.PIPE
    )
    assert parent.stdout is not None
    line = await asyncio.wait_for(parent.stdout.readline(), 30)
    server_pid = int(line)
    parent.send_signal(signal.SIGKILL)  # no cleanup code of the parent runs
    await parent.wait()
    for _ in range(100):
        if _exited(server_pid):
            break
        await asyncio.sleep(0.1)
    else:
        os.kill(server_pid, signal.SIGKILL)
        pytest.fail("nats-server kept running after its parent was killed")
