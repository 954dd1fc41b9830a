"""The key directory: who is in the federation, with which role and which public keys.

The directory is a document signed by the federation's trust anchor (an Ed25519 + ML-DSA-65 key
whose public half every component pins). Loading it fails closed: a bad signature, an expired
directory, a serial lower than one already seen (rollback), a malformed agency id or an
inconsistent key record all raise `DirectoryError` with a precise reason code.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from .._watched import SerialState as _SerialState
from ..crypto import PrivateKey, PublicKeyRecord, sign_document, verify_document
from ..crypto.keys import KeyUse
from ..errors import BridgeError, DirectoryError, KeyFileError, UnknownKey
from ..ids import AGENCY_ID_PATTERN

__all__ = [
    "MAGIC",
    "ROLES",
    "AgencyEntry",
    "Directory",
    "DirectoryBody",
    "Role",
    "SerialState",
    "load_anchor",
    "sign_directory",
]

MAGIC: Final = b"BRDD"
CONTEXT: Final = b"bridge/directory/v1"
MAX_DIRECTORY_BYTES: Final = 8 * 1024 * 1024

Role = Literal[
    "jobcenter",
    "counselling",
    "social-psychiatric-service",
    "doctor",
    "therapist",
    "clinic",
    "other",
]
ROLES: Final[tuple[str, ...]] = Role.__args__  # type: ignore[attr-defined]

_Agency = Annotated[str, msgspec.Meta(pattern=AGENCY_ID_PATTERN)]


class AgencyEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: _Agency
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    role: Role
    keys: list[PublicKeyRecord]


class DirectoryBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the trust anchor signs. `revoked` lists key ids (hex) that must not be used."""

    v: int
    federation: _Agency
    serial: Annotated[int, msgspec.Meta(ge=1)]
    issued_at: int
    expires_at: int
    agencies: list[AgencyEntry]
    revoked: list[str]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(DirectoryBody)


def sign_directory(body: DirectoryBody, anchor: PrivateKey) -> bytes:
    """Check `body` as a loader would, then sign it with the trust anchor's key."""
    raw = _encoder.encode(body)
    # Struct constructors do not enforce the field constraints (id pattern, role, name length);
    # decoding does, so decode what would be signed rather than sign what no loader accepts.
    try:
        _decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DirectoryError(
            f"directory body is invalid: {exc}", reason="directory.malformed"
        ) from exc
    _check_body(body)
    return sign_document(MAGIC, CONTEXT, raw, anchor)


def load_anchor(path: Path) -> PublicKeyRecord:
    """Read the pinned trust-anchor public key (a JSON public key record)."""
    try:
        record = msgspec.json.decode(path.read_bytes(), type=PublicKeyRecord)
    except OSError as exc:
        raise DirectoryError(
            f"cannot read trust anchor {path}: {exc.strerror}", reason="directory.anchor"
        ) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DirectoryError(
            f"trust anchor {path} is malformed: {exc}", reason="directory.anchor"
        ) from exc
    if record.use != "sign":
        raise DirectoryError("trust anchor must be a signing key", reason="directory.anchor")
    try:
        return record.check()
    except KeyFileError as exc:
        raise DirectoryError(f"trust anchor {path}: {exc}", reason="directory.anchor") from exc


def _check_body(body: DirectoryBody) -> None:
    if body.v != 1:
        raise DirectoryError("directory version is not supported", reason="directory.malformed")
    if body.expires_at <= body.issued_at:
        raise DirectoryError("directory expires before it is issued", reason="directory.malformed")
    seen_agencies: set[str] = set()
    seen_kids: set[str] = set()
    for agency in body.agencies:
        if agency.id in seen_agencies:
            raise DirectoryError(
                f"agency {agency.id} is listed twice", reason="directory.malformed"
            )
        seen_agencies.add(agency.id)
        for key in agency.keys:
            try:
                key.check()
            except KeyFileError as exc:
                raise DirectoryError(
                    f"agency {agency.id}: {exc}", reason="directory.bad_key"
                ) from exc
            if key.kid in seen_kids:
                raise DirectoryError(f"key {key.kid} is listed twice", reason="directory.malformed")
            seen_kids.add(key.kid)
    for kid in body.revoked:
        if not _is_hex_kid(kid):
            raise DirectoryError(
                "revoked key ids must be 32 hex digits", reason="directory.malformed"
            )


class Directory:
    """A verified key directory; implements `bridge.crypto.KeyLookup`."""

    def __init__(self, body: DirectoryBody) -> None:
        self.body = body
        self._agencies = {a.id: a for a in body.agencies}
        self._keys = {bytes.fromhex(k.kid): (a.id, k) for a in body.agencies for k in a.keys}
        self._revoked = {bytes.fromhex(kid) for kid in body.revoked}

    @classmethod
    def load(
        cls,
        data: bytes,
        anchor: PublicKeyRecord,
        *,
        now: int | None = None,
        min_serial: int = 0,
    ) -> Directory:
        at = int(time.time()) if now is None else now

        def anchor_key(kid: bytes) -> bytes | None:
            return anchor.public_bytes if kid == anchor.kid_bytes else None

        try:
            _, raw = verify_document(
                data, MAGIC, CONTEXT, anchor_key, max_bytes=MAX_DIRECTORY_BYTES
            )
        except BridgeError as exc:
            reason = (
                "directory.signature_invalid"
                if exc.reason == "envelope.signature_invalid"
                else "directory.malformed"
            )
            raise DirectoryError(f"key directory rejected: {exc}", reason=reason) from exc
        if not anchor.valid_at(at):
            raise DirectoryError("trust anchor key is not valid now", reason="directory.anchor")
        try:
            body = _decoder.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise DirectoryError(
                f"key directory does not decode: {exc}", reason="directory.malformed"
            ) from exc
        if _encoder.encode(body) != raw:
            raise DirectoryError(
                "key directory is not canonically encoded", reason="directory.malformed"
            )
        _check_body(body)
        if body.expires_at <= at:
            raise DirectoryError("key directory has expired", reason="directory.expired")
        if body.serial < min_serial:
            raise DirectoryError(
                f"key directory serial {body.serial} is older than {min_serial} already seen",
                reason="directory.rollback",
            )
        return cls(body)

    @classmethod
    def load_file(
        cls,
        path: Path,
        anchor: PublicKeyRecord,
        *,
        state: SerialState | None = None,
        now: int | None = None,
    ) -> Directory:
        """Load from a file, refusing rollback against `state` and recording the new serial."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DirectoryError(
                f"cannot read key directory {path}: {exc.strerror}", reason="directory.missing"
            ) from exc
        directory = cls.load(data, anchor, now=now, min_serial=state.highest() if state else 0)
        if state is not None:
            state.record(directory.serial)
        return directory

    @property
    def serial(self) -> int:
        return self.body.serial

    def agency(self, agency: str) -> AgencyEntry | None:
        return self._agencies.get(agency)

    def agencies(self) -> list[AgencyEntry]:
        return list(self.body.agencies)

    # -- KeyLookup --

    def key(self, kid: bytes) -> tuple[str, PublicKeyRecord] | None:
        return self._keys.get(kid)

    def is_revoked(self, kid: bytes) -> bool:
        return kid in self._revoked

    def has_agency(self, agency: str) -> bool:
        return agency in self._agencies

    def current_key(self, agency: str, use: KeyUse, now: int) -> PublicKeyRecord:
        entry = self._agencies.get(agency)
        if entry is None:
            raise UnknownKey(f"agency {agency} is not in the directory")
        valid = [
            k
            for k in entry.keys
            if k.use == use and k.valid_at(now) and k.kid_bytes not in self._revoked
        ]
        if not valid:
            raise UnknownKey(f"agency {agency} has no valid {use} key in the directory")
        return max(valid, key=lambda k: (k.not_before, k.kid))

    def __repr__(self) -> str:
        return (
            f"Directory(federation={self.body.federation!r}, serial={self.serial}, "
            f"agencies={len(self._agencies)})"
        )


def _is_hex_kid(text: str) -> bool:
    try:
        return len(bytes.fromhex(text)) == 16
    except ValueError:
        return False


class SerialState(_SerialState):
    """The highest directory serial a component has accepted, kept in a small file."""

    what = "directory"
    reason = "directory.state"

    def _error(self, message: str) -> BridgeError:
        return DirectoryError(message, reason=self.reason)
