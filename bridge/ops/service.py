"""The ops service as one object: connects read-only, rebuilds, follows, serves, alerts.

    ops = Ops(config)
    url = await ops.start()      # serving; state being rebuilt from the status and audit streams
    ...
    await ops.stop()

Background work (following the status stream and the audit trail, backlogs, alert evaluation,
webhook posts) runs in one TaskGroup. If any of it fails for a reason it cannot recover from,
`failed` is set, `/readyz` answers 503 and `wait()` raises, so `bridge ops` exits non-zero for its
supervisor to restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

import msgspec
import nats.errors
from aiohttp import web
from nats.aio.client import Client as NATS

from .._cancel import pause, stop_task
from ..config import nats_tls_context
from ..errors import ConfigError
from ..http.auth import TokenVerifier
from ..http.guard import GuardedAppRunner
from ..http.signing import load_webhook_secret
from ..nats.identities import Identity
from ..nats.transport import connect
from ..telemetry import HealthServer
from .alerts import AlertBook, WebhookPoster
from .audit import AuditFollower
from .config import OpsConfig
from .follower import Follower
from .http import OpsContext, build_app
from .metrics import OpsMetrics
from .openapi import openapi_document
from .rules import conditions
from .tracker import Tracker, Transition
from .views import OpsState

__all__ = ["Ops"]

log = logging.getLogger(__name__)

_STOP_WAIT: Final = 10.0  # seconds for the background work to end once cancelled


class Ops:
    """Not restartable: make a new one after `stop()`."""

    def __init__(self, config: OpsConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self.state = OpsState(
            tracker=Tracker(config.max_messages),
            thresholds=config.thresholds,
            agencies=tuple(config.agencies),
            started_at=clock(),
        )
        self.alerts = AlertBook()
        self.metrics = OpsMetrics(self.state, self.alerts, clock)
        self._closing = asyncio.Event()
        self._nc: NATS | None = None
        self._runner: web.AppRunner | None = None
        self._metrics_server: HealthServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._url: str | None = None
        self.follower: Follower | None = None
        self.audit_follower: AuditFollower | None = None

    def __repr__(self) -> str:
        return f"Ops(url={self._url!r}, ready={self.ready()}, {self.state.tracker!r})"

    async def __aenter__(self) -> Ops:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("ops is not started")
        return self._url

    @property
    def metrics_url(self) -> str:
        return (
            self._metrics_server.url
            if self._metrics_server and self._metrics_server.url
            else self.url
        )

    def ready(self) -> bool:
        return (
            self.state.rebuilt
            and self._nc is not None
            and self._nc.is_connected
            and self._task is not None
            and not self._task.done()
        )

    async def start(self) -> str:
        if self._task is not None:
            raise RuntimeError("ops starts once")
        c = self.config
        verifier = TokenVerifier(
            c.auth, c.path(c.auth.public_key_file) if c.auth.public_key_file else None
        )
        secret = None
        if c.alerts.webhook_secret_file is not None:
            secret = load_webhook_secret(c.path(c.alerts.webhook_secret_file))
        poster = WebhookPoster(
            c.alerts, secret, clock=self._clock, on_attempt=self.metrics.webhook_attempt
        )
        try:
            await self._start(verifier, poster)
        except BaseException:
            await self.stop()
            raise
        log.info("ops serving on %s", self._url)
        return self.url

    async def _start(self, verifier: TokenVerifier, poster: WebhookPoster) -> None:
        c = self.config
        self._nc = await connect(
            c.nats.url,
            c.path(c.nats.seed_file),
            Identity.ops().inbox_prefix,
            "bridge-ops",
            connect_timeout=c.nats.connect_timeout_seconds,
            tls=nats_tls_context(c.nats, c.path),
        )
        js = self._nc.jetstream(timeout=float(c.nats.request_timeout_seconds))
        self.follower = Follower(
            nc=self._nc,
            js=js,
            state=self.state,
            metrics=self.metrics,
            clock=self._clock,
            backlog_every=c.backlog_seconds,
            on_transition=self._transition,
        )
        await self.follower.subscribe()
        self.audit_follower = AuditFollower(
            js=js,
            book=self.state.audit,
            tracker=self.state.tracker,
            metrics=self.metrics,
            on_transition=self._transition,
        )
        # A component never heard is silent from now on, when ops began to listen.
        self.state.started_at = self._clock()
        self._task = asyncio.create_task(
            self._background(self.follower, self.audit_follower, poster), name="ops"
        )
        app = build_app(
            OpsContext(
                verifier=verifier,
                state=self.state,
                alerts=self.alerts,
                clock=self._clock,
                ready=self.ready,
                openapi=msgspec.json.encode(openapi_document()),
                closing=self._closing,
                metrics=None if c.http.metrics_port is not None else self.metrics.registry,
            )
        )
        # Never quotes a request aiohttp cannot parse (see bridge.http.guard).
        self._runner = GuardedAppRunner(app, handle_signals=False)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, c.http.host, c.http.port).start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {c.http.host}:{c.http.port}: {exc.strerror}",
                reason="config.listen",
            ) from exc
        host, port = self._runner.addresses[0][:2]
        self._url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        if c.http.metrics_port is not None:
            self._metrics_server = HealthServer(
                c.http.metrics_host or c.http.host,
                c.http.metrics_port,
                ready=self.ready,
                registry=self.metrics.registry,
            )
            await self._metrics_server.start()

    async def _background(
        self, follower: Follower, audit: AuditFollower, poster: WebhookPoster
    ) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(follower.follow(), name="follow")
            group.create_task(audit.follow(), name="audit")
            group.create_task(follower.poll_backlogs(), name="backlogs")
            group.create_task(self._evaluate(poster), name="alerts")
            group.create_task(poster.run(), name="alert-webhook")

    def _transition(self, change: Transition) -> None:
        m = self.metrics
        m.transitions.labels(
            change.step, change.type or "", change.sender, change.recipient or ""
        ).inc()
        if change.step == "rejected":
            m.rejections.labels(change.reason or "unknown").inc()
        if change.latency is not None and change.latency_step is not None:
            m.latency.labels(change.latency_step).observe(change.latency)
        if change.step == "delivered" and self.state.tracker.samples:
            last = self.state.tracker.samples[-1]
            if last.step == "end_to_end":
                m.latency.labels("end_to_end").observe(last.seconds)

    async def _evaluate(self, poster: WebhookPoster) -> None:
        rules = self.config.alerts.rules
        while True:
            await pause(self.config.alerts.evaluate_seconds)
            if not self.state.rebuilt:
                continue  # judge nothing on a half-read history
            now = self._clock()
            for change in self.state.tracker.expire(now):
                self._transition(change)
            for alert in self.alerts.update(conditions(rules, self.state, now), now):
                if alert.status == "firing":
                    self.metrics.alerts_fired.labels(alert.rule).inc()
                log.warning(
                    "alert %s %s: %s [%s]", alert.rule, alert.status, alert.summary, alert.subject
                )
                poster.post(alert)

    async def wait(self) -> None:
        """Until the background work ends; raises what ended it. Cancelling the wait leaves the
        work running: `stop()` ends it."""
        assert self._task is not None
        await asyncio.shield(self._task)

    async def stop(self) -> None:
        self._closing.set()
        try:
            if self._metrics_server is not None:
                await self._metrics_server.stop()
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
            if self._task is not None:
                await stop_task(self._task, "ops background work", log, _STOP_WAIT)
        finally:
            if self._nc is not None:
                with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
                    async with asyncio.timeout(5.0):
                        await self._nc.close()
