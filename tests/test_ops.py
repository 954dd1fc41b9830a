"""Ops against real traffic: a real nats-server, broker and adapters, ops following them.

Delivery states and latencies per recipient, stuck detection and the alert webhook (a real HTTP
receiver), silent adapters, rejections, rebuilding after a restart, access and bad input, and
the metrics of every process. Waits poll with deadlines; nothing asserts on timing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ops_helpers import COUNSELLING, JOBCENTER, SPDI, OpsStack, eventually, ops_stack
from prometheus_client.parser import text_string_to_metric_families

from bridge.demo import demo_referral
from bridge.nats.identities import Credentials, Identity
from bridge.nats.subjects import submit_subject
from bridge.nats.transport import connect, publish_durable

pytestmark = pytest.mark.slow


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[OpsStack]:
    async for running in ops_stack(tmp_path):
        yield running


async def test_a_referral_moves_from_submitted_to_receipted_per_recipient(env: OpsStack) -> None:
    message_id = await env.submit(JOBCENTER, [COUNSELLING, SPDI], demo_referral())
    # The webhook recipient takes it at once; the pull recipient holds it until acknowledged.
    rows = await env.wait_rows(message_id, {COUNSELLING: "receipted", SPDI: "routed"})
    done = rows[COUNSELLING]
    assert done["sender"] == JOBCENTER
    assert done["type"] == "referral"
    assert set(done["steps"]) == {"submitted", "routed", "delivered", "receipted"}
    assert set(done["latencies"]) == {"routed", "delivered", "receipted"}
    assert all(seconds >= 0 for seconds in done["latencies"].values())
    assert rows[SPDI]["expires_at"]

    health = await env.get("/v1/health")
    spdi = next(a for a in health["agencies"] if a["agency"] == SPDI)
    assert spdi["in_flight"] == 1
    assert spdi["oldest_waiting_seconds"] is not None

    async def spdi_inbox_holds_it() -> bool:
        agencies = (await env.get("/v1/health"))["agencies"]
        inbox = next(a for a in agencies if a["agency"] == SPDI)["inbox"]
        return inbox is not None and inbox["pending"] + inbox["ack_pending"] >= 1

    await eventually("spdi's inbox backlog", spdi_inbox_holds_it)

    await env.pull(SPDI, message_id)
    rows = await env.wait_rows(message_id, {COUNSELLING: "receipted", SPDI: "receipted"})
    assert set(rows[SPDI]["latencies"]) == {"routed", "delivered", "receipted"}

    async def settled() -> dict[str, object] | None:
        # The receipts are messages too: they are in flight until the jobcenter took them.
        overview: dict[str, object] = await env.get("/v1/overview")
        return overview if overview["in_flight"] == 0 else None

    overview = await eventually("nothing in flight", settled)
    # The two legs of the referral and the two receipts (delivered back to the jobcenter).
    assert overview["delivered_today"] == 4
    assert overview["rebuilt"] is True

    latency = await env.get("/v1/latency?window_seconds=3600&bucket_seconds=60")
    counts = {s["step"]: sum(p["count"] for p in s["points"]) for s in latency["series"]}
    assert counts["end_to_end"] >= 2
    assert counts["receipted"] == 2


async def test_a_stuck_message_fires_one_alert_that_resolves_on_delivery(env: OpsStack) -> None:
    message_id = await env.submit(JOBCENTER, [SPDI], demo_referral())
    await env.wait_rows(message_id, {SPDI: "routed"})

    async def stuck() -> dict[str, object] | None:
        rows = await env.rows(message_id, view="stuck")
        return rows.get(SPDI)

    row = await eventually("the message listed as stuck", stuck)
    assert row["stuck"] is True
    assert (await env.get("/v1/overview"))["stuck"] == 1
    subject = f"inbox:{SPDI}"
    await eventually(
        "the stuck alert posted", lambda: _some(env.receiver.alerts("stuck", subject, "firing"))
    )
    alerts = await env.get("/v1/alerts")
    firing = [a for a in alerts["items"] if a["rule"] == "stuck" and a["status"] == "firing"]
    assert [a["subject"] for a in firing] == [subject]

    await env.pull(SPDI, message_id)
    await env.wait_rows(message_id, {SPDI: "receipted"})
    resolved = await eventually(
        "the stuck alert resolved", lambda: _some(env.receiver.alerts("stuck", subject, "resolved"))
    )
    # Fired once for the whole incident, however often the rules were evaluated meanwhile.
    assert len(env.receiver.alerts("stuck", subject, "firing")) == 1
    assert resolved[0]["resolved_at"] is not None
    assert (await env.get("/v1/overview"))["stuck"] == 0
    assert message_id not in str(env.receiver.posts)  # alerts name inboxes, not messages


async def test_a_silent_adapter_or_broker_is_reported_and_its_return_resolves_it(
    env: OpsStack,
) -> None:
    subject = f"adapter:{SPDI}"

    async def up(wanted: bool) -> bool:
        agencies = (await env.get("/v1/health"))["agencies"]
        return next(a for a in agencies if a["agency"] == SPDI)["adapter_up"] is wanted

    await eventually("spdi's adapter heard", lambda: up(True))
    await env.stop_adapter(SPDI)
    await eventually("spdi's adapter silent", lambda: up(False))
    await eventually(
        "the silent alert posted", lambda: _some(env.receiver.alerts("silent", subject, "firing"))
    )
    await env.start_adapter(SPDI)
    await eventually("spdi's adapter heard again", lambda: up(True))
    await eventually(
        "the silent alert resolved",
        lambda: _some(env.receiver.alerts("silent", subject, "resolved")),
    )
    assert len(env.receiver.alerts("silent", subject, "firing")) == 1
    assert env.receiver.alerts("silent", f"adapter:{JOBCENTER}", "firing") == []

    # With no broker heard, the federation is silent as a whole ("broker"), until one returns.
    await env.stop_broker()
    await eventually(
        "the broker silent alert posted",
        lambda: _some(env.receiver.alerts("silent", "broker", "firing")),
    )
    await env.start_broker()
    await eventually(
        "the broker silent alert resolved",
        lambda: _some(env.receiver.alerts("silent", "broker", "resolved")),
    )
    assert len(env.receiver.alerts("silent", "broker", "firing")) == 1


async def _some(items: list[dict[str, object]]) -> list[dict[str, object]] | None:
    return items or None


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _scrape(env: OpsStack, url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with env.session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return _samples(await response.text())


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, **labels: str
) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


async def test_rejections_and_deliveries_show_in_the_metrics_of_every_process(
    env: OpsStack,
) -> None:
    # Something that is no envelope, submitted as the jobcenter: the broker rejects it with a
    # reason code (its adapter would never send it, so it goes straight to NATS).
    rejected = str(uuid.uuid4())
    agency = Identity.for_agency(JOBCENTER)
    seed = Credentials(env.stack.layout.nats.creds_dir).seed_file(agency)
    nc = await connect(env.stack.nats_url, seed, agency.inbox_prefix, "test")
    try:
        await publish_durable(nc.jetstream(), submit_subject(JOBCENTER), b"junk", msg_id=rejected)
    finally:
        await nc.close()
    rows = await env.wait_rows(rejected, {None: "rejected"})  # the recipients are unknown
    reason = rows[None]["reason"]
    assert reason
    listed = await env.get("/v1/messages?view=rejected")
    assert rejected in {row["message_id"] for row in listed["items"]}
    delivered = await env.submit(JOBCENTER, [COUNSELLING], demo_referral())
    await env.wait_rows(delivered, {COUNSELLING: "receipted"})
    await eventually(
        "the rejections alert posted",
        lambda: _some(env.receiver.alerts("rejections", "federation", "firing")),
    )

    assert env.ops is not None
    assert env.broker is not None
    ops = await _scrape(env, f"{env.ops.metrics_url}/metrics")
    assert _value(ops, "bridge_ops_rejections_total", reason=reason) == 1
    pair = {"type": "referral", "sender": JOBCENTER, "recipient": COUNSELLING}
    assert _value(ops, "bridge_ops_messages", state="receipted", **pair) == 1
    assert _value(ops, "bridge_ops_transitions_total", state="delivered", **pair) == 1
    assert _value(ops, "bridge_ops_step_latency_seconds_count", step="end_to_end") >= 1
    assert _value(ops, "bridge_ops_component_up", component="adapter", name=SPDI) == 1
    assert _value(ops, "bridge_ops_alerts_firing", rule="rejections") == 1
    assert _value(ops, "bridge_ops_alert_webhook_attempts_total") >= 1

    assert env.broker.health_url is not None
    broker = await _scrape(env, f"{env.broker.health_url}/metrics")
    assert _value(broker, "bridge_broker_rejections_total", reason=reason) == 1
    assert _value(broker, "bridge_broker_messages_total", state="routed", **pair) == 1
    assert _value(broker, "bridge_broker_up") == 1
    assert _value(broker, "bridge_broker_route_latency_seconds_count") >= 2  # with the receipt
    async with env.session.get(f"{env.broker.health_url}/readyz") as response:
        assert response.status == 200

    counselling = await _scrape(env, f"{env.stack.adapter_url(COUNSELLING)}/metrics")
    assert _value(counselling, "bridge_adapter_webhook_attempts_total") >= 1
    assert _value(counselling, "bridge_adapter_webhook_failures_total") == 0
    assert _value(counselling, "bridge_adapter_messages_total", state="delivered", **pair) == 1
    assert _value(counselling, "bridge_adapter_up", agency=COUNSELLING) == 1
    jobcenter = await _scrape(env, f"{env.stack.adapter_url(JOBCENTER)}/metrics")
    assert _value(jobcenter, "bridge_adapter_messages_total", state="accepted", **pair) == 1
    assert _value(jobcenter, "bridge_adapter_messages_total", state="receipted", **pair) == 1
    for text in (str(ops), str(broker), str(counselling)):
        assert "Beispielmann" not in text
        # No consent's id or purpose: counts of consents (the audit book) are no details.
        assert not re.search(r"c-[0-9a-f]{32}", text)
        assert "integration-support" not in text


async def test_a_restarted_ops_rebuilds_the_same_state_from_the_stream(env: OpsStack) -> None:
    done = await env.submit(JOBCENTER, [COUNSELLING], demo_referral())
    waiting = await env.submit(JOBCENTER, [SPDI], demo_referral())
    await env.wait_rows(done, {COUNSELLING: "receipted"})
    await env.wait_rows(waiting, {SPDI: "routed"})

    async def both_steps_folded() -> dict[str | None, Any] | None:
        # The adapter's `submitted` and the broker's `routed` race into the status stream:
        # the row may reach `routed` before ops has folded `submitted`.
        rows = {**await env.rows(done), **await env.rows(waiting)}
        return rows if {"submitted", "routed"} <= set(rows[SPDI]["steps"]) else None

    before = await eventually("both steps of the waiting message folded", both_steps_folded)
    await env.stop_ops()
    await env.start_ops()
    after = {**await env.rows(done), **await env.rows(waiting)}
    assert {r: row["steps"] for r, row in after.items()} == {
        r: row["steps"] for r, row in before.items()
    }
    # And it follows on from where the stream ended.
    await env.pull(SPDI, waiting)
    await env.wait_rows(waiting, {SPDI: "receipted"})
