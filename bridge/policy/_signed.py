"""The signed policy: the reviewed TOML text, a serial and a date, signed by the trust anchor.

The signature covers the exact text that was reviewed, so what a broker enforces can be read
back word for word (`bridge policy check` on a signed file prints it). The document is signed
like the key directory (`bridge.crypto.signed`: Ed25519 and ML-DSA-65 together) under a context
string of its own, so a directory signature never verifies as a policy or the other way round.

Loading fails closed: a bad signature, a malformed body, a text that does not parse, or a serial
lower than one this component has accepted before (rollback) raise `SignedPolicyError`.
`Policy.hash` (SHA-256 of the signed body) names the version in every routing decision.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Final

import msgspec

from .._watched import SerialState
from ..crypto import PrivateKey, PublicKeyRecord, sign_document, verify_document
from ..errors import BridgeError, PolicyFileError, SignedPolicyError
from ..ids import AGENCY_ID_PATTERN
from ._model import (
    Decision,
    Flow,
    FlowRequest,
    PolicyRules,
    RecordRetention,
    RoleLookup,
    Rule,
    TypeLimits,
)
from ._parse import MAX_POLICY_BYTES, parse_policy

__all__ = [
    "CONTEXT",
    "MAGIC",
    "Policy",
    "PolicyBody",
    "PolicySerialState",
    "load_policy",
    "load_policy_file",
    "sign_policy",
]

MAGIC: Final = b"BRDP"
CONTEXT: Final = b"bridge/policy/v1"
MAX_SIGNED_POLICY_BYTES: Final = MAX_POLICY_BYTES + 16 * 1024


class PolicyBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the trust anchor signs: the policy file's text and its version."""

    v: int
    federation: Annotated[str, msgspec.Meta(pattern=AGENCY_ID_PATTERN)]
    serial: Annotated[int, msgspec.Meta(ge=1)]
    issued_at: int
    source: str


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(PolicyBody)


class Policy:
    """A routing policy that verified against the trust anchor: its rules and its version.

    Frozen: nothing changes it after loading. A component swaps the whole object for a newer one.
    """

    __slots__ = ("_hash", "body", "rules")

    def __init__(self, body: PolicyBody, rules: PolicyRules, digest: str) -> None:
        self.body = body
        self.rules = rules
        self._hash = digest

    def __setattr__(self, name: str, value: object) -> None:
        if hasattr(self, "_hash"):
            raise AttributeError("a Policy is frozen")
        object.__setattr__(self, name, value)

    @property
    def hash(self) -> str:
        """SHA-256 (hex) of the signed body: names this version in decisions and logs."""
        return self._hash

    @property
    def serial(self) -> int:
        return self.body.serial

    @property
    def issued_at(self) -> int:
        return self.body.issued_at

    @property
    def federation(self) -> str:
        return self.body.federation

    @property
    def source(self) -> str:
        return self.body.source

    @property
    def max_consent_validity(self) -> int:
        """The longest validity (seconds) a consent may be given under this policy."""
        return self.rules.max_consent_validity

    @property
    def limits(self) -> Mapping[str, TypeLimits]:
        """Limits per message type (size, lifetime, inbox wait): retention comes from here."""
        return self.rules.limits

    @property
    def retention(self) -> RecordRetention:
        """How long status, consent and audit records are kept (`[retention]`)."""
        return self.rules.retention

    def type_limits(self, message_type: str) -> TypeLimits | None:
        """The limits of one message type, retention included (`inbox_ttl`, `pull_wait`,
        `max_lifetime`, in seconds); None for a type the policy does not know."""
        return self.rules.type_limits(message_type)

    def rule_for(self, sender_role: str, recipient_role: str, message_type: str) -> Rule | None:
        return self.rules.rule_for(sender_role, recipient_role, message_type)

    def flow(
        self, sender: str, recipient: str, message_type: str, directory: RoleLookup
    ) -> Flow | None:
        """What `sender` may send `recipient` as `message_type`; None if not allowed at all."""
        return self.rules.flow(sender, recipient, message_type, directory)

    def evaluate(self, request: FlowRequest, directory: RoleLookup) -> Decision:
        return self.rules.evaluate(request, directory)

    def __repr__(self) -> str:
        return (
            f"Policy(federation={self.federation!r}, serial={self.serial}, "
            f"hash={self.hash[:16]}…, rules={len(self.rules.rules)})"
        )


def sign_policy(source: str, anchor: PrivateKey, *, serial: int, now: int) -> tuple[bytes, Policy]:
    """Check `source` as every loader will, then sign it as version `serial`."""
    rules = parse_policy(source)
    body = PolicyBody(v=1, federation=rules.federation, serial=serial, issued_at=now, source=source)
    raw = _encoder.encode(body)
    return sign_document(MAGIC, CONTEXT, raw, anchor), Policy(body, rules, _digest(raw))


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def load_policy(data: bytes, anchor: PublicKeyRecord, *, min_serial: int = 0) -> Policy:
    """Verify a signed policy against the pinned trust anchor and parse it; raise if bad."""

    def anchor_key(kid: bytes) -> bytes | None:
        return anchor.public_bytes if kid == anchor.kid_bytes else None

    try:
        _, raw = verify_document(
            data, MAGIC, CONTEXT, anchor_key, max_bytes=MAX_SIGNED_POLICY_BYTES
        )
    except BridgeError as exc:
        reason = (
            "policy.signature_invalid"
            if exc.reason == "envelope.signature_invalid"
            else "policy.malformed"
        )
        raise SignedPolicyError(f"signed policy rejected: {exc}", reason=reason) from exc
    try:
        body = _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise SignedPolicyError(
            f"signed policy does not decode: {exc}", reason="policy.malformed"
        ) from exc
    if body.v != 1 or _encoder.encode(body) != raw:
        raise SignedPolicyError(
            "signed policy is of an unknown version or not canonically encoded",
            reason="policy.malformed",
        )
    try:
        rules = parse_policy(body.source)
    except PolicyFileError as exc:  # signed, yet refused: a newer format or a signing bug
        raise SignedPolicyError(
            f"signed policy text is refused: {exc}", reason="policy.malformed"
        ) from exc
    if rules.federation != body.federation:
        raise SignedPolicyError("signed policy names two federations", reason="policy.malformed")
    if body.serial < min_serial:
        raise SignedPolicyError(
            f"policy serial {body.serial} is older than {min_serial} already seen",
            reason="policy.rollback",
        )
    return Policy(body, rules, _digest(raw))


def load_policy_file(
    path: Path, anchor: PublicKeyRecord, *, state: PolicySerialState | None = None
) -> Policy:
    """Load from a file, refusing rollback against `state` and recording the new serial."""
    try:
        if path.stat().st_size > MAX_SIGNED_POLICY_BYTES:
            raise SignedPolicyError(f"signed policy {path} is too large", reason="policy.malformed")
        data = path.read_bytes()
    except OSError as exc:
        raise SignedPolicyError(
            f"cannot read signed policy {path}: {exc.strerror}", reason="policy.missing"
        ) from exc
    policy = load_policy(data, anchor, min_serial=state.highest() if state else 0)
    if state is not None:
        state.record(policy.serial)
    return policy


class PolicySerialState(SerialState):
    """The highest policy serial a component has accepted, kept in a small file."""

    what = "policy"
    reason = "policy.state"

    def _error(self, message: str) -> BridgeError:
        return SignedPolicyError(message, reason=self.reason)
