"""Reading a policy file: TOML in, checked `PolicyRules` out, or `PolicyFileError` with the line.

Everything is checked before anything is used: unknown tables and keys, roles outside the key
directory's vocabulary or not declared under `[roles]`, message types, purpose and category
codes outside `bridge.wire`'s vocabularies, and rules that contradict each other or the wire
format. docs/policy.md describes the format.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from typing import Any, Final, NoReturn

from ..crypto.attachments import MEDIA_TYPE_PATTERN
from ..errors import PolicyFileError
from ..federation.directory import ROLES
from ..ids import AGENCY_ID_PATTERN, MESSAGE_TYPES, SYSTEM_MESSAGE_TYPES
from ..wire import DataCategory, Purpose
from ._lines import LineIndex
from ._model import (
    RECIPIENT,
    SENDER,
    PolicyRules,
    RecordRetention,
    Rule,
    TypeLimits,
    _wire_categories,
)

__all__ = ["MAX_POLICY_BYTES", "SYSTEM_DEFAULT_LIMITS", "parse_policy"]

MAX_POLICY_BYTES: Final = 256 * 1024
SYSTEM_DEFAULT_LIMITS: Final = TypeLimits(
    max_bytes=64 * 1024, max_lifetime=14 * 86400, inbox_ttl=7 * 86400, pull_wait=7 * 86400
)
"""Limits of a system notice type that the policy file does not list under `[types]`."""

_MAX_CONSENT_VALIDITY: Final = 10 * 366 * 86400
_MAX_RECORD_RETENTION: Final = 30 * 366 * 86400
_TYPE_KEYS: Final = ("max_bytes", "max_lifetime", "inbox_ttl", "pull_wait")
_RETENTION_KEYS: Final = ("status", "consent", "audit")
_MAX_TYPE_BYTES: Final = 64 * 1024 * 1024
_MAX_MEDIA_TYPES: Final = 64
_MEDIA_TYPE: Final = re.compile(MEDIA_TYPE_PATTERN)
_DURATION: Final = re.compile(r"^([0-9]{1,9})\s*([smhd])$")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_AGENCY: Final = re.compile(AGENCY_ID_PATTERN)
_PURPOSES: Final = frozenset(p.value for p in Purpose)
_CATEGORIES: Final = frozenset(c.value for c in DataCategory)
_TOML_POSITION: Final = re.compile(r"\(at line (\d+), column \d+\)")
_FLOW_KEYS: Final = frozenset(
    {"name", "from", "to", "types", "purposes", "categories", "consent_required", "consent_issuers"}
)


class _Reader:
    """Checks one parsed document, naming lines through its `LineIndex`."""

    def __init__(self, lines: LineIndex) -> None:
        self.lines = lines

    def fail(self, message: str, line: int | None, reason: str = "policy.file_invalid") -> NoReturn:
        raise PolicyFileError(message, line=line, reason=reason)

    def table(self, doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
        value = doc.get(name)
        if not isinstance(value, dict):
            self.fail(f"a [{name}] table is required", self.lines.table(name))
        return value

    def keys(
        self, table: Mapping[str, Any], allowed: frozenset[str], where: str, index: int = 0
    ) -> None:
        for key in table:
            if key not in allowed:
                self.fail(f"[{where}] has no setting {key!r}", self.lines.key(where, key, index))

    def duration(self, value: object, where: str, key: str, index: int = 0) -> int:
        line = self.lines.key(where, key, index)
        if isinstance(value, bool):
            value = None
        if isinstance(value, int):
            seconds = value
        elif isinstance(value, str) and (m := _DURATION.match(value.strip())):
            seconds = int(m[1]) * _UNITS[m[2]]
        else:
            self.fail(f'{key} must be seconds or a duration like "30d", "12h", "90m"', line)
        if seconds < 1:
            self.fail(f"{key} must be at least one second", line)
        return seconds

    def names(
        self,
        value: object,
        where: str,
        key: str,
        index: int,
        known: frozenset[str] | tuple[str, ...],
        what: str,
        *,
        single: bool = False,
    ) -> tuple[str, ...]:
        """A non-empty list of distinct known names (or one name where `single` allows)."""
        line = self.lines.key(where, key, index)
        if single and isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value:
            self.fail(f"{key} must be a non-empty list of {what}s", line)
        seen: list[str] = []
        for item in value:
            if not isinstance(item, str):
                self.fail(f"{key} must list {what}s as strings", line)
            if item not in known:
                self.fail(f"{key} names an unknown {what} {item!r}", line, "policy.unknown_name")
            if item in seen:
                self.fail(f"{key} lists {item!r} twice", line)
            seen.append(item)
        return tuple(seen)


def parse_policy(text: str | bytes) -> PolicyRules:
    """Parse and check a policy file; raise `PolicyFileError` naming the line at fault."""
    if isinstance(text, bytes):
        if len(text) > MAX_POLICY_BYTES:
            raise PolicyFileError(f"a policy file may be at most {MAX_POLICY_BYTES} bytes")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PolicyFileError("the policy file is not UTF-8") from exc
    if len(text) > MAX_POLICY_BYTES:
        raise PolicyFileError(f"a policy file may be at most {MAX_POLICY_BYTES} bytes")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # NOTE: tomllib's messages say what is wrong and where, without quoting the text.
        m = _TOML_POSITION.search(str(exc))
        message = _TOML_POSITION.sub("", str(exc)).strip()
        raise PolicyFileError(
            f"not valid TOML: {message}",
            line=int(m[1]) if m else None,
            reason="policy.syntax",
        ) from None
    return _check(doc, _Reader(LineIndex(text)))


def _check(doc: Mapping[str, Any], r: _Reader) -> PolicyRules:
    for name in doc:
        if name not in ("policy", "roles", "types", "retention", "flows"):
            r.fail(f"unknown table [{name}]", r.lines.table(name) or r.lines.key("", name))
    head = r.table(doc, "policy")
    r.keys(head, frozenset({"federation", "max_consent_validity"}), "policy")
    federation = head.get("federation")
    if not isinstance(federation, str) or not _AGENCY.match(federation):
        r.fail(
            "[policy] federation must be the federation's id (as in the key directory)",
            r.lines.key("policy", "federation"),
        )
    if "max_consent_validity" not in head:
        r.fail("[policy] needs max_consent_validity", r.lines.table("policy"))
    validity = r.duration(head["max_consent_validity"], "policy", "max_consent_validity")
    if validity > _MAX_CONSENT_VALIDITY:
        r.fail(
            "max_consent_validity may be at most ten years",
            r.lines.key("policy", "max_consent_validity"),
        )
    roles = _roles(r.table(doc, "roles"), r)
    limits = _types(doc.get("types", {}), r)
    raw_flows = doc.get("flows")
    if not isinstance(raw_flows, list) or not raw_flows:
        r.fail("at least one [[flows]] rule is required; without one nothing may pass", None)
    rules = tuple(_rule(raw, i, roles, limits, r) for i, raw in enumerate(raw_flows))
    _no_contradictions(rules, r)
    return PolicyRules(
        federation=federation,
        max_consent_validity=validity,
        roles=roles,
        rules=rules,
        limits=limits,
        retention=_retention(doc.get("retention"), validity, limits, r),
    )


def _retention(
    table: object, validity: int, limits: Mapping[str, TypeLimits], r: _Reader
) -> RecordRetention:
    """`[retention]`: how long status, consent and audit records are kept. Each is required:
    a store without a limit keeps for ever, so no default may stand in for a missing one."""
    if not isinstance(table, dict):
        r.fail(
            "a [retention] table is required: how long status, consent and audit records "
            "are kept (docs/policy.md)",
            r.lines.table("retention"),
        )
    r.keys(table, frozenset(_RETENTION_KEYS), "retention")
    for key in _RETENTION_KEYS:
        if key not in table:
            r.fail(f"[retention] needs {key}", r.lines.table("retention"))
    seconds = {key: r.duration(table[key], "retention", key) for key in _RETENTION_KEYS}
    for key, value in seconds.items():
        if value > _MAX_RECORD_RETENTION:
            r.fail(f"{key} may be at most thirty years", r.lines.key("retention", key))
    if seconds["consent"] < validity:
        r.fail(
            "consent is shorter than max_consent_validity: a consent record would be gone "
            "while the consent is still valid",
            r.lines.key("retention", "consent"),
            "policy.contradiction",
        )
    lifetime = max(limits.max_lifetime for limits in limits.values())
    for key in ("status", "audit"):
        if seconds[key] < lifetime:
            r.fail(
                f"{key} is shorter than the longest max_lifetime: the records of a message "
                "would be gone while the message may still be delivered",
                r.lines.key("retention", key),
                "policy.contradiction",
            )
    return RecordRetention(**seconds)


def _roles(table: Mapping[str, Any], r: _Reader) -> dict[str, str]:
    roles: dict[str, str] = {}
    for role, description in table.items():
        line = r.lines.key("roles", role)
        if role not in ROLES:
            r.fail(
                f"unknown role {role!r}; roles are those of the key directory: {', '.join(ROLES)}",
                line,
                "policy.unknown_name",
            )
        if not isinstance(description, str) or not 1 <= len(description.strip()) <= 200:
            r.fail(f"role {role!r} needs a description of 1 to 200 characters", line)
        roles[role] = description.strip()
    if not roles:
        r.fail("[roles] must declare at least one role", r.lines.table("roles"))
    return roles


def _types(table: object, r: _Reader) -> dict[str, TypeLimits]:
    if not isinstance(table, dict):
        r.fail("[types] must be a table of message types", r.lines.table("types"))
    limits: dict[str, TypeLimits] = {}
    for name, spec in table.items():
        where = f"types.{name}"
        line = r.lines.table(where) or r.lines.key("types", name)
        if name not in MESSAGE_TYPES:
            r.fail(
                f"unknown message type {name!r}; types are: {', '.join(MESSAGE_TYPES)}",
                line,
                "policy.unknown_name",
            )
        if not isinstance(spec, dict):
            r.fail(f"[{where}] must be a table", line)
        r.keys(spec, frozenset((*_TYPE_KEYS, "attachment_types")), where)
        for key in _TYPE_KEYS:
            if key not in spec:
                r.fail(f"[{where}] needs {key}", line)
        size = spec["max_bytes"]
        if (
            isinstance(size, bool)
            or not isinstance(size, int)
            or not 1024 <= size <= (_MAX_TYPE_BYTES)
        ):
            r.fail(
                f"max_bytes must be a whole number from 1024 to {_MAX_TYPE_BYTES}",
                r.lines.key(where, "max_bytes"),
            )
        lifetime = r.duration(spec["max_lifetime"], where, "max_lifetime")
        ttl = r.duration(spec["inbox_ttl"], where, "inbox_ttl")
        if ttl > lifetime:
            r.fail(
                "inbox_ttl is longer than max_lifetime: no message could wait that long",
                r.lines.key(where, "inbox_ttl"),
                "policy.contradiction",
            )
        pull_wait = r.duration(spec["pull_wait"], where, "pull_wait")
        limits[name] = TypeLimits(
            max_bytes=size,
            max_lifetime=lifetime,
            inbox_ttl=ttl,
            pull_wait=pull_wait,
            attachment_types=_media_types(spec.get("attachment_types", []), where, r),
        )
    for name in SYSTEM_MESSAGE_TYPES:
        limits.setdefault(name, SYSTEM_DEFAULT_LIMITS)
    return limits


def _media_types(value: object, where: str, r: _Reader) -> frozenset[str]:
    line = r.lines.key(where, "attachment_types")
    if (
        not isinstance(value, list)
        or len(value) > _MAX_MEDIA_TYPES
        or not all(isinstance(v, str) and _MEDIA_TYPE.fullmatch(v) for v in value)
    ):
        r.fail(
            f"attachment_types must be a list of up to {_MAX_MEDIA_TYPES} media types, "
            'lowercase and without parameters, like "application/pdf"',
            line,
        )
    if len(set(value)) != len(value):
        r.fail("attachment_types names a media type twice", line)
    return frozenset(value)


def _rule(
    raw: object, i: int, roles: Mapping[str, str], limits: Mapping[str, TypeLimits], r: _Reader
) -> Rule:
    where = "flows"
    head = r.lines.table(where, i)
    if not isinstance(raw, dict):
        r.fail("each [[flows]] entry must be a table", head)
    r.keys(raw, _FLOW_KEYS, where, i)
    for key in ("name", "from", "to", "types", "purposes", "categories", "consent_required"):
        if key not in raw:
            r.fail(f"this [[flows]] rule needs {key}", head)
    name = raw["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        r.fail(
            "name must be 1 to 63 lowercase letters, digits or hyphens",
            r.lines.key(where, "name", i),
        )
    declared = tuple(roles)
    senders = r.names(raw["from"], where, "from", i, declared, "declared role", single=True)
    recipients = r.names(raw["to"], where, "to", i, declared, "declared role", single=True)
    content_types = tuple(t for t in MESSAGE_TYPES if t not in SYSTEM_MESSAGE_TYPES)
    types_line = r.lines.key(where, "types", i)
    for item in raw["types"] if isinstance(raw["types"], list) else ():
        if item in SYSTEM_MESSAGE_TYPES:
            r.fail(
                f"{item!r} is a system notice: it follows every flow both ways without a rule",
                types_line,
                "policy.contradiction",
            )
    types = r.names(raw["types"], where, "types", i, content_types, "message type")
    purposes = r.names(raw["purposes"], where, "purposes", i, _PURPOSES, "purpose")
    categories = r.names(raw["categories"], where, "categories", i, _CATEGORIES, "data category")
    for t in types:
        if t not in limits:
            r.fail(f"the rule sends {t!r} but [types.{t}] sets no limits for it", types_line)
        allowed = _wire_categories(t)
        outside = sorted(c for c in categories if allowed is not None and c not in allowed)
        if outside:
            r.fail(
                f"a {t} can never hold the data categories {', '.join(outside)}",
                r.lines.key(where, "categories", i),
                "policy.contradiction",
            )
    consent = raw["consent_required"]
    if not isinstance(consent, bool):
        r.fail("consent_required must be true or false", r.lines.key(where, "consent_required", i))
    issuers: tuple[str, ...] = ()
    if "consent_issuers" in raw:
        if not consent:
            r.fail(
                "consent_issuers is set but consent_required is false",
                r.lines.key(where, "consent_issuers", i),
                "policy.contradiction",
            )
        if isinstance(raw["consent_issuers"], list) and RECIPIENT in raw["consent_issuers"]:
            # A consent names who may receive; its issuer is never among them, so a recipient's
            # own consent could never cover a message to it: no message of the flow would pass.
            r.fail(
                'consent_issuers names "recipient", but a consent never names its issuer as a '
                "recipient: no message could pass",
                r.lines.key(where, "consent_issuers", i),
                "policy.contradiction",
            )
        issuers = r.names(
            raw["consent_issuers"],
            where,
            "consent_issuers",
            i,
            (SENDER, *declared),
            "consent issuer (sender or a declared role)",
        )
    elif consent:
        issuers = (SENDER,)
    return Rule(
        name=name,
        line=head,
        senders=senders,
        recipients=recipients,
        types=types,
        purposes=frozenset(purposes),
        categories=frozenset(categories),
        consent_required=consent,
        consent_issuers=issuers,
    )


def _no_contradictions(rules: tuple[Rule, ...], r: _Reader) -> None:
    """One rule per (sender role, recipient role, type): `explain` names exactly one, and two
    rules can never disagree on purposes, categories or consent."""
    owner: dict[tuple[str, str, str], Rule] = {}
    names: dict[str, Rule] = {}
    for rule in rules:
        if rule.name in names:
            r.fail(
                f"rule name {rule.name!r} is also used at line {names[rule.name].line}",
                rule.line,
                "policy.contradiction",
            )
        names[rule.name] = rule
        for s in rule.senders:
            for rcpt in rule.recipients:
                for t in rule.types:
                    other = owner.setdefault((s, rcpt, t), rule)
                    if other is not rule:
                        r.fail(
                            f"rule {rule.name!r} and rule {other.name!r} (line {other.line}) "
                            f"both cover {s} -> {rcpt} {t}; one rule per flow",
                            rule.line,
                            "policy.contradiction",
                        )
