"""Expiry against a real nats-server: warned before, removed at its limit, the sender told.

The broker runs on the real clock here (the store's TTL does), with a referral inbox limit of a
few seconds. Every wait polls for a condition with a generous deadline; no test measures time.
What left the transport is checked with a separate (admin) connection, never with the broker's.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import nats.js.errors
from envelope_helpers import RECIPIENTS, SENDER, federation, seal_referral
from test_broker import Agency, make_broker, write_config

from bridge.adapters.receipts import send_receipt
from bridge.audit import AuditKind, ChainVerifier, load_audit_public_key
from bridge.audit.reader import stream_records
from bridge.broker._expiry import EXPIRED_REASON, ExpiryWatch, PendingNote
from bridge.crypto import DEFAULT_LIMITS, verify
from bridge.ids import new_message_id
from bridge.nats.identities import Identity
from bridge.nats.provision import PENDING_CLOSED_TTL
from bridge.nats.subjects import (
    AUDIT_STREAM,
    PENDING_STREAM,
    inbox_consumer,
    inbox_stream,
    inbox_subject,
    pending_subject,
)
from bridge.nats.transport import bind_pull, fetch, publish_durable
from bridge.wire import Delivered, DeliveryState, StatusEvent

if TYPE_CHECKING:
    from conftest import NatsEnv

COUNSELLING, SPDI = RECIPIENTS
EXPIRY = "\n[expiry]\ncheck_seconds = 1\nwarn_fraction = 0.25\n"


async def collect(
    agency: Agency, into: list[StatusEvent], done: object, within: float = 60
) -> None:
    """Read `agency`'s status events into `into` until `done()` holds."""
    async with asyncio.timeout(within):
        while not done():  # type: ignore[operator]
            into.extend(await agency.statuses())
            await asyncio.sleep(0.2)


async def gone(js: object, recipient: str, seq: int) -> None:
    """Wait until `recipient`'s inbox no longer has message `seq` (read with the given
    connection)."""
    async with asyncio.timeout(30):
        while True:
            try:
                await js.get_msg(inbox_stream(recipient), seq=seq)  # type: ignore[attr-defined]
            except nats.js.errors.NotFoundError:
                return
            await asyncio.sleep(0.1)


async def audit_events(env: NatsEnv, key: Path) -> list[object]:
    ops = await env.connect(Identity.ops())
    verifier = ChainVerifier(load_audit_public_key(key), AUDIT_STREAM)
    events = []
    async for seq, data in stream_records(ops.js):
        record = verifier.add(seq, data)
        events += record.all_events
    return events


async def test_undelivered_is_warned_then_expires_and_the_sender_is_told(
    nats_env: NatsEnv, tmp_path: Path
) -> None:
    now = int(time.time())
    fed = federation(now)
    jobcenter = await Agency.connect(nats_env, SENDER)
    mid = new_message_id()
    await jobcenter.submit(
        seal_referral(fed, message_id=mid, recipients=[SPDI], now=now, purpose="counselling"), mid
    )
    config = write_config(tmp_path, nats_env, fed, referral_ttl=8, extra=EXPIRY)
    sender_events: list[StatusEvent] = []
    recipient_events: list[StatusEvent] = []
    spdi = await Agency.connect(nats_env, SPDI)
    admin = await nats_env.admin()
    async with make_broker(config, clock=time.time) as broker:
        await collect(
            jobcenter, sender_events, lambda: any(e.state == "expired" for e in sender_events)
        )
        assert broker.statistics().routed == 1
    (expired,) = [e for e in sender_events if e.state is DeliveryState.EXPIRED]
    assert (expired.message_id, expired.recipient, expired.reason) == (mid, SPDI, EXPIRED_REASON)
    assert [e.state for e in sender_events] == [DeliveryState.ROUTED, DeliveryState.EXPIRED]

    # The recipient's side was warned before, naming when the copy would go.
    recipient_events = await spdi.statuses()
    (warning,) = recipient_events
    assert warning.state is DeliveryState.EXPIRING
    assert (warning.message_id, warning.sender, warning.recipient) == (mid, SENDER, SPDI)
    assert warning.expires_at is not None
    assert warning.at <= warning.expires_at <= expired.at

    # Gone from NATS, as seen by another connection.
    assert (await admin.js.stream_info(inbox_stream(SPDI))).state.messages == 0

    kinds = [
        (e.kind, e.recipient) for e in await audit_events(nats_env, tmp_path / "audit.pub.json")
    ]
    warned = kinds.index((AuditKind.EXPIRY_WARNED, SPDI))
    assert kinds.index((AuditKind.ROUTED, SPDI)) < warned < kinds.index((AuditKind.EXPIRED, SPDI))


async def test_a_delivered_message_leaves_the_transport_and_never_expires(
    nats_env: NatsEnv, tmp_path: Path
) -> None:
    now = int(time.time())
    fed = federation(now)
    jobcenter = await Agency.connect(nats_env, SENDER)
    mid = new_message_id()
    data = seal_referral(
        fed, message_id=mid, recipients=[COUNSELLING], now=now, purpose="counselling"
    )
    await jobcenter.submit(data, mid)
    config = write_config(tmp_path, nats_env, fed, referral_ttl=3, extra=EXPIRY)
    counselling = await nats_env.connect(Identity.for_agency(COUNSELLING))
    admin = await nats_env.admin()
    sender_events: list[StatusEvent] = []
    async with make_broker(config, clock=time.time) as broker:
        # The recipient's adapter takes it, receipts it and acknowledges, in that order.
        sub = await bind_pull(
            counselling.js, inbox_stream(COUNSELLING), inbox_consumer(COUNSELLING)
        )
        async with asyncio.timeout(30):
            while not (msgs := await fetch(sub, 1, 1.0)):
                pass
        (msg,) = msgs
        seq = msg.metadata.sequence.stream
        header = verify(msg.data, fed.directory, now=int(time.time()), limits=DEFAULT_LIMITS).header
        await send_receipt(
            header,
            Delivered(),
            keyring=fed.keyring(COUNSELLING),
            directory=fed.directory,
            js=counselling.js,
            now=int(time.time()),
            limits=DEFAULT_LIMITS,
            wait=5,
        )
        await msg.ack()
        await gone(admin.js, COUNSELLING, seq)
        await collect(jobcenter, sender_events, lambda: broker.statistics().routed == 2)
        # Outlive the copy's limit with the expiry check running: no warning, no expiry.
        await asyncio.sleep(max(0.0, now + 4 - time.time()))
        await broker._expiry.check()  # type: ignore[union-attr]
    sender_events += await jobcenter.statuses()
    assert all(e.state is not DeliveryState.EXPIRED for e in sender_events)
    counselling_events = await (await Agency.connect(nats_env, COUNSELLING)).statuses()
    assert all(e.state is not DeliveryState.EXPIRING for e in counselling_events)
    kinds = {
        (e.kind, e.message_id, e.recipient)
        for e in await audit_events(nats_env, tmp_path / "audit.pub.json")
    }
    assert (AuditKind.DELIVERED, mid, COUNSELLING) in kinds
    assert (AuditKind.RECEIPTED, mid, COUNSELLING) in kinds
    assert not any(k[0] in (AuditKind.EXPIRED, AuditKind.EXPIRY_WARNED) for k in kinds)
    # The note is closed, and what is left of it goes soon: closed notes do not pile up in the
    # shared stream, where they would stop all routing once it is full.
    marker = await admin.js.get_msg(
        PENDING_STREAM, subject=pending_subject(SENDER, mid, COUNSELLING), direct=True
    )
    assert marker.data == b"{}"
    assert marker.headers is not None
    assert marker.headers["Nats-TTL"] == str(PENDING_CLOSED_TTL)


def test_a_stored_expired_event_is_the_recipients_state_and_shown_once() -> None:
    from bridge.adapters.store import Event, MessageRecord
    from bridge.adapters.timeline import message_status

    now = int(time.time())
    record = MessageRecord(
        message_id=new_message_id(),
        type="referral",
        recipients=[COUNSELLING, SPDI],
        created_at=now - 100,
        expires_at=now - 10,
        events=[
            Event(state="accepted", at=now - 100),
            Event(state="routed", at=now - 99, recipient=COUNSELLING),
            Event(state="routed", at=now - 99, recipient=SPDI),
            Event(state="expired", at=now - 50, recipient=SPDI, reason=EXPIRED_REASON),
        ],
    )
    status = message_status(record, now)
    states = {r.agency: (r.state, r.reason) for r in status.recipients}
    assert states[SPDI] == (DeliveryState.EXPIRED, EXPIRED_REASON)  # stored, with its reason
    assert states[COUNSELLING] == (DeliveryState.EXPIRED, None)  # derived: no report yet
    expired = [(e.recipient, e.reason) for e in status.events if e.state == "expired"]
    assert sorted(expired, key=str) == sorted(
        [(SPDI, EXPIRED_REASON), (COUNSELLING, None)], key=str
    )


async def test_a_note_from_the_shared_inbox_counts_its_copy_as_gone(nats_env: NatsEnv) -> None:
    """Notes written while all recipients shared BRIDGE_INBOX name no stream. That stream is
    retired only once empty, so their copy is gone, even if the recipient's own stream holds
    another message at the same sequence: no warning for it, the note is closed. A note naming
    the stream, for the very same sequence, is warned (the twin that shows the check looks)."""
    broker = await nats_env.connect(Identity.broker())
    recorded: list[object] = []

    async def record(items: list[tuple[str, object]]) -> None:
        recorded.extend(items)

    watch = ExpiryWatch(
        broker.js,
        record,  # type: ignore[arg-type]
        check_seconds=60,
        warn_fraction=0.5,
        timeout=5,
        clock=time.time,
    )
    now = int(time.time())
    ack = await publish_durable(
        broker.js, inbox_subject(SPDI), b"another message", msg_id="other", ttl=3600
    )
    old, new = new_message_id(), new_message_id()
    fields = {
        "sender": SENDER,
        "recipient": SPDI,
        "message_type": "referral",
        "consent": "c" * 34,
        "seq": ack.seq,
        "routed_at": now - 100,
        "expires_at": now + 3600,
        "warn_at": now - 10,  # past its warning point
    }
    await publish_durable(
        broker.js,
        pending_subject(SENDER, old, SPDI),
        msgspec.json.encode({**fields, "message_id": old}),  # as written before: no stream
        msg_id="legacy-note",
        ttl=7200,
        expected_stream=PENDING_STREAM,
    )
    await watch.put(
        PendingNote(**{**fields, "message_id": new, "stream": inbox_stream(SPDI)})  # type: ignore[arg-type]
    )
    await watch.check()

    assert watch.warned == 1
    assert watch.expired == 0
    warned = {note.message_id for note in await _open_notes(nats_env) if note.state == "warned"}
    assert warned == {new}
    assert old not in {note.message_id for note in await _open_notes(nats_env)}  # closed


async def _open_notes(env: NatsEnv) -> list[PendingNote]:
    admin = await env.admin()
    out = []
    for message_id_subject in await _pending_subjects(admin):
        msg = await admin.js.get_msg(PENDING_STREAM, subject=message_id_subject, direct=True)
        if msg.data not in (None, b"", b"{}"):
            out.append(msgspec.json.decode(msg.data, type=PendingNote))
    return out


async def _pending_subjects(admin: object) -> list[str]:
    info = await admin.js.stream_info(PENDING_STREAM, subjects_filter=">")  # type: ignore[attr-defined]
    return sorted(info.state.subjects or {})
