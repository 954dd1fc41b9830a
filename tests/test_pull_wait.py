"""The pull inbox's wait limit (`pull_wait` in the signed policy) against a real nats-server.

The adapter's clock is injected and moved past the limit, so no test waits for it; the inbox's
ack wait is short so that the pull inbox's rounds (a third of it) come often. What left the
transport is checked with a separate (admin) connection.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import nats.js.errors
from adapter_helpers import (
    JOBCENTER,
    SUCHT,
    agency_seed,
    eventually,
    fed,
    keyring,
    last_submitted,
    make_agency,
    put_in_inbox,
    seal_to,
    submitted,
)
from envelope_helpers import RECIPIENTS, SENDER, federation, seal_referral
from policy_helpers import POLICY, signed_policy
from test_adapter_inbound import consumer_settled
from test_adapter_status import Sender, publish_status, receipt_envelope, sender
from test_broker import Agency as BrokerAgency
from test_broker import make_broker, write_config
from test_expiry import audit_events, collect

from bridge.adapters.receipts import send_receipt
from bridge.adapters.service import Adapter
from bridge.adapters.store import PullRecord, pull_deadline
from bridge.audit import AuditKind
from bridge.crypto import DEFAULT_LIMITS, open_envelope, verify
from bridge.ids import new_message_id
from bridge.nats.provision import ProvisionSettings
from bridge.nats.retention import check_retention
from bridge.nats.subjects import (
    inbox_consumer,
    inbox_stream,
    kv_bucket,
    status_consumer,
    status_stream,
)
from bridge.wire import (
    PULL_EXPIRED_REASON,
    DeliveryState,
    Receipt,
    Rejected,
    StatusEvent,
    decode_body,
)

__all__ = ["sender"]  # a fixture, shared with test_adapter_status

HOUR = 3600
PULL_WAIT = HOUR  # the referral's pull_wait in the policy these tests sign
POLICY_1H = POLICY.replace('pull_wait = "7d"        #', 'pull_wait = "1h"        #', 1)
assert POLICY_1H != POLICY


class Clock:
    """The adapter's clock, moved on by the test."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def pull_agency(tmp_path: Path, env: Any) -> Any:
    agency = make_agency(tmp_path, env.url, agency_seed(env, SUCHT), SUCHT)
    (tmp_path / SUCHT / "policy.bin").write_bytes(signed_policy(fed(), POLICY_1H)[0])
    return agency


async def pull_record(admin: Any, message_id: str, sender: str = JOBCENTER) -> PullRecord | None:
    kv = await admin.js.key_value(kv_bucket(SUCHT))
    try:
        entry = await kv.get(f"pul.{message_id}.{sender}")
    except nats.js.errors.KeyNotFoundError:
        return None
    return msgspec.json.decode(entry.value, type=PullRecord)


async def expired_receipt(admin: Any, message_id: str, clock: Clock, count: int = 1) -> bool:
    """Whether the `count`-th receipt the adapter submitted says `message_id` expired."""
    if await submitted(admin, SUCHT) < count:
        return False
    msg = await last_submitted(admin, SUCHT)
    opened = open_envelope(msg.data, keyring(JOBCENTER), fed().directory, now=int(clock()))
    header, receipt = opened.header, decode_body("receipt", opened.plaintext)
    assert isinstance(receipt, Receipt)
    assert header.reply_to == message_id
    assert receipt.disposition == Rejected(reason=PULL_EXPIRED_REASON)
    return True


async def test_an_item_waiting_past_its_limit_is_removed_and_the_sender_told(
    tmp_path: Path, nats_env: Any
) -> None:
    await nats_env.provision(settings=ProvisionSettings(ack_wait=1.0))
    agency = pull_agency(tmp_path, nats_env)
    admin = await nats_env.admin()
    kept, late = new_message_id(), new_message_id()
    clock = Clock()
    async with Adapter(agency.config, clock=clock) as adapter:
        inbox = adapter.inbox
        assert inbox is not None
        for message_id in (kept, late):
            await put_in_inbox(admin, SUCHT, seal_to(SUCHT, message_id=message_id), message_id)

        async def both_held() -> bool:
            return len(inbox.list()) == 2

        await eventually(both_held, what="both messages in the pull inbox")
        record = await pull_record(admin, late)
        assert record is not None
        assert record.until == record.offered_at + PULL_WAIT
        assert record.closed_at is None
        assert await inbox.ack(kept)  # the local system takes one in time

        clock.offset = PULL_WAIT + 60  # the other waits on, past its limit
        assert inbox.get(late) is None  # never handed out once past it
        assert not inbox.list()
        await eventually(lambda: expired_receipt(admin, late, clock, 2), what="the expiry receipt")
        # Gone from the transport (seen by another connection), the record closed.
        await eventually(lambda: consumer_settled(admin), what="the copy acknowledged")
        assert (await admin.js.stream_info(inbox_stream(SUCHT))).state.messages == 0
        assert inbox.statistics()["expired"] == 1
        assert not await inbox.ack(late)
        closed = await pull_record(admin, late)
        assert closed is not None
        assert closed.closed_at is not None
        taken = await pull_record(admin, kept)
        assert taken is not None
        assert taken.closed_at is not None
    assert await submitted(admin, SUCHT) == 2  # kept's delivered receipt, late's expiry


async def test_a_restart_does_not_extend_the_wait(tmp_path: Path, nats_env: Any) -> None:
    await nats_env.provision(settings=ProvisionSettings(ack_wait=1.0))
    agency = pull_agency(tmp_path, nats_env)
    admin = await nats_env.admin()
    message_id = new_message_id()
    async with Adapter(agency.config) as adapter:
        await put_in_inbox(admin, SUCHT, seal_to(SUCHT, message_id=message_id), message_id)
        inbox = adapter.inbox
        assert inbox is not None

        async def held() -> bool:
            return bool(inbox.list())

        await eventually(held, what="the message in the pull inbox")
    first = await pull_record(admin, message_id)
    assert first is not None

    # Started again after the limit: the redelivered message finds its first record.
    clock = Clock()
    clock.offset = PULL_WAIT + 60
    async with Adapter(agency.config, clock=clock) as adapter:
        await eventually(
            lambda: expired_receipt(admin, message_id, clock), what="the expiry receipt"
        )
        assert adapter.inbox is not None
        assert not adapter.inbox.list()

        # The receipt goes first (the sender learns why), the record is closed after it.
        async def closed() -> Any:
            record = await pull_record(admin, message_id)
            return record if record is not None and record.closed_at is not None else None

        after = await eventually(closed, what="the pull record closed")
    assert (after.offered_at, after.until) == (first.offered_at, first.until)


async def test_the_broker_reports_a_pull_expiry_to_the_sender_as_expired(
    nats_env: Any, tmp_path: Path
) -> None:
    """The recipient's expiry receipt becomes the sender's stored `expired` event, with the
    reason, and an `expired` record in the audit trail (as for a copy the inbox TTL removed)."""
    now = int(time.time())
    federation_ = federation(now)
    counselling = RECIPIENTS[0]
    jobcenter = await BrokerAgency.connect(nats_env, SENDER)
    recipient = await BrokerAgency.connect(nats_env, counselling)
    mid = new_message_id()
    envelope = seal_referral(
        federation_, message_id=mid, recipients=[counselling], now=now, purpose="counselling"
    )
    await jobcenter.submit(envelope, mid)
    config = write_config(tmp_path, nats_env, federation_)
    events: list[StatusEvent] = []
    async with make_broker(config, clock=time.time):
        await collect(jobcenter, events, lambda: any(e.state == "routed" for e in events))
        header = verify(envelope, federation_.directory, now=now, limits=DEFAULT_LIMITS).header
        await send_receipt(
            header,
            Rejected(reason=PULL_EXPIRED_REASON),
            keyring=federation_.keyring(counselling),
            directory=federation_.directory,
            js=recipient.client.js,
            now=now,
            limits=DEFAULT_LIMITS,
            wait=10,
        )
        await collect(jobcenter, events, lambda: any(e.state == "expired" for e in events))
    (expired,) = [e for e in events if e.state is DeliveryState.EXPIRED]
    assert (expired.message_id, expired.recipient, expired.reason) == (
        mid,
        counselling,
        PULL_EXPIRED_REASON,
    )
    records = await audit_events(nats_env, tmp_path / "audit.pub.json")
    found = [
        (e.kind, e.reason)
        for e in records
        if e.message_id == mid and e.recipient == counselling  # type: ignore[attr-defined]
    ]
    assert (AuditKind.EXPIRED, PULL_EXPIRED_REASON) in found
    assert (AuditKind.REJECTED, PULL_EXPIRED_REASON) not in found


async def test_the_check_names_an_item_held_past_its_limit(nats_env: Any) -> None:
    """A pull record still open after its deadline (an adapter that failed to remove the item)
    is named by `bridge retention check`; one closed in time is not."""
    admin = await nats_env.admin()
    kv = await admin.js.key_value(kv_bucket(SUCHT))
    now = int(time.time())
    held, taken = new_message_id(), new_message_id()
    await kv.put(
        f"pul.{held}.{JOBCENTER}",
        msgspec.json.encode(PullRecord(offered_at=now, until=now + PULL_WAIT)),
    )
    await kv.put(
        f"pul.{taken}.{JOBCENTER}",
        msgspec.json.encode(PullRecord(offered_at=now, until=now + PULL_WAIT, closed_at=now)),
    )
    assert (await check_retention(admin.js, now=time.time, deadlines=pull_deadline)).healthy
    later = await check_retention(
        admin.js, now=lambda: time.time() + 2 * PULL_WAIT, deadlines=pull_deadline
    )
    bucket = kv_bucket(SUCHT)
    assert [(o.stream, o.subject, o.kind) for o in later.overdue] == [
        (f"KV_{bucket}", f"$KV.{bucket}.pul.{held}.{JOBCENTER}", "[types.*] pull_wait")
    ]
    assert later.overdue[0].limit <= PULL_WAIT


async def test_the_sender_sees_expired_with_the_reason(sender: Sender) -> None:
    """The expiry receipt and the broker's `expired` event fold into one timeline event."""
    message_id = await sender.send()
    receipt_id, envelope = receipt_envelope(message_id, Rejected(reason=PULL_EXPIRED_REASON))
    await put_in_inbox(sender.admin, JOBCENTER, envelope, receipt_id)
    await publish_status(
        sender.admin,
        message_id,
        state=DeliveryState.EXPIRED,
        recipient=SUCHT,
        reason=PULL_EXPIRED_REASON,
    )

    async def both_folded() -> bool:
        for stream, consumer in (
            (inbox_stream(JOBCENTER), inbox_consumer(JOBCENTER)),
            (status_stream(JOBCENTER), status_consumer(JOBCENTER)),
        ):
            info = await sender.admin.js.consumer_info(stream, consumer)
            if info.num_pending or info.num_ack_pending:
                return False
        return await sender.states(message_id) == {SUCHT: "expired"}

    await eventually(both_folded, what="the receipt and the event folded")
    timeline = await sender.timeline(message_id)
    expired = [e for e in timeline["events"] if e["state"] == "expired"]
    assert [(e["recipient"], e["reason"]) for e in expired] == [(SUCHT, PULL_EXPIRED_REASON)]
    assert timeline["recipients"] == [
        {"agency": SUCHT, "state": "expired", "reason": PULL_EXPIRED_REASON}
    ]
