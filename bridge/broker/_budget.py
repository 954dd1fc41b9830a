"""How many rejections each sender may cause: a token bucket per sender.

Every rejected submission costs the federation a status event and an audit record, and the
audit trail is shared by all agencies and refuses new records when full (the broker then holds
every submission). The submit stream's quota bounds what a sender has waiting, not how fast the
broker takes it, so without this a sender that submits what must be rejected could fill the
audit trail for everybody. While a sender's budget is spent, its submissions wait in its own
submit stream (the broker hands them back with a delay); once its stream is full its adapter
answers 429. Nothing is lost, and the other senders do not notice.

Each broker counts for itself, so with several brokers a sender may cause that many times the
rejections. An adapter checks what the broker checks before it submits, so a well-behaved
sender is rarely rejected at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RejectionBudget"]


@dataclass
class _Bucket:
    tokens: float
    at: float


class RejectionBudget:
    def __init__(
        self, per_minute: int, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def _bucket(self, sender: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(sender)
        if bucket is None:
            bucket = self._buckets[sender] = _Bucket(self._burst, now)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) * self._rate)
            bucket.at = now
        return bucket

    def wait(self, sender: str) -> float:
        """Seconds until `sender` may cause a rejection again; 0 while it may now."""
        bucket = self._bucket(sender)
        if bucket.tokens >= 1.0:
            return 0.0
        return (1.0 - bucket.tokens) / self._rate

    def spend(self, sender: str) -> None:
        """One rejection caused by `sender` (concurrent ones may take it below zero)."""
        self._bucket(sender).tokens -= 1.0
