"""Agency keys: key ids, public key records, private key files and the keyring.

An agency has two kinds of composite key, each with its own id and validity period:

- a signing key (`use="sign"`): Ed25519 + ML-DSA-65, 64 bytes of seed;
- an encryption key (`use="enc"`): X-Wing (ML-KEM-768 + X25519), 32 bytes of seed.

A key id is the first 16 bytes of SHA-256("bridge/kid/v1" || use byte || public key bytes), so
it names exactly one public key of one use. Private keys live in JSON files with mode 0600, one
per key, optionally encrypted under a passphrase (scrypt + AES-256-GCM); the format is in
docs/keys.md. A keyring is a directory of such files: the newest valid key of each use is current,
older ones stay usable for opening until they expire.
"""

from __future__ import annotations

import base64
import binascii
import functools
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import msgspec

from .._files import write_private_file
from ..errors import ConfigError, KeyFileError, UnknownKey
from ..ids import check_agency_id
from . import _primitives as P

__all__ = [
    "KID_LEN",
    "AgencyPublicKeys",
    "KeyFileInfo",
    "KeyLookup",
    "KeyUse",
    "Keyring",
    "PrivateKey",
    "PublicKeyRecord",
    "generate_key",
    "key_file_info",
    "key_id",
    "kid_hex",
    "load_key_file",
    "write_key_file",
]

KID_LEN = 16
KeyUse = Literal["sign", "enc"]
_USE_BYTE: dict[str, bytes] = {"sign": b"\x01", "enc": b"\x02"}
_KEYFILE_FORMAT = "bridge-private-key/v1"
_PUBLIC_LEN: dict[str, int] = {"sign": P.SIGNING_PUBLIC_LEN, "enc": P.XWING_PUBLIC_LEN}
_SEED_LEN: dict[str, int] = {"sign": 2 * P.SEED_LEN, "enc": P.SEED_LEN}
# scrypt cost for passphrase-protected key files (RFC 7914 recommends N >= 2**14 interactively).
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**15, 8, 1
_MAX_KEYFILE_BYTES = 64 * 1024


def key_id(use: KeyUse, public: bytes) -> bytes:
    return P.sha256(b"bridge/kid/v1" + _USE_BYTE[use] + public)[:KID_LEN]


def kid_hex(kid: bytes) -> str:
    return kid.hex()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@functools.lru_cache(maxsize=4096)
def _decoded_public(text: str) -> bytes:
    # Verifying looks up the sender's record per envelope; decoding ~2.6 KB of base64 each
    # time showed in the benchmark. Public data only, bounded.
    return base64.b64decode(text)


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise KeyFileError(f"{what} is not valid base64") from exc


class PublicKeyRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One public key as published in the key directory (and by `bridge keys show --public`).

    `kid` and `public` are hex and base64 text so that the record reads well as JSON; the kid is
    checked against the public key bytes whenever a record is loaded (`check()`).
    """

    kid: str
    use: KeyUse
    public: str
    not_before: int
    not_after: int

    @property
    def kid_bytes(self) -> bytes:
        return bytes.fromhex(self.kid)

    @property
    def public_bytes(self) -> bytes:
        return _decoded_public(self.public)

    def check(self) -> PublicKeyRecord:
        """Raise `KeyFileError` unless the record is self-consistent."""
        raw = _unb64(self.public, "public key")
        if len(raw) != _PUBLIC_LEN[self.use]:
            raise KeyFileError(f"{self.use} public key has the wrong length")
        # Exact text, not bytes.fromhex: that also takes upper case and spaces, and two
        # spellings of one kid would slip past the directory's duplicate-key check.
        if self.kid != kid_hex(key_id(self.use, raw)):
            raise KeyFileError("key id does not match the public key (32 lowercase hex digits)")
        if self.not_after <= self.not_before:
            raise KeyFileError("key validity ends before it begins")
        return self

    def valid_at(self, now: int) -> bool:
        return self.not_before <= now < self.not_after


class AgencyPublicKeys(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The public half of an agency's keyring, handed to the federation operator."""

    agency: str
    keys: list[PublicKeyRecord]

    def check(self) -> AgencyPublicKeys:
        check_agency_id(self.agency)
        for record in self.keys:
            record.check()
        return self


class KeyLookup(Protocol):
    """What verifying and sealing need from a key directory."""

    def key(self, kid: bytes) -> tuple[str, PublicKeyRecord] | None:
        """The (agency, record) a key id belongs to, or None when nobody has it."""

    def is_revoked(self, kid: bytes) -> bool: ...

    def has_agency(self, agency: str) -> bool: ...

    def current_key(self, agency: str, use: KeyUse, now: int) -> PublicKeyRecord:
        """The newest valid, unrevoked key of that use; raises `UnknownKey` when none."""


@dataclass(frozen=True, repr=False)
class PrivateKey:
    """A private key of one use with its metadata. The seed never appears in a repr."""

    agency: str
    use: KeyUse
    seed: bytes
    not_before: int
    not_after: int

    # The expanded key objects are derived once: building ML-DSA and ML-KEM keys from their
    # seeds costs about as much as one signature.
    @functools.cached_property
    def _expanded(self) -> P.SigningPrivate | P.EncryptionPrivate:
        if self.use == "sign":
            return P.SigningPrivate(self.seed)
        return P.EncryptionPrivate(self.seed)

    @property
    def public_bytes(self) -> bytes:
        return self._expanded.public.raw

    @functools.cached_property
    def kid(self) -> bytes:
        return key_id(self.use, self.public_bytes)

    def signer(self) -> P.SigningPrivate:
        key = self._expanded
        if not isinstance(key, P.SigningPrivate):
            raise KeyFileError("not a signing key")
        return key

    def decrypter(self) -> P.EncryptionPrivate:
        key = self._expanded
        if not isinstance(key, P.EncryptionPrivate):
            raise KeyFileError("not an encryption key")
        return key

    def public_record(self) -> PublicKeyRecord:
        return PublicKeyRecord(
            kid=kid_hex(self.kid),
            use=self.use,
            public=_b64(self.public_bytes),
            not_before=self.not_before,
            not_after=self.not_after,
        )

    def valid_at(self, now: int) -> bool:
        return self.not_before <= now < self.not_after

    def __repr__(self) -> str:
        return (
            f"PrivateKey(agency={self.agency!r}, use={self.use!r}, kid={kid_hex(self.kid)}, "
            f"not_before={self.not_before}, not_after={self.not_after})"
        )


def generate_key(agency: str, use: KeyUse, not_before: int, not_after: int) -> PrivateKey:
    check_agency_id(agency)
    if not_after <= not_before:
        raise KeyFileError("key validity ends before it begins")
    return PrivateKey(agency, use, P.random_bytes(_SEED_LEN[use]), not_before, not_after)


# -- key files --------------------------------------------------------------------------------


class _Secret(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    alg: Literal["none", "scrypt-aes256gcm"]
    seed: str | None = None
    salt: str | None = None
    n: int | None = None
    r: int | None = None
    p: int | None = None
    nonce: str | None = None
    ciphertext: str | None = None


class _KeyFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: str
    agency: str
    use: KeyUse
    kid: str
    not_before: int
    not_after: int
    secret: _Secret


_keyfile_decoder = msgspec.json.Decoder(_KeyFile)


def _aad(agency: str, use: str, kid: str, not_before: int, not_after: int) -> bytes:
    # Bind the file's metadata to its encrypted seed: editing agency, use or validity in an
    # encrypted file makes it fail to open rather than silently change meaning.
    return f"{_KEYFILE_FORMAT}|{agency}|{use}|{kid}|{not_before}|{not_after}".encode()


def write_key_file(path: Path, key: PrivateKey, passphrase: bytes | None = None) -> None:
    """Write `key` to `path` with mode 0600, atomically, refusing to overwrite."""
    kid = kid_hex(key.kid)
    if passphrase is None:
        secret = _Secret(alg="none", seed=_b64(key.seed))
    else:
        if not passphrase:
            raise KeyFileError("passphrase must not be empty")
        salt, nonce = P.random_bytes(16), P.random_bytes(12)
        wrapping = P.scrypt(passphrase, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
        aad = _aad(key.agency, key.use, kid, key.not_before, key.not_after)
        secret = _Secret(
            alg="scrypt-aes256gcm",
            salt=_b64(salt),
            n=_SCRYPT_N,
            r=_SCRYPT_R,
            p=_SCRYPT_P,
            nonce=_b64(nonce),
            ciphertext=_b64(P.aead_seal(wrapping, nonce, key.seed, aad)),
        )
    document = _KeyFile(
        format=_KEYFILE_FORMAT,
        agency=key.agency,
        use=key.use,
        kid=kid,
        not_before=key.not_before,
        not_after=key.not_after,
        secret=secret,
    )
    data = msgspec.json.format(msgspec.json.encode(document), indent=2) + b"\n"
    try:
        write_private_file(path, data, overwrite=False)
    except ConfigError as exc:
        raise KeyFileError(f"cannot write key file {path}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class KeyFileInfo:
    """What a key file says about its key, read without its passphrase: never the secret."""

    path: Path
    agency: str
    use: KeyUse
    kid: str
    not_before: int
    not_after: int


def key_file_info(path: Path) -> KeyFileInfo:
    """The metadata of a private key file (checked as `load_key_file` checks it)."""
    try:
        st = path.stat()
        if st.st_size > _MAX_KEYFILE_BYTES:
            raise KeyFileError(f"key file {path} is too large")
        document = _keyfile_decoder.decode(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"key file {path} is malformed: {exc}") from exc
    if document.format != _KEYFILE_FORMAT:
        raise KeyFileError(f"key file {path} has unknown format {document.format!r}")
    return KeyFileInfo(
        path, document.agency, document.use, document.kid, document.not_before, document.not_after
    )


def load_key_file(path: Path, passphrase: bytes | None = None) -> PrivateKey:
    """Read a private key file; refuse files readable by group or others."""
    try:
        st = path.stat()
    except OSError as exc:
        raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"key file {path} is accessible by others; chmod 600 it")
    if st.st_size > _MAX_KEYFILE_BYTES:
        raise KeyFileError(f"key file {path} is too large")
    try:
        document = _keyfile_decoder.decode(path.read_bytes())
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"key file {path} is malformed: {exc}") from exc
    if document.format != _KEYFILE_FORMAT:
        raise KeyFileError(f"key file {path} has unknown format {document.format!r}")
    check_agency_id(document.agency)
    secret = document.secret
    if secret.alg == "none":
        if secret.seed is None:
            raise KeyFileError(f"key file {path} has no seed")
        seed = _unb64(secret.seed, "seed")
    else:
        if passphrase is None:
            raise KeyFileError(f"key file {path} is encrypted; a passphrase is needed")
        salt, nonce, ciphertext = secret.salt, secret.nonce, secret.ciphertext
        n, r, p = secret.n, secret.r, secret.p
        if (
            salt is None
            or nonce is None
            or ciphertext is None
            or n is None
            or r is None
            or p is None
        ):
            raise KeyFileError(f"key file {path} lacks encryption parameters")
        if not (1 < n <= 2**20 and 0 < r <= 32 and 0 < p <= 16):
            raise KeyFileError(f"key file {path} asks for unsupported scrypt parameters")
        try:
            wrapping = P.scrypt(passphrase, _unb64(salt, "salt"), n, r, p)
        except ValueError as exc:
            raise KeyFileError(f"key file {path} has invalid scrypt parameters") from exc
        aad = _aad(
            document.agency, document.use, document.kid, document.not_before, document.not_after
        )
        opened = P.aead_open(
            wrapping, _unb64(nonce, "nonce"), _unb64(ciphertext, "ciphertext"), aad
        )
        if opened is None:
            raise KeyFileError(f"wrong passphrase for key file {path}, or the file was altered")
        seed = opened
    if len(seed) != _SEED_LEN[document.use]:
        raise KeyFileError(f"key file {path} has a seed of the wrong length")
    key = PrivateKey(document.agency, document.use, seed, document.not_before, document.not_after)
    if kid_hex(key.kid) != document.kid:
        raise KeyFileError(f"key file {path}: key id does not match the key")
    if key.not_after <= key.not_before:
        raise KeyFileError(f"key file {path}: validity ends before it begins")
    return key


# -- keyring ----------------------------------------------------------------------------------


class Keyring:
    """An agency's private keys: a directory of key files, all of one agency.

    The current key of a use is the valid one with the latest `not_before`; every unexpired
    encryption key can still open what was sealed to it (rotation keeps old keys for opening).
    """

    def __init__(self, agency: str, keys: Iterable[PrivateKey]) -> None:
        self.agency = check_agency_id(agency)
        self._keys = sorted(keys, key=lambda k: (k.not_before, k.kid))
        for key in self._keys:
            if key.agency != agency:
                raise KeyFileError("keyring holds a key of another agency")
        self._by_kid = {key.kid: key for key in self._keys}

    @classmethod
    def load(cls, directory: Path, passphrase: bytes | None = None) -> Keyring:
        files = sorted(directory.glob("*.key"))
        if not files:
            raise KeyFileError(f"no key files in {directory}")
        keys = [load_key_file(path, passphrase) for path in files]
        agencies = {key.agency for key in keys}
        if len(agencies) != 1:
            raise KeyFileError(f"key files in {directory} belong to several agencies")
        return cls(agencies.pop(), keys)

    @staticmethod
    def create(
        directory: Path,
        agency: str,
        *,
        now: int | None = None,
        valid_seconds: int = 365 * 86400,
        passphrase: bytes | None = None,
    ) -> list[PrivateKey]:
        """Generate a signing and an encryption key valid from `now` and write them."""
        start = int(time.time()) if now is None else now
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        made = []
        for use in ("sign", "enc"):
            key = generate_key(agency, use, start, start + valid_seconds)
            write_key_file(directory / f"{use}-{kid_hex(key.kid)}.key", key, passphrase)
            made.append(key)
        return made

    def keys(self) -> list[PrivateKey]:
        return list(self._keys)

    def current(self, use: KeyUse, now: int) -> PrivateKey:
        valid = [k for k in self._keys if k.use == use and k.valid_at(now)]
        if not valid:
            raise UnknownKey(f"{self.agency} has no valid {use} key")
        return valid[-1]

    def current_published(self, use: KeyUse, now: int, directory: KeyLookup) -> PrivateKey:
        """The newest valid key of that use that `directory` lists for this agency, unrevoked.

        After `bridge keys rotate` the new key is current locally at once, but peers accept it
        only when the federation has published it; until then the previous key keeps signing.
        """
        for key in reversed(self._keys):
            if key.use != use or not key.valid_at(now):
                continue
            found = directory.key(key.kid)
            if found is not None and found[0] == self.agency and not directory.is_revoked(key.kid):
                return key
        raise UnknownKey(f"{self.agency} has no valid {use} key that the directory lists")

    def decryption_key(self, kid: bytes, now: int) -> PrivateKey | None:
        key = self._by_kid.get(kid)
        if key is None or key.use != "enc" or not key.valid_at(now):
            return None
        return key

    def public(self) -> AgencyPublicKeys:
        return AgencyPublicKeys(self.agency, [k.public_record() for k in self._keys])

    def __repr__(self) -> str:
        return f"Keyring(agency={self.agency!r}, keys={len(self._keys)})"
