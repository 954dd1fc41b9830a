"""`bridge bench nats`: what "acknowledged means on disk" costs, against the transport itself.

The run starts two private nats-servers in a temporary directory, each provisioned like a real
federation of one agency: one with `sync_interval: always` (bridge's default, an `fsync` before
every acknowledgement) and one with nats-server's default periodic sync. Into each, the agency
publishes into its real submit stream (`BRIDGE_SUBMIT_bench-agency`) through
`bridge.nats.transport.publish_durable` (with `Nats-Msg-Id`, waiting for the acknowledgement),
for every payload size, in two ways:

- one at a time: the next publish starts when the previous one is acknowledged (latency-bound);
- with a window: that many publishes outstanding at once (throughput-bound).

The baseline, in the same run and on the same sizes, is core NATS without JetStream: publish
and flush (a PING/PONG round trip) on the sync-always server, one at a time or a window's worth
of publishes per flush. Ratios against it say how much of the transport's rate JetStream keeps;
sync-always against server-default says what the per-write `fsync` costs.

Timing: all measurements take turns in slices of about 100 ms within each round
(`bridge.bench._timing`); a windowed slice ends when its last publish is acknowledged. Every
publish is bounded by a timeout. The stream is purged (untimed, between slices) whenever some
tens of MiB have gone into it, so the store stays small. The servers are stopped and the
directory removed when the run ends, also when it is cancelled (Ctrl-C).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Final, Literal

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from ..errors import BridgeError, ConfigError, TransportError
from ..nats.identities import Credentials, Identity
from ..nats.provision import ENVELOPE_MAX_BYTES, provision
from ..nats.server import NatsServer, ServerLayout, ServerSettings, configure
from ..nats.subjects import submit_stream, submit_subject
from ..nats.transport import connect, publish_durable
from ._timing import Progress, Schedule, Tally, no_progress

__all__ = [
    "DEFAULT_SIZES",
    "DEFAULT_WINDOW",
    "FORMAT",
    "MAX_SIZES",
    "MAX_WINDOW",
    "NatsBench",
    "Rate",
    "Row",
    "render_text",
    "run",
    "to_json",
]

FORMAT: Final = "bridge-bench-nats/v1"
DEFAULT_SIZES: Final = (1024, 64 * 1024)
DEFAULT_WINDOW: Final = 64
MAX_SIZES: Final = 8
MAX_WINDOW: Final = 1024

_Kind = Literal["core", "always", "default"]

_AGENCY: Final = "bench-agency"
# Only the admin identity may publish outside bridge's subjects, and no stream captures this
# one, so core publishes to it go to the server and no further. It holds no agency id.
_CORE_SUBJECT: Final = "bridge-bench.core"
_SLICE_SECONDS: Final = 0.1
_TIMEOUT: Final = 10.0  # for every publish, flush, purge and API call
_PURGE_AFTER_BYTES: Final = 32 * 1024 * 1024
_CLOSE_TIMEOUT: Final = 5.0


class Rate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Messages per second (median of the rounds), payload megabytes (10^6 B) per second."""

    msgs_per_second: float
    megabytes_per_second: float
    rounds: list[float]


class Row(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One payload size with `in_flight` publishes outstanding: the three rates and ratios.

    `core` is publish+flush without JetStream; `sync_always` and `sync_default` are JetStream
    publishes into its agency's submit stream, acknowledged, with and without an fsync per write.
    """

    payload_bytes: int
    in_flight: int
    core: Rate
    sync_always: Rate
    sync_default: Rate
    always_vs_default: float
    always_vs_core: float
    default_vs_core: float


class NatsBench(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The result of one run; `to_json()` gives its machine-readable form."""

    format: str
    started_at: str
    seconds: float
    rounds: int
    window: int
    sizes: list[int]
    python: str
    nats_py: str
    nats_server: str
    cpus: int
    store: str
    store_filesystem: str
    rows: list[Row]


# -- the servers ------------------------------------------------------------------------------


@dataclass
class _Target:
    """One running server: the agency's and the admin's connections, and a message counter."""

    agency: JetStreamContext
    admin: NATS
    admin_js: JetStreamContext
    unpurged_bytes: int = 0
    ids: itertools.count[int] = field(default_factory=itertools.count)

    def next_msg_id(self) -> str:
        return f"bench-{next(self.ids)}"

    async def purge_if_full(self) -> None:
        if self.unpurged_bytes >= _PURGE_AFTER_BYTES:
            await self.purge()

    async def purge(self) -> None:
        try:
            await self.admin_js.purge_stream(submit_stream(_AGENCY))
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise TransportError(
                f"cannot purge {submit_stream(_AGENCY)}: {exc!r}", reason="bench.purge"
            ) from exc
        self.unpurged_bytes = 0


async def _close(nc: NATS) -> None:
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await nc.close()
    except (TimeoutError, nats.errors.Error, OSError):
        pass  # the server is stopped next anyway


async def _start(
    stack: contextlib.AsyncExitStack, root: Path, *, sync_always: bool
) -> tuple[_Target, str]:
    """A configured, started and provisioned server below `root`; (target, server version)."""
    layout = ServerLayout(root / ("sync-always" if sync_always else "sync-default"))
    settings = configure(layout, ServerSettings(sync_always=sync_always), [_AGENCY])
    server = NatsServer.from_layout(layout)
    await server.start()
    stack.push_async_callback(server.stop)
    credentials = Credentials(layout.creds_dir)

    async def connected(identity: Identity) -> NATS:
        nc = await connect(
            settings.url,
            credentials.seed_file(identity),
            identity.inbox_prefix,
            f"bridge-bench-{identity.name}",
        )
        stack.push_async_callback(_close, nc)
        return nc

    admin = await connected(Identity.admin())
    admin_js = admin.jetstream(timeout=_TIMEOUT)
    await provision(admin_js, [_AGENCY])
    agency = await connected(Identity.for_agency(_AGENCY))
    target = _Target(agency=agency.jetstream(timeout=_TIMEOUT), admin=admin, admin_js=admin_js)
    return target, _server_version(admin)


def _server_version(nc: NATS) -> str:
    announced = nc.connected_server_version
    try:
        return f"{announced.major}.{announced.minor}.{announced.patch}"
    except ValueError:  # not semantic versioning; only shown, so do not fail the run for it
        return "unknown"


# -- what is timed ----------------------------------------------------------------------------


@dataclass
class _Item:
    """One measurement: `slice(seconds)` publishes for about that long and returns the count."""

    kind: _Kind
    size: int
    in_flight: int
    slice: Callable[[float], Awaitable[int]]
    target: _Target
    tally: Tally = field(default_factory=Tally)

    async def timed_slice(self, seconds: float) -> tuple[int, float]:
        start = time.perf_counter()
        count = await _uninterrupted(self.slice(seconds))
        elapsed = time.perf_counter() - start
        if self.kind != "core":
            self.target.unpurged_bytes += count * self.size
            await self.target.purge_if_full()  # after the clock stopped
        return count, elapsed


async def _uninterrupted(slice_run: Awaitable[int]) -> int:
    """Run a slice to its end even if the run is cancelled meanwhile, then pass the cancel on.

    nats-py keeps the future of a cancelled `flush` waiting for its PONG, and its reader task
    dies with InvalidStateError when the PONG arrives; so Ctrl-C must not land inside one. A
    slice ends at its deadline and each of its steps has a timeout, so the wait is bounded.
    """
    task = asyncio.ensure_future(slice_run)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # the cancel wins; mark a failure of the slice as seen
        raise


def _durable(target: _Target, payload: bytes, window: int) -> Callable[[float], Awaitable[int]]:
    """Acknowledged publishes into the agency's submit stream, `window` outstanding at most."""
    subject = submit_subject(_AGENCY)

    async def publisher(deadline: float) -> int:
        count = 0
        while True:
            await publish_durable(
                target.agency, subject, payload, msg_id=target.next_msg_id(), timeout=_TIMEOUT
            )
            count += 1
            if time.perf_counter() >= deadline:
                return count

    async def one_slice(seconds: float) -> int:
        deadline = time.perf_counter() + seconds
        if window == 1:
            return await publisher(deadline)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(publisher(deadline)) for _ in range(window)]
        except BaseExceptionGroup as group:
            if all(isinstance(e, BridgeError) for e in group.exceptions):
                raise group.exceptions[0]  # noqa: B904 - the group is kept as its context
            raise
        return sum(task.result() for task in tasks)

    return one_slice


def _core(target: _Target, payload: bytes, window: int) -> Callable[[float], Awaitable[int]]:
    """Core NATS: `window` publishes, then a flush (the server has them), until the deadline."""
    nc = target.admin

    async def one_slice(seconds: float) -> int:
        deadline = time.perf_counter() + seconds
        count = 0
        try:
            while True:
                for _ in range(window):
                    await nc.publish(_CORE_SUBJECT, payload)
                # nats-py's own timeout only: see `_uninterrupted` for why no outer one.
                await nc.flush(timeout=int(_TIMEOUT))
                count += window
                if time.perf_counter() >= deadline:
                    return count
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise TransportError(
                f"core publish to {_CORE_SUBJECT} failed: {exc!r}", reason="bench.core_publish"
            ) from exc

    return one_slice


def _items(always: _Target, default: _Target, sizes: Sequence[int], window: int) -> list[_Item]:
    items = []
    for size in sizes:
        payload = os.urandom(size)
        for in_flight in (1, window):
            items += [
                _Item("core", size, in_flight, _core(always, payload, in_flight), always),
                _Item("always", size, in_flight, _durable(always, payload, in_flight), always),
                _Item("default", size, in_flight, _durable(default, payload, in_flight), default),
            ]
    return items


async def _measure(items: Sequence[_Item], schedule: Schedule, progress: Progress) -> None:
    progress(f"warming up {len(items)} measurements")
    for item in items:
        await item.timed_slice(schedule.warm_up)
    for target in {id(item.target): item.target for item in items}.values():
        await target.purge()
    for item in schedule.turns(items, progress):
        item.tally.add(*await item.timed_slice(schedule.slice_length))


# -- the run ----------------------------------------------------------------------------------


def _check(seconds: float, rounds: int, sizes: Sequence[int], window: int) -> Schedule:
    schedule = Schedule(seconds=seconds, rounds=rounds, slice_seconds=_SLICE_SECONDS)
    if not 1 <= len(sizes) <= MAX_SIZES:
        raise ValueError(f"sizes must name 1 to {MAX_SIZES} payload sizes")
    if len(set(sizes)) != len(sizes):
        raise ValueError("sizes must not repeat")
    for size in sizes:
        if isinstance(size, bool) or not 1 <= size <= ENVELOPE_MAX_BYTES:
            raise ValueError(f"sizes must be between 1 and {ENVELOPE_MAX_BYTES} bytes")
    if isinstance(window, bool) or not 2 <= window <= MAX_WINDOW:
        raise ValueError(f"window must be between 2 and {MAX_WINDOW}")
    return schedule


async def run(
    *,
    seconds: float,
    rounds: int,
    sizes: Sequence[int],
    window: int,
    directory: Path | None = None,
    progress: Progress = no_progress,
) -> NatsBench:
    """Measure publishes for every size in `sizes`, one at a time and `window` at a time.

    Each of the 6 x len(sizes) measurements runs for about `seconds` in all, in `rounds`
    rounds, after a warm-up of at most 0.2 s; a few seconds more go to starting the servers.
    The servers' stores live in a new directory below `directory` (default: the system's
    temporary directory), removed when the run ends.
    """
    schedule = _check(seconds, rounds, sizes, window)
    started = datetime.datetime.now(datetime.UTC)
    try:
        root = Path(tempfile.mkdtemp(prefix="bridge-bench-nats-", dir=directory))
    except OSError as exc:
        raise ConfigError(
            f"cannot create a directory in {directory or tempfile.gettempdir()}: {exc.strerror}",
            reason="bench.dir",
        ) from exc
    try:
        async with contextlib.AsyncExitStack() as stack:
            progress(f"starting 2 nats-servers in {root}")
            always, server_version = await _start(stack, root, sync_always=True)
            default, _ = await _start(stack, root, sync_always=False)
            items = _items(always, default, sizes, window)
            await _measure(items, schedule, progress)
            progress("stopping the servers")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return NatsBench(
        format=FORMAT,
        started_at=started.isoformat(timespec="seconds"),
        seconds=seconds,
        rounds=rounds,
        window=window,
        sizes=list(sizes),
        python=platform.python_version(),
        nats_py=version("nats-py"),
        nats_server=server_version,
        cpus=os.cpu_count() or 0,
        store=str(root.parent),
        store_filesystem=_filesystem(root.parent),
        rows=_rows(items),
    )


def _rows(items: Sequence[_Item]) -> list[Row]:
    rates = {
        (item.kind, item.size, item.in_flight): Rate(
            msgs_per_second=item.tally.median,
            megabytes_per_second=item.tally.median * item.size / 1e6,
            rounds=item.tally.rates,
        )
        for item in items
    }
    rows = []
    for size, in_flight in dict.fromkeys((item.size, item.in_flight) for item in items):
        core, always, default = (
            rates[kind, size, in_flight] for kind in ("core", "always", "default")
        )
        rows.append(
            Row(
                payload_bytes=size,
                in_flight=in_flight,
                core=core,
                sync_always=always,
                sync_default=default,
                always_vs_default=always.msgs_per_second / default.msgs_per_second,
                always_vs_core=always.msgs_per_second / core.msgs_per_second,
                default_vs_core=default.msgs_per_second / core.msgs_per_second,
            )
        )
    return rows


def _filesystem(path: Path) -> str:
    """The type of the file system `path` is on (from /proc/self/mounts), or "unknown".

    It matters: on tmpfs an fsync costs nothing, and the sync-always ratio says nothing.
    """
    target = str(path.resolve())
    best, kind = "", "unknown"
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                inside = target == point or target.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, fields[2]
    except OSError:
        pass
    return kind


# -- output -----------------------------------------------------------------------------------


def to_json(result: NatsBench) -> bytes:
    return msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n"


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n:,} B"


def render_text(result: NatsBench) -> str:
    """The human-readable report: per size and window, the three rates and their ratios."""
    sizes = ", ".join(_size(s) for s in result.sizes)
    lines = [
        f"bridge bench nats: payloads {sizes}; window {result.window}; "
        f"{result.seconds:g} s per measurement, median of {result.rounds} rounds",
        f"{result.started_at}, Python {result.python}, nats-py {result.nats_py}, "
        f"nats-server {result.nats_server}, {result.cpus} CPUs, "
        f"store in {result.store} ({result.store_filesystem})",
        "",
        f"{'payload':>8}{'in flight':>11}  {'publish':<26}{'msgs/s':>10}{'MB/s':>9}"
        f"{'vs core':>9}{'always/default':>16}",
    ]
    for row in result.rows:
        head = f"{_size(row.payload_bytes):>8}{row.in_flight:>11}  "
        for label, rate, vs_core, vs_default in (
            ("core publish+flush", row.core, "", ""),
            (
                "JetStream, sync always",
                row.sync_always,
                f"{row.always_vs_core:.2f}",
                f"{row.always_vs_default:.2f}",
            ),
            ("JetStream, server default", row.sync_default, f"{row.default_vs_core:.2f}", ""),
        ):
            line = (
                f"{head}{label:<26}{rate.msgs_per_second:>10.1f}"
                f"{rate.megabytes_per_second:>9.2f}{vs_core:>9}{vs_default:>16}"
            )
            lines.append(line.rstrip())
    lines += [
        "",
        "vs core = JetStream msgs/s / core publish+flush msgs/s at the same size and in-flight.",
        "always/default = sync always msgs/s / server default msgs/s: 1.00 = the fsync is free.",
        "MB/s counts payload bytes (10^6). JetStream publishes are acknowledged, into "
        f"{submit_stream(_AGENCY)}.",
    ]
    if result.store_filesystem == "tmpfs":
        lines.append("The store is on tmpfs, where fsync costs nothing: use --dir on a disk.")
    return "\n".join(lines) + "\n"
