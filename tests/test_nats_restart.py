"""Regression tests for the two ways a nats-server restart broke delivery (issue 7).

1. A webhook took a message (2xx), then NATS went away before the adapter had recorded it and
   sent the receipt. The failure left the delivery's task group as an `ExceptionGroup` that the
   inbound loop did not catch, and the adapter silently stopped receiving while serving HTTP.
2. A pull item whose acknowledgement was answered 204 was offered again, because JetStream's
   redelivery of the still-held message replaced the held item while the ack was recorded.

Real nats-server, real HTTP; the server is really stopped and started again.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from adapter_helpers import (
    JOBCENTER,
    SUCHT,
    agency_seed,
    eventually,
    make_agency,
    put_in_inbox,
    seal_to,
    submitted,
)
from aiohttp import web
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from bridge.adapters.api import InboxItem
from bridge.adapters.delivery import Incoming
from bridge.adapters.pull import PullInbox
from bridge.adapters.service import Adapter
from bridge.adapters.webhook import ATTEMPT_HEADER, MESSAGE_ID_HEADER, REPEAT_HEADER
from bridge.config import DeliveryConfig
from bridge.crypto import verify
from bridge.ids import new_message_id
from bridge.nats.subjects import inbox_consumer, inbox_stream
from bridge.wire import MessageType
from bridge.wire.examples import BODIES

SECRET = b"0123456789abcdef0123456789abcdef"


@dataclass
class StoppingReceiver:
    """A webhook endpoint whose first call stops nats-server before answering 204."""

    env: Any
    calls: list[dict[str, str | None]] = field(default_factory=list)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.calls.append(
            {
                "id": request.headers.get(MESSAGE_ID_HEADER),
                "attempt": request.headers.get(ATTEMPT_HEADER),
                "repeat": request.headers.get(REPEAT_HEADER),
            }
        )
        if not self.stopped.is_set():
            await self.env.server.stop()  # the local system has it; NATS is gone
            self.stopped.set()
        return web.Response(status=204)

    def for_message(self, message_id: str) -> list[dict[str, str | None]]:
        return [c for c in self.calls if c["id"] == message_id]


@pytest.fixture
async def stopping_receiver(nats_env: Any) -> AsyncIterator[StoppingReceiver]:
    recv = StoppingReceiver(nats_env)
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


async def test_nats_lost_after_a_webhook_2xx_does_not_stop_the_adapter(
    tmp_path: Path, nats_env: Any, stopping_receiver: StoppingReceiver
) -> None:
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET)
    agency = make_agency(
        tmp_path,
        nats_env.url,
        agency_seed(nats_env, SUCHT),
        SUCHT,
        delivery=DeliveryConfig(
            mode="webhook",
            webhook_url=stopping_receiver.url,
            webhook_secret_file=str(secret),
            backoff_initial_seconds=0.05,
            backoff_max_seconds=0.5,
            max_attempts=5,
        ),
    )
    admin = await nats_env.admin()
    first, second = new_message_id(), new_message_id()
    async with Adapter(agency.config) as adapter:
        await put_in_inbox(admin, SUCHT, seal_to(SUCHT, message_id=first), first)
        await asyncio.wait_for(stopping_receiver.stopped.wait(), 30)
        await nats_env.server.start()
        await eventually(lambda: _connected(admin), within=30, what="admin reconnected")
        await put_in_inbox(admin, SUCHT, seal_to(SUCHT, message_id=second), second)

        async def both_receipted() -> bool:
            return await submitted(admin, SUCHT) == 2

        await eventually(
            lambda: _delivered(stopping_receiver, second), within=90, what="the second message"
        )
        await eventually(both_receipted, within=90, what="receipts for both messages")
        assert adapter.ready()

    calls = stopping_receiver.for_message(first)
    assert calls[0]["attempt"] == "1"
    assert calls[0]["repeat"] is None
    assert all(c["repeat"] == "true" for c in calls[1:])  # any second call says so
    assert len(stopping_receiver.for_message(second)) == 1


async def _connected(client: Any) -> bool:
    return bool(client.nc.is_connected)


async def _delivered(receiver: StoppingReceiver, message_id: str) -> bool:
    return bool(receiver.for_message(message_id))


# -- defect 2: a pull item acked with 204 is never offered again --------------------------------


@dataclass
class Deliveries:
    """Two deliveries by JetStream of one message, as after a redelivery."""

    first: Any
    again: Any
    sub: Any
    admin: Any

    async def acked(self) -> bool:
        info = await self.admin.js.consumer_info("RACE", "race")
        return bool(info.num_ack_pending == 0 and info.num_pending == 0)


async def _two_deliveries(nats_env: Any) -> Deliveries:
    admin = await nats_env.admin()
    await admin.js.add_stream(StreamConfig(name="RACE", subjects=["race.test"]))
    await admin.js.add_consumer(
        "RACE", ConsumerConfig(durable_name="race", ack_policy=AckPolicy.EXPLICIT, ack_wait=30)
    )
    await admin.js.publish("race.test", b"x")
    sub = await admin.js.pull_subscribe_bind("race", "RACE")
    [first] = await sub.fetch(1, timeout=5)
    await admin.nc.publish(first.reply, b"-NAK")  # not first.nak(): it stays ackable here
    [again] = await sub.fetch(1, timeout=5)
    assert again.metadata.num_delivered == 2
    return Deliveries(first, again, sub, admin)


def _incoming(msg: Any) -> Incoming:
    envelope = seal_to(SUCHT, message_id=new_message_id())
    from adapter_helpers import fed

    header = verify(envelope, fed().directory).header
    item = InboxItem(
        message_id=header.id,
        type="referral",
        sender=JOBCENTER,
        consent=header.consent,
        purpose=header.purpose,
        categories=list(header.categories),
        issued_at=datetime.datetime.fromtimestamp(header.iat, datetime.UTC),
        expires_at=datetime.datetime.fromtimestamp(header.exp, datetime.UTC),
        reply_to=None,
        body=BODIES[MessageType.REFERRAL],
    )
    return Incoming(item, header, msg)


async def test_redelivery_during_an_ack_does_not_bring_the_item_back(nats_env: Any) -> None:
    """The redelivered copy arrives while the ack is being recorded (the reported race)."""
    d = await _two_deliveries(nats_env)
    held = _incoming(d.first)
    inbox: PullInbox

    async def complete(incoming: Incoming) -> None:
        await inbox.offer(held.with_msg(d.again))  # JetStream redelivered it meanwhile
        await incoming.msg.ack()

    inbox = PullInbox(10, complete, keepalive_interval=60)
    await inbox.offer(held)
    assert await inbox.ack(held.message_id)
    assert inbox.list() == []
    assert inbox.get(held.message_id) is None
    await eventually(d.acked, what="the redelivered copy acknowledged too")


async def test_redelivery_offered_just_after_an_ack_is_not_listed(nats_env: Any) -> None:
    """The redelivered copy passed `was_delivered()` before the ack recorded it, and is
    offered only after the ack removed the item."""
    d = await _two_deliveries(nats_env)
    held = _incoming(d.first)

    async def complete(incoming: Incoming) -> None:
        await incoming.msg.ack()

    inbox = PullInbox(10, complete, keepalive_interval=60)
    await inbox.offer(held)
    assert await inbox.ack(held.message_id)
    await inbox.offer(held.with_msg(d.again))
    assert inbox.list() == []
    await eventually(d.acked, what="the late copy acknowledged")


async def test_acknowledging_twice_answers_204_both_times(tmp_path: Path, nats_env: Any) -> None:
    """An ack whose 204 was lost can be repeated: the local system learns it was recorded."""
    import aiohttp

    agency = make_agency(tmp_path, nats_env.url, agency_seed(nats_env, SUCHT), SUCHT)
    admin = await nats_env.admin()
    message_id = new_message_id()
    async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
        auth = agency.auth("inbox:read", "inbox:ack")

        async def listed() -> bool:
            async with http.get(f"{adapter.url}/v1/inbox", headers=auth) as r:
                return bool((await r.json())["items"])

        await put_in_inbox(admin, SUCHT, seal_to(SUCHT, message_id=message_id), message_id)
        await eventually(listed, what="the message in the inbox")
        for _ in range(2):
            async with http.post(f"{adapter.url}/v1/inbox/{message_id}/ack", headers=auth) as r:
                assert r.status == 204
        async with http.post(f"{adapter.url}/v1/inbox/{new_message_id()}/ack", headers=auth) as r:
            assert r.status == 404
        info = await admin.js.consumer_info(inbox_stream(SUCHT), inbox_consumer(SUCHT))
        assert info.num_ack_pending == 0


# -- staying up: answers while NATS is away ----------------------------------------------------


async def test_submissions_and_acks_get_503_with_retry_after_while_nats_is_away(
    tmp_path: Path, nats_env: Any
) -> None:
    import aiohttp
    from adapter_helpers import referral_request

    sender = make_agency(tmp_path, nats_env.url, agency_seed(nats_env, JOBCENTER), JOBCENTER)
    recipient = make_agency(tmp_path, nats_env.url, agency_seed(nats_env, SUCHT), SUCHT)
    admin = await nats_env.admin()
    message_id = new_message_id()
    async with (
        Adapter(sender.config) as out,
        Adapter(recipient.config) as inb,
        aiohttp.ClientSession() as http,
    ):
        send = sender.auth("messages:send")
        take = recipient.auth("inbox:read", "inbox:ack")

        async def listed() -> bool:
            async with http.get(f"{inb.url}/v1/inbox", headers=take) as r:
                return bool((await r.json())["items"])

        await put_in_inbox(admin, SUCHT, seal_to(SUCHT, message_id=message_id), message_id)
        await eventually(listed, what="the message in the inbox")

        await nats_env.server.stop()
        await eventually(lambda: _not_ready(out, inb), what="both adapters to notice")
        async with http.post(f"{out.url}/v1/messages", json=referral_request(), headers=send) as r:
            assert r.status == 503
            assert r.headers["Retry-After"].isdigit()
            assert (await r.json())["code"] == "transport.not_connected"
        async with http.post(f"{inb.url}/v1/inbox/{message_id}/ack", headers=take) as r:
            assert r.status == 503
            assert r.headers["Retry-After"].isdigit()
        assert await listed()  # not acknowledged: still offered

        await nats_env.server.start()
        await eventually(lambda: _ready(out, inb), within=60, what="both adapters back")
        async with http.post(f"{out.url}/v1/messages", json=referral_request(), headers=send) as r:
            assert r.status == 202
        async with http.post(f"{inb.url}/v1/inbox/{message_id}/ack", headers=take) as r:
            assert r.status == 204
        assert not await listed()


async def _not_ready(*adapters: Adapter) -> bool:
    return not any(a.ready() for a in adapters)


async def _ready(*adapters: Adapter) -> bool:
    return all(a.ready() for a in adapters)


async def test_a_message_posted_before_is_marked_even_if_nats_counts_a_first_delivery(
    tmp_path: Path, nats_env: Any, stopping_receiver: StoppingReceiver
) -> None:
    """After a nats-server crash, JetStream may deliver a message again with a delivery count
    of 1 (the earlier delivery was not yet written down): the adapter remembers its posts."""
    import aiohttp

    from bridge.adapters.webhook import WebhookSink

    stopping_receiver.stopped.set()  # a receiver that only records
    d = await _two_deliveries(nats_env)
    held = _incoming(d.first)  # delivery count 1
    recorded: list[str] = []

    async def complete(incoming: Incoming) -> None:
        recorded.append(incoming.message_id)

    config = DeliveryConfig(
        mode="webhook", webhook_url=stopping_receiver.url, webhook_secret_file="unused"
    )
    async with aiohttp.ClientSession() as session:
        sink = WebhookSink(
            config, [SECRET], session, complete, keepalive_interval=60, clock=time.time
        )
        await sink.offer(held)
        await sink.offer(held)  # the same delivery count: only the adapter knows
    calls = stopping_receiver.for_message(held.message_id)
    assert [c["repeat"] for c in calls] == [None, "true"]
    assert recorded == [held.message_id] * 2


async def test_a_post_recorded_before_marks_the_next_even_if_nats_counts_a_first_delivery(
    tmp_path: Path, nats_env: Any, stopping_receiver: StoppingReceiver
) -> None:
    """nats-server and the adapter both crashed after a post: the restarted adapter gets the
    message with a delivery count of 1, but the post was recorded in its bucket before it was
    made, so the new post says it may be a repeat. A message never posted goes out unmarked."""
    from bridge.nats.subjects import kv_key_prefix

    stopping_receiver.stopped.set()  # a receiver that only records
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET)
    agency = make_agency(
        tmp_path,
        nats_env.url,
        agency_seed(nats_env, SUCHT),
        SUCHT,
        delivery=DeliveryConfig(
            mode="webhook", webhook_url=stopping_receiver.url, webhook_secret_file=str(secret)
        ),
    )
    admin = await nats_env.admin()
    posted_before, fresh = new_message_id(), new_message_id()
    # What the crashed adapter had written before its post.
    key = f"{kv_key_prefix(SUCHT)}pst.{posted_before}.{JOBCENTER}"
    await admin.js.publish(key, b'{"at": 1}')
    async with Adapter(agency.config):
        for message_id in (posted_before, fresh):
            await put_in_inbox(admin, SUCHT, seal_to(SUCHT, message_id=message_id), message_id)

        async def both_posted() -> bool:
            return all(stopping_receiver.for_message(m) for m in (posted_before, fresh))

        await eventually(both_posted, what="both messages posted")
    assert [c["repeat"] for c in stopping_receiver.for_message(posted_before)] == ["true"]
    assert [c["repeat"] for c in stopping_receiver.for_message(fresh)] == [None]
