"""Alert rules end to end: a backlog above N, near expiry, stuck by redeliveries, expired.

Each test runs a real stack (ops_helpers) with rules chosen so that only the rule under test
can fire: `stuck` looks an hour ahead, so a message counts as stuck only by its redeliveries.
Every alert must reach the webhook (a real HTTP receiver) once when it fires and once when it
resolves. Waits poll with deadlines; nothing asserts on timing.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from ops_helpers import COUNSELLING, JOBCENTER, SPDI, OpsStack, eventually, ops_stack

from bridge.demo import demo_referral
from bridge.nats.server import free_port
from bridge.ops.config import AlertRule, AlertsConfig, OpsConfig, Thresholds

pytestmark = pytest.mark.slow

HOUR = 3600


def _settings(config: OpsConfig, webhook: str) -> OpsConfig:
    return msgspec.structs.replace(
        config,
        thresholds=Thresholds(
            stuck_after_seconds=HOUR,
            redelivered_max=1,
            near_expiry_seconds=2 * HOUR,
            silent_after_seconds=HOUR,
        ),
        alerts=AlertsConfig(
            webhook_url=webhook,
            evaluate_seconds=0.2,
            rules=[
                AlertRule(name="backlog", kind="backlog", threshold=2),
                AlertRule(name="near_expiry", kind="near_expiry", seconds=2 * HOUR),
                AlertRule(name="stuck", kind="stuck", seconds=HOUR),
            ],
        ),
        backlog_seconds=0.3,
    )


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[OpsStack]:
    async for running in ops_stack(tmp_path, _settings):
        yield running


async def _posted(env: OpsStack, rule: str, subject: str, status: str) -> list[dict[str, Any]]:
    async def seen() -> list[dict[str, Any]] | None:
        return env.receiver.alerts(rule, subject, status) or None

    return await eventually(f"{rule} {status} for {subject} posted", seen)


async def test_a_backlog_and_messages_near_expiry_fire_and_resolve_when_taken(
    env: OpsStack,
) -> None:
    subject = f"inbox:{SPDI}"
    # Expiring within the hour: near expiry by the rule's two hours, from the moment it is routed.
    first = await env.submit(JOBCENTER, [SPDI], demo_referral(), lifetime_seconds=HOUR)
    rows = await env.wait_rows(first, {SPDI: "routed"})
    assert rows[SPDI]["near_expiry"] is True
    near = await _posted(env, "near_expiry", subject, "firing")
    assert near[0]["value"] == 1
    # One message waiting is below the backlog's threshold of two; a second one reaches it.
    assert env.receiver.alerts("backlog", subject, "firing") == []
    second = await env.submit(JOBCENTER, [SPDI], demo_referral(), lifetime_seconds=HOUR)
    await env.wait_rows(second, {SPDI: "routed"})
    backlog = await _posted(env, "backlog", subject, "firing")
    assert backlog[0]["value"] >= 2
    listed = await env.get("/v1/messages?view=near_expiry")
    assert {first, second} <= {row["message_id"] for row in listed["items"]}

    await env.pull(SPDI, first)
    await env.pull(SPDI, second)
    await env.wait_rows(first, {SPDI: "receipted"})
    await env.wait_rows(second, {SPDI: "receipted"})
    await _posted(env, "backlog", subject, "resolved")
    await _posted(env, "near_expiry", subject, "resolved")
    for rule in ("backlog", "near_expiry"):
        assert len(env.receiver.alerts(rule, subject, "firing")) == 1, rule
    assert env.receiver.alerts("stuck", subject, "firing") == []  # an hour is far off
    # The dashboard's list says the same (the submissions may pass a backlog of two briefly).
    alerts = (await env.get("/v1/alerts"))["items"]
    about = {(a["rule"], a["status"]) for a in alerts if a["subject"] == subject}
    assert about == {("backlog", "resolved"), ("near_expiry", "resolved")}


class _LocalSystem:
    """The counselling service's system behind its webhook: refuses until told to take."""

    def __init__(self) -> None:
        self.taking = False
        self.refused = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def take(request: web.Request) -> web.Response:
            await request.read()
            if not self.taking:
                self.refused += 1
                return web.Response(status=503)
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/webhook", take)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port("127.0.0.1")
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/webhook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_a_message_redelivered_more_than_n_times_is_stuck_until_delivered(
    env: OpsStack,
) -> None:
    local = _LocalSystem()
    await local.start()
    try:
        # One try per delivery and short pauses: every refusal hands the message back to NATS,
        # which delivers it again, and the adapter reports each redelivery.
        await env.stop_adapter(COUNSELLING)
        await env.start_adapter(
            COUNSELLING,
            webhook_url=local.url,
            max_attempts=1,
            backoff_initial_seconds=0.1,
            backoff_max_seconds=0.2,
        )
        subject = f"inbox:{COUNSELLING}"
        message_id = await env.submit(JOBCENTER, [COUNSELLING], demo_referral())

        async def redelivered() -> dict[str, Any] | None:
            row = (await env.rows(message_id)).get(COUNSELLING)
            return row if row is not None and row.get("attempts", 1) > 1 else None

        row = await eventually("a redelivery reported to ops", redelivered)
        assert row["state"] == "routed"
        stuck = await _posted(env, "stuck", subject, "firing")
        assert "delivered more than 1 times" in stuck[0]["summary"]
        assert (await env.rows(message_id, view="stuck"))[COUNSELLING]["stuck"] is True
        assert local.refused >= 2

        local.taking = True
        await env.wait_rows(message_id, {COUNSELLING: "receipted"})
        await _posted(env, "stuck", subject, "resolved")
        assert len(env.receiver.alerts("stuck", subject, "firing")) == 1
        assert env.ops is not None
        redeliveries = env.ops.metrics.registry.get_sample_value("bridge_ops_redeliveries_total")
        assert redeliveries is not None
        assert redeliveries >= 1
    finally:
        await local.stop()


async def test_an_expired_message_fires_once_and_resolves_when_the_window_has_passed(
    env: OpsStack,
) -> None:
    message_id = await env.submit(JOBCENTER, [SPDI], demo_referral(), lifetime_seconds=60)
    rows = await env.wait_rows(message_id, {SPDI: "routed"})
    expires_at = datetime.datetime.fromisoformat(rows[SPDI]["expires_at"]).timestamp()
    # Ops alone runs on a clock the test moves on: first past the expiry, then past the rule's
    # window; nobody pulls the message meanwhile.
    assert env.ops_config is not None
    window = 600
    env.ops_config = msgspec.structs.replace(
        env.ops_config,
        alerts=msgspec.structs.replace(
            env.ops_config.alerts,
            rules=[AlertRule(name="expired", kind="expired", seconds=window)],
        ),
    )
    shift = [expires_at + 1 - time.time()]
    env.clock = lambda: time.time() + shift[0]
    await env.stop_ops()
    await env.start_ops()
    subject = f"inbox:{SPDI}"
    await env.wait_rows(message_id, {SPDI: "expired"})
    firing = await _posted(env, "expired", subject, "firing")
    assert firing[0]["value"] == 1
    shift[0] += window + 1
    resolved = await _posted(env, "expired", subject, "resolved")
    assert resolved[0]["resolved_at"] is not None
    assert len(env.receiver.alerts("expired", subject, "firing")) == 1
