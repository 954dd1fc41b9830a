"""Reports for ops under per-agency quotas: a flood of one agency's reports evicts nothing else.

Each adapter's reports go to a stream of its own agency, `BRIDGE_REPORT_<agency>`, which keeps
at most `report_max_msgs_per_agency` and `report_max_bytes_per_agency` and drops its oldest
beyond. Each agency's `BRIDGE_STATUS_<agency>` holds only the broker's status events to it, so
no agency's reports can push out another's events before its adapter has taken them (as they
could when both shared one status stream and its one byte limit).
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import pytest
from nats.js import api
from test_broker import Agency

from bridge.errors import ConfigError
from bridge.nats.identities import Identity
from bridge.nats.provision import Action, ProvisionSettings
from bridge.nats.subjects import (
    report_stream,
    report_subject,
    status_consumer,
    status_filter,
    status_stream,
    status_subject,
)
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
    assert (await admin.js.stream_info(status_stream(SPDI))).state.messages == len(waiting)

    # The events the service's adapter has not taken yet are all still there for it.
    taken = await (await Agency.connect(env, SPDI)).statuses()
    assert sorted(e.message_id for e in taken) == sorted(e.message_id for e in waiting)


async def test_provisioning_retires_the_shared_status_stream_once_its_events_are_taken(
    nats_env_unprovisioned: Any,
) -> None:
    """Earlier versions kept every agency's status events (and before that its reports) in one
    BRIDGE_STATUS. Provisioning removes it only once every agency's consumer on it has taken its
    events, and refuses before: an event not yet taken would be lost with it."""
    env = nats_env_unprovisioned
    admin = await env.admin()
    await admin.js.add_stream(
        api.StreamConfig(
            name="BRIDGE_STATUS",
            subjects=["bridge.status.*.*", "bridge.report.*.*"],
            allow_direct=True,
        )
    )
    await admin.js.add_consumer(
        "BRIDGE_STATUS",
        api.ConsumerConfig(
            durable_name=status_consumer(SPDI),
            filter_subject=status_filter(SPDI),
            ack_policy=api.AckPolicy.EXPLICIT,
        ),
    )
    unread = _event(DeliveryState.ROUTED, Component.BROKER)
    await admin.js.publish(status_subject(SPDI, unread.message_id), encode_status_event(unread))

    with pytest.raises(ConfigError) as refused:
        await env.provision()
    assert refused.value.reason == "provision.legacy_status"
    assert status_consumer(SPDI) in str(refused.value)  # whose events wait
    assert (await admin.js.stream_info("BRIDGE_STATUS")).state.messages == 1  # nothing lost

    sub = await admin.js.pull_subscribe_bind(status_consumer(SPDI), "BRIDGE_STATUS")
    (msg,) = await sub.fetch(1, timeout=5)
    await msg.ack_sync()
    report = await env.provision()
    assert "BRIDGE_STATUS" in {c.name for c in report.by_action(Action.REMOVED)}
    created = {c.name for c in report.by_action(Action.CREATED)}
    assert {f(a) for a in env.agencies for f in (status_stream, report_stream)} <= created
    new = _event(DeliveryState.ROUTED, Component.BROKER)
    ack = await admin.js.publish(status_subject(SPDI, new.message_id), b"{}")
    assert ack.stream == status_stream(SPDI)
