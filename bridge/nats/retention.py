"""Retention, checked rather than trusted: find anything the store holds past its limit.

Every stream of the account is inspected with a connection of its own (the admin identity,
read-only requests): the inboxes and submissions, status events, pending notes, the consent
registry, the audit trail and the adapters' KV buckets (their stores). A stored message is
overdue when it is older than its own `Nats-TTL`, its stream's `max_age`, or the limit the
signed policy sets for its stream (`StoreLimit`, from `bridge.policy.store_limits`), by more
than a small slack (the server removes expired messages on a timer). A stream whose own age
limit is missing (zero: for ever) or longer than the policy allows is named too; the broker
refuses to start on one (`check_stream_ages`). Records that carry a deadline of their own (an
adapter's note of an item held in its pull inbox) are judged by it through `deadlines`.
Nothing is changed: the check reports where each overdue message is (stream, sequence,
subject) and by how much.

Reading is bounded: at most `max_per_stream` messages per stream, oldest first (the oldest are
the likeliest to be overdue); a stream with more says so, so a healthy result is never claimed
for what was not looked at.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext

from .._cancel import pause
from ..errors import ConfigError, TransportError
from .backoff import Backoff
from .subjects import HDR_TTL

__all__ = [
    "AgeProblem",
    "Overdue",
    "RetentionReport",
    "StoreLimit",
    "check_retention",
    "check_stream_ages",
    "judge_age",
]

_WINDOW: Final = 32
_ATTEMPTS: Final = 3  # reads of one stream's settings before start-up gives up


@dataclass(frozen=True, slots=True)
class StoreLimit:
    """The longest a stream may keep a message, and the policy setting that says so.

    `stream` is a stream's name or, ending in `_`, the prefix of one stream per agency.
    """

    stream: str
    setting: str
    seconds: int

    def covers(self, stream: str) -> bool:
        if self.stream.endswith("_"):
            return stream.startswith(self.stream) and len(stream) > len(self.stream)
        return stream == self.stream


def _limit_for(limits: Sequence[StoreLimit], stream: str) -> StoreLimit | None:
    return next((limit for limit in limits if limit.covers(stream)), None)


Deadlines = Callable[[str, str, bytes | None], tuple[int, str] | None]
"""(stream, subject, data) -> (Unix time the record's subject must be gone by, which limit), for
records that name their own deadline; None for any other."""

AgeReason = Literal["retention.unlimited", "retention.too_long"]


@dataclass(frozen=True, slots=True)
class AgeProblem:
    """A stream whose own age limit does not enforce the policy's."""

    stream: str
    setting: str
    allowed: int
    max_age: int
    reason: AgeReason

    def __str__(self) -> str:
        allowed = f"the policy's {self.setting} allows {self.allowed}s"
        if not self.max_age:
            return f"{self.stream} keeps for ever (max_age 0); {allowed} [{self.reason}]"
        return f"{self.stream} keeps {self.max_age}s (max_age); {allowed} [{self.reason}]"


def judge_age(stream: str, max_age: int, limit: StoreLimit) -> AgeProblem | None:
    """Whether `stream`, with this age limit (0: none), enforces `limit`."""
    reason: AgeReason | None = None
    if max_age <= 0:
        reason = "retention.unlimited"
    elif max_age > limit.seconds:
        reason = "retention.too_long"
    if reason is None:
        return None
    return AgeProblem(stream, limit.setting, limit.seconds, max_age, reason)


async def check_stream_ages(
    js: JetStreamContext, limits: Sequence[StoreLimit], streams: Sequence[str], *, wait: float
) -> None:
    """Raise `ConfigError` naming every one of `streams` whose age limit does not enforce the
    policy's; a stream that does not exist is skipped (it gets the policy's when created)."""
    problems: list[AgeProblem] = []
    for name in streams:
        limit = _limit_for(limits, name)
        if limit is None:
            raise ValueError(f"no retention limit covers stream {name}")
        max_age = await _max_age(js, name, wait)
        if max_age is None:
            continue
        if (problem := judge_age(name, max_age, limit)) is not None:
            problems.append(problem)
    if problems:
        raise ConfigError(
            "the store does not enforce the policy's retention: "
            + "; ".join(str(p) for p in problems)
            + " (run `bridge nats provision` with this policy)",
            reason=problems[0].reason,
        )


async def _max_age(js: JetStreamContext, name: str, wait: float) -> int | None:
    """A stream's age limit, `None` if it does not exist. Asked up to three times: in a
    cluster under load, or while a stream elects its leader, one request can go unanswered."""
    backoff = Backoff()
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            async with asyncio.timeout(wait):
                info = await js.stream_info(name)
            return int(info.config.max_age or 0)
        except nats.js.errors.NotFoundError:
            return None
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            if attempt == _ATTEMPTS:
                raise TransportError(
                    f"cannot read the settings of stream {name}", reason="retention.unavailable"
                ) from exc
        await pause(backoff.next())
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class Overdue:
    stream: str
    seq: int
    subject: str
    stored_at: int
    limit: int  # seconds
    kind: str  # "ttl", "max_age", or the policy setting (e.g. "[retention] status")
    overdue_by: int

    def __str__(self) -> str:
        stored = datetime.datetime.fromtimestamp(self.stored_at, datetime.UTC).isoformat()
        return (
            f"{self.stream} seq {self.seq} ({self.subject}): stored {stored}, "
            f"{self.kind} {self.limit}s, overdue by {self.overdue_by}s"
        )


@dataclass(slots=True)
class RetentionReport:
    streams: dict[str, int] = field(default_factory=dict)  # stream -> messages inspected
    overdue: list[Overdue] = field(default_factory=list)
    unchecked: dict[str, int] = field(default_factory=dict)  # stream -> messages not read
    no_limit: list[str] = field(default_factory=list)  # streams without any age limit
    ages: list[AgeProblem] = field(default_factory=list)  # age limits beyond the policy's

    @property
    def healthy(self) -> bool:
        return not self.overdue and not self.unchecked and not self.no_limit and not self.ages

    def lines(self) -> list[str]:
        out = [f"OVERDUE {item}" for item in self.overdue]
        out += [
            f"NOT CHECKED {n} messages of {s} (raise --max-per-stream)"
            for s, n in sorted(self.unchecked.items())
        ]
        out += [f"NO LIMIT {s}: neither max_age nor per-message TTLs" for s in self.no_limit]
        out += [f"LIMIT TOO LONG {problem}" for problem in self.ages]
        return out


def _ttl(headers: dict[str, str] | None) -> int | None:
    raw = (headers or {}).get(HDR_TTL)
    if raw is None:
        return None
    try:
        value = int(raw.removesuffix("s"))
    except ValueError:
        return None
    return value if value > 0 else None


async def check_retention(
    js: JetStreamContext,
    *,
    now: Callable[[], float],
    limits: Sequence[StoreLimit] = (),
    deadlines: Deadlines | None = None,
    slack: int = 60,
    max_per_stream: int = 10_000,
    wait: float = 10.0,
) -> RetentionReport:
    """Inspect every stream; `limits` (the policy's, `bridge.policy.store_limits`) bound each
    stream they cover beyond its own settings, `deadlines` the records that carry their own."""
    report = RetentionReport()
    try:
        async with asyncio.timeout(wait):
            infos = await js.streams_info()
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise TransportError("cannot list the streams", reason="retention.unavailable") from exc
    for info in sorted(infos, key=lambda i: i.config.name or ""):
        limit = _limit_for(limits, str(info.config.name))
        judge = _Judge(limit, deadlines, slack)
        await _check_stream(js, info, judge, report, now, max_per_stream, wait)
    return report


async def _check_stream(
    js: JetStreamContext,
    info: object,
    judge: _Judge,
    report: RetentionReport,
    now: Callable[[], float],
    max_per_stream: int,
    wait: float,
) -> None:
    config, state = info.config, info.state  # type: ignore[attr-defined]
    name = str(config.name)
    max_age = int(config.max_age or 0)
    limit = judge.limit
    if limit is not None and (problem := judge_age(name, max_age, limit)) is not None:
        report.ages.append(problem)
    first, last = int(state.first_seq or 0), int(state.last_seq or 0)
    count = int(state.messages or 0)
    inspected = 0
    if not max_age and not config.allow_msg_ttl:
        report.no_limit.append(name)
    if count:
        end = min(last, first + max_per_stream - 1)
        for start in range(first, end + 1, _WINDOW):
            seqs = range(start, min(end, start + _WINDOW - 1) + 1)
            msgs = await asyncio.gather(*(_get(js, name, seq, wait) for seq in seqs))
            for msg in msgs:
                if msg is None:
                    continue  # removed meanwhile (acked, expired, replaced)
                inspected += 1
                judge(name, msg, max_age, int(now()), report)
        if last > end:
            report.unchecked[name] = last - end
    report.streams[name] = inspected


@dataclass(frozen=True, slots=True)
class _Judge:
    """Decides whether one stored message is overdue, by every limit that applies to it."""

    limit: StoreLimit | None  # the policy's for the stream
    deadlines: Deadlines | None
    slack: int

    def __call__(
        self, stream: str, msg: object, max_age: int, now: int, report: RetentionReport
    ) -> None:
        stored = msg.time  # type: ignore[attr-defined]
        if stored is None:
            return
        stored_at = int(stored.timestamp())
        subject = str(msg.subject)  # type: ignore[attr-defined]
        limits = []  # (seconds after storing, which limit)
        ttl = _ttl(msg.headers)  # type: ignore[attr-defined]
        if ttl is not None:
            limits.append((ttl, "ttl"))
        if max_age:
            limits.append((max_age, "max_age"))
        if self.limit is not None:
            limits.append((self.limit.seconds, self.limit.setting))
        if self.deadlines is not None:
            own = self.deadlines(stream, subject, msg.data)  # type: ignore[attr-defined]
            if own is not None:
                limits.append((own[0] - stored_at, own[1]))
        age = now - stored_at
        for seconds, kind in limits:
            if age > seconds + self.slack:
                report.overdue.append(
                    Overdue(
                        stream=stream,
                        seq=int(msg.seq),  # type: ignore[attr-defined]
                        subject=subject,
                        stored_at=stored_at,
                        limit=seconds,
                        kind=kind,
                        overdue_by=age - seconds,
                    )
                )
                return


async def _get(js: JetStreamContext, stream: str, seq: int, wait: float) -> object | None:
    try:
        async with asyncio.timeout(wait):
            return await js.get_msg(stream, seq=seq)
    except nats.js.errors.NotFoundError:
        return None
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise TransportError(
            f"cannot read {stream} message {seq}", reason="retention.unavailable"
        ) from exc
