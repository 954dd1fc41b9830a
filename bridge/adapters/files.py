"""Inbound attachments: check every chunk before delivery, then stream them to the local system.

An inbound message with attachments is offered to the local system only after each of its
attachments was read from NATS in full, every chunk opened in its place and the digest checked
(`verify_all`); a missing or altered chunk refuses the message like any envelope that does not
open. Delivery then reads the chunks again and streams the plaintext (`plaintext`), a chunk at
a time, for a webhook's multipart body or a pull client's (range) request: no file is whole in
memory, and nothing unchecked reaches the local system.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..crypto import OpenedAttachment
from ..errors import AttachmentInvalid
from .api import AttachmentInfo
from .chunks import ChunkStore

__all__ = ["byte_range", "describe", "plaintext", "verify_all"]


def describe(attachment: OpenedAttachment) -> AttachmentInfo:
    return AttachmentInfo(
        index=attachment.index,
        name=attachment.name,
        media_type=attachment.media_type,
        size=attachment.size,
        sha256=attachment.digest.hex(),
    )


async def _chunk(
    store: ChunkStore, sender: str, message_id: str, attachment: OpenedAttachment, index: int
) -> bytes:
    data = await store.read(sender, message_id, attachment.index, index)
    if data is None:
        raise AttachmentInvalid(
            "a chunk of an attachment is missing", reason="attachment.chunk_missing"
        )
    return data


async def verify_all(
    store: ChunkStore, sender: str, message_id: str, attachments: tuple[OpenedAttachment, ...]
) -> None:
    """Read and open every chunk of every attachment; raise `AttachmentInvalid` on any flaw.

    A chunk beyond the last (an attachment longer than declared) is looked for too.
    """
    for attachment in attachments:
        reader = attachment.reader()
        for index in range(attachment.chunks):
            reader.feed(await _chunk(store, sender, message_id, attachment, index))
        reader.finish()
        extra = await store.read(sender, message_id, attachment.index, attachment.chunks)
        if extra is not None:
            raise AttachmentInvalid(
                "an attachment has a chunk beyond its declared size", reason="attachment.too_long"
            )


async def plaintext(
    store: ChunkStore,
    sender: str,
    message_id: str,
    attachment: OpenedAttachment,
    start: int = 0,
    end: int | None = None,
) -> AsyncIterator[bytes]:
    """The bytes `[start, end)` of an attachment (all by default), chunk by chunk."""
    stop = attachment.size if end is None else end
    if stop <= start:
        return
    size = attachment.entry.chunk
    for index in range(start // size, (stop - 1) // size + 1):
        data = attachment.open_chunk(
            index, await _chunk(store, sender, message_id, attachment, index)
        )
        first = index * size
        yield data[max(0, start - first) : stop - first]


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`[start, end)` of a single `Range: bytes=...` request; None for the whole file.

    Raises `ValueError` for a range that is malformed, multiple or not satisfiable.
    """
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        raise ValueError("only one range of bytes is served")
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()):
        raise ValueError("malformed range")
    if len(first) > 15 or len(last) > 15:
        raise ValueError("malformed range")
    if not first:  # the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise ValueError("unsatisfiable range")
        return max(0, size - n), size
    start = int(first)
    end = size if not last else min(size, int(last) + 1)
    if last and int(last) < start:
        raise ValueError("malformed range")
    if start >= size:
        raise ValueError("unsatisfiable range")
    return start, end
