"""What a stopping consumer holds goes back to JetStream at once (`hand_back`, `take_queued`).

The consumer's ack wait is 300 s in these tests, far beyond their own waits: a message another
consumer gets here, as a second delivery, can only have come back through the nak.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from bridge.nats.transport import bind_pull, fetch, hand_back, take_queued

STREAM = "HANDBACK"
CONSUMER = "c"


async def _setup(nats_env: Any) -> Any:
    admin = await nats_env.admin()
    await admin.js.add_stream(StreamConfig(name=STREAM, subjects=["handback.x"]))
    await admin.js.add_consumer(
        STREAM,
        ConsumerConfig(durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, ack_wait=300.0),
    )
    return admin


async def _until(what: str, check: Any, within: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {within:g}s: {what}")
        await asyncio.sleep(0.02)


async def test_a_fetch_cut_short_leaves_its_message_queued_and_it_is_handed_back(
    nats_env: Any,
) -> None:
    admin = await _setup(nats_env)
    stopping = await nats_env.admin()
    sub = await bind_pull(stopping.js, STREAM, CONSUMER)
    fetching = asyncio.create_task(fetch(sub, 8, 60.0))

    async def waiting() -> bool:
        info = await admin.js.consumer_info(STREAM, CONSUMER)
        return bool(info.num_waiting)

    await _until("the fetch's pull request on the server", waiting)
    fetching.cancel()  # as a stop does; the pull request lives on until it expires
    await asyncio.wait({fetching})
    await admin.js.publish("handback.x", b"held")

    async def delivered() -> bool:
        info = await admin.js.consumer_info(STREAM, CONSUMER)
        return info.num_ack_pending == 1

    await _until("the message delivered to the stopped fetch's request", delivered)
    await stopping.nc.flush()  # whatever the server sent before its PONG is in the queue now
    held = await take_queued(sub)  # the message, without the request's status messages
    assert [m.data for m in held] == [b"held"]
    assert await hand_back(held) == 1
    assert await hand_back(held) == 0  # naked once: nothing left to hand back
    await stopping.nc.flush()

    other = await bind_pull(admin.js, STREAM, CONSUMER)
    got = await fetch(other, 1, 30.0)
    assert [(m.data, m.metadata.num_delivered) for m in got] == [(b"held", 2)]
    await got[0].ack()


async def test_only_unsettled_messages_are_handed_back(nats_env: Any) -> None:
    admin = await _setup(nats_env)
    for n in range(3):
        await admin.js.publish("handback.x", str(n).encode())
    sub = await bind_pull(admin.js, STREAM, CONSUMER)
    msgs = await fetch(sub, 3, 10.0)
    assert len(msgs) == 3
    await msgs[0].ack()
    await msgs[1].term()
    assert await hand_back(msgs) == 1
    again = await fetch(sub, 3, 30.0)
    assert [(m.data, m.metadata.num_delivered) for m in again] == [(b"2", 2)]
    await again[0].ack()
