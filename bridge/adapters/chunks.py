"""Attachment chunks in NATS: the sender stores and purges them, a recipient reads its own.

Each encrypted chunk is one message on its own subject in the sender's stream
(`bridge.nats.subjects.attach_subject`), one copy per recipient, with the message's lifetime as
its TTL. Publishing is pipelined (a bounded number of chunks in flight) and every chunk has a
`Nats-Msg-Id`, so a publish that timed out but was stored is not stored twice. Reading is a
direct get by subject: a recipient may read only subjects that name it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Final

import nats.errors
import nats.js.errors
from nats.js.client import JetStreamContext

from .._cancel import pause
from ..crypto import DEFAULT_CHUNK
from ..crypto.attachments import valid_chunk_size
from ..errors import ConfigError, TransportError
from ..nats.subjects import (
    attach_filter,
    attach_open_filter,
    attach_open_subject,
    attach_stream,
    attach_subject,
)
from ..nats.transport import publish_durable

__all__ = ["ChunkPublisher", "ChunkStore"]

log = logging.getLogger(__name__)

_WINDOW: Final = 8
"""Chunks in flight per upload: enough to keep the server busy, little memory (8 × 256 KiB)."""


class ChunkStore:
    """One agency's view of the attachment streams."""

    def __init__(
        self, js: JetStreamContext, agency: str, *, timeout: float, chunk_size: int = DEFAULT_CHUNK
    ) -> None:
        if not valid_chunk_size(chunk_size):
            raise ConfigError(
                "attachment_chunk_bytes must be a power of two from 1024 to 1048576",
                reason="config.invalid",
            )
        self.chunk_size = chunk_size
        self._js = js
        self._agency = agency
        self._timeout = timeout

    @property
    def agency(self) -> str:
        return self._agency

    async def open_upload(self, message_id: str, ttl: int) -> None:
        """Mark an upload as begun, so that a crash leaves a trace `sweep` finds."""
        subject = attach_open_subject(self._agency, message_id)
        await self._publish(subject, b"", subject, ttl)

    async def close_upload(self, message_id: str) -> None:
        """The upload ended (sent, or its chunks purged): remove its marker."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._js.purge_stream(
                    attach_stream(self._agency),
                    subject=attach_open_subject(self._agency, message_id),
                )
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            log.warning("upload marker of %s not removed [attachment.purge_failed]", message_id)
            raise TransportError(
                "an upload marker could not be removed", reason="attachment.purge_failed"
            ) from exc

    async def sweep(self, older_than: float, now: float) -> int:
        """Remove the chunks and markers of uploads begun before `now - older_than` that never
        ended (their adapter stopped mid-upload); how many were removed."""
        stream = attach_stream(self._agency)
        try:
            async with asyncio.timeout(self._timeout):
                info = await self._js.stream_info(
                    stream, subjects_filter=attach_open_filter(self._agency)
                )
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            raise TransportError(
                "open uploads could not be listed", reason="attachment.unavailable"
            ) from exc
        removed = 0
        for subject in sorted((info.state.subjects or {}) if info.state else {}):
            message_id = subject.rsplit(".", 1)[-1]
            try:
                async with asyncio.timeout(self._timeout):
                    marker = await self._js.get_msg(stream, subject=subject, direct=True)
            except nats.js.errors.NotFoundError:
                continue
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                raise TransportError(
                    "an upload marker could not be read", reason="attachment.unavailable"
                ) from exc
            begun = marker.time.timestamp() if marker.time is not None else now
            if begun > now - older_than:
                continue
            await self.purge(message_id)
            await self.close_upload(message_id)
            log.warning("abandoned upload %s removed [attachment.abandoned]", message_id)
            removed += 1
        return removed

    async def sweep_forever(self, older_than: float, clock: Callable[[], float]) -> None:
        """Run `sweep` now and then, forever; NATS failures are logged and retried."""
        every = max(1.0, min(older_than / 4, 300.0))
        while True:
            try:
                await self.sweep(older_than, clock())
            except TransportError as exc:
                log.warning("abandoned uploads not swept [%s]; retrying", exc.reason)
            await pause(every)

    def publisher(self, recipients: Sequence[str], message_id: str, ttl: int) -> ChunkPublisher:
        return ChunkPublisher(self, list(recipients), message_id, ttl)

    async def purge(self, message_id: str, recipient: str | None = None) -> None:
        """Remove this agency's chunks of `message_id` (of one recipient's copy, or all)."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._js.purge_stream(
                    attach_stream(self._agency),
                    subject=attach_filter(self._agency, message_id, recipient),
                )
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            raise TransportError(
                "attachment chunks could not be removed", reason="attachment.purge_failed"
            ) from exc

    async def discard(self, message_id: str, recipient: str | None = None) -> None:
        """`purge`, but a failure is only logged: the chunks' TTL removes them at the latest."""
        try:
            await self.purge(message_id, recipient)
        except TransportError as exc:
            log.warning("chunks of message %s not removed yet [%s]", message_id, exc.reason)

    async def read(self, sender: str, message_id: str, index: int, chunk: int) -> bytes | None:
        """Chunk `chunk` of attachment `index` in this agency's copy; None if it is not there."""
        subject = attach_subject(sender, self._agency, message_id, index, chunk)
        try:
            async with asyncio.timeout(self._timeout):
                msg = await self._js.get_msg(attach_stream(sender), subject=subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        except (TimeoutError, nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            raise TransportError(
                "an attachment chunk could not be read", reason="attachment.unavailable"
            ) from exc
        return bytes(msg.data or b"")

    async def _publish(self, subject: str, data: bytes, msg_id: str, ttl: int) -> None:
        await publish_durable(
            self._js,
            subject,
            data,
            msg_id=msg_id,
            timeout=self._timeout,
            ttl=ttl,
            expected_stream=attach_stream(self._agency),
        )


class ChunkPublisher:
    """Publishes one message's chunks to every recipient's copy, a few at a time.

    `close()` waits for everything in flight and raises the first failure; on any failure the
    caller purges the message's chunks.
    """

    def __init__(self, store: ChunkStore, recipients: list[str], message_id: str, ttl: int) -> None:
        self._store = store
        self._recipients = recipients
        self._message_id = message_id
        self._ttl = ttl
        self._pending: list[asyncio.Task[None]] = []
        self.published = 0

    async def add(self, index: int, chunk: int, data: bytes) -> None:
        for recipient in self._recipients:
            subject = attach_subject(self._store.agency, recipient, self._message_id, index, chunk)
            msg_id = f"{self._message_id}.{index}.{chunk}.{recipient}"
            self._pending.append(
                asyncio.create_task(self._store._publish(subject, data, msg_id, self._ttl))
            )
        while len(self._pending) > _WINDOW * len(self._recipients):
            await self._pending.pop(0)
        self.published += 1

    async def close(self) -> None:
        try:
            while self._pending:
                await self._pending.pop(0)
        finally:
            await self.settle()

    async def settle(self) -> bool:
        """Wait for every publish in flight (each bounded by its timeout), after a failure;
        True when each was stored or refused for certain, so that a purge now removes all.

        Not cancelled: a chunk already on its way would be stored after a purge that overtook
        it (the server handles a purge apart from the stream's intake), and stay behind.
        """
        certain = True
        for task in self._pending:
            try:
                await asyncio.shield(task)
            except TransportError as exc:
                # A timed-out publish may still be stored; a refused one is not.
                certain = certain and exc.reason != "transport.ack_timeout"
            except asyncio.CancelledError:
                for rest in self._pending:
                    rest.cancel()
                raise
        self._pending.clear()
        return certain
