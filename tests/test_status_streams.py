"""Each agency's status events live in a stream of its own.

A status stream is a history with a size limit: when it is full, its oldest events go. While all
agencies shared one, whatever one agency's traffic made the broker report (a `routed` event per
message and recipient, a `rejected` one per refused submission) could fill it until it dropped
other agencies' events before their adapters had read them. Here the broker reports far more
about one agency than a status stream holds, and another agency's events all arrive.
"""

from __future__ import annotations

import uuid
from typing import Any

from bridge.nats.identities import Identity
from bridge.nats.provision import ProvisionSettings
from bridge.nats.subjects import status_consumer, status_stream, status_subject
from bridge.nats.transport import bind_pull, fetch, publish_durable

A = "jobcenter-unna"
FLOODER = "spdi-unna"
EVENT_SIZE = 16 * 1024
LIMIT = 8 * EVENT_SIZE  # a status stream's size limit, for this test


async def test_a_flood_of_events_about_one_agency_pushes_out_only_its_own(
    nats_env_unprovisioned: Any,
) -> None:
    env = nats_env_unprovisioned
    await env.provision(settings=ProvisionSettings(status_max_bytes=LIMIT))
    broker = await env.connect(Identity.broker())
    events = [str(uuid.uuid4()) for _ in range(3)]
    for message_id in events:
        await publish_durable(
            broker.js, status_subject(A, message_id), message_id.encode(), msg_id=message_id
        )
    # What the broker reports about the flooder's traffic: four times what a stream holds.
    payload = b"\0" * (EVENT_SIZE - 512)
    for _ in range(4 * LIMIT // EVENT_SIZE):
        message_id = str(uuid.uuid4())
        await publish_durable(
            broker.js, status_subject(FLOODER, message_id), payload, msg_id=message_id
        )

    admin = await env.admin()
    flooded = await admin.js.stream_info(status_stream(FLOODER))
    assert flooded.state.bytes <= LIMIT
    assert flooded.state.first_seq > 1  # its own first events are gone: the flood was real
    a = await env.connect(Identity.for_agency(A))
    sub = await bind_pull(a.js, status_stream(A), status_consumer(A))
    got = await fetch(sub, 10, 5.0)
    assert [m.data.decode() for m in got] == events
    for msg in got:
        await msg.ack()
