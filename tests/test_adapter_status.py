"""A sent message's timeline: broker status events and receipts folded into the KV record.

Status events are published into BRIDGE_STATUS as admin (standing in for the broker); receipts
are sealed by the recipient's keys and put in the sender's inbox. The last test runs two
adapters against each other with the test as the broker, moving envelopes as admin.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from adapter_helpers import (
    JOBCENTER,
    NOW,
    SPDI,
    SUCHT,
    Agency,
    agency_seed,
    eventually,
    last_submitted,
    make_agency,
    put_in_inbox,
    referral_request,
    seal_to,
)

from bridge.adapters.service import Adapter
from bridge.adapters.store import Event, MessageRecord, ReceiptFold, Store
from bridge.adapters.timeline import message_status
from bridge.ids import new_message_id
from bridge.nats.identities import Identity
from bridge.nats.subjects import HDR_MSG_ID, status_subject
from bridge.nats.transport import publish_durable
from bridge.wire import (
    Component,
    Delivered,
    DeliveryState,
    Receipt,
    Rejected,
    StatusEvent,
    encode_body,
    encode_status_event,
)


@dataclass
class Sender:
    agency: Agency
    adapter: Adapter
    http: aiohttp.ClientSession
    admin: Any

    async def send(self, recipients: tuple[str, ...] = (SUCHT,)) -> str:
        async with self.http.post(
            f"{self.adapter.url}/v1/messages",
            data=json.dumps(referral_request(recipients)).encode(),
            headers={"Content-Type": "application/json", **self.agency.auth()},
        ) as r:
            assert r.status == 202
            message_id: str = (await r.json())["message_id"]
            return message_id

    async def timeline(self, message_id: str) -> dict[str, Any]:
        async with self.http.get(
            f"{self.adapter.url}/v1/messages/{message_id}",
            headers=self.agency.auth("messages:read"),
        ) as r:
            assert r.status == 200
            body: dict[str, Any] = await r.json()
            return body

    async def states(self, message_id: str) -> dict[str, str | None]:
        timeline = await self.timeline(message_id)
        return {r["agency"]: r.get("state") for r in timeline["recipients"]}


@pytest.fixture
async def sender(tmp_path: Path, nats_env: Any) -> AsyncIterator[Sender]:
    agency = make_agency(tmp_path, nats_env.url, agency_seed(nats_env, JOBCENTER), JOBCENTER)
    admin = await nats_env.admin()
    async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
        yield Sender(agency, adapter, http, admin)


async def publish_status(admin: Any, message_id: str, copy: int = 0, **fields: Any) -> None:
    event = StatusEvent(
        message_id=message_id,
        sender=JOBCENTER,
        at=datetime.datetime.now(datetime.UTC),
        component=Component.BROKER,
        **fields,
    )
    await publish_durable(
        admin.js,
        status_subject(JOBCENTER, message_id),
        encode_status_event(event),
        msg_id=f"status-{message_id}-{fields.get('recipient')}-{fields['state']}-{copy}",
    )


async def test_routed_and_rejected_events_are_folded(sender: Sender) -> None:
    message_id = await sender.send((SUCHT, SPDI))
    await publish_status(sender.admin, message_id, state=DeliveryState.ROUTED, recipient=SUCHT)
    await publish_status(
        sender.admin,
        message_id,
        state=DeliveryState.REJECTED,
        recipient=SPDI,
        reason="consent.not_covered",
    )

    async def folded() -> bool:
        return await sender.states(message_id) == {SUCHT: "routed", SPDI: "rejected"}

    await eventually(folded, what="both events folded")
    timeline = await sender.timeline(message_id)
    rejected = [e for e in timeline["events"] if e["state"] == "rejected"]
    assert rejected == [
        {
            "state": "rejected",
            "at": rejected[0]["at"],
            "recipient": SPDI,
            "reason": "consent.not_covered",
        }
    ]
    # A repeated event (a redelivery, or a second broker) does not repeat in the timeline.
    await publish_status(
        sender.admin, message_id, copy=1, state=DeliveryState.ROUTED, recipient=SUCHT
    )
    await publish_status(sender.admin, message_id, state=DeliveryState.DELIVERED, recipient=SUCHT)

    async def delivered() -> bool:
        return (await sender.states(message_id))[SUCHT] == "delivered"

    await eventually(delivered, what="the event after the repeated one")
    states = [e["state"] for e in (await sender.timeline(message_id))["events"]]
    assert states.count("routed") == 1


def receipt_envelope(original: str, disposition: Delivered | Rejected) -> tuple[str, bytes]:
    receipt_id = new_message_id()
    body = Receipt(
        in_reply_to=original,
        received_at=datetime.datetime.now(datetime.UTC),
        disposition=disposition,
    )
    envelope = seal_to(
        JOBCENTER,
        sender=SUCHT,
        plaintext=encode_body(body),
        message_type="receipt",
        message_id=receipt_id,
        reply_to=original,
        purpose="delivery-confirmation",
    )
    return receipt_id, envelope


@pytest.mark.parametrize("rejected", [False, True], ids=["delivered", "rejected"])
async def test_receipts_are_folded(sender: Sender, rejected: bool) -> None:
    message_id = await sender.send()
    disposition = Rejected(reason="body.invalid") if rejected else Delivered()
    receipt_id, envelope = receipt_envelope(message_id, disposition)
    await put_in_inbox(sender.admin, JOBCENTER, envelope, receipt_id)
    want = "rejected" if rejected else "receipted"

    async def folded() -> bool:
        return (await sender.states(message_id))[SUCHT] == want

    await eventually(folded, what=f"the receipt folded as {want}")
    states = [e["state"] for e in (await sender.timeline(message_id))["events"]]
    if rejected:
        assert states == ["accepted", "rejected"]
    else:
        assert states == ["accepted", "delivered", "receipted"]


def test_expired_is_derived_for_recipients_not_reached() -> None:
    record = MessageRecord(
        message_id=new_message_id(),
        type="referral",
        recipients=[SUCHT, SPDI],
        created_at=1000,
        expires_at=2000,
        events=[
            Event(state="accepted", at=1001),
            Event(state="routed", at=1002, recipient=SUCHT),
            Event(state="routed", at=1002, recipient=SPDI),
            Event(state="delivered", at=1500, recipient=SUCHT),
        ],
    )
    before = message_status(record, now=1999)
    assert [(r.agency, r.state) for r in before.recipients] == [
        (SUCHT, DeliveryState.DELIVERED),
        (SPDI, DeliveryState.ROUTED),
    ]
    after = message_status(record, now=2000)
    assert [(r.agency, r.state) for r in after.recipients] == [
        (SUCHT, DeliveryState.DELIVERED),
        (SPDI, DeliveryState.EXPIRED),
    ]
    assert after.events[-1].state is DeliveryState.EXPIRED
    assert after.events[-1].recipient == SPDI


async def test_two_adapters_end_to_end(tmp_path: Path, nats_env: Any, sender: Sender) -> None:
    """jobcenter submits, the test routes like a broker, counselling pulls and acks, the
    receipt is routed back and the jobcenter's timeline ends in `receipted`."""
    counselling = make_agency(tmp_path, nats_env.url, agency_seed(nats_env, SUCHT), SUCHT)
    admin = sender.admin
    async with Adapter(counselling.config) as recipient:
        message_id = await sender.send()
        submission = await last_submitted(admin, JOBCENTER)
        await put_in_inbox(admin, SUCHT, submission.data, message_id)

        inbox = f"{recipient.url}/v1/inbox"

        async def listed() -> bool:
            async with sender.http.get(inbox, headers=counselling.auth("inbox:read")) as r:
                return [i["message_id"] for i in (await r.json())["items"]] == [message_id]

        await eventually(listed, what="the referral in the counselling inbox")
        async with sender.http.post(
            f"{inbox}/{message_id}/ack", headers=counselling.auth("inbox:ack")
        ) as r:
            assert r.status == 204
        receipt = await last_submitted(admin, SUCHT)
        await put_in_inbox(admin, JOBCENTER, receipt.data, receipt.headers[HDR_MSG_ID])

        async def receipted() -> bool:
            return (await sender.states(message_id))[SUCHT] == "receipted"

        await eventually(receipted, what="the receipt folded")


async def test_concurrent_folds_from_two_instances_lose_nothing(nats_env: Any) -> None:
    """Compare-and-set with retry: two adapter instances folding at once keep every event."""
    stores = []
    for _ in range(2):
        client = await nats_env.connect(Identity.for_agency(JOBCENTER))
        stores.append(await Store.open(client.js, JOBCENTER, 5.0))
    message_id = new_message_id()
    recipients = [f"agency-{i}" for i in range(8)]
    record = MessageRecord(
        message_id=message_id,
        type="referral",
        recipients=recipients,
        created_at=NOW,
        expires_at=NOW + 3600,
    )
    await stores[0].create_message(record, NOW)
    await asyncio.gather(
        *(
            stores[i % 2].add_events(
                message_id, [Event(state="routed", at=NOW, recipient=agency)], NOW
            )
            for i, agency in enumerate(recipients)
        )
    )
    stored = await stores[1].get_message(message_id)
    assert stored is not None
    assert sorted(e.recipient or "" for e in stored.events) == recipients
    assert (
        await stores[0].add_events(new_message_id(), [Event(state="routed", at=NOW)], NOW) is False
    )


async def test_a_known_revision_skips_the_read_and_a_stale_one_loses_nothing(
    nats_env: Any,
) -> None:
    """`add_events(known=...)` writes on the caller's revision; if another event was folded
    in meanwhile, the write is refused and the fold retries from the stored record."""
    client = await nats_env.connect(Identity.for_agency(JOBCENTER))
    store = await Store.open(client.js, JOBCENTER, 5.0)
    record = MessageRecord(
        message_id=new_message_id(),
        type="referral",
        recipients=["agency-a", "agency-b"],
        created_at=NOW,
        expires_at=NOW + 3600,
    )
    revision = await store.create_message(record, NOW)
    assert revision is not None
    assert await store.create_message(record, NOW) is None  # exists: keeps the first record

    routed = Event(state="routed", at=NOW, recipient="agency-a")
    assert await store.add_events(record.message_id, [routed], NOW)  # now the revision is stale
    accepted = Event(state="accepted", at=NOW)
    assert await store.add_events(record.message_id, [accepted], NOW, known=(record, revision))
    stored = await store.get_message(record.message_id)
    assert stored is not None
    assert [e.state for e in stored.events] == ["routed", "accepted"]


async def test_a_receipt_folded_on_a_stale_revision_is_checked_again(nats_env: Any) -> None:
    """`add_receipt(known=...)` with a revision that moved on: the fold is re-checked on the
    stored record, so a receipt that contradicts one folded meanwhile is still refused."""
    client = await nats_env.connect(Identity.for_agency(JOBCENTER))
    store = await Store.open(client.js, JOBCENTER, 5.0)
    record = MessageRecord(
        message_id=new_message_id(),
        type="referral",
        recipients=["agency-a"],
        created_at=NOW,
        expires_at=NOW + 3600,
    )
    await store.create_message(record, NOW)
    stale = await store.get_message_revision(record.message_id)
    assert stale is not None
    delivered = [
        Event(state="delivered", at=NOW, recipient="agency-a"),
        Event(state="receipted", at=NOW, recipient="agency-a"),
    ]
    rejected = [Event(state="rejected", at=NOW, recipient="agency-a", reason="body.invalid")]

    folded = await store.add_receipt(record.message_id, "agency-a", delivered, NOW, known=stale)
    assert folded is ReceiptFold.FOLDED
    again = await store.add_receipt(record.message_id, "agency-a", rejected, NOW, known=stale)
    assert again is ReceiptFold.CONTRADICTS
    stored = await store.get_message(record.message_id)
    assert stored is not None
    assert [e.state for e in stored.events] == ["delivered", "receipted"]
