"""Reports for ops under per-agency quotas: a flood of one agency's reports evicts nothing else.

Each adapter's reports go to a stream of its own agency, `BRIDGE_REPORT_<agency>`, which keeps
at most `report_max_msgs_per_agency` and `report_max_bytes_per_agency` and drops its oldest
beyond. `BRIDGE_STATUS` holds only the broker's status events, so no agency's reports can
push out another's events before its adapter has taken them (as they could when both shared
the status stream and its one byte limit).
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from nats.js import api
from test_broker import Agency

from bridge.nats.identities import Identity
from bridge.nats.provision import ProvisionSettings
from bridge.nats.subjects import STATUS_STREAM, report_stream, report_subject, status_subject
from bridge.nats.transport import publish_durable
from bridge.wire import (
    Component,
    DeliveryState,
    MessageType,
    StatusEvent,
    encode_status_event,
)

JOBCENTER = "jobcenter-unna"
SPDI = "spdi-unna"
SUCHT = "suchtberatung-unna"
QUOTA = 8


def _event(state: DeliveryState, component: Component, sender: str = SPDI) -> StatusEvent:
    return StatusEvent(
        message_id=str(uuid.uuid4()),
        sender=sender,
        recipient=JOBCENTER,
        message_type=MessageType.REFERRAL,
        state=state,
        at=datetime.datetime.now(datetime.UTC),
        component=component,
    )


async def test_a_flood_of_reports_evicts_only_the_flooders_own(nats_env_unprovisioned: Any) -> None:
    env = nats_env_unprovisioned
    # A small status stream (4 KiB, some ten events): a flood of reports into it would drop
    # the oldest events, those no adapter has taken yet.
    await env.provision(
        settings=ProvisionSettings(
            status_max_msg_size=1024,
            status_max_bytes=4 * 1024,
            report_max_msgs_per_agency=QUOTA,
        )
    )
    broker = await env.connect(Identity.broker())
    waiting = [_event(DeliveryState.ROUTED, Component.BROKER) for _ in range(3)]
    for event in waiting:
        await publish_durable(
            broker.js,
            status_subject(SPDI, event.message_id),
            encode_status_event(event),
            msg_id=f"{event.message_id}.routed",
        )
    bystander = await env.connect(Identity.for_agency(SUCHT))
    kept = _event(DeliveryState.ACCEPTED, Component.ADAPTER, sender=SUCHT)
    await publish_durable(
        bystander.js,
        report_subject(SUCHT, kept.message_id),
        encode_status_event(kept),
        msg_id=kept.message_id,
    )

    flooder = await env.connect(Identity.for_agency(JOBCENTER))
    flood = [_event(DeliveryState.DELIVERED, Component.ADAPTER) for _ in range(6 * QUOTA)]
    for event in flood:  # under random message ids, each accepted: reports never block a step
        await publish_durable(
            flooder.js,
            report_subject(JOBCENTER, event.message_id),
            encode_status_event(event),
            msg_id=event.message_id,
        )

    admin = await env.admin()
    own = await admin.js.stream_info(report_stream(JOBCENTER))
    assert own.state.messages == QUOTA  # its newest, the oldest dropped
    last = await admin.js.get_msg(report_stream(JOBCENTER), seq=own.state.last_seq)
    assert last.subject == report_subject(JOBCENTER, flood[-1].message_id)
    other = await admin.js.stream_info(report_stream(SUCHT))
    assert other.state.messages == 1
    assert (await admin.js.stream_info(STATUS_STREAM)).state.messages == len(waiting)

    # The events the service's adapter has not taken yet are all still there for it.
    taken = await (await Agency.connect(env, SPDI)).statuses()
    assert sorted(e.message_id for e in taken) == sorted(e.message_id for e in waiting)


async def test_provisioning_leaves_the_reports_of_earlier_versions_to_age_out(
    nats_env_unprovisioned: Any,
) -> None:
    env = nats_env_unprovisioned
    admin = await env.admin()
    # The status stream of earlier versions, which held the reports too, with one in it.
    await admin.js.add_stream(
        api.StreamConfig(
            name=STATUS_STREAM,
            subjects=["bridge.status.*.*", "bridge.report.*.*"],
            allow_direct=True,
        )
    )
    old = _event(DeliveryState.ACCEPTED, Component.ADAPTER, sender=JOBCENTER)
    await admin.js.publish(report_subject(JOBCENTER, old.message_id), encode_status_event(old))

    await env.provision()
    status = await admin.js.stream_info(STATUS_STREAM)
    assert status.config.subjects == ["bridge.status.*.*"]
    assert status.state.messages == 1  # kept until its age limit, still read by ops
    new = _event(DeliveryState.ACCEPTED, Component.ADAPTER, sender=JOBCENTER)
    ack = await admin.js.publish(report_subject(JOBCENTER, new.message_id), b"{}")
    assert ack.stream == report_stream(JOBCENTER)
