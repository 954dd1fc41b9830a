"""The one error hierarchy of bridge.

Every error bridge raises on purpose is a `BridgeError`. Families say who caused it:

- `CryptoError`: an envelope, key or signature failed a check (the peer sent something bad, or a
  key is not what it claims).
- `PolicyError`: a well-formed message that the rules do not allow.
- `ProtocolError`: bytes or documents that cannot be decoded or are out of bounds.
- `TransportError`: NATS or HTTP outside us failed.
- `ConfigError`: the operator's configuration or files are wrong.

Each error carries a stable `reason` code (dotted, lowercase) for logs, audit and status events.
Messages never contain key material or message content; peers see only an opaque rejection.
"""

from __future__ import annotations

__all__ = [
    "AttachmentInvalid",
    "AttachmentTooLarge",
    "BridgeError",
    "ConfigError",
    "ConsentDenied",
    "ConsentInvalid",
    "CryptoError",
    "DecryptionFailed",
    "DirectoryError",
    "EnvelopeExpired",
    "KeyCommitmentMismatch",
    "KeyExpired",
    "KeyFileError",
    "KeyInvalid",
    "KeyMisuse",
    "KeyRevoked",
    "LifetimeTooLong",
    "MalformedEnvelope",
    "NotARecipient",
    "NotYetValid",
    "PolicyError",
    "PolicyFileError",
    "ProtocolError",
    "RecipientError",
    "SignatureInvalid",
    "SignedPolicyError",
    "TooLarge",
    "TransportError",
    "UnknownKey",
    "UnsupportedSuite",
    "UnsupportedVersion",
    "reasons_of",
]


class BridgeError(Exception):
    """Root of every error bridge raises on purpose."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason!r}, message={str(self)!r})"


# -- families ---------------------------------------------------------------------------------


class CryptoError(BridgeError):
    """A cryptographic check failed."""

    reason = "crypto"


class PolicyError(BridgeError):
    """A well-formed request that the rules do not allow."""

    reason = "policy"


class ProtocolError(BridgeError):
    """Input that cannot be decoded, or is out of bounds."""

    reason = "protocol"


class TransportError(BridgeError):
    """NATS or HTTP, outside our control, failed."""

    reason = "transport"


class ConfigError(BridgeError):
    """The operator's configuration or files are wrong."""

    reason = "config"


# -- envelope and key errors ------------------------------------------------------------------


class MalformedEnvelope(ProtocolError):
    """Framing, lengths, msgpack or fields of an envelope are wrong."""

    reason = "envelope.malformed"


class TooLarge(ProtocolError):
    """Bigger than the configured limit; rejected before parsing."""

    reason = "envelope.too_large"


class AttachmentTooLarge(ProtocolError):
    """An attachment, or a message's attachments together, exceed their limit.

    Reasons: `attachment.too_large` (one), `attachment.total_too_large` (all of a message's),
    `attachment.too_many` (more attachments than allowed).
    """

    reason = "attachment.too_large"


class UnsupportedVersion(ProtocolError):
    reason = "envelope.unsupported_version"


class UnsupportedSuite(ProtocolError):
    reason = "envelope.unsupported_suite"


class SignatureInvalid(CryptoError):
    reason = "envelope.signature_invalid"


class KeyInvalid(CryptoError):
    """A key id is unknown, expired, revoked or used for the wrong purpose."""

    reason = "key.invalid"


class UnknownKey(KeyInvalid):
    reason = "key.unknown"


class KeyExpired(KeyInvalid):
    reason = "key.expired"


class KeyRevoked(KeyInvalid):
    reason = "key.revoked"


class KeyMisuse(KeyInvalid):
    """A key id of the wrong use (encryption for signing) or of another agency."""

    reason = "key.misuse"


class RecipientError(ProtocolError):
    """No recipients, duplicates, too many, or one the directory does not know."""

    reason = "envelope.recipients"


class NotARecipient(CryptoError):
    reason = "envelope.not_a_recipient"


class DecryptionFailed(CryptoError):
    """A wrap or the body did not decrypt: opaque on purpose."""

    reason = "envelope.decryption_failed"


class AttachmentInvalid(CryptoError):
    """An attachment's chunks do not open as its signed header entry says.

    Reasons: `attachment.decryption_failed` (a chunk altered, reordered, duplicated, swapped in
    from another attachment or message, or a final chunk that is not marked final),
    `attachment.truncated` (chunks missing at the end), `attachment.too_long` (a chunk beyond
    the declared size), `attachment.digest_mismatch`, `attachment.malformed` (a chunk of the
    wrong length, a name that is not a valid file name).
    """

    reason = "attachment.decryption_failed"


class KeyCommitmentMismatch(CryptoError):
    """The unwrapped content key is not the one the header commits to."""

    reason = "envelope.key_commitment"


class NotYetValid(PolicyError):
    """Issued-at lies further in the future than the allowed clock skew."""

    reason = "envelope.issued_in_future"


class EnvelopeExpired(PolicyError):
    reason = "envelope.expired"


class LifetimeTooLong(PolicyError):
    reason = "envelope.lifetime_too_long"


class DirectoryError(CryptoError):
    """The key directory is badly signed, expired, rolled back or malformed."""

    reason = "directory.invalid"


class ConsentInvalid(CryptoError):
    """A consent record or withdrawal is forged, tampered with, misplaced or malformed."""

    reason = "consent.invalid"


class ConsentDenied(PolicyError):
    """A message that its consent does not cover; `reason` says which check failed.

    docs/consent.md lists every reason code.
    """

    reason = "consent.denied"


class KeyFileError(ConfigError):
    """A private key file cannot be read: wrong format, permissions or passphrase."""

    reason = "keyfile.invalid"


class SignedPolicyError(CryptoError):
    """A signed routing policy is badly signed, rolled back, malformed or missing."""

    reason = "policy.invalid"


class PolicyFileError(ConfigError):
    """A routing policy file is malformed, names unknown things or contradicts itself.

    `line` is the 1-based line at fault, when one can be named; the message already says it.
    """

    reason = "policy.file_invalid"

    def __init__(self, message: str, *, line: int | None = None, reason: str | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message, reason=reason)
        self.line = line


def reasons_of(exc: BaseException) -> str:
    """What to log about a failure: reason codes (type names for foreign errors), never text.

    An exception's text may quote what it parsed, so logs carry this instead. Exception groups
    (from task groups) are flattened to their distinct leaves, comma-separated.
    """
    leaves: list[str] = []

    def walk(one: BaseException) -> None:
        if isinstance(one, BaseExceptionGroup):
            for inner in one.exceptions:
                walk(inner)
        else:
            leaves.append(one.reason if isinstance(one, BridgeError) else type(one).__name__)

    walk(exc)
    return ", ".join(dict.fromkeys(leaves))
