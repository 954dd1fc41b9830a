"""Growing pauses between retries: for reconnects and for every fetch or retry loop.

A retry that runs forever at a fixed pace either hammers a server that is struggling to come
back (too short) or leaves a process idle long after the server is back (too long). Every
reconnect and every fetch retry in bridge therefore waits on a `Backoff`: 0.1 s at first,
doubling with each failure in a row up to 10 s, back to the start after a success. Each pause
is jittered (between half of it and all of it), so that the processes a restarted nats-server
finds waiting do not all knock at the same instant.

The cap is 10 s, not the 30 s or more a public service with thousands of clients would pick: a
federation has tens of bridge processes, and a restarted nats-server is usually back within
seconds, so what matters is that delivery resumes soon after it is back.
"""

from __future__ import annotations

import random
from typing import Final

__all__ = ["BACKOFF_INITIAL", "BACKOFF_MAXIMUM", "Backoff"]

BACKOFF_INITIAL: Final = 0.1
BACKOFF_MAXIMUM: Final = 10.0
_JITTER: Final = 0.5  # the share of each pause that is random


class Backoff:
    """Pauses that double with each failure in a row, capped and jittered; `reset()` on success.

    `next()` is the pause before the next try: `min(maximum, initial * 2**failures)`, less a
    random share of up to `jitter` of it. `rng` is injectable for tests.
    """

    def __init__(
        self,
        initial: float = BACKOFF_INITIAL,
        maximum: float = BACKOFF_MAXIMUM,
        *,
        jitter: float = _JITTER,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < initial <= maximum:
            raise ValueError("want 0 < initial <= maximum")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be at least 0 and below 1")
        self._initial = initial
        self._maximum = maximum
        self._jitter = jitter
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self.failures = 0  # in a row, since the last success

    def __repr__(self) -> str:
        return f"Backoff({self._initial:g}..{self._maximum:g}s, failures={self.failures})"

    def next(self) -> float:
        """Count one more failure and return the pause before the next try."""
        ceiling = min(self._maximum, self._initial * 2.0 ** min(self.failures, 64))
        self.failures += 1
        return ceiling * (1 - self._jitter * self._rng.random())

    def reset(self) -> None:
        """A try succeeded: the next failure waits `initial` again."""
        self.failures = 0
