"""The broker's decision about one submission: which checks, in which order, with which reason.

Pure functions over already-fetched data (bytes, subject, headers, directory, config, time), so
every rule is testable without NATS and the service module only moves bytes. The checks run in
a fixed order and the first failure wins: a sender learns one precise reason code in its status
event, and the same envelope always gets the same one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..config import BrokerConfig
from ..crypto import Header, VerifiedEnvelope
from ..errors import EnvelopeExpired, PolicyError, ProtocolError
from ..federation.directory import Directory
from ..ids import check_agency_id, check_message_id
from ..nats.subjects import HDR_MSG_ID, submit_subject

__all__ = [
    "Submission",
    "Verdict",
    "allowed_by_routes",
    "decide",
    "inbox_ttl",
    "parse_submission",
]


@dataclass(frozen=True, slots=True)
class Submission:
    """Who submitted (from the NATS subject, which the server lets only that agency publish
    to) and the message id it stored the submission under (`Nats-Msg-Id`).

    Both are trusted as far as NATS authentication goes; the envelope bytes are not trusted
    until `check_submission` returns.
    """

    sender: str
    message_id: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """A submission that passed every check: what to route where, and for how long."""

    envelope: VerifiedEnvelope
    recipients: tuple[str, ...]
    ttl: int

    @property
    def header(self) -> Header:
        return self.envelope.header


def parse_submission(subject: str, headers: Mapping[str, str] | None) -> Submission:
    """The sender and message id of a submission, or `ProtocolError` if they cannot be known.

    A submission without them cannot even be reported back (a status subject needs both), so
    the caller terminates it.
    """
    sender = check_agency_id(subject.rsplit(".", 1)[-1])
    if submit_subject(sender) != subject:
        raise ProtocolError("not a submission subject", reason="broker.subject")
    raw_id = (headers or {}).get(HDR_MSG_ID)
    return Submission(sender=sender, message_id=check_message_id(raw_id))


_NOTICES = frozenset({"consent-revoked", "deletion-confirmed"})


def allowed_by_routes(
    config: BrokerConfig, sender_role: str, recipient_role: str, kind: str
) -> bool:
    """Whether some route lets `sender_role` send messages of type `kind` to `recipient_role`.

    Default deny: without a matching route nothing passes. The consent notices
    (`consent-revoked`, `deletion-confirmed`) follow every route, either way, without being
    listed: a withdrawal must reach whoever received data, and its answer must come back.
    """
    if kind in _NOTICES:
        return any(
            (route.from_role == sender_role and recipient_role in route.to_roles)
            or (route.from_role == recipient_role and sender_role in route.to_roles)
            for route in config.routes
        )
    return any(
        route.from_role == sender_role and recipient_role in route.to_roles and kind in route.types
        for route in config.routes
    )


def inbox_ttl(config: BrokerConfig, header: Header, now: int) -> int:
    """Seconds a routed copy may wait in an inbox: the type's limit, cut to the envelope's expiry.

    Raises `EnvelopeExpired` when less than one second is left (the store's TTL granularity).
    """
    ttl = min(config.retention[header.type].inbox_ttl_seconds, header.exp - now)
    if ttl < 1:
        raise EnvelopeExpired("envelope expires before it could be routed")
    return ttl


def decide(
    envelope: VerifiedEnvelope,
    submission: Submission,
    directory: Directory,
    config: BrokerConfig,
    now: int,
) -> Verdict:
    """Check a verified envelope against its submission and the rules; raise `BridgeError`.

    Runs after `bridge.crypto.verify` (size, frame, the sender's key, both signatures, then the
    header's fields, recipients and times) on the exact received bytes. Order here: the sender
    on the subject, the message id, the routing rules per recipient, the type's lifetime limit,
    and time left to route it.
    """
    header = envelope.header
    if header.sender != submission.sender:
        raise PolicyError(
            "the envelope's sender is not the agency that submitted it",
            reason="broker.sender_mismatch",
        )
    if header.id != submission.message_id:
        raise PolicyError(
            "the envelope's message id differs from the submission's Nats-Msg-Id",
            reason="broker.id_mismatch",
        )
    sender_entry = directory.agency(header.sender)
    if sender_entry is None:  # verify found the signing key, so this is a directory bug
        raise PolicyError("sender is not in the directory", reason="policy.route_denied")
    recipients = tuple(r.agency for r in header.recipients)
    for recipient in recipients:
        entry = directory.agency(recipient)
        if entry is None or not allowed_by_routes(
            config, sender_entry.role, entry.role, header.type
        ):
            raise PolicyError(
                f"no route lets a {sender_entry.role} send a {header.type} to "
                f"a {entry.role if entry else 'unknown agency'}",
                reason="policy.route_denied",
            )
    retention = config.retention[header.type]
    if header.exp - header.iat > retention.max_lifetime_seconds:
        raise PolicyError(
            f"lifetime exceeds {retention.max_lifetime_seconds}s allowed for a {header.type}",
            reason="policy.lifetime",
        )
    return Verdict(envelope=envelope, recipients=recipients, ttl=inbox_ttl(config, header, now))
