"""The single audit writer: appends events to the chain and signs checkpoints.

Only the broker's NATS identity may publish to the audit subject. Several broker instances may
append concurrently and still form one chain: each append names the stream sequence it builds
on (`Nats-Expected-Last-Sequence`), so JetStream refuses it if another writer got there first;
the writer then reads the new head and builds the record again. Each event carries a
`Nats-Msg-Id` derived from what it records, so an event written again after a redelivery is
stored once (within the stream's duplicate window).

The events of one `append` (one step: a routed submission's `submitted`, `accepted` and
`routed`s) go into one record, whose `Nats-Msg-Id` is derived from its events' ids: one durable
write and one round trip per step, and the same step appended again is stored once.

A checkpoint is appended after every `every` records and, by `run_checkpoints`, whenever records
have waited `interval` seconds unsigned.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Final

import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext

from .._cancel import pause
from ..crypto import PrivateKey
from ..errors import TransportError
from ..nats.subjects import AUDIT_STREAM, HDR_EXPECTED_LAST_SEQ, audit_subject
from ..nats.transport import publish_durable
from .checkpoint import Checkpoint, sign_checkpoint
from .events import (
    GENESIS,
    MAX_GROUP_EVENTS,
    AuditEvent,
    AuditRecord,
    AuditRecordInvalid,
    decode_record,
    encode_record,
    record_hash,
)

__all__ = ["AuditWriter", "audit_msg_id"]

log = logging.getLogger("bridge.audit")

_WRONG_LAST_SEQUENCE: Final = (10071, 10164)
_MAX_ATTEMPTS: Final = 64


def audit_msg_id(kind: str, *about: str | None) -> str:
    """`Nats-Msg-Id` of an audit event: one per kind and what it is about.

    `about` names the event's subject in full, sender included (sender, message id, recipient):
    message ids are chosen by senders, so one agency must not be able to pre-empt the record
    of another's message by reusing its id. Hashed to stay within the id's length limit.
    """
    digest = hashlib.sha256("\x00".join(part or "" for part in about).encode()).hexdigest()
    return f"audit.{kind}.{digest[:40]}"


def _group_msg_id(group: Sequence[tuple[str, AuditEvent]]) -> str:
    """`Nats-Msg-Id` of a record holding several events: derived from their own ids."""
    digest = hashlib.sha256("\x00".join(msg_id for msg_id, _ in group).encode()).hexdigest()
    return f"audit.group.{digest[:40]}"


class AuditWriter:
    """Appends to the chain in `stream`; one instance per process, safe across processes."""

    def __init__(
        self,
        js: JetStreamContext,
        key: PrivateKey,
        *,
        every: int,
        interval: float,
        timeout: float,
        clock: Callable[[], float] = time.time,
        stream: str = AUDIT_STREAM,
        subject: str | None = None,
    ) -> None:
        if every < 1 or interval <= 0 or timeout <= 0:
            raise ValueError("every, interval and timeout must be positive")
        self._js = js
        self._key = key
        self._every = every
        self._interval = interval
        self._timeout = timeout
        self._clock = clock
        self._stream = stream
        self._subject = subject or audit_subject()
        self._lock = asyncio.Lock()
        self._head: tuple[int, str] | None = None  # (seq, hash); None: read it first
        self._unsigned = 0
        self.appended = 0

    def __repr__(self) -> str:
        head = self._head[0] if self._head else "?"
        return f"AuditWriter(stream={self._stream!r}, head={head}, unsigned={self._unsigned})"

    async def append(self, events: Sequence[tuple[str, AuditEvent]]) -> None:
        """Store the (msg_id, event) pairs of one step, in order, in one record (in a few if
        there are more than `MAX_GROUP_EVENTS`); raise `TransportError` if they cannot be
        stored. Appending the same pairs again stores nothing new (within the duplicate window).
        """
        async with self._lock:
            for start in range(0, len(events), MAX_GROUP_EVENTS):
                group = events[start : start + MAX_GROUP_EVENTS]
                if len(group) == 1:
                    await self._append(group[0][0], group[0][1], None)
                else:
                    await self._append(_group_msg_id(group), None, None, group=group)
            if self._unsigned >= self._every:
                await self._checkpoint()

    async def checkpoint(self) -> None:
        """Sign the chain as it is now, unless nothing was appended since the last checkpoint."""
        async with self._lock:
            if self._head is None:
                await self._load_head()
            if self._unsigned > 0:
                await self._checkpoint()

    async def run_checkpoints(self) -> None:
        """Sign unsigned records every `interval` seconds; a failed attempt is retried."""
        while True:
            await pause(self._interval)
            try:
                await self.checkpoint()
            except TransportError as exc:
                log.warning("audit checkpoint not written yet [%s]", exc.reason)

    # -- inside the lock ------------------------------------------------------------------

    async def _checkpoint(self) -> None:
        for _ in range(_MAX_ATTEMPTS):
            if self._head is None:
                await self._load_head()
            assert self._head is not None
            seq, head = self._head
            if seq == 0:
                return
            body = Checkpoint(
                stream=self._stream,
                upto=seq,
                head=head,
                at=datetime.datetime.fromtimestamp(int(self._clock()), datetime.UTC),
            )
            signed = await asyncio.to_thread(sign_checkpoint, body, self._key)
            if await self._append(f"audit.checkpoint.{seq}", None, signed, upto=seq):
                return
        raise TransportError("audit stream keeps moving under us", reason="audit.contention")

    async def _append(
        self,
        msg_id: str,
        event: AuditEvent | None,
        checkpoint: str | None,
        *,
        upto: int | None = None,
        group: Sequence[tuple[str, AuditEvent]] | None = None,
    ) -> bool:
        """Append one record (`event`, the events of `group`, or `checkpoint`); False if `upto`
        is given and the head is no longer there."""
        events = None if group is None else [e for _, e in group]
        for _ in range(_MAX_ATTEMPTS):
            if self._head is None:
                await self._load_head()
            assert self._head is not None
            seq, prev = self._head
            if upto is not None and seq != upto:
                return False  # another writer moved the head: sign the new one
            data = encode_record(
                AuditRecord(
                    seq=seq + 1, prev=prev, event=event, events=events, checkpoint=checkpoint
                )
            )
            try:
                ack = await publish_durable(
                    self._js,
                    self._subject,
                    data,
                    msg_id=msg_id,
                    headers={HDR_EXPECTED_LAST_SEQ: str(seq)},
                    timeout=self._timeout,
                    expected_stream=self._stream,
                )
            except TransportError as exc:
                cause = exc.__cause__
                if isinstance(cause, nats.js.errors.APIError) and (
                    cause.err_code in _WRONG_LAST_SEQUENCE
                ):
                    self._head = None  # another writer appended: build on its record
                    continue
                self._head = None  # unknown whether it was stored: read the head again
                raise
            if ack.duplicate:
                self._head = None  # stored before (a retry); the head may have moved since
                return True
            if ack.seq != seq + 1:  # cannot happen with Nats-Expected-Last-Sequence honoured
                self._head = None
                raise TransportError(
                    f"audit record stored at {ack.seq}, not {seq + 1}", reason="audit.sequence"
                )
            self._head = (ack.seq, record_hash(data))
            self._unsigned = 0 if checkpoint is not None else self._unsigned + 1
            self.appended += 1
            return True
        raise TransportError("audit stream keeps moving under us", reason="audit.contention")

    async def _load_head(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                info = await self._js.stream_info(self._stream)
                last = int(info.state.last_seq or 0)
                if last == 0:
                    self._head = (0, GENESIS)
                    return
                msg = await self._js.get_msg(self._stream, seq=last)
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise TransportError(
                f"cannot read the head of the audit stream ({type(exc).__name__})",
                reason="audit.unavailable",
            ) from exc
        data = msg.data or b""
        self._head = (last, record_hash(data))
        try:
            is_checkpoint = decode_record(data).checkpoint is not None
        except AuditRecordInvalid:
            is_checkpoint = False  # `bridge audit verify` reports it; we keep appending
        self._unsigned = 0 if is_checkpoint else max(self._unsigned, 1)
