"""The audit events the broker records for one submission, built from what it has checked.

Adapters never write to the audit trail. What happens at a recipient reaches it through the
broker: a receipt is an ordinary envelope the recipient submits, so when the broker routes one
it records, for the message the receipt answers, `delivered` (or `rejected` by the recipient,
with its reason code) and `receipted`. A receipt rejecting with `retention.pull_expired` says the
message waited in the recipient's pull inbox past its limit and was removed: that is recorded
as `expired`, like a copy the inbox's TTL removed. Whether the receipt says delivered or
rejected is inside the encrypted body; the recipient's adapter repeats it in the
`Bridge-Disposition` header of the submission, which only that agency's NATS identity can
publish (the signed receipt itself, held by the sender, is the evidence).
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import Final

from msgspec.structs import replace

from ..audit import AuditEvent, AuditKind, audit_msg_id
from ..audit.notice import KeyDestroyed
from ..consent import verify_consent
from ..crypto import Header, KeyLookup
from ..errors import ProtocolError
from ..ids import check_agency_id
from ..nats.subjects import HDR_DISPOSITION
from ..wire import PULL_EXPIRED_REASON, MessageType
from ..wire._types import REASON_CODE_PATTERN
from ._routing import Submission, Verdict
from ._withdrawals import Purged

__all__ = [
    "consent_registered_events",
    "consent_withdrawn_events",
    "directory_events",
    "key_destroyed_events",
    "policy_events",
    "pull_expired",
    "rejection_events",
    "routing_events",
    "withdrawn_events",
]

_REASON_RE: Final = re.compile(REASON_CODE_PATTERN)
AuditItem = tuple[str, AuditEvent]


def _utc(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def _about(header: Header, kind: AuditKind, at: datetime.datetime) -> AuditEvent:
    return AuditEvent(
        kind=kind,
        at=at,
        message_id=header.id,
        sender=header.sender,
        message_type=MessageType(header.type),
        consent=header.consent,
        purpose=header.purpose,
        categories=list(header.categories),
    )


def routing_events(
    verdict: Verdict, headers: Mapping[str, str] | None, now: int, policy: str
) -> list[AuditItem]:
    """`submitted`, then the decision (`accepted`, a `routed` per recipient) naming the hash of
    the `policy` version that made it, and what a routed receipt or confirmation says."""
    header = verdict.header
    at = _utc(now)
    mid, sender = header.id, header.sender
    submitted = _about(header, AuditKind.SUBMITTED, at)
    accepted = replace(submitted, kind=AuditKind.ACCEPTED, version=policy)
    items: list[AuditItem] = [
        (audit_msg_id("submitted", sender, mid), submitted),
        (audit_msg_id("accepted", sender, mid), accepted),
    ]
    expires = _utc(now + verdict.ttl)
    for recipient in verdict.recipients:
        routed = replace(accepted, kind=AuditKind.ROUTED, recipient=recipient, expires_at=expires)
        items.append((audit_msg_id("routed", sender, mid, recipient), routed))
    if header.type == "receipt" and header.reply_to is not None:
        items += _receipt_events(header, headers, at)
    if header.type == "deletion-confirmed":
        # The recipient of messages under a withdrawn consent confirms it deleted them; the
        # header names that consent and goes to the agency that issued it.
        confirmed = AuditEvent(
            kind=AuditKind.DELETION_CONFIRMED,
            at=at,
            message_id=mid,
            sender=sender,
            consent=header.consent,
            agency=sender,
        )
        items.append((audit_msg_id("deletion-confirmed", sender, header.consent), confirmed))
    return items


def _receipt_events(
    header: Header, headers: Mapping[str, str] | None, at: datetime.datetime
) -> list[AuditItem]:
    """What a routed receipt says about the message it answers (see the module's docstring)."""
    assert header.reply_to is not None
    if len(header.recipients) != 1:
        return []
    original, responder = header.reply_to, header.sender
    original_sender = header.recipients[0].agency
    base = AuditEvent(
        kind=AuditKind.RECEIPTED,
        at=at,
        message_id=original,
        sender=original_sender,
        recipient=responder,
    )
    about = (original_sender, original, responder)
    items: list[AuditItem] = []
    state, _, reason = (headers or {}).get(HDR_DISPOSITION, "").partition(" ")
    if state == "delivered" and not reason:
        delivered = replace(base, kind=AuditKind.DELIVERED)
        items.append((audit_msg_id("delivered", *about), delivered))
    elif state == "rejected" and reason == PULL_EXPIRED_REASON:
        expired = replace(base, kind=AuditKind.EXPIRED, reason=reason, consent=header.consent)
        items.append((audit_msg_id(AuditKind.EXPIRED, *about), expired))
    elif state == "rejected" and len(reason) <= 64 and _REASON_RE.fullmatch(reason):
        refused = replace(base, kind=AuditKind.REJECTED, reason=reason)
        items.append((audit_msg_id("rejected", *about), refused))
    items.append((audit_msg_id("receipted", *about), base))
    return items


def pull_expired(headers: Mapping[str, str] | None) -> bool:
    """Whether a receipt's disposition says its message expired in the recipient's pull inbox."""
    return (headers or {}).get(HDR_DISPOSITION) == f"rejected {PULL_EXPIRED_REASON}"


def rejection_events(
    submission: Submission, header: Header | None, reason: str, now: int, policy: str
) -> list[AuditItem]:
    """`submitted` and `rejected` with its reason, naming the hash of the `policy` version of
    the broker that refused it."""
    at = _utc(now)
    mid = submission.message_id
    if header is not None:
        submitted = _about(header, AuditKind.SUBMITTED, at)
    else:  # the envelope did not verify: only what NATS vouches for (subject, Nats-Msg-Id)
        submitted = AuditEvent(
            kind=AuditKind.SUBMITTED, at=at, message_id=mid, sender=submission.sender
        )
    rejected = replace(submitted, kind=AuditKind.REJECTED, reason=reason, version=policy)
    sender = submission.sender
    return [
        (audit_msg_id("submitted", sender, mid), submitted),
        (audit_msg_id("rejected", sender, mid), rejected),
    ]


def policy_events(digest: str, now: int) -> list[AuditItem]:
    """The routing policy version (its hash) that decides from now on."""
    event = AuditEvent(kind=AuditKind.POLICY_CHANGED, at=_utc(now), version=digest)
    return [(audit_msg_id("policy-changed", digest), event)]


def directory_events(serial: int, now: int) -> list[AuditItem]:
    event = AuditEvent(kind=AuditKind.DIRECTORY_CHANGED, at=_utc(now), version=str(serial))
    return [(audit_msg_id("directory-changed", str(serial)), event)]


def key_destroyed_events(notice: KeyDestroyed, now: int) -> list[AuditItem]:
    """An agency's signed word that it destroyed a private key; recorded as of its own time."""
    event = AuditEvent(
        kind=AuditKind.KEY_DESTROYED,
        at=_utc(min(notice.at, now)),
        agency=notice.agency,
        key_id=notice.kid,
    )
    return [(audit_msg_id("key-destroyed", notice.agency, notice.kid), event)]


def withdrawn_events(purged: Purged, now: int) -> list[AuditItem]:
    """An undelivered copy taken out of an inbox because its consent was withdrawn."""
    event = AuditEvent(
        kind=AuditKind.WITHDRAWN,
        at=_utc(now),
        message_id=purged.message_id,
        sender=purged.sender,
        recipient=purged.recipient,
        consent=purged.consent or None,
        reason="consent.withdrawn",
    )
    about = (purged.sender, purged.message_id, purged.recipient)
    return [(audit_msg_id("withdrawn", *about), event)]


def consent_withdrawn_events(subject: str, now: int) -> list[AuditItem]:
    """The broker handled a withdrawal from the registry (`bridge.consent.<issuer>.<id>...`)."""
    tokens = subject.split(".")
    issuer, consent = tokens[2], tokens[3]
    event = AuditEvent(
        kind=AuditKind.CONSENT_WITHDRAWN, at=_utc(now), agency=issuer, consent=consent
    )
    return [(audit_msg_id("consent-withdrawn", issuer, consent), event)]


def consent_registered_events(subject: str, data: bytes, directory: KeyLookup) -> list[AuditItem]:
    """A consent record in the registry, verified as its issuer's; raises `BridgeError`."""
    tokens = subject.split(".")
    if len(tokens) != 5 or tokens[4] != "record":
        raise ProtocolError("not a consent record subject", reason="consent.invalid")
    issuer = check_agency_id(tokens[2])
    body = verify_consent(data, directory, issuer).body
    if body.id != tokens[3]:
        raise ProtocolError("a consent record under another id", reason="consent.invalid")
    event = AuditEvent(
        kind=AuditKind.CONSENT_REGISTERED,
        at=_utc(body.issued_at),
        agency=issuer,
        consent=body.id,
        categories=list(body.categories),
        expires_at=_utc(body.valid_until),
    )
    return [(audit_msg_id("consent-registered", issuer, body.id), event)]
