"""Whether a consent covers a message: one order of checks, one reason code per failure.

`evaluate` is pure (a verified record, whether it was withdrawn, the message's metadata, the
time); `check_message` adds the registry look-ups and the rule of the flow. The broker runs it on
every submission and the sending adapter before it publishes, so a local system hears the same
reason code at once that the broker would give.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ..crypto import KeyLookup
from ..errors import ConsentDenied
from ..ids import NO_CONSENT
from .record import ConsentBody
from .registry import ConsentState, Registry
from .rules import ConsentRule, consent_rule

__all__ = ["REASONS", "MessageFacts", "check_message", "evaluate"]

REASONS = (
    "consent.missing",
    "consent.unknown",
    "consent.issuer_not_accepted",
    "consent.withdrawn",
    "consent.not_yet_valid",
    "consent.expired",
    "consent.validity_too_long",
    "consent.type_not_covered",
    "consent.recipient_not_covered",
    "consent.purpose_not_covered",
    "consent.category_not_covered",
    "consent.outlived",
)
"""Every reason `check_message` may give, in the order the checks run (`consent.invalid`, a
forged or tampered record, comes from the registry before them)."""


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What the checks need of a message: all of it from the signed cleartext header."""

    consent: str
    sender: str
    recipients: Sequence[str]
    type: str
    purpose: str
    categories: Sequence[str]
    expires_at: int


def _deny(reason: str, detail: str) -> ConsentDenied:
    return ConsentDenied(detail, reason=reason)


def evaluate(
    body: ConsentBody,
    withdrawn: bool,
    facts: MessageFacts,
    now: int,
    *,
    max_validity: int | None = None,
) -> None:
    """Raise `ConsentDenied` unless `body` covers the message now; return None if it does.

    `max_validity` is the routing policy's `max_consent_validity`: the issuing adapter refuses
    to register a longer consent, and this refuses one written into the registry around it.
    """
    if withdrawn:
        raise _deny("consent.withdrawn", "the consent has been withdrawn")
    if now < body.valid_from:
        raise _deny("consent.not_yet_valid", "the consent is not valid yet")
    if now >= body.valid_until:
        raise _deny("consent.expired", "the consent has expired")
    if max_validity is not None and body.valid_until - body.valid_from > max_validity:
        raise _deny(
            "consent.validity_too_long", "the consent runs longer than the routing policy allows"
        )
    if facts.type not in body.types:
        raise _deny("consent.type_not_covered", "the consent does not cover this message type")
    if not set(facts.recipients) <= set(body.recipients):
        raise _deny("consent.recipient_not_covered", "the consent does not name every recipient")
    if facts.purpose not in body.purposes:
        raise _deny("consent.purpose_not_covered", "the consent does not cover this purpose")
    if not set(facts.categories) <= set(body.categories):
        raise _deny(
            "consent.category_not_covered", "the consent does not cover every data category"
        )
    if facts.expires_at > body.valid_until:
        raise _deny("consent.outlived", "the message would outlive its consent")


Rule = Callable[[str, str, str], ConsentRule]


async def check_message(
    facts: MessageFacts,
    registry: Registry,
    directory: KeyLookup,
    agencies: Iterable[str],
    now: int,
    *,
    rule: Rule = consent_rule,
    max_validity: int | None = None,
) -> ConsentState | None:
    """The consent state that covers `facts`, or None when no flow of it needs one.

    Raises `ConsentDenied` (reason per check), `ConsentInvalid` (a record that does not verify)
    or `TransportError` (the registry cannot be read: the caller holds the message and retries).
    `max_validity`: the policy's `max_consent_validity` (see `evaluate`).
    `agencies` are the federation's agency ids, searched only to tell a consent of an agency
    the policy does not accept from an unknown one.
    """
    rules = {r: rule(facts.sender, r, facts.type) for r in facts.recipients}
    needed = {r: rl for r, rl in rules.items() if rl.required}
    if not needed:
        return None
    if facts.consent == NO_CONSENT:
        raise _deny("consent.missing", "the message names no consent")
    accepted = sorted(set().union(*(rl.issuers for rl in needed.values())))
    found: ConsentState | None = None
    for issuer in accepted:
        found = await registry.state(issuer, facts.consent, directory)
        if found is not None:
            break
    if found is None:
        for other in sorted(set(agencies) - set(accepted)):
            if await registry.raw(other, facts.consent, "record") is not None:
                raise _deny(
                    "consent.issuer_not_accepted",
                    "the consent was issued by an agency the policy does not accept here",
                )
        raise _deny("consent.unknown", "no consent with this id is registered")
    issuer = found.consent.body.issuer
    if any(issuer not in rl.issuers for rl in needed.values()):
        raise _deny(
            "consent.issuer_not_accepted",
            "the consent's issuer is not accepted for every recipient",
        )
    evaluate(found.consent.body, found.withdrawn, facts, now, max_validity=max_validity)
    return found
