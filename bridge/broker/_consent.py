"""The broker's consent check: the registry look-up behind every routing decision.

A consent that does not cover a message rejects it with the check's reason code; a registry
that cannot be read raises `TransportError`, which the service turns into a delayed redelivery:
the message is held, neither routed nor dropped, until the registry answers again.
"""

from __future__ import annotations

from ..consent import ConsentState, MessageFacts, Registry, check_message, consent_rule
from ..consent.check import Rule
from ..crypto import Header
from ..federation.directory import Directory

__all__ = ["check_consent", "facts_of"]


def facts_of(header: Header) -> MessageFacts:
    return MessageFacts(
        consent=header.consent,
        sender=header.sender,
        recipients=tuple(r.agency for r in header.recipients),
        type=header.type,
        purpose=header.purpose,
        categories=tuple(header.categories),
        expires_at=header.exp,
    )


async def check_consent(
    header: Header,
    registry: Registry,
    directory: Directory,
    now: int,
    *,
    rule: Rule = consent_rule,
    max_validity: int | None = None,
) -> ConsentState | None:
    """`rule` says which flows need a consent and whose count; with the signed routing policy,
    pass `bridge.consent.policy_rule(policy, directory)` and its `max_consent_validity`."""
    agencies = [entry.id for entry in directory.agencies()]
    return await check_message(
        facts_of(header), registry, directory, agencies, now, rule=rule, max_validity=max_validity
    )
