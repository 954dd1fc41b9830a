"""The pull inbox's wait limit: an opened message waits for the local system only so long.

The signed policy gives each message type a `pull_wait`. When an item enters the pull inbox,
its limit is written down in the adapter's bucket (`Store.begin_pull`), once: a redelivery
after a restart finds the first record, so restarting the adapter never extends the wait.
The item may also not outlive its NATS copy, which stays unacknowledged in the inbox while it
is held and ends at the copy's own TTL (the type's `inbox_ttl`, cut to the message's expiry).

At its limit the item is removed from memory. If `pull_wait` ran out, the recipient's adapter
acknowledges the copy (it leaves the transport) and sends a `rejected` receipt with the reason
`retention.pull_expired`, which the broker reports to the sender as `expired` and records in
the audit trail. If the copy's own time ran out, the store removes it and the broker's expiry
check tells the sender, as for any copy that expired undelivered.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import nats.errors
from nats.aio.msg import Msg

from ..nats.subjects import HDR_TTL
from .delivery import Incoming
from .store import RECORD_GRACE_SECONDS, PullRecord, Store

__all__ = ["Deadline", "PullWait"]

log = logging.getLogger(__name__)

_MIN_RECORD_TTL: Final = 60


@dataclass(frozen=True, slots=True)
class Deadline:
    """When a held item must be gone, and whether its NATS copy ends then (not `pull_wait`)."""

    at: int
    by_copy: bool


class PullWait:
    """Sets each held item's deadline and carries out what happens at it."""

    def __init__(
        self,
        *,
        store: Store,
        limit: Callable[[str], int],
        expire: Callable[[Incoming], Awaitable[None]],
        clock: Callable[[], float],
    ) -> None:
        """`limit(type)` is the type's `pull_wait` in the current policy; `expire` tells the
        sender (a receipt) and acknowledges the copy."""
        self._store = store
        self._limit = limit
        self._expire = expire
        self._clock = clock

    def __repr__(self) -> str:
        return "PullWait()"

    async def start(self, incoming: Incoming) -> Deadline:
        """The item enters the pull inbox: its deadline (the first one, after a restart)."""
        now = int(self._clock())
        header = incoming.header
        first = PullRecord(offered_at=now, until=now + self._limit(header.type))
        record = await self._store.begin_pull(
            header.id, header.sender, first, self._record_ttl(incoming, now)
        )
        copy_end = _copy_end(incoming.msg, header.exp)
        if copy_end <= record.until:
            return Deadline(copy_end, by_copy=True)
        return Deadline(record.until, by_copy=False)

    async def expire(self, incoming: Incoming, deadline: Deadline) -> None:
        """The item is past its deadline (already out of memory): tell whoever must know."""
        header = incoming.header
        if not deadline.by_copy:
            await self._expire(incoming)  # the receipt first: the sender learns why
        await self.close(incoming)
        log.warning(
            "inbound message %s from %s removed from the pull inbox unread by the local "
            "system [%s]",
            header.id,
            header.sender,
            "retention.expired" if deadline.by_copy else "retention.pull_expired",
        )

    async def close(self, incoming: Incoming) -> None:
        """The item left the pull inbox (taken by the local system, or expired)."""
        now = int(self._clock())
        header = incoming.header
        await self._store.close_pull(header.id, header.sender, now, self._record_ttl(incoming, now))

    def _record_ttl(self, incoming: Incoming, now: int) -> int:
        # As long as the message can exist, and a grace after: a late redelivery still finds it.
        return max(_MIN_RECORD_TTL, incoming.header.exp - now) + RECORD_GRACE_SECONDS


def _copy_end(msg: Msg, expires_at: int) -> int:
    """When the inbox copy ends: stored time plus its TTL, never after the message's expiry."""
    try:
        stored = int(msg.metadata.timestamp.timestamp())
        ttl = int((msg.headers or {}).get(HDR_TTL, "").removesuffix("s"))
    except (AttributeError, TypeError, ValueError, IndexError, nats.errors.Error):
        return expires_at
    return min(expires_at, stored + ttl) if ttl > 0 else expires_at
