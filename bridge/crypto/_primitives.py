"""The only module that touches `cryptography.hazmat`.

Everything above it speaks in recipes (seal, verify, open, key files); everything here is a thin,
typed wrapper around one primitive of the single bridge suite:

- signatures: Ed25519 and ML-DSA-65 together (a "composite" signing key, both required),
- key encapsulation: HPKE (RFC 9180) with the X-Wing KEM ML-KEM-768+X25519, HKDF-SHA256,
  AES-256-GCM, single-shot base mode,
- symmetric: AES-256-GCM, HKDF-SHA256, SHA-256,
- key files: scrypt.

Library exceptions are translated here into `None`/`False` results or `bridge.errors` types so that
no caller ever has to catch a `cryptography` exception.
"""

from __future__ import annotations

import functools
import hashlib
import os

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = [
    "ED25519_PUBLIC_LEN",
    "ED25519_SIG_LEN",
    "HPKE_WRAP_LEN",
    "MLDSA65_PUBLIC_LEN",
    "MLDSA65_SIG_LEN",
    "SEED_LEN",
    "SIGNING_PUBLIC_LEN",
    "XWING_PUBLIC_LEN",
    "Aead",
    "EncryptionPrivate",
    "EncryptionPublic",
    "SigningPrivate",
    "SigningPublic",
    "aead_open",
    "aead_seal",
    "encryption_public",
    "hkdf_sha256",
    "random_bytes",
    "scrypt",
    "sha256",
    "sha256_hasher",
    "signing_public",
]

SEED_LEN = 32
ED25519_PUBLIC_LEN = 32
ED25519_SIG_LEN = 64
MLDSA65_PUBLIC_LEN = 1952
MLDSA65_SIG_LEN = 3309
SIGNING_PUBLIC_LEN = ED25519_PUBLIC_LEN + MLDSA65_PUBLIC_LEN
MLKEM768_PUBLIC_LEN = 1184
X25519_LEN = 32
XWING_PUBLIC_LEN = MLKEM768_PUBLIC_LEN + X25519_LEN
AES256_KEY_LEN = 32
GCM_TAG_LEN = 16
# HPKE single-shot output for a 32-byte plaintext: X-Wing encapsulation (1120) + AES-GCM(32) + tag.
HPKE_WRAP_LEN = hpke.KEM.MLKEM768_X25519.enc_length() + AES256_KEY_LEN + GCM_TAG_LEN

_HPKE_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def random_bytes(n: int) -> bytes:
    return os.urandom(n)


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_hasher() -> hashlib._Hash:
    """An incremental SHA-256, for data that is never whole in memory (attachments)."""
    return hashlib.sha256()


def hkdf_sha256(ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


def aead_seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def aead_open(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes | None:
    """Decrypt, or `None` when the tag does not verify."""
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        return None


class Aead:
    """AES-256-GCM under one key, for many messages (an attachment's chunks).

    The caller guarantees a distinct nonce per message under the key.
    """

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes | None:
        """Decrypt, or `None` when the tag does not verify."""
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            return None

    def __repr__(self) -> str:
        return "Aead(<key>)"


def scrypt(passphrase: bytes, salt: bytes, n: int, r: int, p: int, length: int = 32) -> bytes:
    return Scrypt(salt=salt, length=length, n=n, r=r, p=p).derive(passphrase)


def _ed25519_message(context: bytes, data: bytes) -> bytes:
    # Pure Ed25519 has no context parameter; prefix one so that a signature made for one
    # purpose (envelope, directory) never verifies for another. ML-DSA gets the same context
    # through its own context parameter (FIPS 204).
    return bytes([len(context)]) + context + data


class SigningPublic:
    """Ed25519 + ML-DSA-65 public key: 32 + 1952 bytes, both signatures required."""

    __slots__ = ("_ed", "_ml", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != SIGNING_PUBLIC_LEN:
            raise ValueError("signing public key has the wrong length")
        self.raw = bytes(raw)
        self._ed = ed25519.Ed25519PublicKey.from_public_bytes(raw[:ED25519_PUBLIC_LEN])
        self._ml = mldsa.MLDSA65PublicKey.from_public_bytes(raw[ED25519_PUBLIC_LEN:])

    def verify(self, context: bytes, data: bytes, ed_sig: bytes, ml_sig: bytes) -> bool:
        """True only when both signatures verify over `data` in `context`."""
        if len(ed_sig) != ED25519_SIG_LEN or len(ml_sig) != MLDSA65_SIG_LEN:
            return False
        try:
            self._ed.verify(ed_sig, _ed25519_message(context, data))
            self._ml.verify(ml_sig, data, context)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return "SigningPublic(ed25519+ml-dsa-65)"


class SigningPrivate:
    """Ed25519 + ML-DSA-65 private key, built from two 32-byte seeds (64 bytes in all)."""

    __slots__ = ("_ed", "_ml", "public", "seed")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 2 * SEED_LEN:
            raise ValueError("signing seed must be 64 bytes")
        self.seed = bytes(seed)
        self._ed = ed25519.Ed25519PrivateKey.from_private_bytes(seed[:SEED_LEN])
        self._ml = mldsa.MLDSA65PrivateKey.from_seed_bytes(seed[SEED_LEN:])
        self.public = SigningPublic(
            self._ed.public_key().public_bytes_raw() + self._ml.public_key().public_bytes_raw()
        )

    @classmethod
    def generate(cls) -> SigningPrivate:
        return cls(random_bytes(2 * SEED_LEN))

    def sign(self, context: bytes, data: bytes) -> tuple[bytes, bytes]:
        return self._ed.sign(_ed25519_message(context, data)), self._ml.sign(data, context)

    def __repr__(self) -> str:
        return "SigningPrivate(<secret>)"


class EncryptionPublic:
    """X-Wing (ML-KEM-768 + X25519) public key: the ML-KEM key (1184) then X25519 (32)."""

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != XWING_PUBLIC_LEN:
            raise ValueError("encryption public key has the wrong length")
        self.raw = bytes(raw)
        self._key = hpke.MLKEM768X25519PublicKey(
            mlkem.MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_PUBLIC_LEN]),
            x25519.X25519PublicKey.from_public_bytes(raw[MLKEM768_PUBLIC_LEN:]),
        )

    def wrap(self, plaintext: bytes, info: bytes) -> bytes:
        """HPKE single-shot seal: encapsulated key followed by the AEAD ciphertext."""
        return _HPKE_SUITE.encrypt(plaintext, self._key, info=info)

    def __repr__(self) -> str:
        return "EncryptionPublic(x-wing)"


class EncryptionPrivate:
    """X-Wing private key from its 32-byte seed (draft-connolly-cfrg-xwing-kem).

    The seed expands as SHAKE256(seed, 96): the first 64 bytes are the ML-KEM-768 seed (d || z),
    the last 32 the X25519 private key, as in other X-Wing implementations.
    """

    __slots__ = ("_key", "public", "seed")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_LEN:
            raise ValueError("encryption seed must be 32 bytes")
        self.seed = bytes(seed)
        expanded = hashlib.shake_256(seed).digest(96)
        ml = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
        xk = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
        self._key = hpke.MLKEM768X25519PrivateKey(ml, xk)
        self.public = EncryptionPublic(
            ml.public_key().public_bytes_raw() + xk.public_key().public_bytes_raw()
        )

    @classmethod
    def generate(cls) -> EncryptionPrivate:
        return cls(random_bytes(SEED_LEN))

    def unwrap(self, wrapped: bytes, info: bytes) -> bytes | None:
        """HPKE single-shot open, or `None` when it fails for any reason."""
        if len(wrapped) != HPKE_WRAP_LEN:
            return None
        try:
            return _HPKE_SUITE.decrypt(wrapped, self._key, info=info)
        except (InvalidTag, ValueError):
            return None

    def __repr__(self) -> str:
        return "EncryptionPrivate(<secret>)"


# Parsing an ML-DSA or ML-KEM public key costs more than a hash; brokers and adapters see the same
# few directory keys over and over, so parsed keys are kept (public data only, bounded).
@functools.lru_cache(maxsize=4096)
def signing_public(raw: bytes) -> SigningPublic:
    return SigningPublic(raw)


@functools.lru_cache(maxsize=4096)
def encryption_public(raw: bytes) -> EncryptionPublic:
    return EncryptionPublic(raw)
