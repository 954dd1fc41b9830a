"""Broker, adapter and ops as the processes an operator runs: JSON log lines, metrics apart.

Each role runs as `bridge <role> -c FILE --log-format json` against a real nats-server, with the
configs `bridge up` writes; the adapter and ops are given a `metrics_port` of their own. Every
line each process logs is a JSON object; `/metrics` answers on the metrics port and no longer on
the API port (docs/operations.md); SIGTERM stops each one with exit code 0.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from bridge.config import load_adapter_config, load_broker_config
from bridge.nats.identities import Credentials, Identity
from bridge.nats.provision import provision_at
from bridge.nats.server import NatsServer, free_port
from bridge.ops import load_ops_config
from bridge.up.layout import DEMO_AGENCIES
from bridge.up.ports import http_url
from bridge.up.state import prepare

pytestmark = pytest.mark.slow

BRIDGE = (sys.executable, "-m", "bridge")
AGENCY = "spdi-unna"  # pull delivery: needs nothing else running
DEADLINE = 60.0


def _with_metrics_port(config: Path, port: int) -> None:
    """Add `metrics_port` to the config's `[http]` table (the last table `bridge up` writes)."""
    text = config.read_text()
    assert text.rstrip().splitlines()[-3] == "[http]", text
    config.write_text(text + f"metrics_port = {port}\n")


async def _status(session: aiohttp.ClientSession, url: str) -> int:
    try:
        async with session.get(url) as response:
            await response.read()
            return response.status
    except aiohttp.ClientConnectionError:
        return 0


async def _until_ready(
    session: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process
) -> None:
    end = time.monotonic() + DEADLINE
    while await _status(session, f"{url}/readyz") != 200:
        assert process.returncode is None, f"{url}: the process ended with {process.returncode}"
        assert time.monotonic() < end, f"{url} not ready within {DEADLINE:g}s"
        await asyncio.sleep(0.2)


async def _metrics(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(f"{url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


async def test_every_role_logs_json_lines_and_serves_metrics_on_its_own_port(
    tmp_path: Path,
) -> None:
    stack = prepare(tmp_path / "state", port_base=0)
    layout = stack.layout
    host = stack.ports.host
    adapter_metrics, ops_metrics = free_port(host), free_port(host)
    _with_metrics_port(layout.adapter_config(AGENCY), adapter_metrics)
    _with_metrics_port(layout.ops_config, ops_metrics)
    assert load_adapter_config(layout.adapter_config(AGENCY)).http.metrics_port == adapter_metrics
    assert load_ops_config(layout.ops_config).http.metrics_port == ops_metrics
    broker_http = load_broker_config(layout.broker_config).http
    assert broker_http is not None

    server = NatsServer.from_layout(layout.nats)
    await server.start()
    processes: dict[str, asyncio.subprocess.Process] = {}
    try:
        admin = Credentials(layout.nats.creds_dir).seed_file(Identity.admin())
        await provision_at(server.url, admin, [a.id for a in DEMO_AGENCIES])
        for role, config in (
            ("broker", layout.broker_config),
            ("adapter", layout.adapter_config(AGENCY)),
            ("ops", layout.ops_config),
        ):
            processes[role] = await asyncio.create_subprocess_exec(
                *BRIDGE,
                role,
                "-c",
                str(config),
                "--log-format",
                "json",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        broker_url = http_url(broker_http.host, broker_http.port)
        adapter_url = stack.adapter_url(AGENCY)
        ops_url = http_url(host, stack.ports.ops)
        adapter_metrics_url = http_url(host, adapter_metrics)
        ops_metrics_url = http_url(host, ops_metrics)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            await _until_ready(session, broker_url, processes["broker"])
            await _until_ready(session, adapter_metrics_url, processes["adapter"])
            await _until_ready(session, ops_metrics_url, processes["ops"])

            assert "bridge_broker_up 1.0" in await _metrics(session, broker_url)
            assert f'bridge_adapter_up{{agency="{AGENCY}"}} 1.0' in await _metrics(
                session, adapter_metrics_url
            )
            assert "bridge_ops_events_skipped_total" in await _metrics(session, ops_metrics_url)
            # With a metrics port of its own, the API port serves no /metrics, but still health.
            for api in (adapter_url, ops_url):
                assert await _status(session, f"{api}/metrics") == 404
                assert await _status(session, f"{api}/healthz") == 200
    finally:
        for process in processes.values():
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
        outputs = {}
        for role, process in processes.items():
            outputs[role] = await asyncio.wait_for(process.communicate(), DEADLINE)
        await server.stop()

    for role, process in processes.items():
        stdout, stderr = outputs[role]
        assert process.returncode == 0, (role, stderr.decode(errors="replace")[-2000:])
        assert b"listening" in stdout or role == "broker", (role, stdout)
        lines = stderr.decode().splitlines()
        assert lines, f"{role} logged nothing"
        for line in lines:
            entry = json.loads(line)  # every line, tracebacks included, would have to parse
            assert {"time", "level", "logger", "message"} <= set(entry), (role, entry)
            assert entry["logger"].startswith("bridge"), (role, entry)
    ops_lines = [json.loads(line)["message"] for line in outputs["ops"][1].decode().splitlines()]
    assert any(message.startswith("ops serving on") for message in ops_lines), ops_lines
