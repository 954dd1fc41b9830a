"""The adapter's records in its own KV bucket (`adapter-<agency>`): metadata only, never content.

Keys (all values JSON):

- `idem.<sha256(token subject | Idempotency-Key)>` -> `IdemRecord`: which message id a caller's
  idempotency key stands for, and a digest of the request it came with.
- `msg.<message id>` -> `MessageRecord`: a message this agency sent and its timeline.
- `dlv.<message id>` -> `DeliveredRecord`: an inbound message the local system has taken, and
  the senders it came from, so a redelivery by NATS is acknowledged without delivering it twice
  while the same id from another sender is still delivered.
- `pst.<message id>.<sender>` -> `DeliveredRecord`: an inbound message about to be posted to the
  webhook (written before the first post), so a later post of it is marked as a possible repeat
  even if nats-server lost count of its deliveries.
- `pul.<message id>.<sender>` -> `PullRecord`: an opened message in the pull inbox: since when it
  waits for the local system, until when at the latest, and when it left (taken or expired).
  It keeps the wait limit across restarts, and lets `bridge retention check` find an item held
  past its limit (`pull_deadline`).
- `cst.<consent id>` -> `ConsentLocal`: a consent this agency registered: its local reference,
  sealed under the agency's local reference key (`localref.py`), the messages sent under it,
  and what followed a withdrawal.
- `ref.<HMAC(local reference)>` -> `RefIndex`: the consent ids registered for one local
  reference (`consents_for_local_ref`). Earlier versions kept the reference in clear and
  indexed it by its plain SHA-256: such a record still shows its reference by consent id
  until it expires, but is no longer found by reference (looking its key up would put the
  plain hash into a NATS subject).

Several adapter instances may share a bucket, so every change is a compare-and-set on the key's
revision, retried a bounded number of times. Every write carries a per-message TTL so the bucket
forgets on its own; writes go through `js.publish` rather than `KeyValue.update` because only the
former can attach a TTL to an update.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Iterable
from typing import Final, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from ..errors import ProtocolError, TransportError
from ..ids import check_agency_id, check_consent_ref, check_message_id
from ..nats.subjects import kv_bucket, kv_key_prefix
from .localref import LocalRefKey

__all__ = [
    "MAX_CONSENT_MESSAGES",
    "RECORD_GRACE_SECONDS",
    "ConsentLocal",
    "DeliveredRecord",
    "Event",
    "IdemRecord",
    "MessageRecord",
    "PullRecord",
    "ReceiptFold",
    "RevocationNote",
    "Store",
    "pull_deadline",
]

RECORD_GRACE_SECONDS: Final = 30 * 86400
"""How long a delivery record outlives the message's own expiry (a late redelivery still finds
it), and a sent message's timeline too unless the policy's `[retention] status` says otherwise."""

NOTICE_KEEP_SECONDS: Final = 90 * 86400
"""How long a received consent-revoked notice is kept for its deletion confirmation."""

MAX_CONSENT_MESSAGES: Final = 4096
"""Messages remembered per consent (for withdrawal notices); a consent is for one client."""

_MAX_REF_CONSENTS: Final = 256
_MAX_CAS_ATTEMPTS: Final = 16
_MAX_SENDERS_PER_ID: Final = 16  # one id from more senders than this is an attack, not traffic
_WRONG_LAST_SEQUENCE: Final = (10071, 10164)
_EXPECTED_LAST_SUBJECT_SEQ: Final = "Nats-Expected-Last-Subject-Sequence"
_T = TypeVar("_T")
_RECEIPT_STATES: Final = frozenset({"receipted", "rejected"})


class Event(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A timeline entry; `at` in Unix seconds. Same state, recipient and reason = same event."""

    state: str
    at: int
    recipient: str | None = None
    reason: str | None = None
    policy: str | None = None  # the routing policy version behind a broker's decision

    def same_as(self, other: Event) -> bool:
        return (self.state, self.recipient, self.reason) == (
            other.state,
            other.recipient,
            other.reason,
        )


class MessageRecord(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str
    type: str
    recipients: list[str]
    created_at: int
    expires_at: int
    events: list[Event] = msgspec.field(default_factory=list)
    attachments: int = 0  # how many; their chunks are purged as each recipient's copy ends

    @property
    def max_events(self) -> int:
        # accepted, and per recipient routed/delivered/receipted/rejected, with room for a few
        # events about all recipients; anything beyond is a misbehaving peer.
        return 8 + 4 * len(self.recipients)

    def receipt_of(self, recipient: str) -> Event | None:
        """The event a receipt from `recipient` left (`receipted`, or its `rejected`), if any.

        The broker's rejections name no recipient, so they are never mistaken for one.
        """
        for event in self.events:
            if event.recipient == recipient and event.state in _RECEIPT_STATES:
                return event
        return None

    def with_events(self, events: Iterable[Event]) -> MessageRecord:
        merged = list(self.events)
        for event in events:
            if not any(event.same_as(old) for old in merged) and len(merged) < self.max_events:
                merged.append(event)
        return msgspec.structs.replace(self, events=merged)


class ReceiptFold(enum.Enum):
    """What folding a recipient's receipt into a message's record did."""

    FOLDED = "folded"  # recorded (or it was recorded already, identically)
    NO_RECORD = "no_record"  # no message of ours with this id
    CONTRADICTS = "contradicts"  # the recipient's earlier receipt said otherwise; it is final


class IdemRecord(msgspec.Struct, frozen=True, kw_only=True):
    message_id: str
    digest: str


class DeliveredRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An inbound message id the local system has taken, and from which senders.

    Message ids are chosen by senders, so one id can arrive from two agencies (one of them
    copying an id it saw as a co-recipient); each sender's message is delivered on its own.
    `senders` is None in records written before senders were kept: they match any sender.
    """

    at: int
    senders: list[str] | None = None

    def covers(self, sender: str) -> bool:
        return self.senders is None or sender in self.senders


class ConsentLocal(msgspec.Struct, frozen=True, kw_only=True):
    """This adapter's own notes on a consent it registered; `events` as on message records.
    `sealed_ref` is the local reference sealed (`LocalRefKey`); `local_ref` only in records of
    earlier versions, which kept it in clear."""

    consent_id: str
    sealed_ref: str | None = None
    local_ref: str | None = None
    valid_until: int
    messages: list[str] = msgspec.field(default_factory=list)
    events: list[Event] = msgspec.field(default_factory=list)


class RevocationNote(msgspec.Struct, frozen=True, kw_only=True):
    """A `consent-revoked` notice this agency received, until its deletion is confirmed."""

    notice_id: str
    issuer: str
    consent: str
    messages: list[str]
    received_at: int
    confirmed_at: int | None = None


class PullRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An opened message in the pull inbox (metadata only), in Unix seconds."""

    offered_at: int
    until: int  # the latest it may wait for the local system (the policy's pull_wait)
    closed_at: int | None = None  # taken by the local system, or removed at `until`


_pull_decoder: Final = msgspec.json.Decoder(PullRecord)
_KV_STREAM_PREFIX: Final = "KV_adapter-"


def pull_deadline(stream: str, subject: str, data: bytes | None) -> tuple[int, str] | None:
    """For `bridge retention check` (`bridge.nats.retention.Deadlines`): until when the item
    behind a raw entry of an adapter's bucket may wait in its pull inbox, or None if the entry
    is no open pull record."""
    if not stream.startswith(_KV_STREAM_PREFIX) or ".pul." not in subject or not data:
        return None
    try:
        record = _pull_decoder.decode(data)
    except msgspec.DecodeError:
        return None
    return None if record.closed_at is not None else (record.until, "[types.*] pull_wait")


class RefIndex(msgspec.Struct, frozen=True, kw_only=True):
    consent_ids: list[str]


class Store:
    """Typed access to one agency's KV bucket, with bounded waits and translated errors."""

    def __init__(
        self,
        js: JetStreamContext,
        kv: KeyValue,
        agency: str,
        timeout: float,
        *,
        status_keep: Callable[[], int] | None = None,
        local_ref_key: LocalRefKey | None = None,
    ) -> None:
        """`status_keep()` is how long a sent message's timeline outlives the message (the
        signed policy's `[retention] status`, in seconds; `RECORD_GRACE_SECONDS` without)."""
        self._local_ref_key = local_ref_key
        self._js = js
        self._kv = kv
        self._prefix = kv_key_prefix(agency)
        self._timeout = timeout
        self._status_keep = status_keep or (lambda: RECORD_GRACE_SECONDS)

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        agency: str,
        wait: float,
        *,
        status_keep: Callable[[], int] | None = None,
        local_ref_key: LocalRefKey | None = None,
    ) -> Store:
        kv = await _translated(js.key_value(kv_bucket(agency)), wait, "open the KV bucket")
        return cls(js, kv, agency, wait, status_keep=status_keep, local_ref_key=local_ref_key)

    def _ttl(self, record: MessageRecord, now: int) -> int:
        """A timeline is kept until the message ends, and then for the status retention."""
        return max(60, record.expires_at - now + self._status_keep())

    # -- idempotency ----------------------------------------------------------------------

    async def claim_idempotency(self, key_hash: str, record: IdemRecord, ttl: int) -> IdemRecord:
        """Store `record` under `idem.<key_hash>` unless a record is there; return the winner."""
        key = f"idem.{key_hash}"
        if await self._write(key, record, last=0, ttl=ttl):
            return record
        existing = await self._get(key, IdemRecord)
        if existing is None:  # expired between the two calls: claim again, once
            if await self._write(key, record, last=0, ttl=ttl):
                return record
            existing = await self._get(key, IdemRecord)
        if existing is None:
            raise TransportError("idempotency record keeps changing", reason="store.conflict")
        return existing[0]

    # -- sent messages --------------------------------------------------------------------

    async def create_message(self, record: MessageRecord, now: int) -> int | None:
        """Create `msg.<id>` unless it exists (a retried submission keeps its first record).

        Returns the new record's revision (for `add_events(known=...)`), None if one existed.
        """
        key = _msg_key(record.message_id)
        return await self._put(key, record, last=0, ttl=self._ttl(record, now))

    async def get_message(self, message_id: str) -> MessageRecord | None:
        found = await self.get_message_revision(message_id)
        return None if found is None else found[0]

    async def get_message_revision(self, message_id: str) -> tuple[MessageRecord, int] | None:
        """The record and its revision, for a later `known=` compare-and-set."""
        return await self._get(_msg_key(message_id), MessageRecord)

    async def add_events(
        self,
        message_id: str,
        events: list[Event],
        now: int,
        *,
        known: tuple[MessageRecord, int] | None = None,
    ) -> bool:
        """Fold `events` into the record; False when there is no such record.

        `known` is the record and its revision as the caller last wrote it: the first attempt
        then skips reading it back, and a change meanwhile only costs a retry.
        """
        key = _msg_key(message_id)
        for _ in range(_MAX_CAS_ATTEMPTS):
            found, known = known or await self._get(key, MessageRecord), None
            if found is None:
                return False
            record, revision = found
            updated = record.with_events(events)
            if updated == record:
                return True
            if await self._write(key, updated, last=revision, ttl=self._ttl(record, now)):
                return True
        raise TransportError("message record keeps changing", reason="store.conflict")

    async def add_receipt(
        self,
        message_id: str,
        recipient: str,
        events: list[Event],
        now: int,
        *,
        known: tuple[MessageRecord, int] | None = None,
    ) -> ReceiptFold:
        """Fold the events of `recipient`'s receipt, unless an earlier receipt of it differs.

        A recipient's receipt is final: once its `receipted` or `rejected` is recorded, a
        receipt saying otherwise changes nothing. Checked and written in one compare-and-set.
        `known` (the record and revision the caller just read) saves reading it again; if it
        changed meanwhile, the write is refused and the check runs again on the stored record.
        """
        key = _msg_key(message_id)
        final = next(e for e in events if e.state in _RECEIPT_STATES)
        for _ in range(_MAX_CAS_ATTEMPTS):
            found, known = known or await self._get(key, MessageRecord), None
            if found is None:
                return ReceiptFold.NO_RECORD
            record, revision = found
            earlier = record.receipt_of(recipient)
            if earlier is not None:
                same = earlier.same_as(final)
                return ReceiptFold.FOLDED if same else ReceiptFold.CONTRADICTS
            updated = record.with_events(events)
            if updated == record:
                return ReceiptFold.FOLDED
            if await self._write(key, updated, last=revision, ttl=self._ttl(record, now)):
                return ReceiptFold.FOLDED
        raise TransportError("message record keeps changing", reason="store.conflict")

    # -- delivered inbound messages -------------------------------------------------------

    async def mark_delivered(self, message_id: str, sender: str, at: int, ttl: int) -> None:
        """Record that `sender`'s message `message_id` was delivered (once per sender)."""
        key = _dlv_key(message_id)
        if await self._write(key, DeliveredRecord(at=at, senders=[sender]), last=0, ttl=ttl):
            return  # the usual case: the first message with this id
        for _ in range(_MAX_CAS_ATTEMPTS):
            found = await self._get(key, DeliveredRecord)
            if found is None:
                if await self._write(
                    key, DeliveredRecord(at=at, senders=[sender]), last=0, ttl=ttl
                ):
                    return
                continue
            record, revision = found
            if record.covers(sender):
                return
            senders = [*(record.senders or []), sender][-_MAX_SENDERS_PER_ID:]
            updated = msgspec.structs.replace(record, senders=senders)
            if await self._write(key, updated, last=revision, ttl=ttl):
                return
        raise TransportError("delivery record keeps changing", reason="store.conflict")

    async def mark_posted(self, message_id: str, sender: str, at: int, ttl: int) -> bool:
        """Record that `sender`'s `message_id` is about to be posted; False if it was before."""
        return await self._write(
            _pst_key(message_id, sender), DeliveredRecord(at=at), last=0, ttl=ttl
        )

    async def begin_pull(
        self, message_id: str, sender: str, record: PullRecord, ttl: int
    ) -> PullRecord:
        """Record that `sender`'s message waits in the pull inbox, unless it did before (a
        redelivery, a restart): then the first record, whose limit still holds, is returned."""
        key = _pul_key(message_id, sender)
        for _ in range(2):  # once more if the record expired between the two calls
            if await self._write(key, record, last=0, ttl=ttl):
                return record
            found = await self._get(key, PullRecord)
            if found is not None:
                return found[0]
        raise TransportError("pull record keeps changing", reason="store.conflict")

    async def close_pull(self, message_id: str, sender: str, now: int, ttl: int) -> None:
        """The item left the pull inbox (taken, or removed at its limit)."""
        key = _pul_key(message_id, sender)
        for _ in range(_MAX_CAS_ATTEMPTS):
            found = await self._get(key, PullRecord)
            if found is None or found[0].closed_at is not None:
                return
            closed = msgspec.structs.replace(found[0], closed_at=now)
            if await self._write(key, closed, last=found[1], ttl=ttl):
                return
        raise TransportError("pull record keeps changing", reason="store.conflict")

    async def was_delivered(self, message_id: str, sender: str | None = None) -> bool:
        """Whether `sender`'s message `message_id` was delivered (any sender's, if None)."""
        found = await self._get(_dlv_key(message_id), DeliveredRecord)
        return found is not None and (sender is None or found[0].covers(sender))

    # -- consents ------------------------------------------------------------------------

    def _local_refs(self) -> LocalRefKey:
        if self._local_ref_key is None:
            raise RuntimeError("this store was opened without the local reference key")
        return self._local_ref_key

    async def create_consent(
        self, consent_id: str, local_ref: str, valid_until: int, now: int
    ) -> ConsentLocal:
        """Store a new consent's local record, its reference sealed, and index it."""
        keys = self._local_refs()
        record = ConsentLocal(
            consent_id=consent_id,
            sealed_ref=keys.seal(consent_id, local_ref),
            valid_until=valid_until,
        )
        ttl = _consent_ttl(record.valid_until, now)
        if not await self._write(_cst_key(record.consent_id), record, last=0, ttl=ttl):
            raise TransportError("consent record exists already", reason="store.conflict")
        key = "ref." + keys.index(local_ref)
        for _ in range(_MAX_CAS_ATTEMPTS):
            found = await self._get(key, RefIndex)
            ids = [] if found is None else found[0].consent_ids
            ids = [*ids, record.consent_id][-_MAX_REF_CONSENTS:]
            # The index lives as long as the longest-lived consent it names.
            if await self._write(
                key,
                RefIndex(consent_ids=ids),
                last=found[1] if found else 0,
                ttl=max(ttl, RECORD_GRACE_SECONDS * 12),
            ):
                return record
        raise TransportError("consent index keeps changing", reason="store.conflict")

    def local_ref_of(self, record: ConsentLocal) -> str | None:
        """The record's local reference (None if sealed under another key than this one)."""
        if record.sealed_ref is not None:
            return self._local_refs().open(record.consent_id, record.sealed_ref)
        return record.local_ref

    async def get_consent(self, consent_id: str) -> ConsentLocal | None:
        found = await self._get(_cst_key(consent_id), ConsentLocal)
        return None if found is None else found[0]

    async def consents_for_local_ref(self, local_ref: str) -> list[str]:
        """The ids of the consents this agency registered for `local_ref`, oldest first."""
        # Only under the keyed index: asking for the plain-hash key of earlier versions would
        # put a guessable hash of the reference into a NATS subject.
        found = await self._get("ref." + self._local_refs().index(local_ref), RefIndex)
        return [] if found is None else list(found[0].consent_ids)

    async def update_consent(
        self,
        consent_id: str,
        *,
        now: int,
        message: str | None = None,
        events: Iterable[Event] = (),
    ) -> bool:
        """Remember a message sent under the consent and/or fold events; False if unknown."""
        key = _cst_key(consent_id)
        new_events = list(events)
        for _ in range(_MAX_CAS_ATTEMPTS):
            found = await self._get(key, ConsentLocal)
            if found is None:
                return False
            record, revision = found
            messages = record.messages
            if message is not None and message not in messages:
                messages = [*messages, message][-MAX_CONSENT_MESSAGES:]
            merged = list(record.events)
            for event in new_events:
                if not any(event.same_as(old) for old in merged) and len(merged) < 64:
                    merged.append(event)
            updated = msgspec.structs.replace(record, messages=messages, events=merged)
            if updated == record:
                return True
            ttl = _consent_ttl(record.valid_until, now)
            if await self._write(key, updated, last=revision, ttl=ttl):
                return True
        raise TransportError("consent record keeps changing", reason="store.conflict")

    # -- consent-revoked notices received -------------------------------------------------

    async def note_revocation(self, note: RevocationNote) -> None:
        """Keep a received notice (once; a redelivery keeps the first note)."""
        ttl = NOTICE_KEEP_SECONDS
        await self._write(_rvk_key(note.notice_id), note, last=0, ttl=ttl)

    async def get_revocation(self, notice_id: str) -> RevocationNote | None:
        found = await self._get(_rvk_key(notice_id), RevocationNote)
        return None if found is None else found[0]

    async def confirm_revocation(self, notice_id: str, note: RevocationNote, now: int) -> None:
        if note.confirmed_at is not None:
            return
        found = await self._get(_rvk_key(notice_id), RevocationNote)
        if found is None:
            return
        confirmed = msgspec.structs.replace(found[0], confirmed_at=now)
        await self._write(_rvk_key(notice_id), confirmed, last=found[1], ttl=NOTICE_KEEP_SECONDS)

    # -- primitives -----------------------------------------------------------------------

    async def _get(self, key: str, kind: type[_T]) -> tuple[_T, int] | None:
        try:
            entry = await _translated(self._kv.get(key), self._timeout, "read a record")
        except TransportError as exc:
            if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                return None
            raise
        try:
            return msgspec.json.decode(entry.value or b"", type=kind), entry.revision or 0
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise ProtocolError("a KV record is malformed", reason="store.malformed") from exc

    async def _write(self, key: str, value: msgspec.Struct, *, last: int, ttl: int) -> bool:
        """Compare-and-set: write if the key's last revision is `last` (0: absent)."""
        return await self._put(key, value, last=last, ttl=ttl) is not None

    async def _put(self, key: str, value: msgspec.Struct, *, last: int, ttl: int) -> int | None:
        """`_write`, returning the new revision, or None when `last` was not the revision."""
        try:
            ack = await _translated(
                self._js.publish(
                    self._prefix + key,
                    msgspec.json.encode(value),
                    timeout=self._timeout,
                    headers={_EXPECTED_LAST_SUBJECT_SEQ: str(last)},
                    msg_ttl=max(1, ttl),
                ),
                self._timeout,
                "write a record",
            )
        except TransportError as exc:
            cause = exc.__cause__
            if isinstance(cause, nats.js.errors.APIError) and (
                cause.err_code in _WRONG_LAST_SEQUENCE
            ):
                return None
            raise
        return int(ack.seq)


def _msg_key(message_id: str) -> str:
    return f"msg.{check_message_id(message_id)}"


def _dlv_key(message_id: str) -> str:
    return f"dlv.{check_message_id(message_id)}"


def _pst_key(message_id: str, sender: str) -> str:
    return f"pst.{check_message_id(message_id)}.{check_agency_id(sender)}"


def _pul_key(message_id: str, sender: str) -> str:
    return f"pul.{check_message_id(message_id)}.{check_agency_id(sender)}"


def _rvk_key(notice_id: str) -> str:
    return f"rvk.{check_message_id(notice_id)}"


def _cst_key(consent_id: str) -> str:
    return f"cst.{check_consent_ref(consent_id)}"


def _consent_ttl(valid_until: int, now: int) -> int:
    return max(60, valid_until - now + RECORD_GRACE_SECONDS)


async def _translated(call: Awaitable[_T], wait: float, what: str) -> _T:
    try:
        async with asyncio.timeout(wait):
            return await call
    except TimeoutError as exc:
        raise TransportError(f"cannot {what}: no answer in time", reason="store.timeout") from exc
    except (nats.errors.Error, OSError) as exc:
        raise TransportError(
            f"cannot {what}: {type(exc).__name__}", reason="store.unavailable"
        ) from exc
