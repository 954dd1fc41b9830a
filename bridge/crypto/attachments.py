"""Attachments: files of up to 100 MiB encrypted in chunks under keys from the content key.

The byte layout is specified in docs/envelope.md ("Attachments"); in short:

    chunk key ‖ meta key = HKDF-SHA256(content key, "bridge/v1 attachment" ‖ u32 index, 64)
    chunk j   = AES-256-GCM(chunk key, 0^7 ‖ u32 j ‖ u8 final, plaintext[j·chunk : (j+1)·chunk])
    meta      = AES-256-GCM(meta key, 0^12, SHA-256(plaintext) ‖ UTF-8 name)

The signed header lists each attachment as `{type, size, chunk, meta}`; the name and digest are
inside `meta` because a file name is personal data and a digest lets anyone holding a candidate
document confirm that it was sent. Each attachment has its own keys, each chunk its index and a
final flag in its nonce: a chunk that is altered, reordered, duplicated, moved to another
attachment or message, or a stream cut at a chunk boundary does not open.

Nothing here holds a whole attachment: a sealer takes the plaintext piece by piece and hands
back whole encrypted chunks; a reader opens chunks one by one and checks the digest at the end.
"""

from __future__ import annotations

import struct
import unicodedata
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec

from ..errors import AttachmentInvalid
from . import _primitives as P

__all__ = [
    "CHUNK_MAX",
    "CHUNK_MIN",
    "DEFAULT_CHUNK",
    "MEDIA_TYPE_PATTERN",
    "Attachment",
    "AttachmentSealer",
    "ChunkReader",
    "OpenedAttachment",
    "check_name",
    "chunk_count",
]

CHUNK_MIN: Final = 1024
CHUNK_MAX: Final = 1024 * 1024
DEFAULT_CHUNK: Final = 256 * 1024
"""bridge's chunk size: one encrypted chunk and its NATS headers fit a 1 MiB NATS message."""
DIGEST_LEN: Final = 32
TAG_LEN: Final = 16
MAX_NAME_BYTES: Final = 255
MEDIA_TYPE_PATTERN: Final = (
    r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$(?!\n)"
)
_INFO: Final = b"bridge/v1 attachment"
_META_NONCE: Final = bytes(12)
_NONCE_PREFIX: Final = bytes(7)
_U32 = struct.Struct(">I")


class Attachment(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One attachment as the signed header lists it; the broker sees type and size only."""

    type: Annotated[str, msgspec.Meta(pattern=MEDIA_TYPE_PATTERN)]
    size: Annotated[int, msgspec.Meta(ge=0)]
    chunk: int
    meta: Annotated[
        bytes,
        msgspec.Meta(
            min_length=DIGEST_LEN + 1 + TAG_LEN, max_length=DIGEST_LEN + MAX_NAME_BYTES + TAG_LEN
        ),
    ]

    @property
    def chunks(self) -> int:
        return chunk_count(self.size, self.chunk)

    @property
    def stored_size(self) -> int:
        """Bytes of all encrypted chunks together."""
        return self.size + TAG_LEN * self.chunks

    def chunk_length(self, index: int) -> int:
        """Plaintext bytes in chunk `index` (0-based)."""
        if index < self.chunks - 1:
            return self.chunk
        return self.size - self.chunk * (self.chunks - 1)


def chunk_count(size: int, chunk: int) -> int:
    """At least one chunk: an empty attachment is one empty final chunk."""
    return max(1, -(-size // chunk))


def valid_chunk_size(chunk: int) -> bool:
    return CHUNK_MIN <= chunk <= CHUNK_MAX and chunk & (chunk - 1) == 0


def check_name(name: str) -> str:
    """A file name the recipient can use as such, or `AttachmentInvalid` (never quoting it).

    1 to 255 UTF-8 bytes, no control or format characters, no path separators, not `.` or `..`.
    """
    encoded = name.encode("utf-8", "surrogatepass")
    bad = (
        not 1 <= len(encoded) <= MAX_NAME_BYTES
        or name in (".", "..")
        or any(c in "/\\" or unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in name)
    )
    if bad:
        raise AttachmentInvalid(
            "an attachment's name must be 1 to 255 bytes of UTF-8 without control characters "
            "or path separators",
            reason="attachment.name_invalid",
        )
    return name


def _keys(content_key: bytes, index: int) -> tuple[bytes, bytes]:
    okm = P.hkdf_sha256(content_key, _INFO + _U32.pack(index), 64)
    return okm[:32], okm[32:]


def _nonce(index: int, final: bool) -> bytes:
    return _NONCE_PREFIX + _U32.pack(index) + (b"\x01" if final else b"\x00")


class AttachmentSealer:
    """Encrypts one attachment as its bytes arrive; `finish()` gives its header entry.

    A full chunk is released only once a byte after it arrived, because only then is it known
    not to be the final one.
    """

    def __init__(
        self,
        content_key: bytes,
        index: int,
        *,
        name: str,
        media_type: str,
        chunk: int = DEFAULT_CHUNK,
    ) -> None:
        if not valid_chunk_size(chunk):
            raise ValueError("chunk size must be a power of two from 1 KiB to 1 MiB")
        if not 0 <= index < 2**32:
            raise ValueError("attachment index out of range")
        self._name = check_name(name)
        self._media_type = media_type
        self._chunk = chunk
        chunk_key, self._meta_key = _keys(content_key, index)
        self._aead = P.Aead(chunk_key)
        self._hash = P.sha256_hasher()
        self._buffer = bytearray()
        self._next = 0
        self._size = 0
        self._entry: Attachment | None = None

    @property
    def size(self) -> int:
        return self._size

    @property
    def chunks_sealed(self) -> int:
        return self._next

    def update(self, data: bytes) -> list[bytes]:
        """Take more plaintext; return the encrypted chunks now complete (maybe none)."""
        if self._entry is not None:
            raise RuntimeError("attachment already finished")
        self._hash.update(data)
        self._size += len(data)
        self._buffer += data
        out = []
        while len(self._buffer) > self._chunk:
            out.append(self._seal(bytes(self._buffer[: self._chunk]), final=False))
            del self._buffer[: self._chunk]
        return out

    def finish(self) -> tuple[bytes, Attachment]:
        """Seal the final chunk; return it and the attachment's header entry."""
        if self._entry is not None:
            raise RuntimeError("attachment already finished")
        last = self._seal(bytes(self._buffer), final=True)
        self._buffer.clear()
        digest = self._hash.digest()
        meta = P.Aead(self._meta_key).seal(_META_NONCE, digest + self._name.encode(), b"")
        self._entry = Attachment(
            type=self._media_type, size=self._size, chunk=self._chunk, meta=meta
        )
        return last, self._entry

    @property
    def digest(self) -> bytes:
        """SHA-256 of the plaintext; only after `finish()`."""
        if self._entry is None:
            raise RuntimeError("attachment not finished")
        return self._hash.digest()

    def _seal(self, plaintext: bytes, *, final: bool) -> bytes:
        sealed = self._aead.seal(_nonce(self._next, final), plaintext, b"")
        self._next += 1
        return sealed

    def __repr__(self) -> str:
        return f"AttachmentSealer(size={self._size}, chunks={self._next})"


@dataclass(frozen=True, repr=False)
class OpenedAttachment:
    """An attachment of an opened envelope: its name and digest, and the key to its chunks.

    The name is personal data: never log it.
    """

    index: int
    entry: Attachment
    name: str
    digest: bytes
    _aead: P.Aead

    @classmethod
    def open(cls, content_key: bytes, index: int, entry: Attachment) -> OpenedAttachment:
        chunk_key, meta_key = _keys(content_key, index)
        meta = P.Aead(meta_key).open(_META_NONCE, entry.meta, b"")
        if meta is None:
            raise AttachmentInvalid("an attachment's description does not decrypt")
        try:
            name = check_name(meta[DIGEST_LEN:].decode("utf-8"))
        except (UnicodeDecodeError, AttachmentInvalid):
            raise AttachmentInvalid(
                "an attachment's name is not a valid file name", reason="attachment.malformed"
            ) from None
        return cls(index, entry, name, meta[:DIGEST_LEN], P.Aead(chunk_key))

    @property
    def media_type(self) -> str:
        return self.entry.type

    @property
    def size(self) -> int:
        return self.entry.size

    @property
    def chunks(self) -> int:
        return self.entry.chunks

    def open_chunk(self, index: int, ciphertext: bytes) -> bytes:
        """Decrypt chunk `index` alone (a range request): its place is checked, not the digest."""
        if not 0 <= index < self.chunks:
            raise AttachmentInvalid("a chunk beyond the attachment", reason="attachment.too_long")
        if len(ciphertext) != self.entry.chunk_length(index) + TAG_LEN:
            raise AttachmentInvalid("a chunk of the wrong length", reason="attachment.malformed")
        plaintext = self._aead.open(_nonce(index, index == self.chunks - 1), ciphertext, b"")
        if plaintext is None:
            raise AttachmentInvalid("a chunk does not decrypt in its place")
        return plaintext

    def reader(self) -> ChunkReader:
        return ChunkReader(self)

    def __repr__(self) -> str:
        return f"OpenedAttachment(index={self.index}, size={self.size}, chunks={self.chunks})"


class ChunkReader:
    """Opens an attachment's chunks in order and checks, at the end, count and digest."""

    def __init__(self, attachment: OpenedAttachment) -> None:
        self._attachment = attachment
        self._next = 0
        self._hash = P.sha256_hasher()

    def feed(self, ciphertext: bytes) -> bytes:
        plaintext = self._attachment.open_chunk(self._next, ciphertext)
        self._next += 1
        self._hash.update(plaintext)
        return plaintext

    def finish(self) -> bytes:
        """Raise unless every chunk came and the digest matches; return the digest."""
        if self._next != self._attachment.chunks:
            raise AttachmentInvalid(
                "the attachment ended before its final chunk", reason="attachment.truncated"
            )
        digest = self._hash.digest()
        if digest != self._attachment.digest:
            raise AttachmentInvalid(
                "the attachment's digest differs from the declared one",
                reason="attachment.digest_mismatch",
            )
        return digest
