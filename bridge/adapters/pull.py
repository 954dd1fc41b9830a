"""Pull delivery: opened messages wait in memory until the local system acknowledges them.

Nothing decrypted is written anywhere: items live in this process only, each with its NATS
message kept alive by a periodic `in_progress()`. If the adapter stops, the items are gone from
here, NATS redelivers their messages after the ack wait, and they appear again. The number held
is bounded by `pull_max_pending`; the inbound loop fetches only as many as there is room for.

An item waits at most its type's `pull_wait` in the signed policy, and never longer than its
NATS copy (`bridge.adapters.pullwait`): at its deadline it is removed from memory, whatever
the local system does, and the sender is told.

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
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

import nats.errors

from .._cancel import pause, raise_if_cancelling
from ..errors import BridgeError, reasons_of
from .api import InboxItem, InboxSummary
from .delivery import Complete, Incoming, touch
from .pullwait import Deadline, PullWait

__all__ = ["PullInbox"]

log = logging.getLogger(__name__)

_MAX_FETCH = 16
_REMEMBERED: Final = 4096  # completed ids kept to recognise late copies; far above any race


class PullInbox:
    """The in-memory inbox of pull mode, and a `Sink`."""

    def __init__(
        self,
        max_pending: int,
        complete: Complete,
        *,
        keepalive_interval: float,
        wait: PullWait | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`wait` enforces the policy's `pull_wait` (the adapter always gives one; without it
        items wait for their NATS copy's end only, as some tests need)."""
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self._max = max_pending
        self._complete = complete
        self._interval = keepalive_interval
        self._wait = wait
        self._clock = clock
        self._items: dict[str, Incoming] = {}
        self._deadlines: dict[str, Deadline] = {}
        self._closing: list[Incoming] = []  # dropped items whose pull record is still open
        self.expired = 0
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
            "expired": self.expired,
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
        if held is None and self._wait is not None:
            # Raises (and the message waits in NATS for a retry) if the record cannot be kept.
            self._deadlines[incoming.message_id] = await self._wait.start(incoming)
        # A redelivery of an item still held replaces its NATS message: the newer one is the
        # one the server expects an acknowledgement for.
        self._items[incoming.message_id] = incoming

    def _live(self, message_id: str) -> bool:
        deadline = self._deadlines.get(message_id)
        return deadline is None or self._clock() < deadline.at

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
            if self._live(i.message_id)
        ]

    def get(self, message_id: str) -> InboxItem | None:
        incoming = self._items.get(message_id)
        return None if incoming is None or not self._live(message_id) else incoming.item

    def held(self, message_id: str) -> Incoming | None:
        """The held message itself (with its attachments' keys), or None."""
        return self._items.get(message_id)

    async def ack(self, message_id: str) -> bool:
        """The local system took the item: complete it and forget it. False if not held."""
        incoming = self._items.get(message_id)
        if incoming is None or not self._live(message_id):
            return False
        await self._complete(incoming)  # raises (and keeps the item) if NATS is unavailable
        done = (message_id, incoming.item.sender)
        self._completed[done] = None
        self._completed.move_to_end(done)
        if len(self._completed) > _REMEMBERED:
            self._completed.popitem(last=False)
        latest = self._items.pop(message_id, None)
        self._deadlines.pop(message_id, None)
        if latest is not None and latest is not incoming:
            await _ack_quietly(latest)  # a redelivered copy replaced it during the completion
        self._space.set()
        if self._wait is not None:
            await self._close_quietly(incoming)
        return True

    def drop(self, message_id: str) -> bool:
        """Forget a held item without completing it (its consent was withdrawn and the broker
        removed its NATS message); False if it is not held."""
        incoming = self._items.pop(message_id, None)
        if incoming is None:
            return False
        self._deadlines.pop(message_id, None)
        if self._wait is not None:
            self._closing.append(incoming)
        self._space.set()
        return True

    async def keep_alive(self) -> None:
        """Run forever: remove items past their deadline, keep the others' NATS messages from
        being redelivered."""
        while True:
            await pause(self._interval)
            await self.sweep()
            for incoming in list(self._items.values()):
                await touch(incoming.msg)
            self._rounds += 1

    async def sweep(self) -> None:
        """Remove every item past its deadline and tell the sender; close finished records.

        An item is out of memory before anyone is told. If telling fails, its NATS message
        (neither acknowledged nor kept alive any more) comes back after the ack wait, finds
        its first record with the deadline passed, and is removed again on the next round.
        """
        if self._wait is None:
            return
        now = self._clock()
        for message_id, deadline in list(self._deadlines.items()):
            if deadline.at > now:
                continue
            del self._deadlines[message_id]
            incoming = self._items.pop(message_id, None)
            if incoming is None:
                continue
            self._space.set()
            self.expired += 1
            try:
                await self._wait.expire(incoming, deadline)
            except (BridgeError, nats.errors.Error, OSError) as exc:
                log.warning(
                    "pull inbox: message %s expired, the sender not yet told (%s); retried "
                    "after the ack wait",
                    message_id,
                    reasons_of(exc),
                )
            raise_if_cancelling()  # a NATS request may have swallowed a cancellation
        closing, self._closing = self._closing, []
        for incoming in closing:
            await self._close_quietly(incoming)
            raise_if_cancelling()

    async def _close_quietly(self, incoming: Incoming) -> None:
        """Close an item's pull record; a record left open is only logged (and would be named
        by `bridge retention check` once past its deadline)."""
        assert self._wait is not None
        try:
            await self._wait.close(incoming)
        except (BridgeError, nats.errors.Error, OSError) as exc:
            log.warning(
                "pull inbox: the record of message %s stays open (%s)",
                incoming.message_id,
                reasons_of(exc),
            )


async def _ack_quietly(incoming: Incoming) -> None:
    """Acknowledge a copy of a message already recorded as delivered (and receipted).

    If the ack is lost, JetStream redelivers the copy later; the delivered record then makes
    the inbound loop acknowledge it without offering it.
    """
    with contextlib.suppress(nats.errors.Error, OSError):
        await incoming.msg.ack()
