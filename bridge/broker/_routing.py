"""The broker's decision about one submission: which checks, in which order, with which reason.

Pure functions over already-fetched data (bytes, subject, headers, directory, policy, time), so
every rule is testable without NATS and the service module only moves bytes. The checks run in
a fixed order and the first failure wins: a sender learns one precise reason code in its status
event, and the same envelope always gets the same one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..crypto import Header, VerifiedEnvelope
from ..errors import EnvelopeExpired, PolicyError, ProtocolError
from ..federation.directory import Directory
from ..ids import check_agency_id, check_message_id
from ..nats.subjects import HDR_MSG_ID, submit_subject
from ..policy import Flow, FlowRequest, Policy, TypeLimits

__all__ = [
    "Submission",
    "Verdict",
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
    """A submission that passed every check: what to route where, for how long, and by which
    rule of which policy version (`flows`, one per recipient in the header's order)."""

    envelope: VerifiedEnvelope
    recipients: tuple[str, ...]
    ttl: int
    flows: tuple[Flow, ...]

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


def inbox_ttl(limits: TypeLimits, header: Header, now: int) -> int:
    """Seconds a routed copy may wait in an inbox: the type's limit, cut to the envelope's expiry.

    Raises `EnvelopeExpired` when less than one second is left (the store's TTL granularity).
    """
    ttl = min(limits.inbox_ttl, header.exp - now)
    if ttl < 1:
        raise EnvelopeExpired("envelope expires before it could be routed")
    return ttl


def decide(
    envelope: VerifiedEnvelope,
    submission: Submission,
    directory: Directory,
    policy: Policy,
    now: int,
) -> Verdict:
    """Check a verified envelope against its submission and the rules; raise `BridgeError`.

    Runs after `bridge.crypto.verify` (size, frame, the sender's key, both signatures, then the
    header's fields, recipients and times) on the exact received bytes. Order here: the sender
    on the subject, the message id, then the routing policy (`Policy.evaluate`: a rule for every
    recipient, purpose, categories, the type's size and lifetime), and time left to route it.
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
    request = FlowRequest.of_header(header, size=len(envelope.raw))
    flows = policy.evaluate(request, directory).raise_if_denied()
    return Verdict(
        envelope=envelope,
        recipients=request.recipients,
        ttl=inbox_ttl(flows[0].limits, header, now),
        flows=flows,
    )
