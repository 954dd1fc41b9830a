"""`bridge bench e2e`: the whole stack, end to end, against the limits beneath it.

One run starts its own stack below a temporary directory: nats-server (every write synced to
disk before it is acknowledged, bridge's default), the broker and the three demo adapters as
child processes, exactly as `bridge up` runs them; the local systems around them live in this
process (`bridge.bench._local`). For each body size and recipient count it measures

- **throughput**: with `window` messages in flight end to end (a message leaves the window
  when both its deliveries and its receipts are back), messages per second at the end of the
  path; so the stack runs at the highest rate it sustains, without a backlog growing;
- **latency** at half that rate, arrivals at fixed intervals: from the HTTP submission to the
  delivery at the last recipient's local system, and to the receipt of the last recipient back
  at the sender (percentiles p50, p95, p99 and the maximum);
- the **CPU time per message** of every process (from /proc) and the **durable writes per
  message** (stream sequences before and after, per stream: KV records included);

and beside them, in the same run,

- the **transport limit** (`bridge.bench._transport`): raw nats-py moving real envelopes of
  the same sizes along the same streams with the same durability, and nothing else;
- the **crypto floor**: the CPU time of the primitives one message and its receipts need
  (timed by `bridge.bench.crypto`), as messages per second on all cores;
- the **peak memory** of every process while a small and a large backlog wait, and then while
  the local system drains them; the backlog is stored straight into the recipient's inbox as
  the broker routes it (`bridge.bench._backlog`; `fill="http"` submits it through the sending
  adapter instead, about 150 times slower). `memory_only` measures only this.

The ratio is throughput divided by the lower of the two limits. docs/bench.md says how to
read it, docs/performance.md what it showed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Final

import aiohttp
import msgspec

from ..crypto import Keyring, seal
from ..errors import ConfigError, TransportError
from ..nats.identities import Identity
from ..nats.subjects import BROKER_CONSUMER, submit_stream
from ..wire import Delivered, Purpose, Receipt, encode_body
from . import crypto as crypto_bench
from ._attachment import (
    AttachmentCase,
    file_blocks,
    mib_per_s,
    object_store_round_trip,
    sample_memory,
)
from ._backlog import fill_inbox
from ._local import (
    PullClient,
    ReceiptWatcher,
    Submitter,
    Tracker,
    WebhookReceiver,
    body_of_size,
    submit_request,
)
from ._procfs import Watched
from ._stack import SENDER, BenchStack
from ._timing import Progress, no_progress
from ._transport import TransportServer, stream_sequences
from .nats import _filesystem

__all__ = [
    "DEFAULT_BACKLOGS",
    "DEFAULT_SIZES",
    "FORMAT",
    "E2EBench",
    "Settings",
    "render_text",
    "run",
    "to_json",
]

FORMAT: Final = "bridge-bench-e2e/v1"
DEFAULT_SIZES: Final = (1024, 64 * 1024)
DEFAULT_BACKLOGS: Final = (1000, 5000)
WEBHOOK_RECIPIENT: Final = "suchtberatung-unna"
PULL_RECIPIENT: Final = "spdi-unna"
_RECIPIENTS: Final = (WEBHOOK_RECIPIENT, PULL_RECIPIENT)
_RECEIPT_BODY: Final = 1024  # receipts are smaller; the 1 KiB primitives stand in for them
_MESSAGE_TIMEOUT: Final = 120.0
_FILE_TIMEOUT: Final = 900.0  # one file of up to 100 MiB on a loaded machine
_SAMPLE_EVERY: Final = 0.2
_QUICK: Final = " --quick (a shape check: the numbers mean nothing)"


@dataclass(frozen=True, slots=True)
class Settings:
    """How long and how hard one run measures; `quick()` is the shape check CI runs."""

    seconds: float = 10.0  # each throughput and each latency measurement
    transport_seconds: float = 5.0
    crypto_seconds: float = 0.5
    crypto_rounds: int = 3
    window: int = 32
    sizes: tuple[int, ...] = DEFAULT_SIZES
    recipients: tuple[int, ...] = (1, 2)
    backlogs: tuple[int, ...] = DEFAULT_BACKLOGS
    drain_seconds: float = 5.0  # the local systems take deliveries again, memory still sampled
    attachment_bytes: int = 100 * 1024 * 1024  # the one-file case; 0 leaves it out
    quick: bool = False
    fill: str = "inbox"  # how the backlog is filled: "inbox" (as routed) or "http" (submitted)
    memory_only: bool = False  # no throughput, latency or limits: only the backlog's memory

    @classmethod
    def quick_check(cls) -> Settings:
        return cls(
            seconds=1.0,
            transport_seconds=0.3,
            crypto_seconds=0.02,
            crypto_rounds=1,
            window=4,
            backlogs=(8, 16),
            drain_seconds=0.5,
            attachment_bytes=1024 * 1024,
            quick=True,
        )

    def check(self) -> None:
        for name in ("seconds", "transport_seconds", "crypto_seconds", "drain_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number")
        if not 1 <= self.window <= 1024:
            raise ValueError("window must be 1 to 1024")
        if not self.sizes or any(not 1024 <= s <= 90 * 1024 for s in self.sizes):
            raise ValueError("body sizes must be 1 KiB to 90 KiB")
        if not self.recipients or any(n not in (1, 2) for n in self.recipients):
            raise ValueError("recipients must be 1 or 2")
        if self.attachment_bytes and not 1024 <= self.attachment_bytes <= 100 * 1024 * 1024:
            raise ValueError("the attachment must be 1 KiB to 100 MiB (or 0: none)")
        if len(self.backlogs) != 2 or not 1 <= self.backlogs[0] < self.backlogs[1] <= 1_000_000:
            raise ValueError("backlogs must be a small and a larger count, up to 1,000,000")
        if self.fill not in ("inbox", "http"):
            raise ValueError('fill must be "inbox" or "http"')


# -- results ----------------------------------------------------------------------------------


class Percentiles(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Latency in milliseconds."""

    p50: float
    p95: float
    p99: float
    max: float


class Latency(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    rate: float  # arrivals per second, fixed intervals
    messages: int
    delivered: Percentiles  # submission to the last recipient's local system
    receipted: Percentiles  # submission to the last recipient's receipt at the sender


class Limit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A limit as CPU time per message and as messages per second on `cores` cores."""

    cpu_ms_per_message: float
    msgs_per_second: float


class TransportLimit(Limit, frozen=True, forbid_unknown_fields=True):
    measured_msgs_per_second: float  # what the raw path reached here, all in one process
    cpu_ms_by_process: dict[str, float]
    writes_per_message: float


class Row(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    body_bytes: int
    recipients: int
    envelope_bytes: int
    msgs_per_second: float
    messages: int
    latency: Latency
    transport: TransportLimit
    crypto: Limit
    lower_limit: str  # "transport" or "crypto"
    ratio: float  # msgs_per_second / the lower limit
    cpu_ms_per_message: float  # all processes together
    cpu_ceiling_msgs_per_second: float  # cores / cpu_ms_per_message: bridge's own CPU limit
    cpu_ms_by_process: dict[str, float]
    writes_per_message: float
    writes_by_stream: dict[str, float]
    duplicates: int  # deliveries a local system got twice (should be 0)


class Memory(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    backlog: int
    peak_rss_bytes: dict[str, int]
    drained: int = 0  # messages the webhook's local system took while the backlog drained


class E2EBench(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: str
    started_at: str
    finished_at: str
    quick: bool
    seconds: float
    window: int
    python: str
    cryptography: str
    nats_py: str
    cpus: int
    load_average: list[float]  # at the start: 1, 5, 15 minutes
    load_average_end: list[float]
    store_filesystem: str
    rows: list[Row]
    memory: list[Memory]
    memory_growth: dict[str, float]  # large backlog's peak / small backlog's peak
    primitives: list[crypto_bench.PrimitiveRate]  # what the crypto floor was computed from
    attachment: AttachmentCase | None = None  # one file end to end, against the object store


# -- the crypto floor -------------------------------------------------------------------------


def _crypto_floor(
    settings: Settings, progress: Progress
) -> tuple[dict[tuple[int, int], Limit], list[crypto_bench.PrimitiveRate]]:
    """CPU time of the primitives per message (and its receipts), per size and recipients.

    `bench crypto` times by the wall clock. On a busy machine this thread gets only part of a
    core, so its rates are scaled by the share of CPU it got (thread CPU time over wall time,
    the same for every primitive since they take turns in short slices): the floor is in CPU
    time, like everything it is compared with.
    """
    wall, cpu = time.perf_counter(), time.thread_time()
    result = crypto_bench.run(
        seconds=settings.crypto_seconds,
        recipients=2,
        rounds=settings.crypto_rounds,
        progress=lambda m: progress(f"crypto floor: {m}"),
    )
    share = min(1.0, (time.thread_time() - cpu) / (time.perf_counter() - wall))
    if share < 0.95:
        progress(f"crypto floor: this thread got {share:.0%} of a core; rates scaled to CPU time")
    result = msgspec.structs.replace(
        result,
        primitives=[
            msgspec.structs.replace(
                p,
                ops_per_second=p.ops_per_second / share,
                rounds=[r / share for r in p.rounds],
            )
            for p in result.primitives
        ],
    )
    rates = {(p.name, p.input_bytes): p.ops_per_second for p in result.primitives}
    inputs: dict[int, dict[str, int]] = {}
    for recipe in result.recipes:
        for term in recipe.cost:
            inputs.setdefault(recipe.body_bytes, {})[term.name] = term.input_bytes

    def cost(size: int, *terms: tuple[str, float]) -> float:
        known = inputs[size if size in inputs else min(inputs, key=lambda s: abs(s - size))]
        return sum(count / rates[name, known[name]] for name, count in terms)

    def seal_cost(size: int, wraps: int) -> float:
        return cost(
            size,
            ("sign", 1),
            ("hpke-wrap", wraps),
            ("aead-seal", 1),
            ("sha256", 1),
            ("hkdf-pair", 1),
            ("random", 1),
        )

    def check_cost(size: int) -> float:  # the broker's: signature and header hash
        return cost(size, ("verify-signature", 1), ("sha256", 1))

    def open_cost(size: int) -> float:
        return check_cost(size) + cost(size, ("hpke-unwrap", 1), ("aead-open", 1), ("hkdf-pair", 1))

    cores = os.cpu_count() or 1
    floors = {}
    for size in settings.sizes:
        for n in settings.recipients:
            message = seal_cost(size, n) + check_cost(size) + n * open_cost(size)
            receipt = seal_cost(_RECEIPT_BODY, 1) + check_cost(_RECEIPT_BODY)
            receipt += open_cost(_RECEIPT_BODY)
            seconds = message + n * receipt
            floors[size, n] = Limit(
                cpu_ms_per_message=seconds * 1e3, msgs_per_second=cores / seconds
            )
    return floors, result.primitives


# -- sample envelopes (for the transport path) ------------------------------------------------


def _sample_envelopes(sizes: Sequence[int]) -> tuple[dict[tuple[int, int], bytes], bytes]:
    """Real envelopes of each size for 1 and 2 recipients, and a real receipt.

    NOTE: borrows `bench crypto`'s in-memory federation: same suite, so same sizes.
    """
    fed = crypto_bench._federation(2, int(time.time()))
    agencies = [r.agency for r in fed.recipients]

    def sealed(body: bytes, message_type: str, sender: Keyring, to: list[str]) -> bytes:
        receipt = message_type == "receipt"
        return seal(
            body,
            message_type=message_type,
            sender=sender,
            recipients=to,
            directory=fed.directory,
            consent="c-" + "0" * 32,
            purpose=(
                Purpose.DELIVERY_CONFIRMATION if receipt else Purpose.INTEGRATION_SUPPORT
            ).value,
            categories=["delivery-metadata"] if receipt else ["identity", "contact", "addiction"],
            lifetime=3600,
            now=fed.now,
        )

    envelopes = {
        (size, n): sealed(body_of_size(size), "handover", fed.sender, agencies[:n])
        for size in sizes
        for n in (1, 2)
    }
    receipt = Receipt(
        in_reply_to=str(uuid.uuid4()),
        received_at=datetime.datetime.now(datetime.UTC),
        disposition=Delivered(),
    )
    return envelopes, sealed(
        encode_body(receipt), "receipt", fed.recipients[0], [fed.sender.agency]
    )


async def _transport_limits(
    root: Path, settings: Settings, progress: Progress
) -> tuple[dict[tuple[int, int], TransportLimit], dict[tuple[int, int], int]]:
    envelopes, receipt = await asyncio.to_thread(_sample_envelopes, settings.sizes)
    server = TransportServer(root / "transport", SENDER, _RECIPIENTS)
    cores = os.cpu_count() or 1
    limits = {}
    try:
        progress("transport limit: starting its own nats-server")
        await server.start(os.getpid())
        for size in settings.sizes:
            for n in settings.recipients:
                progress(f"transport limit: {_size(size)}, {n} recipient(s)")
                done = await server.measure(
                    envelopes[size, n],
                    receipt,
                    _RECIPIENTS[:n],
                    seconds=settings.transport_seconds,
                    window=settings.window,
                )
                if not done.messages:
                    raise TransportError("no message made it round", reason="bench.transport")
                cpu = sum(done.cpu_seconds.values()) / done.messages
                limits[size, n] = TransportLimit(
                    cpu_ms_per_message=cpu * 1e3,
                    msgs_per_second=cores / cpu if cpu else math.inf,
                    measured_msgs_per_second=done.msgs_per_second,
                    cpu_ms_by_process={
                        k: v * 1e3 / done.messages for k, v in done.cpu_seconds.items()
                    },
                    writes_per_message=sum(done.writes.values()) / done.messages,
                )
    finally:
        await server.stop()
    return limits, {key: len(envelope) for key, envelope in envelopes.items()}


# -- the stack under load ---------------------------------------------------------------------


class _Load:
    """The stack and its local systems, and the ways this benchmark drives them."""

    def __init__(self, stack: BenchStack, session: aiohttp.ClientSession) -> None:
        self.stack = stack
        self.tracker = Tracker()
        s = stack.stack
        self.submitter = Submitter(session, s.adapter_url(SENDER), s.token(SENDER))
        self.webhook = WebhookReceiver(
            self.tracker,
            {WEBHOOK_RECIPIENT: s.layout.webhook_secret(WEBHOOK_RECIPIENT).read_bytes().strip()},
        )
        self.pull = PullClient(
            session,
            s.adapter_url(PULL_RECIPIENT),
            s.token(PULL_RECIPIENT, ["inbox:read", "inbox:ack"]),
            PULL_RECIPIENT,
            self.tracker,
        )
        assert stack.admin is not None
        self.receipts = ReceiptWatcher(stack.admin, SENDER, self.tracker)

    def __repr__(self) -> str:
        return f"_Load({self.tracker!r})"

    @property
    def processes(self) -> list[Watched]:
        return self.stack.processes

    async def send(self, request: bytes, recipients: tuple[str, ...]) -> float:
        """Submit one message and wait until it is delivered and receipted everywhere."""
        submitted = time.perf_counter()
        message_id = await self.submitter.submit(request)
        track = self.tracker.accepted(message_id, recipients, submitted, time.perf_counter())
        try:
            async with asyncio.timeout(_MESSAGE_TIMEOUT):
                await track.done.wait()
        except TimeoutError as exc:
            dead = ", ".join(self.stack.dead()) or "none"
            raise TransportError(
                f"a message was not delivered and receipted within {_MESSAGE_TIMEOUT:g}s "
                f"(exited: {dead}); see the logs in {self.stack.layout_root / 'logs'}",
                reason="bench.lost",
            ) from exc
        return time.perf_counter()

    async def sequences(self) -> dict[str, int]:
        assert self.stack.admin is not None
        return await stream_sequences(self.stack.admin.jetstream(timeout=10.0))

    async def closed_loop(
        self, body: bytes, recipients: tuple[str, ...], seconds: float, window: int
    ) -> tuple[list[float], int]:
        """`window` messages in flight for `seconds`; completion times, messages sent."""
        deadline = time.perf_counter() + seconds
        completions: list[float] = []

        async def worker() -> None:
            while time.perf_counter() < deadline:
                request = submit_request(body, recipients, self.submitter.consent)
                completions.append(await self.send(request, recipients))

        async with asyncio.TaskGroup() as tg:
            for _ in range(window):
                tg.create_task(worker())
        return completions, len(completions)

    async def open_loop(
        self, body: bytes, recipients: tuple[str, ...], rate: float, seconds: float
    ) -> list[str]:
        """Arrivals at fixed intervals of 1/`rate` for `seconds`; the message ids."""
        count = max(2, int(rate * seconds))
        start = time.perf_counter()
        ids: list[str] = []

        async def one(at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            request = submit_request(body, recipients, self.submitter.consent)
            submitted = time.perf_counter()
            message_id = await self.submitter.submit(request)
            ids.append(message_id)
            track = self.tracker.accepted(message_id, recipients, submitted, time.perf_counter())
            async with asyncio.timeout(_MESSAGE_TIMEOUT):
                await track.done.wait()

        async with asyncio.TaskGroup() as tg:
            for i in range(count):
                tg.create_task(one(start + i / rate))
        return ids


def _percentiles(values: Sequence[float]) -> Percentiles:
    ordered = sorted(values)

    def at(q: float) -> float:
        if not ordered:
            return math.nan
        index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        return ordered[index] * 1e3

    return Percentiles(p50=at(0.50), p95=at(0.95), p99=at(0.99), max=at(1.0))


async def _measure_config(
    load: _Load,
    settings: Settings,
    size: int,
    n: int,
    transport: TransportLimit,
    floor: Limit,
    envelope_bytes: int,
    profile: Path | None,
    progress: Progress,
) -> Row:
    recipients = _RECIPIENTS[:n]
    load.pull.active = PULL_RECIPIENT in recipients
    body = body_of_size(size)
    label = f"{_size(size)}, {n} recipient(s)"
    progress(f"{label}: warming up")
    await load.closed_loop(body, recipients, min(2.0, settings.seconds), settings.window)

    progress(f"{label}: throughput, {settings.window} in flight for {settings.seconds:g} s")
    before = await load.sequences()
    for process in load.processes:
        process.mark_cpu()
    duplicates = load.tracker.duplicates
    profilers = await _start_profilers(profile, load.processes, f"{size}-{n}", settings.seconds)
    start = time.perf_counter()
    completions, sent = await load.closed_loop(body, recipients, settings.seconds, settings.window)
    cpu = {p.name: p.cpu_since_mark() for p in load.processes}
    after = await load.sequences()
    await _stop_profilers(profilers)
    # The first quarter is the window filling; count what finished after it.
    counted_from = start + settings.seconds / 4
    end = start + settings.seconds
    steady = [t for t in completions if counted_from <= t <= end]
    rate = len(steady) / (end - counted_from) if steady else len(completions) / settings.seconds
    writes = {k: (after[k] - before.get(k, 0)) / sent for k in after if after[k] != before.get(k)}

    half = max(0.5, rate / 2)
    progress(f"{label}: latency at {half:.1f} msg/s for {settings.seconds:g} s")
    ids = await load.open_loop(body, recipients, half, settings.seconds)
    tracks = [load.tracker.tracks[i] for i in ids]
    delivered = [t.delivered_all - t.submitted for t in tracks]  # type: ignore[operator]
    receipted = [t.receipted - t.submitted for t in tracks]  # type: ignore[operator]

    cpu_ms = {name: seconds * 1e3 / sent for name, seconds in cpu.items()}
    lower_name, lower = min(
        (("transport", transport.msgs_per_second), ("crypto", floor.msgs_per_second)),
        key=lambda item: item[1],
    )
    return Row(
        body_bytes=size,
        recipients=n,
        envelope_bytes=envelope_bytes,
        msgs_per_second=rate,
        messages=sent,
        latency=Latency(
            rate=half,
            messages=len(ids),
            delivered=_percentiles(delivered),
            receipted=_percentiles(receipted),
        ),
        transport=transport,
        crypto=floor,
        lower_limit=lower_name,
        ratio=rate / lower,
        cpu_ms_per_message=sum(cpu_ms.values()),
        cpu_ceiling_msgs_per_second=(os.cpu_count() or 1) * 1e3 / sum(cpu_ms.values()),
        cpu_ms_by_process=cpu_ms,
        writes_per_message=sum(writes.values()),
        writes_by_stream=writes,
        duplicates=load.tracker.duplicates - duplicates,
    )


async def _sample_memory(processes: Sequence[Watched]) -> None:
    while True:
        for process in processes:
            process.sample_memory()
        await asyncio.sleep(_SAMPLE_EVERY)


async def _backlog_memory(load: _Load, settings: Settings, progress: Progress) -> list[Memory]:
    """Peak memory while `backlog` messages wait, then while the local systems drain them."""
    body = body_of_size(settings.sizes[0])
    load.pull.active = False
    results = []
    waiting = 0
    async with asyncio.TaskGroup() as tg:
        sampler = tg.create_task(_sample_memory(load.processes))
        try:
            for backlog in settings.backlogs:
                for process in load.processes:
                    process.reset_peak()
                load.webhook.refusing = True
                progress(f"memory: filling a backlog of {backlog:,} messages ({settings.fill})")
                if settings.fill == "inbox":
                    await _fill_inbox(load, body, backlog - waiting, progress)
                else:
                    await _fill(load, body, backlog - waiting, settings.window, progress)
                waiting = backlog
                await _until_routed(load)
                progress(
                    f"memory: the local system takes deliveries for {settings.drain_seconds:g} s"
                )
                load.webhook.refusing = False
                taken = load.webhook.taken
                await asyncio.sleep(settings.drain_seconds)
                await _until_drained(load, taken)
                load.webhook.refusing = True
                results.append(
                    Memory(
                        backlog=backlog,
                        peak_rss_bytes={p.name: p.peak_rss for p in load.processes},
                        drained=load.webhook.taken - taken,
                    )
                )
        finally:
            sampler.cancel()
    return results


async def _fill(load: _Load, body: bytes, count: int, window: int, progress: Progress) -> None:
    recipients = (WEBHOOK_RECIPIENT,)
    left, done = count, 0
    step = max(1, count // 10)

    async def worker() -> None:
        nonlocal left, done
        while left > 0:
            left -= 1
            await load.submitter.submit(submit_request(body, recipients, load.submitter.consent))
            done += 1
            if done % step == 0:
                progress(f"memory: {done:,} of {count:,} submitted")

    async with asyncio.TaskGroup() as tg:
        for _ in range(min(count, max(window, 16))):
            tg.create_task(worker())


async def _fill_inbox(load: _Load, body: bytes, count: int, progress: Progress) -> None:
    """Store the backlog in the webhook recipient's inbox as the broker routes it: fast."""
    stack = load.stack
    await fill_inbox(
        stack.stack.layout,
        stack.server.url,
        stack.seed(Identity.broker()),
        sender=SENDER,
        recipient=WEBHOOK_RECIPIENT,
        consents=tuple(load.submitter.consents),
        body=body,
        count=count,
        progress=progress,
    )


async def _until_drained(load: _Load, taken: int) -> None:
    """Wait until the local system took at least one message, so draining was measured (the
    adapter may still wait out its webhook backoff from the refusals)."""
    deadline = time.monotonic() + 180
    while load.webhook.taken == taken:
        if time.monotonic() > deadline:
            raise TransportError("the backlog did not drain", reason="bench.drain")
        await asyncio.sleep(0.1)


async def _until_routed(load: _Load) -> None:
    """Wait until the broker has taken every submission: the backlog is in the inbox."""
    assert load.stack.admin is not None
    js = load.stack.admin.jetstream(timeout=10.0)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        infos = [
            await js.consumer_info(submit_stream(agency), BROKER_CONSUMER)
            for agency in (SENDER, *_RECIPIENTS)
        ]
        if not any(info.num_pending or info.num_ack_pending for info in infos):
            return
        await asyncio.sleep(0.2)
    raise TransportError("the broker did not route the backlog", reason="bench.backlog")


# -- profiling --------------------------------------------------------------------------------


async def _start_profilers(
    directory: Path | None, processes: Sequence[Watched], tag: str, seconds: float
) -> list[asyncio.subprocess.Process]:
    """py-spy on every Python process for the throughput measurement (`--profile DIR`)."""
    if directory is None:
        return []
    beside = Path(sys.executable).with_name("py-spy")
    exe = str(beside) if beside.exists() else shutil.which("py-spy")
    if exe is None:
        raise ConfigError("--profile needs py-spy (pip install py-spy)", reason="bench.profile")
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    profilers = []
    for process in processes:
        if process.name == "nats-server":
            continue
        name = process.name.replace("adapter ", "").split()[0]
        profilers.append(
            await asyncio.create_subprocess_exec(
                exe,
                "record",
                "--pid",
                str(process.pid),
                "--duration",
                str(max(1, math.ceil(seconds))),
                "--rate",
                "200",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(directory / f"{tag}-{name}.txt"),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        )
    return profilers


async def _stop_profilers(profilers: list[asyncio.subprocess.Process]) -> None:
    for proc in profilers:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30.0):
                await proc.wait()


# -- the run ----------------------------------------------------------------------------------


def _load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


async def run(
    settings: Settings,
    *,
    directory: Path | None = None,
    profile: Path | None = None,
    progress: Progress = no_progress,
) -> E2EBench:
    """Measure everything `Settings` asks for; the stack lives below a new temporary directory."""
    settings.check()
    started = datetime.datetime.now(datetime.UTC)
    load_start = _load_average()
    floors: dict[tuple[int, int], Limit] = {}
    primitives: list[crypto_bench.PrimitiveRate] = []
    if not settings.memory_only:
        progress("crypto floor: timing the primitives")
        floors, primitives = await asyncio.to_thread(_crypto_floor, settings, progress)
    try:
        root = Path(tempfile.mkdtemp(prefix="bridge-bench-e2e-", dir=directory))
    except OSError as exc:
        raise ConfigError(
            f"cannot create a directory in {directory or tempfile.gettempdir()}: {exc.strerror}",
            reason="bench.dir",
        ) from exc
    try:
        limits: dict[tuple[int, int], TransportLimit] = {}
        envelope_sizes: dict[tuple[int, int], int] = {}
        if not settings.memory_only:
            limits, envelope_sizes = await _transport_limits(root, settings, progress)
        rows, memory, attachment = await _run_stack(
            root, settings, limits, floors, envelope_sizes, profile, progress
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    growth = {
        name: memory[-1].peak_rss_bytes[name] / memory[0].peak_rss_bytes[name]
        for name in memory[0].peak_rss_bytes
        if memory[0].peak_rss_bytes[name]
    }
    return E2EBench(
        format=FORMAT,
        started_at=started.isoformat(timespec="seconds"),
        finished_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        quick=settings.quick,
        seconds=settings.seconds,
        window=settings.window,
        python=platform.python_version(),
        cryptography=version("cryptography"),
        nats_py=version("nats-py"),
        cpus=os.cpu_count() or 0,
        load_average=load_start,
        load_average_end=_load_average(),
        store_filesystem=_filesystem(root.parent),
        rows=rows,
        memory=memory,
        memory_growth=growth,
        primitives=primitives,
        attachment=attachment,
    )


async def _run_stack(
    root: Path,
    settings: Settings,
    limits: dict[tuple[int, int], TransportLimit],
    floors: dict[tuple[int, int], Limit],
    envelope_sizes: dict[tuple[int, int], int],
    profile: Path | None,
    progress: Progress,
) -> tuple[list[Row], list[Memory], AttachmentCase | None]:
    progress("stack: starting nats-server, broker and three adapters")
    stack = BenchStack(root)
    load: _Load | None = None
    try:
        await stack.start(lambda m: progress(f"stack: {m}"))
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max(64, 2 * settings.window))
        ) as session:
            load = _Load(stack, session)
            for _ in range(settings.window):  # one client per message in flight
                await load.submitter.register_consent((WEBHOOK_RECIPIENT, PULL_RECIPIENT))
            ports = stack.stack.ports
            await load.webhook.start(ports.host, ports.sink)
            await load.receipts.start()
            rows = []
            async with asyncio.TaskGroup() as tg:
                puller = tg.create_task(load.pull.run())
                try:
                    for size in () if settings.memory_only else settings.sizes:
                        for n in settings.recipients:
                            rows.append(
                                await _measure_config(
                                    load,
                                    settings,
                                    size,
                                    n,
                                    limits[size, n],
                                    floors[size, n],
                                    envelope_sizes[size, n],
                                    profile,
                                    progress,
                                )
                            )
                    attachment = (
                        await _attachment_case(load, settings.attachment_bytes, progress)
                        if settings.attachment_bytes and not settings.memory_only
                        else None
                    )
                    memory = await _backlog_memory(load, settings, progress)
                finally:
                    puller.cancel()
            progress("stack: stopping")
    finally:
        if load is not None:
            await load.receipts.stop()
            await load.webhook.stop()
        await stack.stop()
    return rows, memory, attachment


async def _attachment_case(load: _Load, size: int, progress: Progress) -> AttachmentCase:
    """One handover with one file of `size` bytes to the webhook recipient, then the object
    store round trip of as many bytes on the same server (bridge.bench._attachment)."""
    progress(f"attachment: one file of {_size(size)} end to end")
    recipients = (WEBHOOK_RECIPIENT,)
    request = submit_request(body_of_size(DEFAULT_SIZES[0]), recipients, load.submitter.consent)
    blocks, _ = file_blocks(size)
    for process in load.processes:
        process.reset_peak()
    async with asyncio.TaskGroup() as tg:
        sampler = tg.create_task(sample_memory(load.processes))
        try:
            submitted = time.perf_counter()
            message_id = await load.submitter.submit_with_file(
                request, "bench.pdf", "application/pdf", blocks
            )
            track = load.tracker.accepted(message_id, recipients, submitted, time.perf_counter())
            async with asyncio.timeout(_FILE_TIMEOUT):
                await track.done.wait()  # delivered, and receipted; timed to the delivery
        finally:
            sampler.cancel()
    delivered = track.delivered_all
    assert delivered is not None
    e2e = delivered - submitted
    peaks = {p.name: p.peak_rss for p in load.processes}
    progress("attachment: raw object store put and get of as many bytes")
    assert load.stack.admin is not None
    put, get = await object_store_round_trip(load.stack.admin.jetstream(timeout=120.0), size)
    e2e_rate, raw_rate = mib_per_s(size, e2e), mib_per_s(size, put + get)
    return AttachmentCase(
        size=size,
        e2e_seconds=e2e,
        e2e_mib_per_s=e2e_rate,
        put_seconds=put,
        get_seconds=get,
        raw_mib_per_s=raw_rate,
        ratio=e2e_rate / raw_rate,
        peak_rss_bytes=peaks,
    )


# -- output -----------------------------------------------------------------------------------


def to_json(result: E2EBench) -> bytes:
    return msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n"


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n:,} B"


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f}"


def render_text(result: E2EBench) -> str:
    load = ", ".join(f"{x:.2f}" for x in result.load_average)
    load_end = ", ".join(f"{x:.2f}" for x in result.load_average_end)
    lines = [
        f"bridge bench e2e{_QUICK if result.quick else ''}: "
        f"{result.window} in flight, {result.seconds:g} s per measurement",
        f"{result.started_at}, Python {result.python}, cryptography {result.cryptography}, "
        f"nats-py {result.nats_py}, {result.cpus} CPUs, store on {result.store_filesystem}, "
        f"load average {load} (at the end {load_end})",
    ]
    if not result.rows:  # memory only
        return "\n".join(lines + _memory_lines(result)) + "\n"
    lines += [
        "",
        f"{'body':>7} {'rcpt':>4} {'e2e/s':>7} {'transport/s':>11} {'crypto/s':>9} {'ratio':>6}"
        f" {'CPU ms':>7} {'CPU/s':>6} {'writes':>6}   {'delivered p50/p95/p99/max ms':<29}"
        f" {'receipted p50/p95/p99/max ms':<29}",
    ]
    for row in result.rows:
        d, r = row.latency.delivered, row.latency.receipted
        mark = {"transport": "t", "crypto": "c"}[row.lower_limit]
        lines.append(
            f"{_size(row.body_bytes):>7} {row.recipients:>4} {row.msgs_per_second:>7.1f}"
            f" {row.transport.msgs_per_second:>11.1f} {row.crypto.msgs_per_second:>9.1f}"
            f" {row.ratio:>5.2f}{mark} {row.cpu_ms_per_message:>7.1f}"
            f" {row.cpu_ceiling_msgs_per_second:>6.0f}"
            f" {row.writes_per_message:>6.1f}"
            f"   {d.p50:>6.0f} {d.p95:>6.0f} {d.p99:>6.0f} {d.max:>6.0f}   "
            f"{r.p50:>6.0f} {r.p95:>6.0f} {r.p99:>6.0f} {r.max:>6.0f}"
        )
    lines += [
        "",
        "e2e/s: messages per second delivered and receipted, with the window in flight.",
        "transport/s, crypto/s: the limits, as messages per second on all cores (CPU per message"
        " of raw nats-py on the same streams; of the crypto primitives).",
        "ratio: e2e/s over the lower limit (t = transport, c = crypto). Latency at half e2e/s.",
        "CPU ms: all processes per message; CPU/s: the rate that CPU allows on all cores (when"
        " e2e/s is far below it, the stack waited, or the machine was busy).",
        "primitives (calls/s on one core): "
        + ", ".join(
            f"{p.name} {_size(p.input_bytes)} {p.ops_per_second:.0f}"
            for p in result.primitives
            if p.name in ("sign", "verify-signature", "hpke-wrap", "hpke-unwrap")
        ),
        "",
        "CPU ms per message by process (e2e; transport path beside it):",
    ]
    names = list(result.rows[0].cpu_ms_by_process) if result.rows else []
    lines.append(
        f"{'body':>7} {'rcpt':>4} "
        + " ".join(f"{_short(n):>10}" for n in names)
        + f" {'transport':>10} {'crypto':>8}"
    )
    for row in result.rows:
        cells = " ".join(f"{row.cpu_ms_by_process[n]:>10.2f}" for n in names)
        lines.append(
            f"{_size(row.body_bytes):>7} {row.recipients:>4} {cells}"
            f" {row.transport.cpu_ms_per_message:>10.2f} {row.crypto.cpu_ms_per_message:>8.2f}"
        )
    lines += ["", "durable writes per message by stream (e2e; transport path: total):"]
    for row in result.rows:
        parts = ", ".join(f"{_stream(k)} {v:.1f}" for k, v in sorted(row.writes_by_stream.items()))
        lines.append(
            f"{_size(row.body_bytes):>7} {row.recipients:>4}  {parts}"
            f"  | transport {row.transport.writes_per_message:.1f}"
        )
    return "\n".join(lines + _memory_lines(result) + _attachment_lines(result)) + "\n"


def _memory_lines(result: E2EBench) -> list[str]:
    if not result.memory:
        return []
    lines = ["", "peak resident memory, MiB, while a backlog waits and then drains:"]
    mem_names = list(result.memory[0].peak_rss_bytes)
    lines.append(f"{'backlog':>8} " + " ".join(f"{_short(n):>10}" for n in mem_names))
    for m in result.memory:
        lines.append(
            f"{m.backlog:>8,} " + " ".join(f"{_mib(m.peak_rss_bytes[n]):>10}" for n in mem_names)
        )
    lines.append(
        f"{'growth':>8} "
        + " ".join(f"{result.memory_growth.get(n, math.nan):>10.2f}" for n in mem_names)
    )
    drained = ", ".join(f"{m.drained:,} of {m.backlog:,}" for m in result.memory)
    lines.append(f"drained while measured: {drained}")
    return lines


def _attachment_lines(result: E2EBench) -> list[str]:
    a = result.attachment
    if a is None:
        return []
    return [
        "",
        f"one attachment of {_size(a.size)} to the webhook recipient: {a.e2e_seconds:.2f} s,"
        f" {a.e2e_mib_per_s:.1f} MiB/s end to end; raw object store put {a.put_seconds:.2f}"
        f" s + get {a.get_seconds:.2f} s = {a.raw_mib_per_s:.1f} MiB/s; ratio {a.ratio:.2f}"
        " (target 0.50)",
        "peak resident memory during it, MiB: "
        + ", ".join(f"{_short(n)} {_mib(v)}" for n, v in a.peak_rss_bytes.items()),
    ]


def _stream(name: str) -> str:
    """BRIDGE_SUBMIT_x -> submit x, KV_adapter-x -> kv x: a table row fits a terminal."""
    labels = (
        ("BRIDGE_SUBMIT_", "submit "),
        ("BRIDGE_INBOX_", "inbox "),
        ("KV_adapter-", "kv "),
        ("BRIDGE_", ""),
    )
    for prefix, label in labels:
        if name.startswith(prefix):
            return label + name[len(prefix) :].lower()
    return name


def _short(name: str) -> str:
    return {
        "nats-server": "nats",
        "broker": "broker",
        f"adapter {SENDER}": "sender",
        f"adapter {WEBHOOK_RECIPIENT}": "webhook",
        f"adapter {PULL_RECIPIENT}": "pull",
        "bench (local systems)": "local",
    }.get(name, name[:10])
