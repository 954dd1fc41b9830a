"""Inbound: take envelopes from the agency's inbox, open them, and hand them to a `Sink`.

Per message, in order: verify and open the envelope (one signature check) and validate its
body; a receipt is folded into the record of the message it answers and acknowledged; a message
already delivered (a redelivery after a crash) gets its receipt again and is acknowledged;
anything else goes to the sink, and is acknowledged only in `complete`, after the local system
took it. An envelope that fails is never delivered: it is terminated so it does not hold up the
ones behind it, and, when its signed header verified, the sender gets a `rejected` receipt with
the reason code.

A receiving pipeline: messages are fetched in batches (as many as the sink has room for), and
the independent work of a batch runs concurrently: opening the envelopes in threads (the
cryptography releases the GIL), looking up their delivered records and, for a webhook, marking
them as about to be posted. Then the messages are settled one by one in the order they came, so
the sink sees them in that order; those still waiting are kept from being redelivered meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import nats.errors
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from .._cancel import pause, raise_if_cancelling
from ..crypto import Header, Keyring, Limits, OpenedAttachment, open_envelope, verify
from ..errors import AttachmentInvalid, BridgeError, TransportError, reasons_of
from ..federation.directory import Directory
from ..ids import NO_CONSENT
from ..nats.transport import Fetcher
from ..wire import (
    PULL_EXPIRED_REASON,
    Body,
    ConsentRevoked,
    DeletionConfirmed,
    Delivered,
    Disposition,
    Receipt,
    Rejected,
    decode_body,
)
from .api import InboxItem
from .chunks import ChunkStore
from .delivery import Incoming, Sink, kept_alive, touch
from .files import describe, verify_all
from .receipts import send_receipt
from .reports import Reporter
from .revocation import Revocations, note_of
from .store import RECORD_GRACE_SECONDS, Event, MessageRecord, ReceiptFold, Store

__all__ = ["Inbound"]

log = logging.getLogger(__name__)

_RETRY_DELAY: Final = 2.0


async def _nak(msg: Msg, delay: float) -> None:
    with contextlib.suppress(nats.errors.Error, OSError):  # else redelivered after the ack wait
        await msg.nak(delay=delay)


def _deliveries(msg: Msg) -> int:
    """How often JetStream has delivered this message, this time included."""
    try:
        return max(1, int(msg.metadata.num_delivered or 1))
    except (AttributeError, TypeError, ValueError, IndexError, nats.errors.Error):
        return 1


def _utc(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


@dataclass(slots=True)
class _Opened:
    """A fetched message after the work that may run beside its batch's others."""

    msg: Msg
    now: int
    directory: Directory
    header: Header | None = None
    body: Body | None = None
    refused: BridgeError | None = None  # it cannot be opened or read: never delivered
    delivered: bool = False  # its delivered record exists: a redelivery, only receipted again
    first_post: bool | None = None  # marked as about to be posted: whether it was the first
    failed: Exception | None = None  # NATS failed meanwhile: it waits for a redelivery
    attachments: tuple[OpenedAttachment, ...] = ()  # their chunks are checked when settled

    @property
    def for_sink(self) -> bool:
        """Whether settling it offers it to the sink (then it must wait for its turn)."""
        return (
            self.refused is None
            and self.failed is None
            and not self.delivered
            and not isinstance(self.body, (Receipt, DeletionConfirmed))
        )


async def _keep_waiting_alive(waiting: list[Msg], interval: float) -> None:
    """Touch the messages of a batch that wait for their turn, every `interval` seconds."""
    while True:
        await pause(interval)
        for msg in list(waiting):
            await touch(msg)


class Inbound:
    """Consumes `inbox-<agency>` and drives each message to a sink, a fold, or termination."""

    def __init__(
        self,
        *,
        keyring: Keyring,
        directory: Callable[[], Directory],
        store: Store,
        js: JetStreamContext,
        sub: JetStreamContext.PullSubscription,
        limits: Limits,
        publish_timeout: float,
        clock: Callable[[], float],
        fetch_timeout: float = 5.0,
        revocations: Revocations | None = None,
        reporter: Reporter | None = None,
        keepalive_interval: float = 10.0,
        marks_posts: bool = False,
        chunks: ChunkStore | None = None,
    ) -> None:
        """`marks_posts`: record each message as about to be posted (`first_post`) while its
        batch is opened, for a webhook sink, rather than one by one before each post. `chunks`
        reads the attachments of inbound messages."""
        self._keepalive_interval = keepalive_interval
        self._marks_posts = marks_posts
        self._chunks = chunks
        self._revocations = revocations
        self._reporter = reporter
        self._keyring = keyring
        self._directory = directory
        self._store = store
        self._js = js
        self._sub = sub
        self._limits = limits
        self._publish_timeout = publish_timeout
        self._clock = clock
        self._fetch_timeout = fetch_timeout
        self.delivered = 0
        self.rejected = 0

    def __repr__(self) -> str:
        return (
            f"Inbound(agency={self._keyring.agency!r}, delivered={self.delivered}, "
            f"rejected={self.rejected})"
        )

    async def run(self, sink: Sink, capacity: Callable[[], Awaitable[int]]) -> None:
        """Fetch and handle messages forever; `capacity()` says how many to take next."""
        fetcher = Fetcher(self._sub, what="inbound", wait=self._fetch_timeout)
        while True:
            msgs = await fetcher.fetch(await capacity())
            if msgs:
                await self._handle_batch(msgs, sink)

    async def _handle_batch(self, msgs: list[Msg], sink: Sink) -> None:
        """Open the batch concurrently, then settle it: what goes to the sink one by one, in
        order; the rest (receipts, confirmations, refusals, repeats) beside it, concurrently."""
        opened = await asyncio.gather(*(self._open(msg) for msg in msgs))
        waiting = [one.msg for one in opened if one.for_sink]
        async with asyncio.TaskGroup() as group:
            for one in opened:
                if not one.for_sink:
                    group.create_task(self._settle_or_retry(one, sink))
            beat = group.create_task(_keep_waiting_alive(waiting, self._keepalive_interval))
            try:
                for one in opened:
                    if one.for_sink:
                        waiting.remove(one.msg)
                        await self._settle_or_retry(one, sink)
                        raise_if_cancelling()
            finally:
                beat.cancel()

    async def _settle_or_retry(self, opened: _Opened, sink: Sink) -> None:
        # `except*`: a sink works in task groups, whose failures come as ExceptionGroups.
        # Anything else is a bug: it ends the adapter's background work, which makes the adapter
        # exit non-zero (see `Adapter.wait`) so that a supervisor restarts it.
        try:
            await self._settle(opened, sink)
        except* (BridgeError, nats.errors.Error, OSError) as failed:
            # Left for a later redelivery. If the local system already took the message and it
            # was not recorded, the redelivery is marked as a possible repeat.
            log.warning("inbound: a message waits for a retry (%s)", reasons_of(failed))
            await _nak(opened.msg, _RETRY_DELAY)

    async def handle(self, msg: Msg, sink: Sink) -> None:
        """Open and settle one message (what a batch does for each of its messages)."""
        await self._settle(await self._open(msg), sink)

    async def _open(self, msg: Msg) -> _Opened:
        """The part of handling a message that does not depend on the others of its batch.

        Never raises for the message's own fault or for NATS: a refusal or a failure is kept in
        the result, to be settled in its turn.
        """
        opened = _Opened(msg, int(self._clock()), self._directory())
        try:
            # open_envelope() verifies before it decrypts: one signature check per message.
            plain = await asyncio.to_thread(
                open_envelope,
                msg.data,
                self._keyring,
                opened.directory,
                now=opened.now,
                limits=self._limits,
            )
            header = plain.envelope.header
            opened.body = decode_body(header.type, plain.plaintext)
            opened.header = header
            opened.attachments = plain.attachments
        except BridgeError as exc:
            opened.refused = exc
            return opened
        del plain
        if isinstance(opened.body, (Receipt, DeletionConfirmed)):
            return opened
        try:
            opened.delivered = await self._store.was_delivered(header.id, header.sender)
            if self._marks_posts and not opened.delivered:
                now = opened.now
                ttl = max(60, header.exp - now) + RECORD_GRACE_SECONDS
                opened.first_post = await self._store.mark_posted(
                    header.id, header.sender, now, ttl
                )
        except (BridgeError, nats.errors.Error, OSError) as exc:
            opened.failed = exc
        return opened

    async def _settle(self, opened: _Opened, sink: Sink) -> None:
        msg, now, directory = opened.msg, opened.now, opened.directory
        if opened.refused is not None:
            await self._refuse(msg, opened.refused, directory, now)
            return
        if opened.failed is not None:
            raise opened.failed
        header, body, attachments = opened.header, opened.body, opened.attachments
        assert header is not None
        assert body is not None
        attempt = _deliveries(msg)
        if attempt > 1 and self._reporter is not None:
            await self._reporter.redelivered(header.id, header.sender, header.type, attempt)
        if isinstance(body, Receipt):
            await self._fold_receipt(header, body, now)
            await msg.ack()
            if self._reporter is not None:  # a receipt ends here: taken by this adapter
                await self._reporter.delivered(header.id, header.sender, header.type)
            return
        if isinstance(body, DeletionConfirmed):
            if self._revocations is not None:
                await self._revocations.fold_confirmation(header.sender, body, now)
            await msg.ack()
            return
        if isinstance(body, ConsentRevoked):
            # Kept before the local system sees it, so its confirmation can always be sent.
            await self._store.note_revocation(note_of(header.sender, header.id, body, now))
        if opened.delivered:
            log.info("inbound message %s was delivered before; acknowledging", header.id)
            await self._receipt(header, _delivered(attachments), directory, now)
            await msg.ack()
            return
        if attachments:
            flaw = await self._check_attachments(msg, header, attachments)
            if flaw is not None:
                await self._refuse(msg, flaw, directory, now)
                return
        item = InboxItem(
            message_id=header.id,
            type=header.type,  # type: ignore[arg-type]  # receipts were handled above
            sender=header.sender,
            consent=header.consent,
            purpose=header.purpose,
            categories=list(header.categories),
            issued_at=_utc(header.iat),
            expires_at=_utc(header.exp),
            reply_to=header.reply_to,
            body=body,
            attachments=[describe(a) for a in attachments],
        )
        await sink.offer(
            Incoming(item, header, msg, first_post=opened.first_post, attachments=attachments)
        )

    async def _check_attachments(
        self, msg: Msg, header: Header, attachments: tuple[OpenedAttachment, ...]
    ) -> AttachmentInvalid | None:
        """Read and check every chunk (the message kept alive meanwhile); the first flaw."""
        flaw: AttachmentInvalid | None = None
        try:
            async with kept_alive(msg, self._keepalive_interval):
                await verify_all(self._chunk_store(), header.sender, header.id, attachments)
        except* AttachmentInvalid as group:
            first = group.exceptions[0]
            assert isinstance(first, AttachmentInvalid)
            flaw = first
        return flaw

    def _chunk_store(self) -> ChunkStore:
        if self._chunks is None:
            raise AttachmentInvalid(
                "this adapter cannot read attachments", reason="attachment.unsupported"
            )
        return self._chunks

    async def _refuse(self, msg: Msg, exc: BridgeError, directory: Directory, now: int) -> None:
        """Never deliver `msg`; if its signed header verifies, tell the sender why.

        Only on this rare path is the envelope verified on its own, to tell an envelope that
        is not authentic (dropped silently) from one that is but cannot be opened or read.
        """
        self.rejected += 1
        try:
            envelope = await asyncio.to_thread(
                verify, msg.data, directory, now=now, limits=self._limits
            )
        except BridgeError as unverified:
            log.warning("inbound envelope refused, not delivered [%s]", unverified.reason)
            await msg.term()
            return
        header = envelope.header
        log.warning(
            "inbound message %s from %s refused, not delivered [%s]",
            header.id,
            header.sender,
            exc.reason,
        )
        if header.type not in ("receipt", "deletion-confirmed"):  # answers get no answer
            await self._receipt(header, Rejected(reason=exc.reason), directory, now)
        if self._reporter is not None:
            await self._reporter.refused(header.id, header.sender, header.type, exc.reason)
        await msg.term()

    async def first_post(self, incoming: Incoming) -> bool:
        """Before a webhook post: record it durably; False if it was posted before.

        JetStream's delivery count says whether NATS handed the message out before, but a
        nats-server that crashed before writing a delivery down can hand it out again as a first
        one; this record, acknowledged only once on disk, cannot be lost that way.
        """
        now = int(self._clock())
        ttl = max(60, incoming.header.exp - now) + RECORD_GRACE_SECONDS
        return await self._store.mark_posted(incoming.message_id, incoming.header.sender, now, ttl)

    async def complete(self, incoming: Incoming) -> None:
        """The local system took `incoming`: record it, send the receipt, acknowledge NATS.

        In this order, so that a crash anywhere leads to a redelivery that is acknowledged (and
        receipted again, deduplicated) without reaching the local system a second time.
        """
        now = int(self._clock())
        header = incoming.header
        ttl = max(60, header.exp - now) + RECORD_GRACE_SECONDS
        await self._store.mark_delivered(header.id, header.sender, now, ttl)
        await self._receipt(header, _delivered(incoming.attachments), self._directory(), now)
        try:
            await incoming.msg.ack()
        except (nats.errors.Error, OSError) as exc:
            # Recorded and receipted: the redelivery finds the record and is only acknowledged.
            log.warning("inbound message %s: NATS ack lost (%s)", header.id, type(exc).__name__)
        self.delivered += 1
        if self._reporter is not None:
            await self._reporter.delivered(header.id, header.sender, header.type)
        log.info("inbound message %s delivered to the local system", header.id)

    async def expire_pull(self, incoming: Incoming) -> None:
        """`incoming` waited in the pull inbox past its type's `pull_wait` and was removed:
        tell the sender (a `rejected` receipt the broker reports as `expired`), then take the
        copy off the transport. In this order: a crash between the two leads to a redelivery
        that expires again (its deadline is recorded), and the receipt is deduplicated."""
        now = int(self._clock())
        header = incoming.header
        await self._receipt(header, Rejected(reason=PULL_EXPIRED_REASON), self._directory(), now)
        await incoming.msg.ack()
        if self._reporter is not None:
            await self._reporter.refused(header.id, header.sender, header.type, PULL_EXPIRED_REASON)

    async def _receipt(
        self, header: Header, disposition: Disposition, directory: Directory, now: int
    ) -> None:
        try:
            await send_receipt(
                header,
                disposition,
                keyring=self._keyring,
                directory=directory,
                js=self._js,
                now=now,
                limits=self._limits,
                wait=self._publish_timeout,
            )
        except TransportError:
            raise
        except BridgeError as exc:
            # The sender's keys may have gone from the directory; the receipt cannot be sealed,
            # and retrying will not help.
            log.warning("cannot send a receipt for %s [%s]", header.id, exc.reason)

    async def _fold_receipt(self, header: Header, receipt: Receipt, now: int) -> None:
        original = receipt.in_reply_to
        if header.reply_to != original:
            log.warning("receipt %s names two different messages; ignored", header.id)
            return
        found = await self._store.get_message_revision(original)
        if found is None and await self._is_notice_receipt(header, original):
            # A recipient's system took our consent-revoked notice; its answer that counts is
            # the deletion confirmation, which the consent shows.
            log.info("receipt from %s for consent notice %s", header.sender, original)
            return
        if found is None or header.sender not in found[0].recipients:
            log.warning("receipt %s is for no message sent to its sender; ignored", header.id)
            return
        record = found[0]
        at = _receipt_time(receipt, record, header.sender, now)
        disposition = receipt.disposition
        if isinstance(disposition, Rejected) and disposition.reason == PULL_EXPIRED_REASON:
            # Not refused: it waited in the recipient's pull inbox past its limit and was
            # removed. The broker reports the same `expired` event, which folds into this one.
            expired = Event(
                state="expired", at=now, recipient=header.sender, reason=disposition.reason
            )
            await self._store.add_events(original, [expired], now, known=found)
            log.info("receipt from %s: message %s expired unread", header.sender, original)
            return
        if isinstance(disposition, Rejected):
            events = [
                Event(state="rejected", at=at, recipient=header.sender, reason=disposition.reason)
            ]
        else:
            events = [
                Event(state="delivered", at=at, recipient=header.sender),
                Event(state="receipted", at=now, recipient=header.sender),
            ]
        folded = await self._store.add_receipt(original, header.sender, events, now, known=found)
        if folded is ReceiptFold.CONTRADICTS:
            log.warning(
                "receipt %s from %s contradicts its earlier receipt for message %s; refused "
                "[receipt.contradicts]",
                header.id,
                header.sender,
                original,
            )
            return
        log.info("receipt from %s folded into message %s", header.sender, original)
        if record.attachments and self._chunks is not None:
            # Delivered or refused: this recipient's copy of the chunks has served its purpose.
            await self._chunks.discard(original, header.sender)
        if self._revocations is not None and not isinstance(disposition, Rejected):
            await self._revocations.received_after_withdrawal(
                header.consent, original, header.sender
            )
        if self._reporter is not None and not isinstance(disposition, Rejected):
            await self._reporter.receipted(original, header.sender, record.type)

    async def _is_notice_receipt(self, header: Header, original: str) -> bool:
        if self._revocations is None or header.consent == NO_CONSENT:
            return False
        return await self._revocations.is_notice_to(header.consent, header.sender, original)


def _delivered(attachments: tuple[OpenedAttachment, ...]) -> Delivered:
    """A delivered receipt naming the digest of each attachment received."""
    return Delivered(attachments=[a.digest.hex() for a in attachments])


def _receipt_time(receipt: Receipt, record: MessageRecord, recipient: str, now: int) -> int:
    """When the recipient says it received the message, kept within what can be true.

    The time comes from the recipient's clock. It cannot be before the message was routed to
    it (or, without that event, before the message existed) nor after our own clock, so a
    backdated or future claim is recorded at the nearest bound, and logged.
    """
    claimed = int(receipt.received_at.timestamp())
    routed = [e.at for e in record.events if e.state == "routed" and e.recipient == recipient]
    earliest = max([record.created_at, *routed])
    at = min(max(claimed, earliest), max(now, earliest))
    if at != claimed:
        log.warning(
            "receipt time from %s for message %s is out of bounds by %ds; recorded as %d "
            "[receipt.time_bounded]",
            recipient,
            record.message_id,
            claimed - at,
            at,
        )
    return at
