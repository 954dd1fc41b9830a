"""Inbound delivery against a real nats-server and a real webhook receiver.

Envelopes are sealed with the test federation's keys and published straight into the
recipient's BRIDGE_INBOX_<id> as admin; receipts are read back from BRIDGE_SUBMIT_<id> and opened
with the original sender's keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from adapter_helpers import (
    JOBCENTER,
    SUCHT,
    Agency,
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
from aiohttp import web

from bridge.adapters.receipts import receipt_message_id
from bridge.adapters.service import Adapter
from bridge.config import DeliveryConfig
from bridge.crypto import open_envelope
from bridge.ids import new_message_id
from bridge.nats.provision import ProvisionSettings
from bridge.nats.subjects import HDR_MSG_ID, inbox_consumer, inbox_stream
from bridge.wire import Delivered, Receipt, Rejected, decode_body

SECRET = b"0123456789abcdef0123456789abcdef"


@dataclass
class Receiver:
    """A local system's webhook endpoint that checks signatures and fails on demand."""

    fail_first: int = 0
    delay: float = 0.0  # seconds before each answer: a slow local system
    calls: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        await asyncio.sleep(self.delay)
        t, v1 = (p.partition("=")[2] for p in request.headers["Bridge-Signature"].split(","))
        expected = hmac.new(SECRET, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        self.calls.append(
            {
                "valid": hmac.compare_digest(expected, v1),
                "message_id": request.headers["Bridge-Message-Id"],
                "payload": json.loads(body),
            }
        )
        if len(self.calls) <= self.fail_first:
            return web.Response(status=500)
        return web.Response(status=204)

    def for_message(self, message_id: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["message_id"] == message_id]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/hook", recv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    recv.url = f"http://{host}:{port}/hook"
    yield recv
    await runner.cleanup()


def webhook_agency(tmp_path: Path, env: Any, url: str, **delivery: Any) -> Agency:
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET + b"\n")
    options: dict[str, Any] = {
        "backoff_initial_seconds": 0.05,
        "backoff_max_seconds": 0.2,
        "max_attempts": 5,
    }
    options.update(delivery)
    return make_agency(
        tmp_path,
        env.url,
        agency_seed(env, SUCHT),
        SUCHT,
        delivery=DeliveryConfig(
            mode="webhook", webhook_url=url, webhook_secret_file=str(secret), **options
        ),
    )


def pull_agency(tmp_path: Path, env: Any) -> Agency:
    return make_agency(tmp_path, env.url, agency_seed(env, SUCHT), SUCHT)


async def consumer_settled(admin: Any, held: int = 0) -> bool:
    info = await admin.js.consumer_info(inbox_stream(SUCHT), inbox_consumer(SUCHT))
    return bool(info.num_pending == 0 and info.num_ack_pending == held)


def open_receipt(msg: Any) -> tuple[Any, Receipt]:
    opened = open_envelope(msg.data, keyring(JOBCENTER), fed().directory)
    body = decode_body("receipt", opened.plaintext)
    assert isinstance(body, Receipt)
    return opened.header, body


async def test_webhook_delivery_retries_then_acks_and_sends_a_receipt(
    tmp_path: Path, nats_env: Any, receiver: Receiver
) -> None:
    receiver.fail_first = 1
    agency = webhook_agency(tmp_path, nats_env, receiver.url)
    admin = await nats_env.admin()
    message_id = new_message_id()
    async with Adapter(agency.config):
        await put_in_inbox(admin, SUCHT, seal_to(SUCHT, message_id=message_id), message_id)
        await eventually(lambda: submitted(admin, SUCHT), what="the receipt")
        await eventually(lambda: consumer_settled(admin), what="the inbox message to be acked")

    calls = receiver.for_message(message_id)
    assert len(calls) == 2
    assert all(c["valid"] for c in calls)
    payload = calls[-1]["payload"]
    assert payload["message_id"] == message_id
    assert payload["type"] == "referral"
    assert payload["sender"] == JOBCENTER
    assert payload["body"]["type"] == "referral"
    assert set(payload) >= {"consent", "purpose", "categories", "issued_at", "expires_at"}

    msg = await last_submitted(admin, SUCHT)
    assert msg.headers[HDR_MSG_ID] == receipt_message_id(message_id, SUCHT)
    header, receipt = open_receipt(msg)
    assert header.type == "receipt"
    assert header.reply_to == message_id
    assert header.purpose == "delivery-confirmation"
    assert header.categories == ["delivery-metadata"]  # no personal data, so none declared
    assert receipt.in_reply_to == message_id
    assert isinstance(receipt.disposition, Delivered)


async def test_webhook_that_keeps_failing_gets_the_message_again_later(
    tmp_path: Path, nats_env: Any, receiver: Receiver
) -> None:
    receiver.fail_first = 3  # more than max_attempts: the adapter gives up once, NATS redelivers
    agency = webhook_agency(tmp_path, nats_env, receiver.url, max_attempts=2)
    admin = await nats_env.admin()
    message_id = new_message_id()
    async with Adapter(agency.config):
        await put_in_inbox(admin, SUCHT, seal_to(SUCHT, message_id=message_id), message_id)
        await eventually(lambda: submitted(admin, SUCHT), what="the receipt")
        await eventually(lambda: consumer_settled(admin), what="the inbox message to be acked")
    assert len(receiver.for_message(message_id)) == 4


async def test_message_is_kept_alive_while_the_webhook_retries(
    tmp_path: Path, nats_env: Any, receiver: Receiver
) -> None:
    """Retries spanning several ack waits do not make NATS redeliver the message to the
    other instance sharing the consumer."""
    await nats_env.provision(settings=ProvisionSettings(ack_wait=1.0))
    receiver.fail_first = 12  # about 2.5 s of retries at 0.2 s backoff
    agency = webhook_agency(tmp_path, nats_env, receiver.url, max_attempts=20)
    admin = await nats_env.admin()
    message_id = new_message_id()
    async with Adapter(agency.config), Adapter(agency.config):
        await put_in_inbox(admin, SUCHT, seal_to(SUCHT, message_id=message_id), message_id)
        await eventually(lambda: submitted(admin, SUCHT), what="the receipt")
        await eventually(lambda: consumer_settled(admin), what="the inbox message to be acked")
        info = await admin.js.consumer_info(inbox_stream(SUCHT), inbox_consumer(SUCHT))
    assert info.delivered.consumer_seq == 1  # delivered once: never redelivered
    assert len(receiver.for_message(message_id)) == 13


async def test_redelivered_message_is_not_delivered_twice(
    tmp_path: Path, nats_env: Any, receiver: Receiver
) -> None:
    agency = webhook_agency(tmp_path, nats_env, receiver.url)
    admin = await nats_env.admin()
    first, second = new_message_id(), new_message_id()
    envelope = seal_to(SUCHT, message_id=first)
    async with Adapter(agency.config):
        await put_in_inbox(admin, SUCHT, envelope, first)
        await eventually(lambda: submitted(admin, SUCHT), what="the first receipt")
        # The same envelope again (as after a crash before the ack), then another message.
        await put_in_inbox(admin, SUCHT, envelope, "redelivery-of-" + first)
        await put_in_inbox(admin, SUCHT, seal_to(SUCHT, message_id=second), second)

        async def second_receipted() -> bool:
            return await submitted(admin, SUCHT) == 2

        await eventually(second_receipted, what="the second receipt")
        await eventually(lambda: consumer_settled(admin), what="all inbox messages acked")
    assert len(receiver.for_message(first)) == 1
    assert len(receiver.for_message(second)) == 1


@dataclass
class PullClient:
    agency: Agency
    url: str
    http: aiohttp.ClientSession

    async def get(self, path: str, *scopes: str) -> tuple[int, Any]:
        auth = self.agency.auth(*(scopes or ("inbox:read",)))
        async with self.http.get(self.url + path, headers=auth) as r:
            return r.status, await r.json(content_type=None)

    async def ack(self, message_id: str, *scopes: str) -> int:
        auth = self.agency.auth(*(scopes or ("inbox:ack",)))
        async with self.http.post(f"{self.url}/v1/inbox/{message_id}/ack", headers=auth) as r:
            return r.status

    async def pending(self) -> list[str]:
        status, body = await self.get("/v1/inbox")
        assert status == 200
        return [item["message_id"] for item in body["items"]]


async def test_pull_inbox_list_get_ack(tmp_path: Path, nats_env: Any) -> None:
    agency = pull_agency(tmp_path, nats_env)
    admin = await nats_env.admin()
    ids = [new_message_id(), new_message_id()]
    async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
        client = PullClient(agency, adapter.url, http)
        for message_id in ids:
            await put_in_inbox(admin, SUCHT, seal_to(SUCHT, message_id=message_id), message_id)

        async def both_listed() -> bool:
            return sorted(await client.pending()) == sorted(ids)

        await eventually(both_listed, what="both messages in the inbox")
        status, listing = await client.get("/v1/inbox")
        assert all("body" not in item for item in listing["items"])

        status, item = await client.get(f"/v1/inbox/{ids[0]}")
        assert status == 200
        assert item["body"]["type"] == "referral"
        assert item["sender"] == JOBCENTER

        assert await client.ack(ids[0], "inbox:read") == 403
        assert await submitted(admin, SUCHT) == 0
        assert await client.ack(ids[0]) == 204
        assert await client.pending() == [ids[1]]
        assert await submitted(admin, SUCHT) == 1
        _, receipt = open_receipt(await last_submitted(admin, SUCHT))
        assert receipt.in_reply_to == ids[0]

        assert await client.ack(ids[0]) == 204  # recorded: a repeated ack is answered the same
        assert await submitted(admin, SUCHT) == 1
        assert (await client.get(f"/v1/inbox/{ids[0]}"))[0] == 404
        assert await consumer_settled(admin, held=1)


async def test_webhook_mode_has_no_inbox(tmp_path: Path, nats_env: Any, receiver: Receiver) -> None:
    agency = webhook_agency(tmp_path, nats_env, receiver.url)
    async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
        status, problem = await PullClient(agency, adapter.url, http).get("/v1/inbox")
    assert status == 404
    assert problem["code"] == "inbox.disabled"


async def test_corrupt_envelopes_are_terminated_and_the_next_is_delivered(
    tmp_path: Path, nats_env: Any
) -> None:
    agency = pull_agency(tmp_path, nats_env)
    admin = await nats_env.admin()
    tampered = bytearray(seal_to(SUCHT))
    tampered[-10] ^= 0x01  # breaks the signature: the sender is not known
    bad_body_id, good_id = new_message_id(), new_message_id()
    bad_body = seal_to(SUCHT, message_id=bad_body_id, plaintext=b'{"type": "referral"}')
    async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
        client = PullClient(agency, adapter.url, http)
        await put_in_inbox(admin, SUCHT, b"not an envelope at all", "garbage")
        await put_in_inbox(admin, SUCHT, bytes(tampered), "tampered")
        await put_in_inbox(admin, SUCHT, bad_body, bad_body_id)
        await put_in_inbox(admin, SUCHT, seal_to(SUCHT, message_id=good_id), good_id)

        async def good_listed() -> list[str]:
            return await client.pending()

        assert await eventually(good_listed, what="the good message") == [good_id]
        await eventually(lambda: consumer_settled(admin, held=1), what="the bad ones terminated")
        await eventually(lambda: submitted(admin, SUCHT), what="the rejection receipt")
    assert await submitted(admin, SUCHT) == 1  # only the verified one is answered
    header, receipt = open_receipt(await last_submitted(admin, SUCHT))
    assert header.reply_to == bad_body_id
    assert isinstance(receipt.disposition, Rejected)
    assert receipt.disposition.reason.startswith("body.")


async def test_held_pull_items_come_back_after_a_restart(tmp_path: Path, nats_env: Any) -> None:
    await nats_env.provision(settings=ProvisionSettings(ack_wait=2.0))
    agency = pull_agency(tmp_path, nats_env)
    admin = await nats_env.admin()
    message_id = new_message_id()
    async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
        client = PullClient(agency, adapter.url, http)
        await put_in_inbox(admin, SUCHT, seal_to(SUCHT, message_id=message_id), message_id)
        await eventually(client.pending, what="the message in the first adapter")
    async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
        client = PullClient(agency, adapter.url, http)
        assert await eventually(client.pending, what="the message again") == [message_id]
        assert await client.ack(message_id) == 204
    await eventually(lambda: consumer_settled(admin), what="the message acked")
    assert await submitted(admin, SUCHT) == 1


async def test_held_pull_items_are_kept_alive(tmp_path: Path, nats_env: Any) -> None:
    await nats_env.provision(settings=ProvisionSettings(ack_wait=1.0))
    agency = pull_agency(tmp_path, nats_env)
    admin = await nats_env.admin()
    message_id = new_message_id()
    async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
        client = PullClient(agency, adapter.url, http)
        await put_in_inbox(admin, SUCHT, seal_to(SUCHT, message_id=message_id), message_id)
        await eventually(client.pending, what="the message in the inbox")
        assert adapter.inbox is not None
        inbox = adapter.inbox
        start = inbox.statistics()["keepalive_rounds"]

        async def two_ack_waits() -> bool:
            # Rounds come every third of the ack wait: six of them span two ack waits.
            return inbox.statistics()["keepalive_rounds"] >= start + 6

        await eventually(two_ack_waits, what="keep-alive rounds")
        info = await admin.js.consumer_info(inbox_stream(SUCHT), inbox_consumer(SUCHT))
        assert info.delivered.consumer_seq == 1  # never redelivered while held
        assert await client.pending() == [message_id]


async def test_webhook_posts_in_inbox_order_while_recording_in_the_background(
    tmp_path: Path, nats_env: Any, receiver: Receiver
) -> None:
    """The next message is posted while the previous one is recorded, but the posts go out
    one at a time in inbox order, each once, and every message is receipted and acked."""
    agency = webhook_agency(tmp_path, nats_env, receiver.url)
    admin = await nats_env.admin()
    ids = [new_message_id() for _ in range(12)]
    for message_id in ids:  # all waiting before the adapter starts
        await put_in_inbox(admin, SUCHT, seal_to(SUCHT, message_id=message_id), message_id)
    async with Adapter(agency.config):

        async def all_receipted() -> bool:
            return await submitted(admin, SUCHT) == len(ids)

        await eventually(all_receipted, what="a receipt for every message")
        await eventually(lambda: consumer_settled(admin), what="every inbox message acked")
    assert [c["message_id"] for c in receiver.calls] == ids
    assert all(c["valid"] for c in receiver.calls)


async def test_a_batch_waiting_behind_a_slow_webhook_is_kept_alive(
    tmp_path: Path, nats_env: Any, receiver: Receiver
) -> None:
    """The pipeline fetches and opens a batch at once, then posts it one by one: the messages
    waiting their turn outlast the ack wait several times and are never redelivered."""
    await nats_env.provision(settings=ProvisionSettings(ack_wait=1.0))
    receiver.delay = 0.5
    agency = webhook_agency(tmp_path, nats_env, receiver.url)
    admin = await nats_env.admin()
    ids = [new_message_id() for _ in range(8)]  # the last waits about 4 s: four ack waits
    for message_id in ids:
        await put_in_inbox(admin, SUCHT, seal_to(SUCHT, message_id=message_id), message_id)
    async with Adapter(agency.config):

        async def all_receipted() -> bool:
            return await submitted(admin, SUCHT) == len(ids)

        await eventually(all_receipted, what="a receipt for every message")
        await eventually(lambda: consumer_settled(admin), what="every inbox message acked")
    assert [c["message_id"] for c in receiver.calls] == ids  # in order, each once
    info = await admin.js.consumer_info(inbox_stream(SUCHT), inbox_consumer(SUCHT))
    assert info.delivered.consumer_seq == len(ids)  # none delivered a second time
