"""Run the stack's child processes, restart the ones that die, and stop them in order.

Children get their own session, so Ctrl-C in the terminal reaches only `bridge up`, which then
stops them in the reverse order of starting (adapters, broker, nats-server). On Linux each child
also gets a parent-death signal, so a `bridge up` killed with SIGKILL leaves no orphans behind.
Output of each child goes to its own log file; errors quote the tail of that log.

A child that exits on its own (a crash, or a bridge process that found part of itself dead and
exited non-zero on purpose) is restarted after a pause that doubles with each quick death
(`Backoff`), and `supervise()` says so with the tail of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .._process import parent_death_signal
from ..errors import BridgeError, ConfigError, TransportError
from ..nats.server import NatsServer

__all__ = [
    "Backoff",
    "Child",
    "ChildExited",
    "ChildSpec",
    "Probe",
    "Supervisor",
    "keep_server",
    "log_tail",
    "until_stopped",
]

_LOG_TAIL_BYTES: Final = 4096

Probe = Callable[[], Awaitable[bool]]


class ChildExited(TransportError):
    """A child process exited although nobody asked it to."""

    reason = "up.child_exited"


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to run one child: its argv, its log file and how to tell that it is ready."""

    name: str
    argv: Sequence[str]
    log_file: Path
    ready: Probe
    start_timeout: float = 30.0
    stop_timeout: float = 10.0
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Backoff:
    """Pauses before restarting something that died: doubling from `initial` up to `maximum`,
    and back to `initial` once it had run for `stable_after` seconds before dying."""

    initial: float = 0.5
    maximum: float = 30.0
    stable_after: float = 60.0
    restarts: int = 0
    _next: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum or self.stable_after <= 0:
            raise ValueError("want 0 < initial <= maximum and stable_after > 0")
        self._next = self.initial

    def after(self, ran_for: float) -> float:
        """The pause before the next start of something that ran `ran_for` seconds."""
        if ran_for >= self.stable_after:
            self._next = self.initial
        delay = self._next
        self._next = min(self.maximum, self._next * 2)
        self.restarts += 1
        return delay


async def until_stopped(stop: asyncio.Event, work: Awaitable[object]) -> bool:
    """Run `work` until it finishes or `stop` is set; True if `stop` was set (work cancelled)."""
    working = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (working, stopping):
            task.cancel()
        await asyncio.wait({working, stopping})
    failure = None if working.cancelled() else working.exception()
    if failure is not None:
        raise failure
    return stop.is_set()


def log_tail(path: Path, offset: int = 0, max_bytes: int = _LOG_TAIL_BYTES) -> str:
    """The end of a log file after `offset`, bounded; for error messages."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(offset, size - max_bytes))
            text = f.read(max_bytes).decode("utf-8", errors="replace").strip()
    except OSError:
        return "(no log)"
    return text or "(the log is empty)"


class Child:
    """One running child process."""

    def __init__(self, spec: ChildSpec, proc: asyncio.subprocess.Process, log_offset: int) -> None:
        self.spec = spec
        self._proc = proc
        self._log_offset = log_offset
        self.started_at = time.monotonic()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def __repr__(self) -> str:
        state = "running" if self.returncode is None else f"exited {self.returncode}"
        return f"Child({self.name!r}, pid={self.pid}, {state})"

    def log_tail(self) -> str:
        return log_tail(self.spec.log_file, self._log_offset)

    async def wait(self) -> int:
        return await self._proc.wait()

    async def stop(self) -> int:
        """SIGTERM, wait up to `stop_timeout`, then SIGKILL. Returns the exit code."""
        if self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(self.spec.stop_timeout):
                    return await self._proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()
        return await self._proc.wait()


class Supervisor:
    """Starts children one after another, restarts those that die (`supervise`), and stops
    them all, last started first."""

    def __init__(
        self,
        *,
        on_event: Callable[[str], None] | None = None,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self._children: list[Child] = []
        self._on_event = on_event or (lambda _: None)
        self._backoff = backoff

    @property
    def children(self) -> tuple[Child, ...]:
        return tuple(self._children)

    def __repr__(self) -> str:
        return f"Supervisor({self._children!r})"

    async def start(self, spec: ChildSpec) -> Child:
        """Start a child and wait until its probe says it is ready, or fail with its log tail."""
        child = await self._spawn(spec)
        self._children.append(child)
        await self._wait_ready(child)
        self._on_event(f"{child.name} ready (pid {child.pid})")
        return child

    async def _spawn(self, spec: ChildSpec) -> Child:
        spec.log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(spec.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            offset = os.fstat(fd).st_size
            proc = await asyncio.create_subprocess_exec(
                *spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **spec.env},
                start_new_session=True,
                preexec_fn=parent_death_signal(),
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot start {spec.name}: {exc.strerror}", reason="up.child_start"
            ) from exc
        finally:
            os.close(fd)
        return Child(spec, proc, offset)

    async def _wait_ready(self, child: Child) -> None:
        deadline = time.monotonic() + child.spec.start_timeout
        while True:
            if child.returncode is not None:
                raise ChildExited(
                    f"{child.name} exited with code {child.returncode} while starting; "
                    f"log {child.spec.log_file}:\n{child.log_tail()}"
                )
            if await child.spec.ready():
                return
            if time.monotonic() >= deadline:
                raise TransportError(
                    f"{child.name} was not ready within {child.spec.start_timeout:g}s; "
                    f"log {child.spec.log_file}:\n{child.log_tail()}",
                    reason="up.child_not_ready",
                )
            await asyncio.sleep(0.1)

    async def supervise(self, stop: asyncio.Event) -> None:
        """Restart every child that exits, until `stop` is set; then return (call `stop_all`).

        Stopping is an event rather than a cancellation, so that a restart is never cut off
        between spawning a process and recording it for `stop_all`. A restarted child is not
        probed for readiness: the others reconnect to it on their own, and its log tells
        whether it came up. It takes the place of the old one in the stop order.
        """
        if not self._children:
            raise ConfigError("no children to supervise", reason="up.no_children")
        async with asyncio.TaskGroup() as group:
            for slot, child in enumerate(self._children):
                group.create_task(self._keep(slot, stop), name=f"supervise {child.name}")

    async def _keep(self, slot: int, stop: asyncio.Event) -> None:
        backoff = self._backoff()
        while True:
            child = self._children[slot]
            if await until_stopped(stop, child.wait()):
                return
            delay = backoff.after(time.monotonic() - child.started_at)
            self._on_event(
                f"{child.name} exited unexpectedly with code {child.returncode}; restarting in "
                f"{delay:g}s (restart {backoff.restarts}); log {child.spec.log_file}:\n"
                f"{child.log_tail()}"
            )
            if await until_stopped(stop, asyncio.sleep(delay)):
                return
            try:
                self._children[slot] = await self._spawn(child.spec)
            except ConfigError as exc:
                self._on_event(f"{child.name} could not be restarted: {exc}")
                continue  # the old child's wait() returns at once: the next pause is longer
            self._on_event(f"{child.name} restarted (pid {self._children[slot].pid})")

    async def stop_all(self) -> dict[str, int]:
        """Stop every child, last started first; return each one's exit code.

        If this is cancelled half way, the children not yet stopped still are (their
        parent-death signal, or the next `stop_all`), but callers should not cancel it:
        `bridge up` turns signals into an event rather than a cancellation for this reason.
        """
        codes: dict[str, int] = {}
        while self._children:
            child = self._children[-1]
            running = child.returncode is None
            code = await child.stop()
            self._children.pop()
            codes[child.name] = code
            if running:
                self._on_event(f"{child.name} stopped (exit {code})")
        return codes


async def keep_server(stop: asyncio.Event, server: NatsServer, say: Callable[[str], None]) -> None:
    """Restart the embedded nats-server whenever it exits, until `stop` is set; `say` tells."""
    backoff = Backoff()
    started = time.monotonic()
    while True:
        if await until_stopped(stop, server.wait()):
            return
        code = await server.wait()  # at once: it has exited
        tail = server.log_tail()
        delay = backoff.after(time.monotonic() - started)
        say(
            f"nats-server exited unexpectedly with code {code}; restarting in "
            f"{delay:g}s (restart {backoff.restarts}):\n{tail}"
        )
        await server.stop()  # releases its lock and ports file, so it can start again
        if await until_stopped(stop, asyncio.sleep(delay)):
            return
        try:
            await server.start()
        except BridgeError as exc:
            say(f"nats-server could not be restarted [{exc.reason}]")
            continue  # wait() returns at once for a failed start: the next pause is longer
        started = time.monotonic()
        say(f"nats-server restarted on {server.url} (pid {server.pid})")
