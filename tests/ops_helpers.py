"""A running stack with ops for the ops tests: nats-server, broker, adapters, ops, demo sink.

The end-to-end stack of test_e2e (its local-system helpers included) plus ops. Everything runs
in the test's process on free ports; the configs are the ones `bridge up` writes, with ops
thresholds and heartbeats shortened so that stuck and silent show up within seconds. An
`AlertReceiver` is a real HTTP server that records the alert webhook's posts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from aiohttp import web
from test_e2e import COUNSELLING, E2E, JOBCENTER, SPDI, start_stack
from test_e2e import eventually as _eventually

from bridge.nats.server import free_port
from bridge.ops import Ops, OpsConfig, load_ops_config
from bridge.ops.config import AlertRule, AlertsConfig, Thresholds

__all__ = [
    "COUNSELLING",
    "JOBCENTER",
    "SPDI",
    "AlertReceiver",
    "OpsStack",
    "eventually",
    "ops_stack",
]

DEADLINE = 45.0  # ops follows what the others do: a step longer than the end-to-end tests wait
BEAT = 0.3  # heartbeat interval of the components in these tests
_T = TypeVar("_T")


async def eventually(
    what: str, check: Callable[[], Awaitable[_T | None]], deadline: float = DEADLINE
) -> _T:
    return await _eventually(what, check, deadline)


class AlertReceiver:
    """A real HTTP server standing in for the alerting system behind the webhook."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        async def take(request: web.Request) -> web.Response:
            self.posts.append(await request.json())
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/alerts", take)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port("127.0.0.1")
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/alerts"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def alerts(self, rule: str, subject: str, status: str) -> list[dict[str, Any]]:
        return [
            p["alert"]
            for p in self.posts
            if p["alert"]["rule"] == rule
            and p["alert"]["subject"] == subject
            and p["alert"]["status"] == status
        ]


@dataclass
class OpsStack(E2E):
    """The end-to-end stack (test_e2e.E2E) with ops, its alert receiver and short heartbeats."""

    receiver: AlertReceiver = field(default_factory=AlertReceiver)
    ops_config: OpsConfig | None = None
    ops: Ops | None = None
    heartbeat_interval: float = BEAT
    clock: Callable[[], float] = time.time  # ops' clock: a test may move it on

    # -- ops ----------------------------------------------------------------------------------

    async def start_ops(self) -> Ops:
        assert self.ops_config is not None
        ops = Ops(self.ops_config, clock=self.clock)
        await ops.start()
        self.ops = ops
        await eventually("ops ready", lambda: _true(ops.ready()))
        return ops

    async def stop_ops(self) -> None:
        if self.ops is not None:
            ops, self.ops = self.ops, None
            await ops.stop()

    async def withdraw_consent(self, issuer: str, consent: str) -> None:
        """Withdraw the client's consent at the issuing agency's adapter."""
        async with self.session.delete(
            f"{self.stack.adapter_url(issuer)}/v1/consents/{consent}",
            headers=self._headers(issuer, ["consents:write"]),
        ) as response:
            answer = await response.json()
            assert response.status == 200, answer
            assert answer["state"] == "withdrawn", answer

    # -- as an operator -------------------------------------------------------------------------

    def ops_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.stack.ops_token(600)}"}

    async def get(self, path: str, headers: dict[str, str] | None = None) -> Any:
        assert self.ops is not None
        async with self.session.get(
            f"{self.ops.url}{path}", headers=self.ops_headers() if headers is None else headers
        ) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def rows(self, message_id: str, **query: str) -> dict[str | None, Any]:
        """The ops rows of `message_id`, by recipient."""
        params = "&".join(f"{k}={v}" for k, v in {"limit": "500", **query}.items())
        listed = await self.get(f"/v1/messages?{params}")
        return {r["recipient"]: r for r in listed["items"] if r["message_id"] == message_id}

    async def wait_rows(
        self, message_id: str, wanted: dict[str | None, str]
    ) -> dict[str | None, Any]:
        async def reached() -> dict[str | None, Any] | None:
            rows = await self.rows(message_id)
            return rows if {r: row["state"] for r, row in rows.items()} == wanted else None

        return await eventually(f"{message_id} reaching {wanted} in ops", reached)


async def _true(value: bool) -> bool | None:
    return True if value else None


def ops_settings(config: OpsConfig, webhook: str) -> OpsConfig:
    """Thresholds of seconds instead of minutes, and the alert webhook."""
    return msgspec.structs.replace(
        config,
        thresholds=Thresholds(
            stuck_after_seconds=2,
            redelivered_max=5,
            near_expiry_seconds=86400,
            silent_after_seconds=2,
        ),
        alerts=AlertsConfig(
            webhook_url=webhook,
            evaluate_seconds=0.2,
            rules=[
                AlertRule(name="stuck", kind="stuck", seconds=2),
                AlertRule(name="silent", kind="silent", seconds=2),
                AlertRule(name="rejections", kind="rejections", seconds=600, threshold=1),
                AlertRule(name="backlog", kind="backlog", threshold=1000),
            ],
        ),
        backlog_seconds=0.3,
    )


async def ops_stack(
    tmp_path: Path, settings: Callable[[OpsConfig, str], OpsConfig] = ops_settings
) -> AsyncIterator[OpsStack]:
    """The running stack; `settings` turns `bridge up`'s ops config into the test's."""
    env = await start_stack(tmp_path, OpsStack)
    try:
        await env.receiver.start()
        env.ops_config = settings(load_ops_config(env.stack.layout.ops_config), env.receiver.url)
        await env.start_broker()
        await env.start_adapters()
        await env.start_ops()
        yield env
    finally:
        try:
            await asyncio.wait_for(env.stop_ops(), 30)
            await env.receiver.stop()
        finally:
            await env.stop()
