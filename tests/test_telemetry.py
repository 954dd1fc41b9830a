"""JSON log lines, the health and metrics server, and heartbeats: the parts every process uses."""

from __future__ import annotations

import io
import json
import logging

import aiohttp
import pytest
from http_helpers import check_malformed
from prometheus_client import CollectorRegistry, Counter

from bridge.telemetry import HealthServer, configure_logging, decode_heartbeat
from bridge.telemetry.heartbeat import HeartbeatInvalid


def test_json_log_lines_carry_ids_and_never_an_exception_text() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    try:
        log = logging.getLogger("bridge.test")
        log.info("routed id=%s", "7f1c", extra={"message_id": "7f1c", "reason": "ok.fine"})
        try:
            raise ValueError("Beispielmann, born 1980")  # what a library might quote
        except ValueError:
            log.exception("failed")
    finally:
        configure_logging("INFO", "text")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "routed id=7f1c"
    assert (first["message_id"], first["reason"], first["level"]) == ("7f1c", "ok.fine", "INFO")
    assert second["exception"] == "ValueError"
    assert "Beispielmann" not in stream.getvalue()


def test_an_unknown_log_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        configure_logging("INFO", "xml")


async def test_health_server_answers_ready_and_metrics_on_its_own_port() -> None:
    registry = CollectorRegistry()
    Counter("bridge_test_things", "things", registry=registry).inc(3)
    ready = False
    server = HealthServer("127.0.0.1", 0, ready=lambda: ready, registry=registry)
    url = await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/healthz") as r:
                assert r.status == 200
            async with session.get(f"{url}/readyz") as r:
                assert (r.status, await r.json()) == (503, {"status": "unavailable"})
            ready = True
            async with session.get(f"{url}/readyz") as r:
                assert r.status == 200
            async with session.get(f"{url}/metrics") as r:
                assert "bridge_test_things_total 3.0" in await r.text()
    finally:
        await server.stop()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"[]",
        b"{}",
        b'{"component":"adapter","name":"Not Valid","at":"2026-01-01T00:00:00Z",'
        b'"interval_seconds":10}',
        b"\xff" * 2000,
    ],
)
def test_malformed_heartbeats_are_refused(data: bytes) -> None:
    with pytest.raises(HeartbeatInvalid):
        decode_heartbeat(data)


async def test_health_server_quotes_no_malformed_request(caplog: pytest.LogCaptureFixture) -> None:
    """The broker's and every separate metrics port parse HTTP like the adapter's API: every
    answer a problem, nothing echoed or logged (issue 6, findings 3, 4 and 6)."""
    caplog.set_level(logging.DEBUG)
    server = HealthServer("127.0.0.1", 0, ready=lambda: True, registry=CollectorRegistry())
    url = await server.start()
    try:
        await check_malformed(url, caplog)
    finally:
        await server.stop()
