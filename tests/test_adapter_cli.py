"""`bridge adapter -c FILE`: a real process, ready over HTTP, stopped cleanly by SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from adapter_helpers import JOBCENTER, agency_seed, fed, make_agency
from policy_helpers import legacy_fault_line, signed_legacy_policy

from bridge.cli import main
from bridge.policy import PolicySerialState


def _toml(value: Any, prefix: str = "") -> str:
    """Just enough TOML for an adapter config: scalars, lists of strings, nested tables."""
    scalars, tables = [], []
    for key, item in value.items():
        if isinstance(item, dict):
            tables.append(_toml(item, f"{prefix}{key}."))
        elif item is not None:
            scalars.append(f"{key} = {json.dumps(item)}")
    head = [f"[{prefix[:-1]}]"] if prefix else []
    return "\n".join(head + scalars + [""] + tables)


def test_config_error_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "adapter.toml"
    bad.write_text('agency = "jobcenter-unna"\nunknown_key = 1\n')
    assert main(["adapter", "-c", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "config.invalid" in err
    assert main(["adapter", "-c", str(tmp_path / "missing.toml")]) == 2


async def test_adapter_process_serves_and_stops_on_sigterm(tmp_path: Path, nats_env: Any) -> None:
    agency = make_agency(tmp_path, nats_env.url, agency_seed(nats_env, JOBCENTER), JOBCENTER)
    config = msgspec.to_builtins(agency.config)
    del config["base_dir"]
    path = tmp_path / "adapter.toml"
    path.write_text(_toml(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "adapter",
        "-c",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode()
        assert "listening on" in line, line
        url = line.rsplit(" ", 1)[1].strip()
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_policy_text_refused_at_start_up_names_the_line(
    tmp_path: Path, nats_env: Any
) -> None:
    """A signed policy whose text this version refuses (signed before `[retention]` existed)
    stops the adapter at start-up: one line, the line at fault, exit code 2."""
    agency = make_agency(tmp_path, nats_env.url, agency_seed(nats_env, JOBCENTER), JOBCENTER)
    (tmp_path / JOBCENTER / "policy.bin").write_bytes(signed_legacy_policy(fed()))
    config = msgspec.to_builtins(agency.config)
    del config["base_dir"]
    path = tmp_path / "adapter.toml"
    path.write_text(_toml(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "adapter",
        "-c",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"listening on" not in out
    (line,) = err.decode().strip().splitlines()
    assert f"line {legacy_fault_line()}: [types.referral] needs pull_wait" in line
    assert line.endswith("[policy.malformed]")
    assert PolicySerialState(Path(agency.config.policy.serial_state)).highest() == 0


@pytest.mark.parametrize("command", ["adapter", "broker"])
async def test_sigterm_while_loading_config_is_a_clean_exit(tmp_path: Path, command: str) -> None:
    # A FIFO nobody writes to keeps the process inside its config load for as long as we like,
    # so the signal provably arrives before the service runs.
    fifo = tmp_path / "config.toml"
    os.mkfifo(fifo)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", command, "-c", str(fifo), stderr=asyncio.subprocess.PIPE
    )
    for _ in range(600):  # until the kernel has it waiting for a writer on the FIFO
        if _waiting_on_fifo(proc.pid):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("the process never reached its config load")
    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr


def _waiting_on_fifo(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/wchan") as handle:
            return handle.read().strip() == "wait_for_partner"
    except OSError:
        return False
