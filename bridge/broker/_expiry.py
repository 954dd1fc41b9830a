"""Expiry: warn a recipient before an undelivered message expires, tell the sender once it has.

The inbox's per-message TTL removes an undelivered copy; the store enforces that. What the
store does not do is tell anyone. So for every copy it routes, the broker keeps a note in
`BRIDGE_PENDING` (one message per sender, message and recipient, with the copy's stream and
sequence and its expiry, and a TTL of its own). Every `check_seconds` it reads its notes and
looks the copy up by sequence in the recipient's inbox stream:

- still there, and past the warning point (`warn_fraction` of its time in the inbox): an
  `expiring` status event to the recipient's status subject and an `expiry-warned` audit record;
- gone after its expiry: the store removed it undelivered: an `expired` status event to the
  sender (stored, like every status event) and an `expired` audit record;
- gone before its expiry: the recipient took it; its receipt tells the rest.

A routed receipt closes the note of the message it answers at once. Every event carries a
`Nats-Msg-Id` derived from the message, state and recipient, so several brokers checking the same
notes store each event once.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final, Literal

import msgspec
import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext

from .._cancel import pause
from ..audit import AuditEvent, AuditKind, audit_msg_id
from ..errors import TransportError
from ..nats.provision import PENDING_CLOSED_TTL, PENDING_GRACE
from ..nats.subjects import PENDING_STREAM, inbox_stream, pending_subject, status_subject
from ..nats.transport import publish_durable
from ..wire import Component, DeliveryState, MessageType, StatusEvent, encode_status_event
from ._nats import status_msg_id

__all__ = ["EXPIRED_REASON", "ExpiryWatch", "PendingNote"]

log = logging.getLogger("bridge.broker")

EXPIRED_REASON: Final = "retention.expired"
_NOTE_GRACE: Final = PENDING_GRACE  # a note outlives its copy, so a late check still sees it
_WINDOW: Final = 32


class PendingNote(msgspec.Struct, frozen=True, kw_only=True):
    """The broker's note of one routed, not yet delivered inbox copy. Metadata only."""

    message_id: str
    sender: str
    recipient: str
    message_type: str
    consent: str
    seq: int  # the copy's sequence in `stream`
    routed_at: int
    expires_at: int
    warn_at: int
    state: Literal["waiting", "warned", "done"] = "waiting"
    # The recipient's inbox stream. Empty in notes written while all recipients shared one
    # stream, BRIDGE_INBOX: provisioning retires it only once it is empty, so their copies are
    # gone (taken, or removed at their expiry).
    stream: str = ""


_decoder: Final = msgspec.json.Decoder(PendingNote)


def _note_id(sender: str, message_id: str, recipient: str, state: str) -> str:
    digest = hashlib.sha256(f"{sender}\x00{message_id}\x00{recipient}".encode()).hexdigest()
    return f"pending.{digest[:40]}.{state}"


def _utc(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


class ExpiryWatch:
    def __init__(
        self,
        js: JetStreamContext,
        record: Callable[[list[tuple[str, AuditEvent]]], Awaitable[None]],
        *,
        check_seconds: float,
        warn_fraction: float,
        timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._js = js
        self._record = record
        self._check_seconds = check_seconds
        self._warn_fraction = warn_fraction
        self._timeout = timeout
        self._clock = clock
        self.warned = 0
        self.expired = 0

    def __repr__(self) -> str:
        return f"ExpiryWatch(warned={self.warned}, expired={self.expired})"

    def note(
        self,
        *,
        message_id: str,
        sender: str,
        recipient: str,
        message_type: str,
        consent: str,
        seq: int,
        now: int,
        ttl: int,
    ) -> PendingNote:
        return PendingNote(
            message_id=message_id,
            sender=sender,
            recipient=recipient,
            message_type=message_type,
            consent=consent,
            seq=seq,
            stream=inbox_stream(recipient),
            routed_at=now,
            expires_at=now + ttl,
            warn_at=now + max(0, int(ttl * self._warn_fraction)),
        )

    async def put(self, note: PendingNote) -> None:
        subject = pending_subject(note.sender, note.message_id, note.recipient)
        ttl = max(1, note.expires_at - int(self._clock()) + _NOTE_GRACE)
        await publish_durable(
            self._js,
            subject,
            msgspec.json.encode(note),
            msg_id=_note_id(note.sender, note.message_id, note.recipient, note.state),
            ttl=ttl,
            timeout=self._timeout,
            expected_stream=PENDING_STREAM,
        )

    async def close(self, sender: str, message_id: str, recipient: str) -> None:
        """The recipient answered: no warning or expiry for this copy any more.

        The note is replaced by an empty marker that goes after `PENDING_CLOSED_TTL`: closed
        notes must not pile up in the shared stream (a day of them at a dozen messages a second
        would fill it and stop all routing)."""
        subject = pending_subject(sender, message_id, recipient)
        await publish_durable(
            self._js,
            subject,
            b"{}",
            msg_id=_note_id(sender, message_id, recipient, "done"),
            ttl=PENDING_CLOSED_TTL,
            timeout=self._timeout,
            expected_stream=PENDING_STREAM,
        )

    # -- checking ---------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            await pause(self._check_seconds)
            try:
                await self.check()
            except TransportError as exc:
                log.warning(
                    "expiry check incomplete, next round in %ss [%s]",
                    self._check_seconds,
                    exc.reason,
                )

    async def check(self) -> None:
        """One pass over every note, a window of them at a time: however many copies wait, the
        broker holds no more than `_WINDOW` notes."""
        async for note in self._notes():
            now = int(self._clock())
            present = await self._in_inbox(note)
            if present:
                if note.state == "waiting" and now >= note.warn_at:
                    await self._warn(note, now)
            elif now >= note.expires_at:
                await self._expire(note, now)
            else:
                await self._done(note)

    async def _notes(self) -> AsyncIterator[PendingNote]:
        try:
            async with asyncio.timeout(self._timeout):
                info = await self._js.stream_info(PENDING_STREAM)
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise TransportError(
                "cannot read the pending notes", reason="expiry.unavailable"
            ) from exc
        first, last = int(info.state.first_seq or 0), int(info.state.last_seq or 0)
        for start in range(max(first, 1), last + 1, _WINDOW):
            seqs = range(start, min(last, start + _WINDOW - 1) + 1)
            found = await asyncio.gather(*(self._get_note(seq) for seq in seqs))
            for note in found:
                if note is not None:
                    yield note

    async def _get_note(self, seq: int) -> PendingNote | None:
        try:
            async with asyncio.timeout(self._timeout):
                msg = await self._js.get_msg(PENDING_STREAM, seq=seq, direct=True)
        except nats.js.errors.NotFoundError:
            return None  # replaced by a newer state, or ended by its TTL
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise TransportError("cannot read a pending note", reason="expiry.unavailable") from exc
        if msg.data in (None, b"", b"{}"):
            return None  # closed
        try:
            note = _decoder.decode(msg.data)
        except msgspec.DecodeError:
            log.warning("pending note %d is malformed; ignored", seq)
            return None
        return None if note.state == "done" else note

    async def _in_inbox(self, note: PendingNote) -> bool:
        if not note.stream:
            return False  # in the retired shared inbox, so gone
        try:
            async with asyncio.timeout(self._timeout):
                await self._js.get_msg(note.stream, seq=note.seq)
        except nats.js.errors.NotFoundError:
            return False
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise TransportError("cannot look into the inbox", reason="expiry.unavailable") from exc
        return True

    def _status(self, note: PendingNote, state: DeliveryState, now: int) -> StatusEvent:
        return StatusEvent(
            message_id=note.message_id,
            sender=note.sender,
            recipient=note.recipient,
            message_type=MessageType(note.message_type),
            state=state,
            at=_utc(now),
            component=Component.BROKER,
        )

    def _audit(self, note: PendingNote, kind: AuditKind, now: int) -> list[tuple[str, AuditEvent]]:
        event = AuditEvent(
            kind=kind,
            at=_utc(now),
            message_id=note.message_id,
            sender=note.sender,
            recipient=note.recipient,
            message_type=MessageType(note.message_type),
            consent=note.consent,
            expires_at=_utc(note.expires_at),
            reason=EXPIRED_REASON if kind is AuditKind.EXPIRED else None,
        )
        return [(audit_msg_id(kind, note.sender, note.message_id, note.recipient), event)]

    async def _warn(self, note: PendingNote, now: int) -> None:
        event = msgspec.structs.replace(
            self._status(note, DeliveryState.EXPIRING, now), expires_at=_utc(note.expires_at)
        )
        await publish_durable(
            self._js,
            status_subject(note.recipient, note.message_id),  # the recipient's side
            encode_status_event(event),
            msg_id=status_msg_id(
                note.sender, note.message_id, DeliveryState.EXPIRING, note.recipient
            ),
            timeout=self._timeout,
        )
        await self._record(self._audit(note, AuditKind.EXPIRY_WARNED, now))
        await self.put(msgspec.structs.replace(note, state="warned"))
        self.warned += 1
        log.warning(
            "expiring id=%s recipient=%s: undelivered, removed at %d",
            note.message_id,
            note.recipient,
            note.expires_at,
        )

    async def _expire(self, note: PendingNote, now: int) -> None:
        event = msgspec.structs.replace(
            self._status(note, DeliveryState.EXPIRED, now), reason=EXPIRED_REASON
        )
        await publish_durable(
            self._js,
            status_subject(note.sender, note.message_id),  # the sender's non-delivery notice
            encode_status_event(event),
            msg_id=status_msg_id(
                note.sender, note.message_id, DeliveryState.EXPIRED, note.recipient
            ),
            timeout=self._timeout,
        )
        await self._record(self._audit(note, AuditKind.EXPIRED, now))
        await self._done(note)
        self.expired += 1
        log.warning(
            "expired id=%s sender=%s recipient=%s undelivered [%s]",
            note.message_id,
            note.sender,
            note.recipient,
            EXPIRED_REASON,
        )

    async def _done(self, note: PendingNote) -> None:
        await self.close(note.sender, note.message_id, note.recipient)
