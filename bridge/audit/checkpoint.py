"""Signed checkpoints of the audit chain, and the audit signing key they are signed with.

A checkpoint says "the record at `upto` has hash `head`", signed by the audit writer's key with
Ed25519 and ML-DSA-65 together (`bridge.crypto.signed`, context `bridge/audit-checkpoint/v1`),
so a chain recomputed after the fact no longer matches a signature. The private key lives with
the broker (a key file of mode 0600); its public half is a JSON public key record that whoever
verifies the trail pins, like the federation's trust anchor.
"""

from __future__ import annotations

import base64
import binascii
import time
from pathlib import Path
from typing import Annotated, Final

import msgspec

from .._files import write_file
from ..crypto import PrivateKey, PublicKeyRecord, generate_key, sign_document, verify_document
from ..crypto.keys import load_key_file, write_key_file
from ..errors import BridgeError, ConfigError, KeyFileError
from ..wire._types import UtcDateTime, WireStruct, normalise_utc

__all__ = [
    "AUDIT_KEY_OWNER",
    "Checkpoint",
    "CheckpointInvalid",
    "generate_audit_key",
    "load_audit_key",
    "load_audit_public_key",
    "open_checkpoint",
    "sign_checkpoint",
]

MAGIC: Final = b"BRAC"
CONTEXT: Final = b"bridge/audit-checkpoint/v1"
MAX_CHECKPOINT_BYTES: Final = 8 * 1024
AUDIT_KEY_OWNER: Final = "bridge-audit"
"""The owner name written into the audit key file (it belongs to no agency)."""

_Hash = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$(?!\n)")]


class Checkpoint(WireStruct, frozen=True, kw_only=True):
    """What a checkpoint signs: the chain up to and including record `upto` hashes to `head`."""

    v: int = 1
    stream: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    upto: Annotated[int, msgspec.Meta(ge=0)]
    head: _Hash
    at: UtcDateTime

    def __post_init__(self) -> None:
        normalise_utc(self, "at")


class CheckpointInvalid(BridgeError):
    """A checkpoint's signature or content does not verify."""

    reason = "audit.checkpoint_invalid"


_decoder: Final = msgspec.json.Decoder(Checkpoint)


def sign_checkpoint(checkpoint: Checkpoint, key: PrivateKey) -> str:
    """The signed document as base64 text, ready for `AuditRecord.checkpoint`."""
    document = sign_document(MAGIC, CONTEXT, msgspec.json.encode(checkpoint), key)
    return base64.b64encode(document).decode("ascii")


def open_checkpoint(text: str, public: PublicKeyRecord) -> Checkpoint:
    """Verify a checkpoint against the pinned audit public key; raise `CheckpointInvalid`."""
    try:
        document = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise CheckpointInvalid("checkpoint is not base64") from None

    def key_for(kid: bytes) -> bytes | None:
        return public.public_bytes if kid == public.kid_bytes else None

    try:
        _, body = verify_document(document, MAGIC, CONTEXT, key_for, max_bytes=MAX_CHECKPOINT_BYTES)
        checkpoint = _decoder.decode(body)
    except BridgeError as exc:
        raise CheckpointInvalid(f"checkpoint does not verify ({exc.reason})") from exc
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise CheckpointInvalid("checkpoint body is malformed") from None
    if checkpoint.v != 1:
        raise CheckpointInvalid("checkpoint version is not supported")
    return checkpoint


# -- the key ------------------------------------------------------------------------------------


def generate_audit_key(
    key_file: Path, public_file: Path, *, valid_seconds: int = 10 * 365 * 86400
) -> PrivateKey:
    """Create the audit signing key (0600) and its public record (0644); refuse to overwrite."""
    now = int(time.time())
    key = generate_key(AUDIT_KEY_OWNER, "sign", now, now + valid_seconds)
    write_key_file(key_file, key)
    write_file(public_file, msgspec.json.encode(key.public_record()) + b"\n", mode=0o644)
    return key


def load_audit_key(path: Path) -> PrivateKey:
    try:
        key = load_key_file(path)
    except KeyFileError as exc:
        raise ConfigError(f"audit key: {exc}", reason="config.audit_key") from exc
    if key.use != "sign" or key.agency != AUDIT_KEY_OWNER:
        raise ConfigError(f"{path} is not an audit signing key", reason="config.audit_key")
    return key


def load_audit_public_key(path: Path) -> PublicKeyRecord:
    """Read the pinned public audit key (a JSON public key record)."""
    try:
        record = msgspec.json.decode(path.read_bytes(), type=PublicKeyRecord)
    except OSError as exc:
        raise ConfigError(
            f"cannot read audit public key {path}: {exc.strerror}", reason="config.audit_key"
        ) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"audit public key {path} is malformed", reason="config.audit_key"
        ) from exc
    if record.use != "sign":
        raise ConfigError("the audit public key must be a signing key", reason="config.audit_key")
    try:
        return record.check()
    except KeyFileError as exc:
        raise ConfigError(f"audit public key {path}: {exc}", reason="config.audit_key") from exc
