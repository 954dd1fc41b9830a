"""Which flows need a consent, whose consents count, and how long a consent may run.

The signed routing policy (`bridge.policy`) says it: `policy_rule` makes the rule from a verified
policy, and the broker and the sending adapter use that. `consent_rule` is the default for
callers without a policy (unit tests): referrals, handovers and feedback need a consent issued
by the sender; receipts and the system messages about consents do not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from ..policy import Policy, PolicyRules, RoleLookup

__all__ = ["MAX_CONSENT_VALIDITY_SECONDS", "ConsentRule", "consent_rule", "policy_rule"]

MAX_CONSENT_VALIDITY_SECONDS: Final = 2 * 365 * 86400
"""The longest validity a consent may have (the policy's `max_consent_validity`)."""

_NEEDS_CONSENT: Final = frozenset({"referral", "handover", "feedback"})


@dataclass(frozen=True, slots=True)
class ConsentRule:
    """For one flow: whether a message needs a consent, and whose consents are accepted."""

    required: bool
    issuers: frozenset[str]


def consent_rule(sender: str, recipient: str, message_type: str) -> ConsentRule:
    """The consent rule for `sender` sending a `message_type` to `recipient`."""
    if message_type in _NEEDS_CONSENT:
        return ConsentRule(required=True, issuers=frozenset({sender}))
    return ConsentRule(required=False, issuers=frozenset())


def policy_rule(
    policy: Policy | PolicyRules, directory: RoleLookup
) -> Callable[[str, str, str], ConsentRule]:
    """`consent_rule` as the signed routing policy says it, for `check_message(rule=...)`.

    A flow the policy does not allow needs no consent here: the routing check refuses it
    (`policy.route_denied`) before any consent is looked at.
    """

    def rule(sender: str, recipient: str, message_type: str) -> ConsentRule:
        flow = policy.flow(sender, recipient, message_type, directory)
        if flow is None:
            return ConsentRule(required=False, issuers=frozenset())
        return ConsentRule(required=flow.consent_required, issuers=frozenset(flow.consent_issuers))

    return rule
