"""The federation's routing policy: one reviewed TOML file, signed by the trust anchor.

It says which roles exist, which flows are allowed (sender role -> recipient role, message
types, purposes, data categories, whether a consent is needed and whose consents count), the
retention of each message type (size, lifetime, inbox and pull-inbox wait), how long status,
consent and audit records are kept, and how long a consent may be valid.
Everything it does not allow is denied. docs/policy.md describes the format and the workflow.

    policy = load_policy_file(path, anchor, state=PolicySerialState(state_path))
    flow = policy.flow("jobcenter-unna", "suchtberatung-unna", "referral", directory)
    if flow is None: ...                       # the policy does not allow it at all
    flow.consent_required, flow.consent_issuers, flow.purposes, flow.categories
    policy.evaluate(FlowRequest(...), directory).raise_if_denied()   # PolicyError + reason
    policy.hash                                # names the version in every decision
    policy.limits["referral"].pull_wait        # retention per type (TypeLimits), in seconds
    policy.retention.audit                     # how long records are kept (RecordRetention)

System notices (`bridge.ids.SYSTEM_MESSAGE_TYPES`, receipts and the like) need no rule: they
follow every allowed flow in both directions, without consent, for `delivery-confirmation`
with delivery metadata only (or the categories `bridge.wire.ALLOWED_CATEGORIES` gives the type).
"""

from __future__ import annotations

from ._explain import HeaderFacts, describe, explain
from ._holder import PolicyHolder
from ._model import (
    RECIPIENT,
    SENDER,
    SYSTEM_CATEGORIES,
    SYSTEM_PURPOSES,
    Decision,
    Flow,
    FlowRequest,
    PolicyRules,
    RecordRetention,
    RoleLookup,
    Rule,
    TypeLimits,
)
from ._operator import POLICY_SERIAL, SIGNED_POLICY, read_policy_source, sign_policy_file
from ._parse import MAX_POLICY_BYTES, SYSTEM_DEFAULT_LIMITS, parse_policy
from ._signed import (
    CONTEXT,
    MAGIC,
    Policy,
    PolicyBody,
    PolicySerialState,
    load_policy,
    load_policy_file,
    sign_policy,
)
from ._stores import StoreLimit, limit_for, provision_settings, store_limits

__all__ = [
    "CONTEXT",
    "MAGIC",
    "MAX_POLICY_BYTES",
    "POLICY_SERIAL",
    "RECIPIENT",
    "SENDER",
    "SIGNED_POLICY",
    "SYSTEM_CATEGORIES",
    "SYSTEM_DEFAULT_LIMITS",
    "SYSTEM_PURPOSES",
    "Decision",
    "Flow",
    "FlowRequest",
    "HeaderFacts",
    "Policy",
    "PolicyBody",
    "PolicyHolder",
    "PolicyRules",
    "PolicySerialState",
    "RecordRetention",
    "RoleLookup",
    "Rule",
    "StoreLimit",
    "TypeLimits",
    "describe",
    "explain",
    "limit_for",
    "load_policy",
    "load_policy_file",
    "parse_policy",
    "provision_settings",
    "read_policy_source",
    "sign_policy",
    "sign_policy_file",
    "store_limits",
]
