"""Consent records for tests: signed with the test federation's real keys (envelope_helpers)."""

from __future__ import annotations

from typing import Any

from envelope_helpers import CATEGORIES, DAY, RECIPIENTS, SENDER, Federation

from bridge.consent import (
    ConsentBody,
    WithdrawalBody,
    new_consent_id,
    sign_consent,
    sign_withdrawal,
)

__all__ = ["MESSAGE_PURPOSE", "consent_body", "signed_consent", "signed_withdrawal"]

MESSAGE_PURPOSE = "counselling"
"""The purpose the consent tests' messages name: one the routing policy allows for a referral
(the vectors' own purpose is outside the vocabulary, so the policy refuses it before consent)."""


def consent_body(fed: Federation, **changes: Any) -> ConsentBody:
    """A consent of the sender covering `seal_referral`'s referral, valid for 30 days."""
    fields: dict[str, Any] = {
        "id": new_consent_id(),
        "issuer": SENDER,
        "recipients": sorted(RECIPIENTS),
        "purposes": [MESSAGE_PURPOSE],
        "categories": sorted(CATEGORIES),
        "types": ["referral"],
        "valid_from": fed.now - DAY,
        "valid_until": fed.now + 30 * DAY,
        "issued_at": fed.now - DAY,
    }
    fields.update(changes)
    return ConsentBody(**fields)


def signed_consent(fed: Federation, body: ConsentBody, label: str | None = None) -> bytes:
    return sign_consent(body, fed.key(label or f"{body.issuer}/sign"))


def signed_withdrawal(fed: Federation, body: ConsentBody, at: int | None = None) -> bytes:
    withdrawal = WithdrawalBody(id=body.id, issuer=body.issuer, at=at or fed.now)
    return sign_withdrawal(withdrawal, fed.key(f"{body.issuer}/sign"))
