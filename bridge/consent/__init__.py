"""Consent: signed records of what a client allowed, their registry on NATS, and the checks.

    body = ConsentBody(id=new_consent_id(), issuer=..., recipients=[...], ...)
    await registry.put(issuer, body.id, "record", sign_consent(body, signing_key))
    state = await check_message(facts, registry, directory, agencies, now)

docs/consent.md explains the model, the reason codes and a worked example.
"""

from __future__ import annotations

from .check import REASONS, MessageFacts, check_message, evaluate
from .record import (
    ConsentBody,
    VerifiedConsent,
    VerifiedWithdrawal,
    WithdrawalBody,
    new_consent_id,
    sign_consent,
    sign_withdrawal,
    verify_consent,
    verify_withdrawal,
)
from .registry import ConsentState, Registry
from .rules import MAX_CONSENT_VALIDITY_SECONDS, ConsentRule, consent_rule, policy_rule

__all__ = [
    "MAX_CONSENT_VALIDITY_SECONDS",
    "REASONS",
    "ConsentBody",
    "ConsentRule",
    "ConsentState",
    "MessageFacts",
    "Registry",
    "VerifiedConsent",
    "VerifiedWithdrawal",
    "WithdrawalBody",
    "check_message",
    "consent_rule",
    "evaluate",
    "new_consent_id",
    "policy_rule",
    "sign_consent",
    "sign_withdrawal",
    "verify_consent",
    "verify_withdrawal",
]
