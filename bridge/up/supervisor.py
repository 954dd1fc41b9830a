"""Run the stack's child processes, notice when one dies, and stop them in order.

Children get their own session, so Ctrl-C in the terminal reaches only `bridge up`, which then
stops them in the reverse order of starting (adapters, broker, nats-server). On Linux each child
also gets a parent-death signal, so a `bridge up` killed with SIGKILL leaves no orphans behind.
Output of each child goes to its own log file; errors quote the tail of that log.
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
from ..errors import ConfigError, TransportError

__all__ = ["Child", "ChildExited", "ChildSpec", "Probe", "Supervisor", "log_tail"]

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
    """Starts children one after another and stops them all, last started first."""

    def __init__(self, *, on_event: Callable[[str], None] | None = None) -> None:
        self._children: list[Child] = []
        self._on_event = on_event or (lambda _: None)

    @property
    def children(self) -> tuple[Child, ...]:
        return tuple(self._children)

    def __repr__(self) -> str:
        return f"Supervisor({self._children!r})"

    async def start(self, spec: ChildSpec) -> Child:
        """Start a child and wait until its probe says it is ready, or fail with its log tail."""
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
        child = Child(spec, proc, offset)
        self._children.append(child)
        await self._wait_ready(child)
        self._on_event(f"{child.name} ready (pid {child.pid})")
        return child

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

    async def first_exit(self) -> Child:
        """Wait until any child exits and return it (for reporting an unexpected death)."""
        if not self._children:
            raise ConfigError("no children to watch", reason="up.no_children")
        waiters = {asyncio.ensure_future(child.wait()): child for child in self._children}
        try:
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        return waiters[next(iter(done))]

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
