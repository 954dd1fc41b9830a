"""What `bridge policy check` and `bridge policy explain` print: the policy as tables, and one
decision with the rule behind it.

Text only, metadata only: roles, types, codes, agency ids and rule names; never anything of a
message's content.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import msgspec

from ..ids import AGENCY_ID_PATTERN, CODE_PATTERN, SYSTEM_MESSAGE_TYPES
from ._model import Decision, FlowRequest, PolicyRules, RoleLookup

__all__ = ["HeaderFacts", "describe", "explain"]

_Agency = Annotated[str, msgspec.Meta(pattern=AGENCY_ID_PATTERN)]
_Code = Annotated[str, msgspec.Meta(pattern=CODE_PATTERN)]


class HeaderFacts(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A message's header as `explain --header FILE` reads it (JSON).

    `recipients` are agency ids; `lifetime_seconds` (or `iat` and `exp`) and `size` (envelope
    bytes) are optional: without them the lifetime and size checks are not made.
    """

    type: _Code
    sender: _Agency
    recipients: Annotated[list[_Agency], msgspec.Meta(min_length=1, max_length=64)]
    purpose: _Code
    categories: Annotated[list[_Code], msgspec.Meta(max_length=32)]
    lifetime_seconds: Annotated[int, msgspec.Meta(ge=0)] | None = None
    iat: int | None = None
    exp: int | None = None
    size: Annotated[int, msgspec.Meta(ge=0)] | None = None

    def request(self) -> FlowRequest:
        iat = self.iat if self.iat is not None else 0
        if self.exp is not None:
            exp = self.exp
        elif self.lifetime_seconds is not None:
            exp = iat + self.lifetime_seconds
        else:
            exp = iat  # no lifetime given: nothing to measure
        return FlowRequest(
            sender=self.sender,
            recipients=tuple(self.recipients),
            message_type=self.type,
            purpose=self.purpose,
            categories=tuple(self.categories),
            size=self.size,
            iat=iat,
            exp=exp,
        )


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*head).rstrip(), line.format(*("-" * w for w in widths)).rstrip()]
    out += [line.format(*row).rstrip() for row in rows]
    return out


def describe(rules: PolicyRules, version: str) -> str:
    """Everything the policy allows, as tables; `version` says which (serial and hash, or a
    file that is not signed yet)."""
    out = [
        f"policy of federation {rules.federation}: {version}",
        f"consents may be valid for at most {_duration(rules.max_consent_validity)}",
        "",
        "roles:",
        *(f"  {role}: {text}" for role, text in rules.roles.items()),
        "",
        "allowed flows (everything else is denied):",
    ]
    rows = []
    for rule in rules.rules:
        consent = (
            "required, from " + ", ".join(rule.consent_issuers)
            if rule.consent_required
            else "not required"
        )
        for sender in rule.senders:
            for recipient in rule.recipients:
                rows.append((rule.name, sender, recipient, ", ".join(rule.types), consent))
    out += _table(("rule", "from", "to", "types", "consent"), rows)
    out += ["", "what each rule lets pass:"]
    for rule in rules.rules:
        out += [
            f"  {rule.name} (line {rule.line})",
            f"    purposes:   {', '.join(sorted(rule.purposes))}",
            f"    categories: {', '.join(sorted(rule.categories))}",
        ]
    out += [
        "",
        f"system notices ({', '.join(SYSTEM_MESSAGE_TYPES)}) follow every flow above, both ways,",
        "without consent, for delivery-confirmation with delivery metadata only.",
        "",
        "limits per message type:",
    ]
    out += _table(
        ("type", "max size", "max lifetime", "inbox wait", "pull-inbox wait"),
        [
            (
                name,
                f"{limits.max_bytes} bytes",
                _duration(limits.max_lifetime),
                _duration(limits.inbox_ttl),
                _duration(limits.pull_wait),
            )
            for name, limits in rules.limits.items()
        ],
    )
    out += ["", "records are kept:"]
    out += _table(
        ("record", "kept for"),
        [(name, _duration(seconds)) for name, seconds in rules.retention.items()],
    )
    return "\n".join(out)


def explain(
    rules: PolicyRules, directory: RoleLookup, facts: HeaderFacts, version: str
) -> tuple[Decision, str]:
    """The decision on `facts` and a text naming the rule behind it."""
    request = facts.request()
    decision = rules.evaluate(request, directory)
    out = [f"policy of federation {rules.federation}: {version}"]
    if decision.allowed:
        out.append(f"ALLOWED: {facts.sender} may send this {facts.type}")
        for flow in decision.flows:
            consent = (
                "a consent issued by " + ", ".join(sorted(flow.consent_issuers))
                if flow.consent_required
                else "no consent"
            )
            kind = "system notice along " if flow.system else ""
            out.append(
                f"  to {flow.recipient}: {kind}rule {flow.rule.name!r} (line {flow.rule.line}); "
                f"needs {consent}; waits at most {_duration(flow.limits.inbox_ttl)} in the inbox"
            )
        if request.size is None:
            out.append("  (no size given: the size limit was not checked)")
        if request.exp == request.iat:
            out.append("  (no lifetime given: the lifetime limit was not checked)")
        return decision, "\n".join(out)
    out.append(f"DENIED [{decision.reason}]: {decision.detail}")
    if decision.recipient is not None:
        entry = directory.agency(decision.recipient)
        role = entry.role if entry is not None else "not in the key directory"
        out.append(f"  recipient: {decision.recipient} ({role})")
    sender = directory.agency(facts.sender)
    out.append(
        f"  sender: {facts.sender} ({sender.role if sender else 'not in the key directory'})"
    )
    if decision.rule is not None:
        rule = decision.rule
        out.append(
            f"  measured against rule {rule.name!r} (line {rule.line}): purposes "
            f"{', '.join(sorted(rule.purposes))}; categories {', '.join(sorted(rule.categories))}"
        )
    if decision.outside:
        out.append(f"  categories outside the rule: {', '.join(decision.outside)}")
    return decision, "\n".join(out)
