"""Read the audit trail: from the stream (read-only, direct gets) or from an export file.

`stream_records` yields (stream sequence, record bytes) in order, a bounded number of reads in
flight; a sequence the stream no longer has in the middle of the chain is reported as removed.
`export` writes a range as JSON lines, the exact stored bytes one per line, continued up to the
next checkpoint so the range is signed; `file_records` reads such a file back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext

from ..errors import ConfigError, TransportError
from ..nats.subjects import AUDIT_STREAM
from .events import MAX_RECORD_BYTES, AuditRecordInvalid, decode_record
from .verify import AuditBroken

__all__ = ["StreamState", "export", "file_records", "stream_records", "stream_state"]

_WINDOW: Final = 32
_MAX_LINE: Final = MAX_RECORD_BYTES + 2


@dataclass(frozen=True, slots=True)
class StreamState:
    first: int
    last: int
    deny_delete: bool
    deny_purge: bool
    max_age: float

    def problems(self) -> list[str]:
        """Settings that would let records go other than by age; empty when all is well."""
        found = []
        if not self.deny_delete:
            found.append("the audit stream allows deleting records (deny_delete is off)")
        if not self.deny_purge:
            found.append("the audit stream allows purging (deny_purge is off)")
        if self.max_age <= 0:
            found.append("the audit stream has no age limit")
        return found


async def stream_state(js: JetStreamContext, stream: str = AUDIT_STREAM) -> StreamState:
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError as exc:
        raise ConfigError(f"there is no stream {stream}", reason="audit.no_stream") from exc
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise TransportError(
            f"cannot read the state of {stream} ({type(exc).__name__})", reason="audit.unavailable"
        ) from exc
    state, config = info.state, info.config
    return StreamState(
        first=int(state.first_seq or 0),
        last=int(state.last_seq or 0),
        deny_delete=bool(config.deny_delete),
        deny_purge=bool(config.deny_purge),
        max_age=float(config.max_age or 0),
    )


async def _get(js: JetStreamContext, stream: str, seq: int) -> bytes | None:
    try:
        msg = await js.get_msg(stream, seq=seq, direct=True)
    except nats.js.errors.NotFoundError:
        return None
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise TransportError(
            f"cannot read audit record {seq} ({type(exc).__name__})", reason="audit.unavailable"
        ) from exc
    return msg.data or b""


async def stream_records(
    js: JetStreamContext,
    stream: str = AUDIT_STREAM,
    *,
    first: int | None = None,
    last: int | None = None,
) -> AsyncIterator[tuple[int, bytes]]:
    """The stored records from `first` (default: the oldest kept) to `last` (default: newest)."""
    state = await stream_state(js, stream)
    start = max(state.first, first or 0, 1)
    end = min(state.last, last if last is not None else state.last)
    pending: dict[int, asyncio.Task[bytes | None]] = {}
    seq = start
    try:
        while seq <= end:
            for ahead in range(seq, min(end, seq + _WINDOW - 1) + 1):
                if ahead not in pending:
                    pending[ahead] = asyncio.create_task(_get(js, stream, ahead))
            data = await pending.pop(seq)
            if data is None:
                if seq == start:  # aged out between the state and the read: begin later
                    start = seq + 1
                    seq += 1
                    continue
                raise AuditBroken(seq, "missing", "is missing from the stream (deleted)")
            yield seq, data
            seq += 1
    finally:
        for task in pending.values():
            task.cancel()


async def export(
    js: JetStreamContext,
    out: Path,
    *,
    first: int | None = None,
    last: int | None = None,
    stream: str = AUDIT_STREAM,
) -> tuple[int, int]:
    """Write records `first..last` and on to the next checkpoint; return the range written."""
    written: list[bytes] = []
    span = (0, 0)
    async for seq, data in stream_records(js, stream, first=first):
        written.append(data)
        span = (span[0] or seq, seq)
        if last is not None and seq >= last and _is_checkpoint(data):
            break
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_bytes(b"".join(line + b"\n" for line in written))
        tmp.replace(out)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror}", reason="file.write") from exc
    return span


def _is_checkpoint(data: bytes) -> bool:
    try:
        return decode_record(data).checkpoint is not None
    except AuditRecordInvalid:
        return False


def file_records(path: Path) -> Iterator[tuple[int | None, bytes]]:
    """The records of an export, one per line, positions unknown (the records name them)."""
    try:
        with path.open("rb") as f:
            for line in f:
                if len(line) > _MAX_LINE:
                    raise ConfigError(
                        f"{path}: a line is longer than any audit record", reason="audit.malformed"
                    )
                stripped = line.rstrip(b"\n")
                if stripped:
                    yield None, stripped
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", reason="file.read") from exc
