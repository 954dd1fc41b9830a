"""`bridge up`, `bridge demo` and `bridge token` as a user runs them: real processes, real ports.

The first tests check the state directory without starting anything (fast). The slow test runs
`bridge up` as a subprocess on free ports, runs `bridge demo` against it, stops it with SIGTERM
and checks that no child survived, starts it again to check that it resumes (same keys, same
ports, the earlier message still on the timeline), and finally kills the broker, nats-server and
an adapter to check that each is restarted and the demo still goes through. Waits poll with
deadlines.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridge.config import load_adapter_config
from bridge.errors import ConfigError
from bridge.http.auth import AuthenticationFailed, TokenVerifier
from bridge.http.signing import sign
from bridge.up.layout import DEMO_AGENCIES, StateLayout
from bridge.up.ports import choose_ports, load_ports, port_is_free
from bridge.up.run import READY_LINE, hold_lock
from bridge.up.sink import verify_webhook_signature
from bridge.up.state import open_stack, prepare
from bridge.up.supervisor import Backoff

BRIDGE = (sys.executable, "-m", "bridge")
START_DEADLINE = 60.0
STOP_DEADLINE = 30.0


# -- the state directory, without running anything ---------------------------------------------


def test_first_run_creates_private_state_and_second_run_resumes_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = prepare(state, port_base=0)
    assert first.created
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    secrets = [
        *state.glob("agencies/*/keys/*.key"),
        *state.glob("agencies/*/token-signing.key"),
        *state.glob("agencies/*/webhook.secret"),
        *state.glob("nats/creds/*.nk"),
        state / "federation" / "anchor.key",
        state / "sink" / "access.token",
    ]
    assert len(secrets) == 3 * 2 + 3 + 1 + 6 + 1 + 1
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in state.rglob("*"):
        if path.is_dir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path

    files = {p: p.read_bytes() for p in secrets}
    kids = {a.id: first.key_ids(a.id) for a in DEMO_AGENCIES}
    second = prepare(state)
    assert not second.created
    assert second.ports == first.ports
    assert {a.id: second.key_ids(a.id) for a in DEMO_AGENCIES} == kids
    assert {p: p.read_bytes() for p in secrets} == files


def test_adapter_configs_match_the_demo_federation(tmp_path: Path) -> None:
    stack = prepare(tmp_path / "state", port_base=0)
    ports = set(stack.ports.all().values())
    assert len(ports) == 4 + len(DEMO_AGENCIES)  # nats, sink, broker, ops: none chosen twice
    for agency in DEMO_AGENCIES:
        config = load_adapter_config(stack.layout.adapter_config(agency.id))
        assert config.agency == agency.id
        assert config.delivery.mode == agency.delivery
        assert config.http.port == stack.ports.adapters[agency.id]
        assert config.auth.issuer == "bridge-demo"
        assert config.auth.audience == f"bridge:{agency.id}"


async def test_tokens_verify_at_their_own_adapter_only(tmp_path: Path) -> None:
    stack = prepare(tmp_path / "state", port_base=0)
    config = load_adapter_config(stack.layout.adapter_config("spdi-unna"))
    assert config.auth.public_key_file is not None
    verifier = TokenVerifier(config.auth, config.path(config.auth.public_key_file))
    claims = await verifier.verify(f"Bearer {stack.token('spdi-unna', ['inbox:read'])}")
    assert claims.scopes == {"inbox:read"}
    with pytest.raises(AuthenticationFailed):
        await verifier.verify(f"Bearer {stack.token('jobcenter-unna')}")


def test_bridge_token_prints_only_a_token(tmp_path: Path) -> None:
    state = tmp_path / "state"
    prepare(state, port_base=0)
    done = subprocess.run(
        [
            *BRIDGE,
            "token",
            "--state",
            str(state),
            "--agency",
            "spdi-unna",
            "--scope",
            "inbox:read",
            "--lifetime",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = done.stdout.strip()
    assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", token)
    unknown = subprocess.run(
        [*BRIDGE, "token", "--state", str(state), "--agency", "nobody"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unknown.returncode == 2
    assert "up.agency" in unknown.stderr


def test_a_foreign_directory_is_never_taken_over(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError) as caught:
        prepare(tmp_path)
    assert caught.value.reason == "up.state"
    assert not (tmp_path / "ports.json").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_sink_signature_check_matches_the_adapter() -> None:
    secret = b"s" * 32
    now = int(time.time())
    headers = {"Bridge-Signature": sign([secret], now, b'{"a":1}')}
    assert verify_webhook_signature(secret, headers, b'{"a":1}')
    assert not verify_webhook_signature(secret, headers, b'{"a":2}')
    assert not verify_webhook_signature(b"t" * 32, headers, b'{"a":1}')
    stale = {"Bridge-Signature": sign([secret], now - 3600, b"{}")}
    assert not verify_webhook_signature(secret, stale, b"{}")
    assert not verify_webhook_signature(secret, {}, b"{}")


# -- the running stack --------------------------------------------------------------------------


@dataclass
class UpProcess:
    """`bridge up` as a subprocess, with its output collected line by line."""

    proc: subprocess.Popen[str]
    lines: queue.Queue[str | None] = field(default_factory=queue.Queue)
    seen: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, state: Path, port_base: int = 0) -> UpProcess:
        proc = subprocess.Popen(
            [*BRIDGE, "up", "--state", str(state), "--port-base", str(port_base)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        up = cls(proc)
        threading.Thread(target=up._read, daemon=True).start()
        return up

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str, deadline: float = START_DEADLINE) -> str:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"`bridge up` never printed {text!r}; output:\n" + self.output)

    def wait_ready(self) -> str:
        self.wait_for(READY_LINE)
        self.wait_for("Ctrl-C stops everything.")
        return self.output

    @property
    def output(self) -> str:
        return "\n".join(self.seen)

    def finish(self, deadline: float = STOP_DEADLINE) -> int:
        code = self.proc.wait(timeout=deadline)
        while True:  # drain what it printed while stopping
            try:
                line = self.lines.get(timeout=2)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def running() -> Iterator[list[UpProcess]]:
    """Every `bridge up` a test starts; killed (with its process group) if the test fails."""
    started: list[UpProcess] = []
    yield started
    for up in started:
        up.kill()


def _pids(banner: str) -> dict[str, int]:
    pids = {}
    for line in banner.splitlines():
        found = re.search(r"^\s+(nats-server|broker|[a-z0-9-]+-unna)\s.*?pid (\d+)", line)
        if found:
            pids[found.group(1)] = int(found.group(2))
    return pids


def _adapters(banner: str) -> dict[str, tuple[str, str, str]]:
    """Per agency: adapter URL, signing key id, encryption key id."""
    found = re.findall(
        r"^\s+([a-z0-9-]+-unna)\s+(http://\S+)\s.*sign-key ([0-9a-f]{32})\s+enc-key ([0-9a-f]{32})",
        banner,
        re.MULTILINE,
    )
    return {agency: (url, sign_kid, enc_kid) for agency, url, sign_kid, enc_kid in found}


def _nats_url(banner: str) -> str:
    found = re.search(r"^\s+nats-server\s+(nats://\S+)", banner, re.MULTILINE)
    assert found is not None, banner
    return found.group(1)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _assert_all_gone(pids: dict[str, int]) -> None:
    end = time.monotonic() + 10
    while time.monotonic() < end and not all(_gone(pid) for pid in pids.values()):
        time.sleep(0.1)
    assert {name: pid for name, pid in pids.items() if not _gone(pid)} == {}


def _wait_ready(url: str, deadline: float = START_DEADLINE) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > end:
            raise AssertionError(f"{url} not ready")
        time.sleep(0.2)


def _message_status(state: Path, url: str, message_id: str) -> Any:
    token = subprocess.run(
        [
            *BRIDGE,
            "token",
            "--state",
            str(state),
            "--agency",
            "jobcenter-unna",
            "--scope",
            "messages:read",
            "--lifetime",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    request = urllib.request.Request(  # noqa: S310 - a loopback http URL from the banner
        f"{url}/v1/messages/{message_id}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        return json.load(response)


@pytest.mark.slow
def test_up_demo_stop_resume_and_crash(tmp_path: Path, running: list[UpProcess]) -> None:
    state = tmp_path / "state"

    # Below the kernel's ephemeral range: the ports are kept across the restart, and in the
    # meantime another test's free port (an ephemeral one) could be this stack's recorded one.
    first = UpProcess.start(state, port_base=random.randrange(20000, 32000, 10))
    running.append(first)
    banner = first.wait_ready()
    pids = _pids(banner)
    assert set(pids) == {"nats-server", "broker", *(a.id for a in DEMO_AGENCIES)}, banner
    adapters = _adapters(banner)
    assert set(adapters) == {a.id for a in DEMO_AGENCIES}, banner
    assert "created" in banner

    demo = subprocess.run(
        [*BRIDGE, "demo", "--state", str(state), "--timeout", "45"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    message_id = re.search(r"message ([0-9a-f-]{36})", out)
    assert message_id is not None, out
    assert "by webhook to suchtberatung-unna" in out, out
    assert "pulled      from spdi-unna's inbox" in out, out
    assert "Done: delivered and receipted for suchtberatung-unna and spdi-unna." in out, out
    for agency in ("suchtberatung-unna", "spdi-unna"):
        assert re.search(rf"delivered\s+{agency}", out), out
        assert re.search(rf"receipted\s+{agency}", out), out
    # Nothing kept longer than the stack's signed policy allows (its limits found under --state).
    check = subprocess.run(
        [*BRIDGE, "retention", "check", "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "nothing older than its limit" in check.stdout

    first.proc.send_signal(signal.SIGTERM)
    assert first.finish() == 0, first.output
    assert "bridge up: stopped" in first.output
    _assert_all_gone(pids)

    second = UpProcess.start(state)
    running.append(second)
    banner = second.wait_ready()
    assert "resumed" in banner
    assert _adapters(banner) == adapters  # same URLs (ports) and key ids
    assert _nats_url(banner) == _nats_url(first.output)
    status = _message_status(state, adapters["jobcenter-unna"][0], message_id.group(1))
    recipients = {r["agency"]: r.get("state") for r in status["recipients"]}
    assert recipients == {"suchtberatung-unna": "receipted", "spdi-unna": "receipted"}

    pids = _pids(banner)
    for name in ("broker", "nats-server", "spdi-unna"):
        os.kill(pids[name], signal.SIGKILL)
        second.wait_for(f"{name} exited unexpectedly with code -9; restarting in")
        restarted = second.wait_for(f"{name} restarted")
        found = re.search(r"\(pid (\d+)\)", restarted)
        assert found is not None, restarted
        pids[name] = int(found.group(1))
    for url, _, _ in adapters.values():  # a restarted child is not waited for by `bridge up`
        _wait_ready(url)
    demo = subprocess.run(
        [*BRIDGE, "demo", "--state", str(state), "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr + second.output
    second.proc.send_signal(signal.SIGTERM)
    assert second.finish() == 0, second.output
    _assert_all_gone(pids)


def test_second_up_on_the_same_state_is_refused(tmp_path: Path, running: list[UpProcess]) -> None:
    state = tmp_path / "state"
    prepare(state, port_base=0)
    with hold_lock(StateLayout(state)):
        refused = subprocess.run(
            [*BRIDGE, "up", "--state", str(state)], capture_output=True, text=True, timeout=60
        )
    assert refused.returncode == 2
    assert "up.already_running" in refused.stderr
    assert open_stack(state).ports == prepare(state).ports


def test_a_recorded_port_in_use_is_named(tmp_path: Path) -> None:
    state = tmp_path / "state"
    stack = prepare(state, port_base=0)
    with socket.socket() as squatter:
        squatter.bind((stack.ports.host, stack.ports.sink))
        squatter.listen()
        refused = subprocess.run(
            [*BRIDGE, "up", "--state", str(state)], capture_output=True, text=True, timeout=60
        )
    assert refused.returncode == 2
    assert "up.port_in_use" in refused.stderr
    assert f"demo sink ({stack.ports.host}:{stack.ports.sink})" in refused.stderr
    assert load_ports(state / "ports.json") == stack.ports  # nothing re-chosen behind our back


def test_default_ports_are_the_documented_ones_where_free() -> None:
    ports = choose_ports("127.0.0.1", None)
    wanted = {
        "nats-server": 4222,
        "demo sink": 8409,
        "adapter jobcenter-unna": 8401,
        "adapter suchtberatung-unna": 8402,
        "adapter spdi-unna": 8403,
        "broker": 8404,
        "ops": 8405,
    }
    for what, port in ports.all().items():
        if port_is_free("127.0.0.1", wanted[what]):
            assert port == wanted[what], what
    assert len(set(ports.all().values())) == len(wanted)


def test_demo_without_a_running_stack_says_what_to_check(tmp_path: Path) -> None:
    state = tmp_path / "state"
    prepare(state, port_base=0)
    done = subprocess.run(
        [*BRIDGE, "demo", "--state", str(state), "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert f"is `bridge up --state {state}` running?" in done.stderr
    missing = subprocess.run(
        [*BRIDGE, "demo", "--state", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2
    assert "up.not_prepared" in missing.stderr


def test_restart_pauses_double_to_a_ceiling_and_reset_after_a_stable_run() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0, stable_after=60.0)
    assert [backoff.after(1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.after(60.0) == 0.5
    assert backoff.after(0.1) == 1.0
    assert backoff.restarts == 8
    with pytest.raises(ValueError, match="initial <= maximum"):
        Backoff(initial=5.0, maximum=1.0)
