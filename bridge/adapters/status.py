"""Status folding: the broker's events about this agency's messages, into their KV records.

The broker publishes `routed`, `rejected` and `expired` events to `bridge.status.<sender>.<id>`,
and `expiring` warnings and `withdrawn` notes about messages waiting in this agency's own inbox
(a withdrawn one is dropped from the pull inbox before the local system takes it); the
adapter consumes its `status-<agency>` consumer and folds the events into `msg.<id>` with a
compare-and-set, so several adapter instances can share the consumer and the bucket; the events
of one fetched batch about the same message are folded in one write, and the batch's messages
concurrently. An event is acknowledged only after it was folded (or found to be for no record of
ours).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import nats.errors
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from ..errors import BridgeError
from ..nats.transport import Fetcher
from ..wire import DeliveryState, MessageType, StatusEventInvalid, decode_status_event
from .store import Event, Store

__all__ = ["StatusFolder"]

log = logging.getLogger(__name__)

_BATCH: Final = 32
_ENDING: Final = frozenset({"rejected", "expired", "withdrawn"})
_RETRY_DELAY: Final = 2.0


class StatusFolder:
    def __init__(
        self,
        *,
        agency: str,
        store: Store,
        sub: JetStreamContext.PullSubscription,
        clock: Callable[[], float],
        fetch_timeout: float = 5.0,
    ) -> None:
        self._agency = agency
        self._store = store
        self._sub = sub
        self._clock = clock
        self._fetch_timeout = fetch_timeout
        self.folded = 0
        self.withdrawn = 0  # messages for us withdrawn before our local system took them
        # Set by the adapter: removes a sent message's attachment chunks (of one recipient).
        self.discard_chunks: Callable[[str, str | None], Awaitable[None]] | None = None
        # Set by the adapter in pull mode: drops a held item whose consent was withdrawn.
        self.drop_held: Callable[[str], bool] | None = None
        self.expiring = 0  # warnings about messages waiting undelivered in our inbox

    def __repr__(self) -> str:
        return f"StatusFolder(agency={self._agency!r}, folded={self.folded})"

    async def run(self) -> None:
        fetcher = Fetcher(self._sub, what="status", wait=self._fetch_timeout)
        while True:
            msgs = await fetcher.fetch(_BATCH)
            # Events about the same message (`routed` for each recipient, say) usually come
            # together: fold them in one compare-and-set, in the order they came.
            folds: dict[str, list[_Fold]] = {}
            for msg in msgs:
                try:
                    fold = await self._screen(msg)
                except (BridgeError, nats.errors.Error, OSError) as exc:
                    log.warning("status: an event waits for a retry (%s)", _describe(exc))
                    await _nak(msg)
                    continue
                if fold is not None:
                    folds.setdefault(fold.message_id, []).append(fold)
            # Different messages' records are independent: fold them concurrently.
            async with asyncio.TaskGroup() as folding:
                for message_id, group in folds.items():
                    folding.create_task(self._fold(message_id, group))

    async def _screen(self, msg: Msg) -> _Fold | None:
        """Settle an event that needs no fold; return the one that does."""
        try:
            event = decode_status_event(msg.data)
        except StatusEventInvalid as exc:
            log.warning("status: malformed event dropped [%s]", exc.reason)
            await msg.term()
            return None
        if event.state is DeliveryState.EXPIRING and event.recipient == self._agency:
            # A message for us still waits in our inbox and will be removed undelivered: the
            # local system is not taking deliveries (or the webhook keeps failing).
            self.expiring += 1
            log.warning(
                "status: message %s from %s waits undelivered and expires at %s",
                event.message_id,
                event.sender,
                event.expires_at.isoformat() if event.expires_at else "-",
            )
            await msg.ack()
            return None
        if (
            event.state is DeliveryState.WITHDRAWN
            and event.recipient == self._agency
            and event.sender != self._agency
        ):
            # A message for us whose consent was withdrawn before our local system took it:
            # the broker removed it from our inbox; it must not be handed over from memory.
            dropped = self.drop_held(event.message_id) if self.drop_held else False
            self.withdrawn += 1
            log.info(
                "status: message %s from %s withdrawn before delivery%s",
                event.message_id,
                event.sender,
                " (dropped from the pull inbox)" if dropped else "",
            )
            await msg.ack()
            return None
        if event.sender != self._agency:
            log.warning("status: event about another agency's message dropped")
            await msg.term()
            return None
        fold = _Fold(
            message_id=event.message_id,
            event=Event(
                state=event.state.value,
                at=int(event.at.timestamp()),
                recipient=event.recipient,
                reason=event.reason,
                policy=event.policy,
            ),
            msg=msg,
        )
        if event.message_type is MessageType.RECEIPT:
            # This adapter keeps no record of the receipts it sends: nothing to read or fold.
            _no_record(fold)
            await msg.ack()
            return None
        return fold

    async def _fold(self, message_id: str, group: list[_Fold]) -> None:
        try:
            found = await self._store.add_events(
                message_id, [fold.event for fold in group], int(self._clock())
            )
        except (BridgeError, nats.errors.Error, OSError) as exc:
            log.warning("status: %d event(s) wait for a retry (%s)", len(group), _describe(exc))
            for fold in group:
                await _nak(fold.msg)
            return
        for fold in group:
            if fold.event.state in _ENDING and self.discard_chunks is not None:
                # Refused, expired or withdrawn: no recipient will read these chunks.
                await self.discard_chunks(message_id, fold.event.recipient)
        for fold in group:
            if found:
                self.folded += 1
            else:
                _no_record(fold)
            try:
                await fold.msg.ack()
            except (nats.errors.Error, OSError) as exc:  # redelivered; folding it is idempotent
                log.warning("status: an ack was lost (%s)", _describe(exc))


@dataclass(frozen=True)
class _Fold:
    """An event to fold into the record of `message_id`, and the NATS message it came in."""

    message_id: str
    event: Event
    msg: Msg


def _no_record(fold: _Fold) -> None:
    if fold.event.state == "rejected":
        # Typically a receipt this adapter sent: it has no timeline, but a refused receipt
        # means the sender never learns of the delivery, which operators should see.
        log.warning(
            "status: message %s (no record here) was rejected [%s]",
            fold.message_id,
            fold.event.reason,
        )
    else:
        log.info("status: event for message %s, which has no record here", fold.message_id)


async def _nak(msg: Msg) -> None:
    with contextlib.suppress(nats.errors.Error, OSError):  # else: the ack wait redelivers it
        await msg.nak(delay=_RETRY_DELAY)


def _describe(exc: Exception) -> str:
    return exc.reason if isinstance(exc, BridgeError) else type(exc).__name__
