"""Webhook delivery: POST each opened message to the local system, signed with HMAC-SHA256.

The request carries `Bridge-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
under the shared secret (and, while a secret is being rotated out, a second `v1` under the old
one), and `Bridge-Message-Id` as the receiver's deduplication key. Non-2xx
answers and connection failures are retried with exponential backoff up to `max_attempts`,
while the NATS message is kept alive; then the message is handed back to NATS (`nak`) to be
redelivered later. It is acknowledged only after a 2xx.

After a 2xx the local system has the message, so recording it (delivered record, receipt, ack)
is retried in place rather than by posting it again. Recording runs in the background (in
`run()`, at most `_MAX_RECORDING` at once, each message kept alive until it is recorded), so the
next message is posted while the previous one's receipt is sealed and stored: the posts still go
out one at a time and in order, but the sequence of waits per message is about half as long.
The inbound pipeline (`inbound.py`) fetches batches of `_FETCH_BATCH`, opens them concurrently
and records each post before it is made (`Incoming.first_post`), so the only wait per message
left in sequence is the post itself.

Whenever this message may have reached the local system before (an earlier attempt, an earlier
delivery counted by NATS, or a post recorded in the adapter's bucket before it was made, each of
which outlives adapter and nats-server restarts), the call carries
`Bridge-Possible-Repeat: true`; docs/adapter.md says when that happens and how a receiver
removes the repeat by `Bridge-Message-Id`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final

import aiohttp
import msgspec
import nats.errors

from .._cancel import pause
from ..config import DeliveryConfig
from ..errors import AttachmentInvalid, BridgeError, ConfigError, TransportError, reasons_of
from ..http.signing import SIGNATURE_HEADER, load_webhook_secret, sign
from ..nats.backoff import Backoff
from .chunks import ChunkStore
from .delivery import Complete, Incoming, kept_alive
from .files import plaintext
from .metrics import AdapterMetrics

__all__ = [
    "ATTEMPT_HEADER",
    "MESSAGE_ID_HEADER",
    "REPEAT_HEADER",
    "WebhookSink",
    "load_webhook_secrets",
]

log = logging.getLogger(__name__)

MESSAGE_ID_HEADER: Final = "Bridge-Message-Id"
ATTEMPT_HEADER: Final = "Bridge-Delivery-Attempt"
REPEAT_HEADER: Final = "Bridge-Possible-Repeat"
_MAX_REDELIVERY_DELAY: Final = 3600.0
_FETCH_BATCH: Final = 16  # with _MAX_RECORDING, far fewer than the consumer's max_ack_pending
_MAX_RECORDING: Final = 32  # taken messages being recorded at once; fewer than max_ack_pending
_RECORD_RETRY_DELAY: Final = 2.0
_RECORD_ATTEMPTS: Final = 30  # with the backoff and each try's NATS timeout: minutes in all
_REMEMBERED: Final = 10_000  # posted ids kept (about 2 MB) to mark repeats NATS cannot see
_encoder: Final = msgspec.json.Encoder()


def load_webhook_secrets(
    config: DeliveryConfig, resolve: Callable[[str], Path]
) -> tuple[bytes, ...]:
    """The secrets to sign with: the current one, then the old one while it is being retired."""
    if config.webhook_secret_file is None:
        raise ConfigError("webhook delivery needs webhook_secret_file", reason="config.invalid")
    secrets = [load_webhook_secret(resolve(config.webhook_secret_file))]
    if config.webhook_old_secret_file is not None:
        secrets.append(load_webhook_secret(resolve(config.webhook_old_secret_file)))
    return tuple(secrets)


class WebhookSink:
    """Pushes items to `delivery.webhook_url`; one at a time, in order. Run `run()` beside the
    inbound loop: it records, in the background, what the local system took."""

    def __init__(
        self,
        config: DeliveryConfig,
        secrets: Sequence[bytes],
        session: aiohttp.ClientSession,
        complete: Complete,
        *,
        keepalive_interval: float,
        clock: Callable[[], float],
        confirm_deletion: Callable[[str], Awaitable[object]] | None = None,
        first_post: Callable[[Incoming], Awaitable[bool]] | None = None,
        metrics: AdapterMetrics | None = None,
        chunks: ChunkStore | None = None,
    ) -> None:
        """`confirm_deletion(notice_id)` is called when the local system answers a
        `consent-revoked` notice with `{"deleted": true}` (docs/adapter.md). `first_post(incoming)`
        durably records a post before it is made and says whether it is the first (see
        `Inbound.first_post`); without it only JetStream's delivery count and this process's
        memory mark repeats."""
        self._metrics = metrics
        self._chunks = chunks
        if config.webhook_url is None:
            raise ConfigError("webhook delivery needs webhook_url", reason="config.invalid")
        self._url = config.webhook_url
        self._config = config
        if not secrets:
            raise ConfigError("webhook delivery needs a secret", reason="config.invalid")
        self._secrets = tuple(secrets)
        self._session = session
        self._complete = complete
        self._interval = keepalive_interval
        self._clock = clock
        self._first_post = first_post
        self._recorder: asyncio.TaskGroup | None = None
        self._slots = asyncio.Semaphore(_MAX_RECORDING)
        # Ids this process has posted, newest last: JetStream's delivery count can restart at 1
        # for a message whose delivery nats-server had not yet written down when it crashed.
        self._posted: OrderedDict[str, None] = OrderedDict()
        self.attempts = 0
        self.recording = 0
        self._confirm_deletion = confirm_deletion
        self._deleted: set[str] = set()  # notices whose answer said the data was deleted

    def __repr__(self) -> str:
        return f"WebhookSink(attempts={self.attempts}, recording={self.recording})"

    async def run(self) -> None:
        """Run forever: the task group that records taken messages in the background.

        A recording that fails for NATS leaves its message to be redelivered (marked as a
        possible repeat); any other failure ends this task group, and with it the adapter's
        background work, loudly.
        """
        try:
            async with asyncio.TaskGroup() as group:
                self._recorder = group
                await asyncio.Future()  # until cancelled; the group's tasks run meanwhile
        finally:
            self._recorder = None

    async def capacity(self) -> int:
        """A batch to fetch: opened together by the inbound pipeline, then posted in order."""
        return _FETCH_BATCH

    def _backoff(self, attempt: int) -> float:
        c = self._config
        return float(min(c.backoff_max_seconds, c.backoff_initial_seconds * 2 ** (attempt - 1)))

    def _redelivery_delay(self, incoming: Incoming) -> float:
        """Grows with each redelivery, so an unreachable local system is asked less and less
        often (the consumer redelivers without limit until the message's TTL)."""
        delivered = _deliveries(incoming)
        return float(
            min(
                _MAX_REDELIVERY_DELAY,
                self._config.backoff_max_seconds * 2 ** min(delivered - 1, 16),
            )
        )

    async def offer(self, incoming: Incoming) -> None:
        if await self._post_until_taken(incoming):
            await self._record_later(incoming)
            if incoming.message_id in self._deleted:
                await self._deletion_answered(incoming.message_id)
            return
        log.warning(
            "webhook did not take message %s after %d attempts; NATS redelivers it later",
            incoming.message_id,
            self._config.max_attempts,
        )
        try:
            await incoming.msg.nak(delay=self._redelivery_delay(incoming))
        except (nats.errors.Error, OSError) as exc:  # the ack wait redelivers it anyway
            log.warning("cannot hand message back to NATS: %s", type(exc).__name__)

    async def _post_until_taken(self, incoming: Incoming) -> bool:
        payload = _encoder.encode(incoming.item)
        attempts = self._config.max_attempts
        delivered_before = _deliveries(incoming) > 1 or incoming.message_id in self._posted
        first = incoming.first_post
        # Raises TransportError while NATS is away: nothing is posted then, NATS redelivers.
        if first is None and self._first_post is not None:
            first = await self._first_post(incoming)
        if first is False:
            delivered_before = True
        async with kept_alive(incoming.msg, self._interval):
            for attempt in range(1, attempts + 1):
                repeat = delivered_before or attempt > 1
                notice = incoming.item.type == "consent-revoked"
                self._remember(incoming.message_id)
                if await self._post(
                    payload,
                    incoming.message_id,
                    attempt,
                    repeat=repeat,
                    notice=notice,
                    incoming=incoming,
                ):
                    return True
                if attempt < attempts:
                    await asyncio.sleep(self._backoff(attempt))
        return False

    def _remember(self, message_id: str) -> None:
        self._posted[message_id] = None
        self._posted.move_to_end(message_id)
        if len(self._posted) > _REMEMBERED:
            self._posted.popitem(last=False)

    async def _record_later(self, incoming: Incoming) -> None:
        """Record `incoming` in the background; inline if `run()` is not running."""
        async with kept_alive(incoming.msg, self._interval):
            if self._recorder is None:
                await self._record(incoming)
                return
            # Bounded: while NATS is slow, posting waits here rather than memory growing.
            await self._slots.acquire()
        self.recording += 1
        self._recorder.create_task(self._record_in_background(incoming))

    async def _record_in_background(self, incoming: Incoming) -> None:
        try:
            async with kept_alive(incoming.msg, self._interval):
                await self._record(incoming)
        except* (BridgeError, nats.errors.Error, OSError) as group:
            log.warning(
                "webhook took message %s but it cannot be recorded (%s); NATS redelivers it, "
                "marked as a possible repeat",
                incoming.message_id,
                reasons_of(group),
            )
            with contextlib.suppress(nats.errors.Error, OSError):  # else after the ack wait
                await incoming.msg.nak(delay=_RECORD_RETRY_DELAY)
        finally:
            self.recording -= 1
            self._slots.release()

    async def _record(self, incoming: Incoming) -> None:
        """Complete a message the local system took, retrying while NATS is unavailable.

        Retries on the NATS backoff (0.1 s doubling to 10 s, `nats.backoff`), not on the
        webhook's (that is for the local system; this waits for NATS, which is back within
        seconds after a restart). Raises the last `TransportError` if NATS stays away through
        `_RECORD_ATTEMPTS` tries (two to four minutes of pauses); the message is then
        redelivered later and posted again, marked as a possible repeat.
        """
        attempts = _RECORD_ATTEMPTS
        backoff = Backoff()
        for attempt in range(1, attempts + 1):
            try:
                await self._complete(incoming)
                return
            except TransportError as exc:
                if attempt == attempts:
                    raise
                log.warning(
                    "webhook took message %s but it cannot be recorded yet [%s]; retrying",
                    incoming.message_id,
                    exc.reason,
                )
            await pause(backoff.next())

    def _multipart(self, payload: bytes, incoming: Incoming) -> aiohttp.MultipartWriter:
        return _multipart_of(payload, incoming, self._chunks)

    async def _deletion_answered(self, notice_id: str) -> None:
        """The local system's answer to a notice said it deleted the data: confirm it. If that
        fails, the local system can still confirm with `POST /v1/inbox/{id}/deleted`."""
        self._deleted.discard(notice_id)
        if self._confirm_deletion is None:
            return
        try:
            await self._confirm_deletion(notice_id)
        except BridgeError as exc:
            log.warning("deletion of notice %s not confirmed yet [%s]", notice_id, exc.reason)

    async def _post(
        self,
        payload: bytes,
        message_id: str,
        attempt: int,
        *,
        repeat: bool,
        notice: bool = False,
        incoming: Incoming | None = None,
    ) -> bool:
        self.attempts += 1
        if self._metrics is not None:
            self._metrics.webhook_attempts.inc()
        if await self._post_once(
            payload, message_id, attempt, repeat=repeat, notice=notice, incoming=incoming
        ):
            return True
        if self._metrics is not None:
            self._metrics.webhook_failures.inc()
        return False

    async def _post_once(
        self,
        payload: bytes,
        message_id: str,
        attempt: int,
        *,
        repeat: bool,
        notice: bool,
        incoming: Incoming | None = None,
    ) -> bool:
        headers = {
            SIGNATURE_HEADER: sign(self._secrets, int(self._clock()), payload),
            MESSAGE_ID_HEADER: message_id,
            ATTEMPT_HEADER: str(attempt),
        }
        if repeat:
            headers[REPEAT_HEADER] = "true"
        seconds = self._config.webhook_timeout_seconds
        data: bytes | aiohttp.MultipartWriter = payload
        if incoming is not None and incoming.attachments:
            # Streamed: no total time limit, only one per read and connect.
            data = self._multipart(payload, incoming)
            timeout = aiohttp.ClientTimeout(sock_connect=seconds, sock_read=seconds)
        else:
            headers["Content-Type"] = "application/json"
            timeout = aiohttp.ClientTimeout(total=seconds)
        try:
            async with self._session.post(
                self._url, data=data, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                if 200 <= response.status < 300:
                    if notice and _says_deleted(await response.content.read(_MAX_ANSWER)):
                        self._deleted.add(message_id)
                    return True
                log.warning(
                    "webhook answered %d for message %s (attempt %d)",
                    response.status,
                    message_id,
                    attempt,
                )
        except (aiohttp.ClientError, TimeoutError, BridgeError) as exc:
            # BridgeError: a chunk could not be read or opened while streaming; the request
            # was cut off, so the local system has nothing complete.
            log.warning(
                "webhook unreachable for message %s (attempt %d): %s",
                message_id,
                attempt,
                type(exc).__name__,
            )
        return False


_MAX_ANSWER: Final = 4096


def _multipart_of(
    payload: bytes, incoming: Incoming, chunks: ChunkStore | None
) -> aiohttp.MultipartWriter:
    """The message as part `message`, then each attachment streamed as part `attachment`."""
    if chunks is None:
        raise AttachmentInvalid(
            "this adapter cannot read attachments", reason="attachment.unsupported"
        )
    writer = aiohttp.MultipartWriter("form-data")
    message = writer.append(payload, {"Content-Type": "application/json"})
    message.set_content_disposition("form-data", name="message")
    sender = incoming.item.sender
    for attachment in incoming.attachments:
        digest = base64.b64encode(attachment.digest).decode()
        part = writer.append(
            aiohttp.payload.AsyncIterablePayload(
                plaintext(chunks, sender, incoming.message_id, attachment)
            ),
            {"Content-Type": attachment.media_type, "Content-Digest": f"sha-256=:{digest}:"},
        )
        part.set_content_disposition(
            "form-data", name="attachment", filename=attachment.name, size=str(attachment.size)
        )
    return writer


def _says_deleted(answer: bytes) -> bool:
    """Whether a webhook answer is a JSON object with `"deleted": true` (anything else: no)."""
    try:
        decoded = msgspec.json.decode(answer)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(decoded, dict) and decoded.get("deleted") is True


def _deliveries(incoming: Incoming) -> int:
    """How often NATS has delivered this message, this time included (kept by the server, so
    it counts deliveries to earlier adapter processes too)."""
    try:
        return max(1, int(incoming.msg.metadata.num_delivered or 1))
    except (nats.errors.Error, ValueError, TypeError, AttributeError, IndexError):
        return 1
