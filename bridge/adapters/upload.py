"""A message with attachments, as `multipart/form-data`: read, encrypt and store part by part.

The first part, named `message`, is the JSON submission of `POST /v1/messages`; every further
part, named `attachment`, is one file, with its name in the part's `filename` and its media type
in the part's `Content-Type`. A part may declare its size (the `size` parameter of its
`Content-Disposition`, RFC 2183) and digest
(`Content-Digest: sha-256=:<base64>:`, RFC 9530); a declared one must match what arrives.

Nothing is held whole: each part is read in pieces, encrypted into chunks and published as the
chunks fill. Every refusal is an `ApiProblem` with a reason code that quotes nothing the caller
sent (not the name, not the media type).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import BodyPartReader, MultipartReader, hdrs
from aiohttp.multipart import parse_content_disposition

from ..crypto import DEFAULT_CHUNK, Attachment, AttachmentSealer, Limits, check_name
from ..crypto.attachments import MEDIA_TYPE_PATTERN
from ..errors import AttachmentInvalid
from ..http.problems import ApiProblem
from .chunks import ChunkPublisher

__all__ = ["AttachmentParts", "read_message_part", "seal_stream"]

_READ: Final = 64 * 1024
_MEDIA_TYPE_RE: Final = re.compile(MEDIA_TYPE_PATTERN)
_DIGEST_RE: Final = re.compile(r"^\s*sha-256=:([A-Za-z0-9+/=]{1,64}):\s*$")
_MIB: Final = 1024 * 1024


def _media_type(raw: str | None) -> str:
    value = (raw or "").split(";", 1)[0].strip().lower()
    if not _MEDIA_TYPE_RE.fullmatch(value):
        raise ApiProblem(
            400,
            "each attachment part needs a Content-Type that is a media type",
            reason="attachment.media_type_invalid",
        )
    return value


def _declared_size(part: BodyPartReader) -> int | None:
    # RFC 2183's `size` parameter of Content-Disposition: form-data parts may not carry a
    # Content-Length (RFC 7578, 4.8).
    _, params = parse_content_disposition(part.headers.get(hdrs.CONTENT_DISPOSITION))
    raw = params.get("size")
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 15:
        raise ApiProblem(
            400, "an attachment's declared size is not a number", reason="attachment.size_invalid"
        )
    return int(raw)


def _declared_digest(part: BodyPartReader) -> bytes | None:
    raw = part.headers.get("Content-Digest")
    if raw is None:
        return None
    match = _DIGEST_RE.fullmatch(raw)
    digest = None
    if match is not None:
        try:
            digest = base64.b64decode(match[1], validate=True)
        except (binascii.Error, ValueError):
            digest = None
    if digest is None or len(digest) != 32:
        raise ApiProblem(
            400,
            "an attachment's Content-Digest must be sha-256=:<base64 of 32 bytes>:",
            reason="attachment.digest_invalid",
        )
    return digest


async def read_message_part(reader: MultipartReader, limit: int) -> bytes:
    """The first part, `message`: the JSON submission, at most `limit` bytes."""
    part = await reader.next()
    if not isinstance(part, BodyPartReader) or part.name != "message":
        raise ApiProblem(
            400,
            "the first part of a multipart message must be named message",
            reason="attachment.message_part_missing",
        )
    if (part.headers.get(hdrs.CONTENT_TYPE) or "").split(";", 1)[0].strip() != "application/json":
        raise ApiProblem(
            415, "the message part must be application/json", reason="request.media_type"
        )
    data = bytearray()
    while piece := await part.read_chunk(_READ):
        data += piece
        if len(data) > limit:
            raise ApiProblem(413, f"the message exceeds {limit} bytes", reason="request.too_large")
    return bytes(data)


class AttachmentParts:
    """The attachment parts of one request, read once by `store`."""

    def __init__(self, reader: MultipartReader, limits: Limits, chunk: int = DEFAULT_CHUNK) -> None:
        self._reader = reader
        self._limits = limits
        self._chunk = chunk
        # The media types the routing policy allows for the message's type (set once known).
        self.allowed_types: frozenset[str] = frozenset()

    async def store(self, content_key: bytes, publisher: ChunkPublisher) -> list[Attachment]:
        """Encrypt and publish every attachment part; return their header entries."""
        limits = self._limits
        entries: list[Attachment] = []
        total = 0
        while (part := await self._reader.next()) is not None:
            if not isinstance(part, BodyPartReader) or part.name != "attachment":
                raise ApiProblem(
                    400,
                    "every part after the message must be named attachment",
                    reason="attachment.part_invalid",
                )
            if len(entries) >= limits.max_attachments:
                raise ApiProblem(
                    413,
                    f"at most {limits.max_attachments} attachments per message",
                    reason="attachment.too_many",
                )
            entry = await self._store_one(part, len(entries), content_key, publisher, total)
            total += entry.size
            entries.append(entry)
        await publisher.close()
        return entries

    async def _store_one(
        self,
        part: BodyPartReader,
        index: int,
        content_key: bytes,
        publisher: ChunkPublisher,
        total: int,
    ) -> Attachment:
        limits = self._limits
        if part.filename is None:
            raise ApiProblem(
                400, "each attachment part needs a filename", reason="attachment.name_missing"
            )
        try:
            name = check_name(part.filename)
        except AttachmentInvalid as exc:
            raise ApiProblem(400, str(exc), reason=exc.reason) from None
        media_type = _media_type(part.headers.get(hdrs.CONTENT_TYPE))
        if media_type not in self.allowed_types:
            # The broker's own check of the header's list, run before any chunk is stored.
            raise ApiProblem(
                422,
                "the routing policy allows no attachment of this media type for this message type",
                reason="policy.attachment_type_denied",
            )
        declared_size = _declared_size(part)
        declared_digest = _declared_digest(part)
        if declared_size is not None and declared_size > limits.max_attachment_bytes:
            raise _too_large(limits)
        return await seal_stream(
            _pieces(part),
            index,
            content_key,
            publisher,
            limits=limits,
            total=total,
            name=name,
            media_type=media_type,
            chunk=self._chunk,
            declared_size=declared_size,
            declared_digest=declared_digest,
        )


async def _pieces(part: BodyPartReader) -> AsyncIterator[bytes]:
    while piece := await part.read_chunk(_READ):
        yield piece


async def seal_stream(
    pieces: AsyncIterator[bytes],
    index: int,
    content_key: bytes,
    publisher: ChunkPublisher,
    *,
    limits: Limits,
    total: int,
    name: str,
    media_type: str,
    chunk: int,
    declared_size: int | None,
    declared_digest: bytes | None,
) -> Attachment:
    """Encrypt one attachment as its bytes arrive and publish its chunks; check what was declared.

    The one sealing path for a multipart part and a spooled upload (`total`: the bytes of the
    message's attachments before this one).
    """
    sealer = AttachmentSealer(content_key, index, name=name, media_type=media_type, chunk=chunk)
    number = 0
    async for piece in pieces:
        if sealer.size + len(piece) > limits.max_attachment_bytes:
            raise _too_large(limits)
        if total + sealer.size + len(piece) > limits.max_attachments_total:
            raise ApiProblem(
                413,
                f"the attachments exceed {limits.max_attachments_total // _MIB} MiB together",
                reason="attachment.total_too_large",
            )
        for sealed in sealer.update(piece):
            await publisher.add(index, number, sealed)
            number += 1
    last, entry = sealer.finish()
    await publisher.add(index, number, last)
    if declared_size is not None and declared_size != entry.size:
        raise ApiProblem(
            400,
            "an attachment's size differs from the size declared for it",
            reason="attachment.size_mismatch",
        )
    if declared_digest is not None and declared_digest != sealer.digest:
        raise ApiProblem(
            400,
            "an attachment's SHA-256 differs from the digest declared for it",
            reason="attachment.digest_mismatch",
        )
    return entry


def _too_large(limits: Limits) -> ApiProblem:
    return ApiProblem(
        413,
        f"an attachment exceeds {limits.max_attachment_bytes // _MIB} MiB",
        reason="attachment.too_large",
    )
