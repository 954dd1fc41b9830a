"""Retention, checked rather than trusted: find anything the store holds past its limit.

Every stream of the account is inspected with a connection of its own (the admin identity,
read-only requests): the inboxes and submissions, status events, pending notes, the consent
registry, the audit trail and the adapters' KV buckets (their stores). A stored message is
overdue when it is older than its own `Nats-TTL` or than its stream's `max_age`, by more than a
small slack (the server removes expired messages on a timer). Nothing is changed: the check
reports where each overdue message is (stream, sequence, subject) and by how much.

Reading is bounded: at most `max_per_stream` messages per stream, oldest first (the oldest are
the likeliest to be overdue); a stream with more says so, so a healthy result is never claimed
for what was not looked at.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext

from ..errors import TransportError
from .subjects import HDR_TTL

__all__ = ["Overdue", "RetentionReport", "check_retention"]

_WINDOW: Final = 32


@dataclass(frozen=True, slots=True)
class Overdue:
    stream: str
    seq: int
    subject: str
    stored_at: int
    limit: int  # seconds
    kind: str  # "ttl" or "max_age"
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

    @property
    def healthy(self) -> bool:
        return not self.overdue and not self.unchecked and not self.no_limit

    def lines(self) -> list[str]:
        out = [f"OVERDUE {item}" for item in self.overdue]
        out += [
            f"NOT CHECKED {n} messages of {s} (raise --max-per-stream)"
            for s, n in sorted(self.unchecked.items())
        ]
        out += [f"NO LIMIT {s}: neither max_age nor per-message TTLs" for s in self.no_limit]
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
    slack: int = 60,
    max_per_stream: int = 10_000,
    wait: float = 10.0,
) -> RetentionReport:
    report = RetentionReport()
    try:
        async with asyncio.timeout(wait):
            infos = await js.streams_info()
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise TransportError("cannot list the streams", reason="retention.unavailable") from exc
    for info in sorted(infos, key=lambda i: i.config.name or ""):
        await _check_stream(js, info, report, now, slack, max_per_stream, wait)
    return report


async def _check_stream(
    js: JetStreamContext,
    info: object,
    report: RetentionReport,
    now: Callable[[], float],
    slack: int,
    max_per_stream: int,
    wait: float,
) -> None:
    config, state = info.config, info.state  # type: ignore[attr-defined]
    name = str(config.name)
    max_age = int(config.max_age or 0)
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
                _judge(name, msg, max_age, int(now()), slack, report)
        if last > end:
            report.unchecked[name] = last - end
    report.streams[name] = inspected


def _judge(
    stream: str, msg: object, max_age: int, now: int, slack: int, report: RetentionReport
) -> None:
    stored = msg.time  # type: ignore[attr-defined]
    if stored is None:
        return
    stored_at = int(stored.timestamp())
    age = now - stored_at
    limits = []
    ttl = _ttl(msg.headers)  # type: ignore[attr-defined]
    if ttl is not None:
        limits.append((ttl, "ttl"))
    if max_age:
        limits.append((max_age, "max_age"))
    for limit, kind in limits:
        if age > limit + slack:
            report.overdue.append(
                Overdue(
                    stream=stream,
                    seq=int(msg.seq),  # type: ignore[attr-defined]
                    subject=str(msg.subject),  # type: ignore[attr-defined]
                    stored_at=stored_at,
                    limit=limit,
                    kind=kind,
                    overdue_by=age - limit,
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
