"""The routing policy as checked data, and the one function that decides a flow with it.

`PolicyRules` is what a policy file says once it parsed and checked (`bridge.policy.parse_policy`).
It answers two questions: which rule, if any, lets an agency of one role send a type to an
agency of another (`rule_for`), and whether a concrete message is allowed (`evaluate`, which
the broker and the sending adapter both call, so they cannot disagree on the rules).

System notices (`bridge.ids.SYSTEM_MESSAGE_TYPES`: receipts and the like) need no rule: they may
travel between two agencies wherever some rule lets either send the other anything, need no
consent, and carry only delivery metadata for delivery confirmation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, Protocol

from ..errors import PolicyError
from ..ids import SYSTEM_MESSAGE_TYPES
from ..wire import ALLOWED_CATEGORIES, DataCategory, MessageType, Purpose

if TYPE_CHECKING:
    from ..crypto import Header

__all__ = [
    "RECIPIENT",
    "SENDER",
    "SYSTEM_CATEGORIES",
    "SYSTEM_PURPOSES",
    "Decision",
    "Flow",
    "FlowRequest",
    "PolicyRules",
    "RecordRetention",
    "RoleLookup",
    "Rule",
    "TypeLimits",
]

SENDER: Final = "sender"
RECIPIENT: Final = "recipient"
SYSTEM_PURPOSES: Final = frozenset({Purpose.DELIVERY_CONFIRMATION.value})
SYSTEM_CATEGORIES: Final = frozenset({DataCategory.DELIVERY_METADATA.value})


class _Entry(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def role(self) -> str: ...


class RoleLookup(Protocol):
    """What the policy needs of the key directory: each agency's role."""

    def agency(self, agency: str) -> _Entry | None: ...
    def agencies(self) -> Sequence[_Entry]: ...


@dataclass(frozen=True, slots=True)
class TypeLimits:
    """Limits of one message type: envelope size, lifetime a sender may give, the longest a
    routed copy waits in an inbox, and the longest an opened item waits in an adapter's pull
    inbox for the local system. Durations in seconds."""

    max_bytes: int
    max_lifetime: int
    inbox_ttl: int
    pull_wait: int
    # Media types the type's messages may carry as attachments; none unless the policy lists them.
    attachment_types: frozenset[str] = frozenset()

    def inbox_wait(self, expires_at: int, now: int) -> int:
        """How long a copy routed `now` may wait in the inbox: `inbox_ttl`, cut to the
        message's own expiry. Below one second when the message has already expired."""
        return min(self.inbox_ttl, expires_at - now)


@dataclass(frozen=True, slots=True)
class RecordRetention:
    """How long the records about messages are kept, in seconds (`[retention]`): status
    events, consent records and withdrawals, and the audit trail."""

    status: int
    consent: int
    audit: int

    def items(self) -> tuple[tuple[str, int], ...]:
        """(setting, seconds) for each record kind, in the policy file's order."""
        return (("status", self.status), ("consent", self.consent), ("audit", self.audit))


@dataclass(frozen=True, slots=True)
class Rule:
    """One `[[flows]]` entry: agencies of `senders` roles may send `types` to `recipients` roles.

    `consent_issuers` holds `"sender"` or role names: whose consents count. (`"recipient"` is
    refused when the file is read: a consent never names its issuer as a recipient.)
    """

    name: str
    line: int | None
    senders: tuple[str, ...]
    recipients: tuple[str, ...]
    types: tuple[str, ...]
    purposes: frozenset[str]
    categories: frozenset[str]
    consent_required: bool
    consent_issuers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Flow:
    """What the policy allows `sender` to send `recipient` as `message_type`, and under what.

    `consent_issuers` are agency ids: a consent counts for this flow only if one of them issued
    it (by default only the sender). `system` flows (receipts, notices) need no consent and exist
    because `rule` allows some content between the two agencies, in one direction or the other.
    """

    rule: Rule
    sender: str
    recipient: str
    message_type: str
    system: bool
    consent_required: bool
    consent_issuers: frozenset[str]
    purposes: frozenset[str]
    categories: frozenset[str]
    limits: TypeLimits


@dataclass(frozen=True, slots=True)
class FlowRequest:
    """The metadata of one message, as far as the policy judges it (the envelope header's)."""

    sender: str
    recipients: tuple[str, ...]
    message_type: str
    purpose: str
    categories: tuple[str, ...]
    size: int | None  # envelope bytes; None before sealing (the adapter checks it after)
    iat: int
    exp: int
    attachment_types: tuple[str, ...] = ()  # the media type of each attachment, in order

    @classmethod
    def of_header(cls, header: Header, size: int | None) -> FlowRequest:
        """The request a verified (or, for `explain`, an unverified) envelope header makes."""
        return cls(
            sender=header.sender,
            recipients=tuple(r.agency for r in header.recipients),
            message_type=header.type,
            purpose=header.purpose,
            categories=tuple(header.categories),
            size=size,
            iat=header.iat,
            exp=header.exp,
            attachment_types=tuple(a.type for a in header.attachments),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one message: allowed with a flow per recipient, or the first denial."""

    allowed: bool
    reason: str | None
    detail: str
    flows: tuple[Flow, ...] = ()
    recipient: str | None = None  # the recipient a denial is about, if it is about one
    rule: Rule | None = None  # the rule a denial was measured against, if one matched
    outside: tuple[str, ...] = ()  # the categories a `policy.category_denied` is about

    def raise_if_denied(self) -> tuple[Flow, ...]:
        if not self.allowed:
            raise PolicyError(self.detail, reason=self.reason)
        return self.flows


def _deny(reason: str, detail: str, **where: object) -> Decision:
    return Decision(False, reason, detail, **where)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PolicyRules:
    """A parsed and checked policy file. Default deny: what no rule allows is refused."""

    federation: str
    max_consent_validity: int
    roles: Mapping[str, str]
    rules: tuple[Rule, ...]
    limits: Mapping[str, TypeLimits]
    retention: RecordRetention
    _index: dict[tuple[str, str, str], Rule] = field(default_factory=dict, repr=False)
    _pairs: dict[tuple[str, str], Rule] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for rule in self.rules:
            for s in rule.senders:
                for r in rule.recipients:
                    self._pairs.setdefault((s, r), rule)
                    for t in rule.types:
                        self._index[(s, r, t)] = rule

    def rule_for(self, sender_role: str, recipient_role: str, message_type: str) -> Rule | None:
        """The rule behind this (role, role, type), or None. System types follow any rule
        between the two roles, in either direction."""
        if message_type in SYSTEM_MESSAGE_TYPES:
            return self._pairs.get((sender_role, recipient_role)) or self._pairs.get(
                (recipient_role, sender_role)
            )
        return self._index.get((sender_role, recipient_role, message_type))

    def type_limits(self, message_type: str) -> TypeLimits | None:
        """The limits of `message_type` (retention included), or None for a type the policy
        does not know: whatever stores data of a type asks here how long it may keep it."""
        return self.limits.get(message_type)

    def longest(self, limit: Literal["max_lifetime", "inbox_ttl", "pull_wait"]) -> int:
        """The longest value of one per-type limit over every message type."""
        return max(int(getattr(limits, limit)) for limits in self.limits.values())

    def flow(
        self, sender: str, recipient: str, message_type: str, directory: RoleLookup
    ) -> Flow | None:
        """What the policy allows `sender` to send `recipient` as `message_type` (agency ids,
        roles from `directory`); None when it does not allow it at all."""
        sender_entry, recipient_entry = directory.agency(sender), directory.agency(recipient)
        if sender_entry is None or recipient_entry is None:
            return None
        rule = self.rule_for(sender_entry.role, recipient_entry.role, message_type)
        limits = self.limits.get(message_type)
        if rule is None or limits is None:
            return None
        if message_type in SYSTEM_MESSAGE_TYPES:
            allowed = _wire_categories(message_type)
            return Flow(
                rule=rule,
                sender=sender,
                recipient=recipient,
                message_type=message_type,
                system=True,
                consent_required=False,
                consent_issuers=frozenset(),
                purposes=SYSTEM_PURPOSES,
                categories=allowed or SYSTEM_CATEGORIES,
                limits=limits,
            )
        return Flow(
            rule=rule,
            sender=sender,
            recipient=recipient,
            message_type=message_type,
            system=False,
            consent_required=rule.consent_required,
            consent_issuers=frozenset(_issuers(rule.consent_issuers, sender, directory)),
            purposes=rule.purposes,
            categories=rule.categories,
            limits=limits,
        )

    def evaluate(self, request: FlowRequest, directory: RoleLookup) -> Decision:
        """Decide one message. Checks in order, per recipient in the header's order: a rule
        allows the flow, the purpose, every category; then the type's size and lifetime, and
        the media type of every attachment."""
        flows = []
        for recipient in request.recipients:
            flow = self.flow(request.sender, recipient, request.message_type, directory)
            if flow is None:
                return _deny(
                    "policy.route_denied",
                    f"no rule lets {_role(request.sender, directory)} send a "
                    f"{request.message_type} to {_role(recipient, directory)}",
                    recipient=recipient,
                )
            if request.purpose not in flow.purposes:
                return _deny(
                    "policy.purpose_denied",
                    f"rule {flow.rule.name!r} does not allow this purpose",
                    recipient=recipient,
                    rule=flow.rule,
                )
            outside = tuple(c for c in request.categories if c not in flow.categories)
            if outside:
                return _deny(
                    "policy.category_denied",
                    f"rule {flow.rule.name!r} does not allow every data category",
                    recipient=recipient,
                    rule=flow.rule,
                    outside=outside,
                )
            flows.append(flow)
        if not flows:
            return _deny("policy.route_denied", "a message needs at least one recipient")
        limits = flows[0].limits
        if request.size is not None and request.size > limits.max_bytes:
            return _deny(
                "policy.too_large",
                f"a {request.message_type} may be at most {limits.max_bytes} bytes",
                rule=flows[0].rule,
            )
        if request.exp - request.iat > limits.max_lifetime:
            return _deny(
                "policy.lifetime",
                f"lifetime exceeds {limits.max_lifetime}s allowed for a {request.message_type}",
                rule=flows[0].rule,
            )
        outside = tuple(t for t in request.attachment_types if t not in limits.attachment_types)
        if outside:
            return _deny(
                "policy.attachment_type_denied",
                f"a {request.message_type} may not carry an attachment of this media type",
                rule=flows[0].rule,
                outside=outside,
            )
        return Decision(True, None, "allowed", tuple(flows))


def _wire_categories(message_type: str) -> frozenset[str] | None:
    """The categories the wire format allows a type's body to hold, if it knows the type."""
    try:
        allowed = ALLOWED_CATEGORIES.get(MessageType(message_type))
    except ValueError:
        return None
    return None if allowed is None else frozenset(c.value for c in allowed)


def _role(agency: str, directory: RoleLookup) -> str:
    entry = directory.agency(agency)
    return f"a {entry.role}" if entry is not None else "an agency outside the directory"


def _issuers(spec: Iterable[str], sender: str, directory: RoleLookup) -> Iterable[str]:
    for item in spec:
        if item == SENDER:
            yield sender
        else:
            yield from (a.id for a in directory.agencies() if a.role == item)
