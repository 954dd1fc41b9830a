"""Pull delivery: opened messages wait in memory until the local system acknowledges them.

Nothing decrypted is written anywhere: items live in this process only, each with its NATS
message kept alive by a periodic `in_progress()`. If the adapter stops, the items are gone from
here, NATS redelivers their messages after the ack wait, and they appear again. The number held
is bounded by `pull_max_pending`; the inbound loop fetches only as many as there is room for.

An item acknowledged with 204 is never offered again. JetStream may redeliver a message the
adapter still holds (after a nats-server restart, say): the redelivered copy replaces the held
one, since its delivery is the one the server now expects an ack for. Such a copy can arrive
while the local system's ack is being recorded, or just after (it was checked against the
delivered records before the ack wrote one); the inbox remembers the ids it completed recently
and acknowledges such late copies instead of listing them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from typing import Final

import nats.errors

from .._cancel import pause
from .api import InboxItem, InboxSummary
from .delivery import Complete, Incoming, touch

__all__ = ["PullInbox"]

log = logging.getLogger(__name__)

_MAX_FETCH = 16
_REMEMBERED: Final = 4096  # completed ids kept to recognise late copies; far above any race


class PullInbox:
    """The in-memory inbox of pull mode, and a `Sink`."""

    def __init__(self, max_pending: int, complete: Complete, *, keepalive_interval: float) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._max = max_pending
        self._complete = complete
        self._interval = keepalive_interval
        self._items: dict[str, Incoming] = {}
        # (message id, sender): ids are chosen by senders, so one id may come from two.
        self._completed: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._space = asyncio.Event()
        self._space.set()
        self._rounds = 0

    def __repr__(self) -> str:
        return f"PullInbox(pending={len(self._items)}, max_pending={self._max})"

    def statistics(self) -> dict[str, int]:
        return {
            "pending": len(self._items),
            "max_pending": self._max,
            "keepalive_rounds": self._rounds,
        }

    async def capacity(self) -> int:
        """Wait until there is room, then say how many messages to fetch."""
        while len(self._items) >= self._max:
            self._space.clear()
            await self._space.wait()
        return min(_MAX_FETCH, self._max - len(self._items))

    async def offer(self, incoming: Incoming) -> None:
        if (incoming.message_id, incoming.item.sender) in self._completed:
            log.info(
                "inbound message %s was acknowledged just now; not offered again",
                incoming.message_id,
            )
            await _ack_quietly(incoming)
            return
        held = self._items.get(incoming.message_id)
        if held is not None and held.item.sender != incoming.item.sender:
            # Another sender's message under the id of one held here (a co-recipient can copy
            # an id it has seen). The API names items by id, so this one waits in NATS until
            # the held one is acknowledged; it never replaces it.
            log.warning(
                "inbound message %s from %s waits: an item with its id from %s is held",
                incoming.message_id,
                incoming.item.sender,
                held.item.sender,
            )
            with contextlib.suppress(nats.errors.Error, OSError):  # else: after the ack wait
                await incoming.msg.nak(delay=self._interval)
            return
        # A redelivery of an item still held replaces its NATS message: the newer one is the
        # one the server expects an acknowledgement for.
        self._items[incoming.message_id] = incoming

    def list(self) -> list[InboxSummary]:
        return [
            InboxSummary(
                message_id=i.item.message_id,
                type=i.item.type,
                sender=i.item.sender,
                issued_at=i.item.issued_at,
                expires_at=i.item.expires_at,
                reply_to=i.item.reply_to,
            )
            for i in self._items.values()
        ]

    def get(self, message_id: str) -> InboxItem | None:
        incoming = self._items.get(message_id)
        return None if incoming is None else incoming.item

    async def ack(self, message_id: str) -> bool:
        """The local system took the item: complete it and forget it. False if not held."""
        incoming = self._items.get(message_id)
        if incoming is None:
            return False
        await self._complete(incoming)  # raises (and keeps the item) if NATS is unavailable
        done = (message_id, incoming.item.sender)
        self._completed[done] = None
        self._completed.move_to_end(done)
        if len(self._completed) > _REMEMBERED:
            self._completed.popitem(last=False)
        latest = self._items.pop(message_id, None)
        if latest is not None and latest is not incoming:
            await _ack_quietly(latest)  # a redelivered copy replaced it during the completion
        self._space.set()
        return True

    def drop(self, message_id: str) -> bool:
        """Forget a held item without completing it (its consent was withdrawn and the broker
        removed its NATS message); False if it is not held."""
        if self._items.pop(message_id, None) is None:
            return False
        self._space.set()
        return True

    async def keep_alive(self) -> None:
        """Run forever: keep every held message from being redelivered."""
        while True:
            await pause(self._interval)
            for incoming in list(self._items.values()):
                await touch(incoming.msg)
            self._rounds += 1


async def _ack_quietly(incoming: Incoming) -> None:
    """Acknowledge a copy of a message already recorded as delivered (and receipted).

    If the ack is lost, JetStream redelivers the copy later; the delivered record then makes
    the inbound loop acknowledge it without offering it.
    """
    with contextlib.suppress(nats.errors.Error, OSError):
        await incoming.msg.ack()
