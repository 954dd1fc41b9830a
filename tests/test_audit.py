"""The audit trail: the chain and its checkpoints, tampering found, the stream locked down.

Chains are written by the real `AuditWriter` into a real nats-server (or built record by record
for the offline cases), read back with a separate read-only connection, exported and checked
offline. Every kind of tampering is applied to an export (the live stream refuses it, which the
permission tests show) and to a stream an admin built by hand.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import nats.errors
import nats.js.errors
import pytest
from envelope_helpers import RECIPIENTS, SENDER, Federation, federation
from nats.js import api
from test_broker import NOW, Agency, make_broker, referral, wait_for, write_config

from bridge.audit import (
    GENESIS,
    AuditBroken,
    AuditEvent,
    AuditKind,
    AuditRecord,
    AuditRecordInvalid,
    AuditWriter,
    ChainVerifier,
    Checkpoint,
    audit_msg_id,
    decode_record,
    encode_record,
    generate_audit_key,
    load_audit_key,
    load_audit_public_key,
    record_hash,
    sign_checkpoint,
    verify_records,
)
from bridge.audit.reader import export, file_records, stream_records, stream_state
from bridge.crypto import PublicKeyRecord
from bridge.ids import new_message_id
from bridge.nats.identities import Identity
from bridge.nats.subjects import AUDIT_STREAM, HDR_EXPECTED_LAST_SEQ, audit_subject
from bridge.nats.transport import publish_durable

if TYPE_CHECKING:
    from conftest import NatsEnv

AT = datetime.datetime(2026, 11, 29, 9, 0, tzinfo=datetime.UTC)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    key, public = tmp_path / "audit.key", tmp_path / "audit.pub.json"
    generate_audit_key(key, public)
    return key, public


def event(n: int) -> AuditEvent:
    return AuditEvent(
        kind=AuditKind.ROUTED,
        at=AT + datetime.timedelta(seconds=n),
        message_id=new_message_id(),
        sender=SENDER,
        recipient=RECIPIENTS[0],
        message_type="referral",  # type: ignore[arg-type]
        consent="c-" + "ab" * 16,
        purpose="counselling",
        categories=["health"],
    )


def build_chain(key_file: Path, events: int, every: int, stream: str = AUDIT_STREAM) -> list[bytes]:
    """Records as the writer makes them: `every` events, then a checkpoint, and so on."""
    key = load_audit_key(key_file)
    out: list[bytes] = []
    prev, unsigned = GENESIS, 0
    for n in range(events):
        out.append(encode_record(AuditRecord(seq=len(out) + 1, prev=prev, event=event(n))))
        prev, unsigned = record_hash(out[-1]), unsigned + 1
        if unsigned == every or n == events - 1:
            body = Checkpoint(stream=stream, upto=len(out), head=prev, at=AT)
            record = AuditRecord(seq=len(out) + 1, prev=prev, checkpoint=sign_checkpoint(body, key))
            out.append(encode_record(record))
            prev, unsigned = record_hash(out[-1]), 0
    return out


def check(lines: list[bytes], public: PublicKeyRecord) -> AuditBroken:
    with pytest.raises(AuditBroken) as info:
        verify_records(((None, line) for line in lines), public, AUDIT_STREAM)
    return info.value


def rechained(lines: list[bytes], start: int) -> list[bytes]:
    """Records renumbered and re-linked from index `start` on, as a careful forger would."""
    out = lines[:start]
    for line in lines[start:]:
        record = decode_record(line)
        prev = record_hash(out[-1]) if out else GENESIS
        fixed = msgspec.structs.replace(record, seq=len(out) + 1, prev=prev)
        out.append(encode_record(fixed))
    return out


# -- the chain, offline --------------------------------------------------------------------


def test_an_intact_chain_verifies(keys: tuple[Path, Path]) -> None:
    lines = build_chain(keys[0], 10, every=4)
    report = verify_records(
        ((None, x) for x in lines), load_audit_public_key(keys[1]), AUDIT_STREAM
    )
    assert (report.first, report.last, report.events, report.checkpoints) == (1, 13, 10, 3)
    assert report.unsigned == 0
    # A range from the middle (older records aged out, or an export) verifies as well.
    tail = verify_records(
        ((None, x) for x in lines[5:]), load_audit_public_key(keys[1]), AUDIT_STREAM
    )
    assert (tail.first, tail.last) == (6, 13)


def test_every_kind_of_tampering_names_the_first_record_that_does_not_fit(
    keys: tuple[Path, Path],
) -> None:
    public = load_audit_public_key(keys[1])
    lines = build_chain(keys[0], 10, every=4)  # checkpoints at 5, 10 and 13
    assert decode_record(lines[4]).checkpoint is not None

    # Altered: one field of record 3 changed, the line otherwise kept.
    record = decode_record(lines[2])
    assert record.event is not None
    forged = msgspec.structs.replace(record.event, recipient=RECIPIENTS[1])
    altered = [*lines[:2], encode_record(msgspec.structs.replace(record, event=forged)), *lines[3:]]
    broken = check(altered, public)
    assert (broken.seq, broken.reason) == (3, "audit.altered")

    # Removed: record 3 gone.
    broken = check([*lines[:2], *lines[3:]], public)
    assert (broken.seq, broken.reason) == (3, "audit.missing")

    # Reordered: records 3 and 4 swapped.
    broken = check([*lines[:2], lines[3], lines[2], *lines[4:]], public)
    assert (broken.seq, broken.reason) == (3, "audit.missing")

    # Inserted: a forged record 3 put before the real one.
    fake = encode_record(AuditRecord(seq=3, prev=record_hash(lines[1]), event=event(99)))
    broken = check([*lines[:2], fake, *lines[2:]], public)
    assert (broken.seq, broken.reason) == (3, "audit.repeated")

    # Inserted and everything after renumbered, without re-linking: the link after it breaks.
    renumbered = [*lines[:2], fake] + [
        encode_record(msgspec.structs.replace(decode_record(x), seq=decode_record(x).seq + 1))
        for x in lines[2:]
    ]
    broken = check(renumbered, public)
    assert (broken.seq, broken.reason) == (3, "audit.altered")

    # Removed and the chain recomputed: only the signed checkpoint can tell.
    rewritten = rechained([*lines[:2], *lines[3:]], 2)
    broken = check(rewritten, public)
    assert (broken.seq, broken.reason) == (4, "audit.bad_checkpoint")

    # A checkpoint signed by another key.
    other_key, other_public = keys[0].with_name("other.key"), keys[0].with_name("other.pub")
    generate_audit_key(other_key, other_public)
    body = Checkpoint(stream=AUDIT_STREAM, upto=4, head=record_hash(lines[3]), at=AT)
    wrong = AuditRecord(
        seq=5,
        prev=record_hash(lines[3]),
        checkpoint=sign_checkpoint(body, load_audit_key(other_key)),
    )
    broken = check([*lines[:4], encode_record(wrong), *lines[5:]], public)
    assert (broken.seq, broken.reason) == (5, "audit.bad_checkpoint")

    # A checkpoint whose signature bytes were flipped.
    cp = decode_record(lines[4])
    assert cp.checkpoint is not None
    flipped = cp.checkpoint[:-8] + ("A" if cp.checkpoint[-8] != "A" else "B") + cp.checkpoint[-7:]
    bad = encode_record(msgspec.structs.replace(cp, checkpoint=flipped))
    broken = check([*lines[:4], bad, *lines[5:]], public)
    assert (broken.seq, broken.reason) == (5, "audit.bad_checkpoint")

    # Not a record at all.
    broken = check([*lines[:6], b'{"v":1}', *lines[7:]], public)
    assert (broken.seq, broken.reason) == (7, "audit.malformed")


def test_records_are_metadata_only_and_strict() -> None:
    record = AuditRecord(seq=1, prev=GENESIS, event=event(0))
    data = encode_record(record)
    assert decode_record(data) == record
    document = json.loads(data)
    document["event"]["note"] = "Max Mustermann"
    with pytest.raises(AuditRecordInvalid) as info:
        decode_record(json.dumps(document).encode())
    assert "Mustermann" not in str(info.value)
    with pytest.raises(ValueError, match="exactly one"):
        AuditRecord(seq=1, prev=GENESIS)


# -- the writer against a real server --------------------------------------------------------


async def test_writer_chains_and_signs_and_a_reader_verifies_and_exports(
    nats_env: NatsEnv, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    broker = await nats_env.connect(Identity.broker())
    writer = AuditWriter(broker.js, load_audit_key(keys[0]), every=3, interval=60, timeout=5)
    items = [(audit_msg_id("routed", new_message_id()), event(n)) for n in range(7)]
    for item in items:
        await writer.append([item])
    await writer.append(items[:1])  # a retry of a step: stored once
    await writer.append(items[6:])
    await writer.checkpoint()

    ops = await nats_env.connect(Identity.ops())
    public = load_audit_public_key(keys[1])
    state = await stream_state(ops.js)
    assert state.problems() == []
    verifier = ChainVerifier(public, AUDIT_STREAM)
    kinds = []
    async for seq, data in stream_records(ops.js):
        kinds.append("cp" if verifier.add(seq, data).checkpoint else "ev")
    assert kinds == ["ev"] * 3 + ["cp"] + ["ev"] * 3 + ["cp"] + ["ev", "cp"]
    assert verifier.report().unsigned == 0

    # A second writer (another broker) continues the same chain.
    other = await nats_env.connect(Identity.broker())
    second = AuditWriter(other.js, load_audit_key(keys[0]), every=100, interval=60, timeout=5)
    await second.append([(audit_msg_id("routed", new_message_id()), event(8))])
    await writer.append([(audit_msg_id("routed", new_message_id()), event(9))])
    await second.checkpoint()

    out = tmp_path / "export.jsonl"
    assert await export(ops.js, out, first=5, last=6) == (5, 8)  # continued to the checkpoint
    report = verify_records(file_records(out), public, AUDIT_STREAM)
    assert (report.first, report.last) == (5, 8)
    everything = tmp_path / "all.jsonl"
    assert await export(ops.js, everything) == (1, 13)
    assert verify_records(file_records(everything), public, AUDIT_STREAM).unsigned == 0


async def test_the_events_of_one_step_are_one_record_stored_once(
    nats_env: NatsEnv, keys: tuple[Path, Path]
) -> None:
    """A step's events share a record (one durable write); the same step again adds none."""
    broker = await nats_env.connect(Identity.broker())
    writer = AuditWriter(broker.js, load_audit_key(keys[0]), every=100, interval=60, timeout=5)
    step = [(audit_msg_id("routed", new_message_id()), event(n)) for n in range(3)]
    await writer.append(step)
    await writer.append(step)  # a redelivered submission records the same step again
    big = [(audit_msg_id("routed", new_message_id()), event(n)) for n in range(30)]
    await writer.append(big)  # more than a record holds: two records, in order
    await writer.checkpoint()

    ops = await nats_env.connect(Identity.ops())
    verifier = ChainVerifier(load_audit_public_key(keys[1]), AUDIT_STREAM)
    shapes, events = [], []
    async for seq, data in stream_records(ops.js):
        record = verifier.add(seq, data)
        shapes.append(len(record.all_events))
        events += record.all_events
    assert shapes == [3, 24, 6, 0]  # the last is the checkpoint
    assert events == [e for _, e in step + big]
    report = verifier.report()
    assert (report.events, report.unsigned) == (33, 0)
    with pytest.raises(ValueError, match="exactly one"):
        AuditRecord(seq=1, prev=GENESIS, event=event(0), events=[event(1), event(2)])
    single = encode_record(AuditRecord(seq=1, prev=GENESIS, event=event(0)))
    group_of_one = single.replace(b'"event":{', b'"events":[{').replace(b"}}", b"}]}")
    assert b'"events":[{' in group_of_one
    with pytest.raises(AuditRecordInvalid):  # a group of one is not a group
        decode_record(group_of_one)


async def test_a_tampered_stream_is_named_by_the_live_reader(
    nats_env: NatsEnv, keys: tuple[Path, Path]
) -> None:
    """The real stream refuses tampering, so an admin builds a look-alike that allows it."""
    admin = await nats_env.admin()
    await admin.js.add_stream(
        api.StreamConfig(name="FAKE_AUDIT", subjects=["fake.audit"], allow_direct=True)
    )
    lines = build_chain(keys[0], 6, every=3, stream="FAKE_AUDIT")
    for n, line in enumerate(lines, start=1):
        await publish_durable(admin.js, "fake.audit", line, msg_id=f"fake.{n}")
    public = load_audit_public_key(keys[1])

    async def first_broken() -> AuditBroken | None:
        verifier = ChainVerifier(public, "FAKE_AUDIT")
        try:
            async for seq, data in stream_records(admin.js, "FAKE_AUDIT"):
                verifier.add(seq, data)
        except AuditBroken as exc:
            return exc
        return None

    assert await first_broken() is None
    await admin.js.delete_msg("FAKE_AUDIT", 3)
    broken = await first_broken()
    assert broken is not None
    assert (broken.seq, broken.reason) == (3, "audit.missing")
    state = await stream_state(admin.js, "FAKE_AUDIT")
    assert len(state.problems()) == 3  # deletable, purgeable, no age limit


# -- nobody but the writer: permissions and stream settings ---------------------------------


async def test_no_identity_but_the_broker_can_append_and_none_can_delete_or_purge(
    nats_env: NatsEnv, keys: tuple[Path, Path]
) -> None:
    broker = await nats_env.connect(Identity.broker())
    writer = AuditWriter(broker.js, load_audit_key(keys[0]), every=100, interval=60, timeout=5)
    await writer.append([(audit_msg_id("routed", new_message_id()), event(0))])
    forged = encode_record(AuditRecord(seq=2, prev=GENESIS, event=event(1)))

    others = [Identity.for_agency(a) for a in nats_env.agencies]
    for identity in [*others, Identity.ops(), Identity.admin()]:
        client = await nats_env.connect(identity)
        await client.nc.publish(audit_subject(), forged)
        await client.expect_violations(f'publish to "{audit_subject()}"')
        # Raw JetStream API requests too: none may delete a record, purge or remove the stream.
        for api_subject in (
            f"$JS.API.STREAM.MSG.DELETE.{AUDIT_STREAM}",
            f"$JS.API.STREAM.PURGE.{AUDIT_STREAM}",
            f"$JS.API.STREAM.DELETE.{AUDIT_STREAM}",
        ):
            await client.nc.publish(api_subject, b'{"seq":1}')
            await client.expect_violations(f'publish to "{api_subject}"')

    # The broker may append but not delete either; and the stream's own settings forbid it.
    for api_subject in (
        f"$JS.API.STREAM.MSG.DELETE.{AUDIT_STREAM}",
        f"$JS.API.STREAM.PURGE.{AUDIT_STREAM}",
    ):
        await broker.nc.publish(api_subject, b'{"seq":1}')
        await broker.expect_violations(f'publish to "{api_subject}"')
    admin = await nats_env.admin()
    info = await admin.js.stream_info(AUDIT_STREAM)
    assert info.config.deny_delete
    assert info.config.deny_purge
    assert info.state.messages == 1
    with pytest.raises(nats.js.errors.APIError):  # lifting the protection is refused too
        await admin.js.update_stream(info.config.evolve(deny_delete=False, deny_purge=False))
    ops = await nats_env.connect(Identity.ops())
    assert (await stream_state(ops.js)).problems() == []


async def test_a_stale_writer_cannot_fork_the_chain(
    nats_env: NatsEnv, keys: tuple[Path, Path]
) -> None:
    """An append built on an old head is refused by the server, however it is sent."""
    broker = await nats_env.connect(Identity.broker())
    writer = AuditWriter(broker.js, load_audit_key(keys[0]), every=100, interval=60, timeout=5)
    await writer.append([(audit_msg_id("routed", new_message_id()), event(0))])
    await writer.append([(audit_msg_id("routed", new_message_id()), event(1))])
    fork = encode_record(AuditRecord(seq=2, prev=GENESIS, event=event(2)))
    with pytest.raises(Exception, match=r"10071|wrong last sequence"):
        await publish_durable(
            broker.js, audit_subject(), fork, msg_id="fork", headers={HDR_EXPECTED_LAST_SEQ: "1"}
        )


# -- the broker writes the trail -------------------------------------------------------------


async def test_the_broker_records_routing_and_rejection(nats_env: NatsEnv, tmp_path: Path) -> None:
    fed: Federation = federation(NOW)
    jobcenter = await Agency.connect(nats_env, SENDER)
    good, bad = new_message_id(), new_message_id()
    await jobcenter.submit(referral(fed, good), good)
    await jobcenter.submit(referral(fed, bad, lifetime=20 * 86400), bad)  # over the type's limit
    config = write_config(tmp_path, nats_env, fed)
    async with make_broker(config) as broker:
        await wait_for("both handled", lambda: broker.statistics().routed == 1)
        await wait_for("rejected", lambda: sum(broker.statistics().rejected.values()) == 1)
    ops = await nats_env.connect(Identity.ops())
    public = load_audit_public_key(tmp_path / "audit.pub.json")
    verifier = ChainVerifier(public, AUDIT_STREAM)
    events = []
    async for seq, data in stream_records(ops.js):
        record = verifier.add(seq, data)
        events += record.all_events
    assert verifier.report().unsigned == 0  # the broker signed on its way out
    seen = {(e.kind, e.message_id, e.recipient, e.reason) for e in events}
    assert (AuditKind.DIRECTORY_CHANGED, None, None, None) in seen
    # The policy version that decided is on the trail, by its hash.
    versions = {e.version for e in events if e.kind is AuditKind.POLICY_CHANGED}
    assert versions == {broker.statistics().policy_hash}
    for kind in (AuditKind.SUBMITTED, AuditKind.ACCEPTED):
        assert (kind, good, None, None) in seen
    for recipient in RECIPIENTS:
        assert (AuditKind.ROUTED, good, recipient, None) in seen
    assert (AuditKind.REJECTED, bad, None, "policy.lifetime") in seen
    routed = [e for e in events if e.kind is AuditKind.ROUTED]
    assert all(e.consent and e.purpose and e.categories and e.expires_at for e in routed)


def test_cli_verifies_an_export_and_fails_on_a_tampered_one(
    keys: tuple[Path, Path], tmp_path: Path
) -> None:
    lines = build_chain(keys[0], 5, every=2)
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_bytes(b"".join(x + b"\n" for x in lines))
    bad.write_bytes(b"".join(x + b"\n" for i, x in enumerate(lines) if i != 3))

    def run(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "bridge",
                "audit",
                "verify",
                "--file",
                str(path),
                "--key",
                str(keys[1]),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    ok = run(good)
    assert ok.returncode == 0, ok.stderr
    assert "intact" in ok.stdout
    failed = run(bad)
    assert failed.returncode == 1
    assert "record 4" in failed.stdout
    assert "audit.missing" in failed.stdout
