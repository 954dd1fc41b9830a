"""`/healthz`, `/readyz` and `/metrics` for every bridge process.

`/healthz` says the process runs (200 while it can answer at all); `/readyz` says it does its
job right now (200, or 503 while, say, its NATS connection or its consumer is down); `/metrics`
is the Prometheus text format of the process's own registry. The adapter and ops add these
routes to their own HTTP application (`add_health_routes`); the broker, which serves no API,
runs a `HealthServer` of its own. Either may bind metrics to a separate port.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ..errors import ConfigError
from ..http.guard import GuardedAppRunner, guard_middleware, problem_middleware

__all__ = ["HealthServer", "add_health_routes", "metrics_response"]

_OK: Final = b'{"status":"ok"}'
_UNAVAILABLE: Final = b'{"status":"unavailable"}'


def metrics_response(registry: CollectorRegistry) -> web.Response:
    response = web.Response(body=generate_latest(registry))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


def add_health_routes(
    app: web.Application,
    *,
    ready: Callable[[], bool],
    registry: CollectorRegistry | None,
) -> None:
    """Add `/healthz`, `/readyz` and (with a registry) `/metrics`; none needs a token."""

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(body=_OK, content_type="application/json")

    async def readyz(request: web.Request) -> web.Response:
        ok = ready()
        return web.Response(
            body=_OK if ok else _UNAVAILABLE,
            status=200 if ok else 503,
            content_type="application/json",
        )

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if registry is not None:

        async def metrics(request: web.Request) -> web.Response:
            return metrics_response(registry)

        app.router.add_get("/metrics", metrics)


class HealthServer:
    """A small HTTP server with only the health and metrics routes."""

    def __init__(
        self, host: str, port: int, *, ready: Callable[[], bool], registry: CollectorRegistry
    ) -> None:
        self._host = host
        self._port = port
        # Answers like the adapter's API: bridge's size limits, every 4xx a problem.
        self._app = web.Application(middlewares=[problem_middleware, guard_middleware])
        add_health_routes(self._app, ready=ready, registry=registry)
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    def __repr__(self) -> str:
        return f"HealthServer(url={self.url!r})"

    async def start(self) -> str:
        # Guarded like the adapter's API: a malformed request is answered with a problem that
        # quotes nothing, and nothing of it is logged.
        runner = GuardedAppRunner(self._app, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                f"cannot listen on {self._host}:{self._port}: {exc.strerror}",
                reason="config.listen",
            ) from exc
        self._runner = runner
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
