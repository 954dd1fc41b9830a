"""Audit records: what happened to which message, consent or key, chained by their hashes.

Every state change bridge knows of becomes one `AuditEvent` (metadata only: ids, agencies, codes,
times; never content, never who the client is). The single audit writer (the broker) stores
each event wrapped in an `AuditRecord` that names its position in the stream (`seq`) and the
SHA-256 of the exact bytes of the record before it (`prev`), so removing, reordering, inserting
or altering a record breaks the chain. The events one step leads to (a routed submission's
`submitted`, `accepted` and `routed`, say) are stored together in one record (`events`), so a
step costs one durable write, not one per event. Every so often a record carries a signed
checkpoint instead of events (`bridge.audit.checkpoint`).

Records are compact JSON, one per message in the `BRIDGE_AUDIT` stream and one per line in an
export; the hash is over those exact bytes, never over a re-encoding. `schemas/audit-record.json`
is generated from these structs; docs/audit.md describes every kind.
"""

from __future__ import annotations

import enum
import hashlib
from typing import Annotated, Final

import msgspec

from ..ids import CODE_PATTERN, CONSENT_REF_PATTERN
from ..wire import MessageType
from ..wire._codec import WireInvalid, decode_strict
from ..wire._types import AgencyId, MessageId, ReasonCode, UtcDateTime, WireStruct, normalise_utc

__all__ = [
    "GENESIS",
    "MAX_GROUP_EVENTS",
    "MAX_RECORD_BYTES",
    "AuditEvent",
    "AuditKind",
    "AuditRecord",
    "AuditRecordInvalid",
    "decode_record",
    "encode_record",
    "record_hash",
]

MAX_RECORD_BYTES: Final = 16 * 1024
MAX_GROUP_EVENTS: Final = 24
"""Events in one record at most (a routed submission to 16 recipients has 18; each is small)."""
GENESIS: Final = "0" * 64
"""The `prev` of the very first record of a stream."""

_Hash = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$(?!\n)")]
_Kid = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}$(?!\n)")]
_Code = Annotated[str, msgspec.Meta(min_length=1, max_length=48, pattern=CODE_PATTERN)]
_Consent = Annotated[str, msgspec.Meta(max_length=64, pattern=CONSENT_REF_PATTERN)]
_Version = Annotated[str, msgspec.Meta(min_length=1, max_length=80, pattern=r"^[!-~]+$(?!\n)")]


class AuditKind(enum.StrEnum):
    """What happened. Message events name `message_id`; the others name what they concern."""

    SUBMITTED = "submitted"  # the broker took a submission from the sender's subject
    ACCEPTED = "accepted"  # it passed every check (signatures, routing rules, limits)
    REJECTED = "rejected"  # refused, by the broker or by a recipient; see `reason`
    ROUTED = "routed"  # a copy is in `recipient`'s inbox, with its retention limit
    DELIVERED = "delivered"  # `recipient`'s adapter handed it to its local system
    RECEIPTED = "receipted"  # `recipient`'s signed receipt was routed to the sender
    EXPIRY_WARNED = "expiry-warned"  # still undelivered at the warning point of its lifetime
    EXPIRED = "expired"  # its retention limit ran out undelivered; the store removed it
    WITHDRAWN = "withdrawn"  # removed undelivered because its consent was withdrawn
    CONSENT_REGISTERED = "consent-registered"
    CONSENT_WITHDRAWN = "consent-withdrawn"
    DELETION_CONFIRMED = "deletion-confirmed"  # a recipient confirmed it deleted what it held
    KEY_DESTROYED = "key-destroyed"  # an agency destroyed an old private encryption key
    POLICY_CHANGED = "policy-changed"  # the broker enforces another policy version
    DIRECTORY_CHANGED = "directory-changed"  # the broker uses another key directory serial


class AuditEvent(WireStruct, frozen=True, kw_only=True):
    """One state change. Only the fields that apply to its kind are present."""

    kind: AuditKind
    at: UtcDateTime
    message_id: MessageId | None = None
    sender: AgencyId | None = None
    recipient: AgencyId | None = None
    message_type: MessageType | None = None
    reason: ReasonCode | None = None  # why it was rejected, expired or withdrawn
    consent: _Consent | None = None  # the consent the message or event names
    purpose: _Code | None = None
    categories: list[_Code] | None = None
    expires_at: UtcDateTime | None = None  # routed: when the inbox copy is removed at the latest
    agency: AgencyId | None = None  # consent, deletion and key events: the agency concerned
    key_id: _Kid | None = None  # key-destroyed: the destroyed key's id
    version: _Version | None = None  # policy hash or directory serial now in force

    def __post_init__(self) -> None:
        normalise_utc(self, "at")
        if self.expires_at is not None:
            normalise_utc(self, "expires_at")


class AuditRecord(WireStruct, frozen=True, kw_only=True):
    """What the stream stores: a position, the hash of the record before, and its content.

    Exactly one of `event`, `events` and `checkpoint` is present. `events` holds the events of
    one step in the order they happened (2 to `MAX_GROUP_EVENTS`); `all_events` gives either
    form as one sequence. `checkpoint` is the base64 text of a signed checkpoint document (see
    `bridge.audit.checkpoint`).
    """

    v: int = 1
    seq: Annotated[int, msgspec.Meta(ge=1)]
    prev: _Hash
    event: AuditEvent | None = None
    events: (
        Annotated[list[AuditEvent], msgspec.Meta(min_length=2, max_length=MAX_GROUP_EVENTS)] | None
    ) = None
    checkpoint: Annotated[str, msgspec.Meta(max_length=12 * 1024)] | None = None

    def __post_init__(self) -> None:
        present = [x is not None for x in (self.event, self.events, self.checkpoint)]
        if sum(present) != 1:
            raise ValueError("an audit record holds exactly one of event, events and checkpoint")
        if self.events is not None and not 2 <= len(self.events) <= MAX_GROUP_EVENTS:
            raise ValueError(f"an audit record holds 2 to {MAX_GROUP_EVENTS} events")

    @property
    def all_events(self) -> tuple[AuditEvent, ...]:
        """The record's events in order: none for a checkpoint, one, or a step's group."""
        if self.event is not None:
            return (self.event,)
        return tuple(self.events or ())


class AuditRecordInvalid(WireInvalid):
    """An audit record failed to decode."""

    reason = "audit.malformed"


_decoder: Final = msgspec.json.Decoder(AuditRecord)
_encoder: Final = msgspec.json.Encoder()


def decode_record(data: bytes) -> AuditRecord:
    record = decode_strict(
        _decoder,
        data,
        limit=MAX_RECORD_BYTES,
        error=AuditRecordInvalid,
        what="audit record",
        prefix="audit",
    )
    if record.v != 1:
        raise AuditRecordInvalid("audit record version is not supported")
    return record


def encode_record(record: AuditRecord) -> bytes:
    data = _encoder.encode(record)
    decode_record(data)  # what cannot be read back is never stored
    return data


def record_hash(data: bytes) -> str:
    """The chain hash of a record: SHA-256 of its exact stored bytes, hex."""
    return hashlib.sha256(data).hexdigest()
