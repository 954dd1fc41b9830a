"""A running stack with ops for the ops tests: nats-server, broker, adapters, ops, demo sink.

Everything runs in the test's process on free ports; the configs are the ones `bridge up`
writes, with ops thresholds and heartbeats shortened so that stuck and silent show up within
seconds. An `AlertReceiver` is a real HTTP server that records the alert webhook's posts.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
from aiohttp import web

from bridge.adapters.service import Adapter
from bridge.broker import Broker
from bridge.config import load_adapter_config, load_broker_config
from bridge.nats.identities import Credentials, Identity
from bridge.nats.provision import provision_at
from bridge.nats.server import NatsServer, free_port
from bridge.ops import Ops, OpsConfig, load_ops_config
from bridge.ops.config import AlertRule, AlertsConfig, Thresholds
from bridge.up.layout import DEMO_AGENCIES
from bridge.up.sink import DemoSink
from bridge.up.state import Stack, prepare
from bridge.wire import Body, message_type_of

JOBCENTER = "jobcenter-unna"
COUNSELLING = "suchtberatung-unna"  # webhook delivery
SPDI = "spdi-unna"  # pull delivery
DEADLINE = 45.0
BEAT = 0.3  # heartbeat interval of the components in these tests
_T = TypeVar("_T")


async def eventually(
    what: str, check: Callable[[], Awaitable[_T | None]], deadline: float = DEADLINE
) -> _T:
    end = time.monotonic() + deadline
    while True:
        found = await check()
        if found is not None and found is not False:
            return found
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {deadline:g}s")
        await asyncio.sleep(0.1)


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
class OpsStack:
    stack: Stack
    server: NatsServer
    sink: DemoSink
    session: aiohttp.ClientSession
    receiver: AlertReceiver
    ops_config: OpsConfig
    adapters: dict[str, Adapter] = field(default_factory=dict)
    broker: Broker | None = None
    ops: Ops | None = None

    # -- components ---------------------------------------------------------------------------

    async def start_broker(self) -> None:
        config = load_broker_config(self.stack.layout.broker_config)
        broker = Broker(config, fetch_wait=1.0, retry_delay=0.5, heartbeat_interval=BEAT)
        await broker.__aenter__()
        self.broker = broker

    async def stop_broker(self) -> None:
        if self.broker is not None:
            broker, self.broker = self.broker, None
            await broker.__aexit__(None, None, None)

    async def start_adapter(self, agency: str, **delivery: Any) -> None:
        """Start `agency`'s adapter; `delivery` overrides fields of its `[delivery]` table."""
        config = load_adapter_config(self.stack.layout.adapter_config(agency))
        if delivery:
            config = msgspec.structs.replace(
                config, delivery=msgspec.structs.replace(config.delivery, **delivery)
            )
        adapter = Adapter(config, fetch_timeout=1.0, heartbeat_interval=BEAT)
        await adapter.start()
        self.adapters[agency] = adapter

    async def stop_adapter(self, agency: str) -> None:
        await self.adapters.pop(agency).stop()

    async def start_ops(self) -> Ops:
        ops = Ops(self.ops_config)
        await ops.start()
        self.ops = ops
        await eventually("ops ready", lambda: _true(ops.ready()))
        return ops

    async def stop_ops(self) -> None:
        if self.ops is not None:
            ops, self.ops = self.ops, None
            await ops.stop()

    # -- as the agencies' local systems ---------------------------------------------------------

    def _headers(self, agency: str, scopes: list[str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.stack.token(agency, scopes, 600)}"}

    async def submit(
        self,
        sender: str,
        recipients: list[str],
        body: Body,
        categories: tuple[str, ...] = ("identity", "contact", "addiction"),
        consent: str | None = None,
        lifetime_seconds: int | None = None,
    ) -> str:
        """Submit as the sender's case system, under `consent` or a consent registered now."""
        kind = message_type_of(body).value
        if consent is None:
            consent = await self.register_consent(sender, recipients, categories, kind)
        request = {
            "type": kind,
            "recipients": recipients,
            "consent": consent,
            "purpose": "integration-support",
            "categories": list(categories),
            "body": body,
        }
        if lifetime_seconds is not None:
            request["lifetime_seconds"] = lifetime_seconds
        headers = {
            **self._headers(sender, ["messages:send"]),
            "Content-Type": "application/json",
            "Idempotency-Key": str(uuid.uuid4()),
        }
        async with self.session.post(
            f"{self.stack.adapter_url(sender)}/v1/messages",
            data=msgspec.json.encode(request),
            headers=headers,
        ) as response:
            answer = await response.json()
            assert response.status == 202, answer
        return str(answer["message_id"])

    async def register_consent(
        self, issuer: str, recipients: list[str], categories: tuple[str, ...], kind: str
    ) -> str:
        """Register the client's consent at the sender's adapter, as its case worker would."""
        until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=300)
        request = {
            "recipients": recipients,
            "purposes": ["integration-support"],
            "categories": list(categories),
            "types": [kind],
            "valid_until": until.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "local_ref": f"case-{uuid.uuid4().hex[:8]}",
        }
        async with self.session.post(
            f"{self.stack.adapter_url(issuer)}/v1/consents",
            data=msgspec.json.encode(request),
            headers={
                **self._headers(issuer, ["consents:write"]),
                "Content-Type": "application/json",
            },
        ) as response:
            answer = await response.json()
            assert response.status == 201, answer
        return str(answer["consent_id"])

    async def withdraw_consent(self, issuer: str, consent: str) -> None:
        """Withdraw the client's consent at the issuing agency's adapter."""
        async with self.session.delete(
            f"{self.stack.adapter_url(issuer)}/v1/consents/{consent}",
            headers=self._headers(issuer, ["consents:write"]),
        ) as response:
            answer = await response.json()
            assert response.status == 200, answer
            assert answer["state"] == "withdrawn", answer

    async def pull(self, agency: str, message_id: str) -> None:
        """Wait for the item in `agency`'s pull inbox and acknowledge it."""
        headers = self._headers(agency, ["inbox:read", "inbox:ack"])
        base = self.stack.adapter_url(agency)

        async def listed() -> bool:
            async with self.session.get(f"{base}/v1/inbox", headers=headers) as r:
                items = (await r.json())["items"]
            return any(item["message_id"] == message_id for item in items)

        await eventually(f"{message_id} in {agency}'s inbox", listed)
        async with self.session.post(f"{base}/v1/inbox/{message_id}/ack", headers=headers) as r:
            assert r.status == 204, await r.text()

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
    stack = prepare(tmp_path / "state", port_base=0)
    layout = stack.layout
    server = NatsServer.from_layout(layout.nats)
    await server.start()
    admin = Credentials(layout.nats.creds_dir).seed_file(Identity.admin())
    await provision_at(server.url, admin, [a.id for a in DEMO_AGENCIES])
    secret = layout.webhook_secret(COUNSELLING).read_bytes().strip()
    sink = DemoSink({COUNSELLING: secret}, stack.sink_access_token())
    await sink.start(stack.ports.host, stack.ports.sink)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    receiver = AlertReceiver()
    await receiver.start()
    env = OpsStack(
        stack=stack,
        server=server,
        sink=sink,
        session=session,
        receiver=receiver,
        ops_config=settings(load_ops_config(layout.ops_config), receiver.url),
    )
    try:
        await env.start_broker()
        for agency in DEMO_AGENCIES:
            await env.start_adapter(agency.id)
        await env.start_ops()
        yield env
    finally:
        steps = [("ops", env.stop_ops)]
        steps += [(agency, lambda a=agency: env.stop_adapter(a)) for agency in list(env.adapters)]
        steps += [
            ("broker", env.stop_broker),
            ("session", session.close),
            ("receiver", receiver.stop),
            ("sink", sink.stop),
            ("server", server.stop),
        ]
        for name, stop in steps:
            try:
                await asyncio.wait_for(stop(), 30)
            except TimeoutError:
                print(f"teardown: stopping {name} hung", flush=True)
                raise
