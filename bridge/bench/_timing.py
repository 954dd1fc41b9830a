"""How the benchmarks divide their time: rounds of short interleaved slices, median of rounds.

A shared virtual machine speeds up and slows down by tens of percent within a second, and a
disk's sync latency drifts too. So no measurement runs in one block: every round gives each
measurement the same share of time in short slices that take turns, spread over the whole
round, so that all of them see the same mix of fast and slow moments and the ratios between
them hold even when the absolute rates do not. A measurement's rate is the median of its
rounds' rates (calls divided by seconds in that round).

The schedule only says whose turn it is; timing a slice is the caller's, because a crypto
primitive is a plain call and a NATS publish is awaited.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

__all__ = ["Progress", "Schedule", "Tally", "Timed", "no_progress"]

Progress = Callable[[str], None]
"""Hears of each phase of a run (`"round 2/3"`); the command line prints it to stderr."""

_MAX_WARM_UP = 0.2


def no_progress(message: str) -> None:
    pass


@dataclass
class Tally:
    """Calls and seconds of one measurement, per round."""

    calls: list[int] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)

    def start_round(self) -> None:
        self.calls.append(0)
        self.elapsed.append(0.0)

    def add(self, calls: int, elapsed: float) -> None:
        """Count one slice towards the current round."""
        self.calls[-1] += calls
        self.elapsed[-1] += elapsed

    @property
    def rates(self) -> list[float]:
        """Calls per second in each round."""
        return [c / e for c, e in zip(self.calls, self.elapsed, strict=True)]

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


class Timed(Protocol):
    tally: Tally


_T = TypeVar("_T", bound=Timed)


@dataclass(frozen=True, slots=True)
class Schedule:
    """`seconds` per measurement over `rounds` rounds, in slices of about `slice_seconds`."""

    seconds: float
    rounds: int
    slice_seconds: float

    def __post_init__(self) -> None:
        for name in ("seconds", "slice_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number")
        if self.rounds < 1:
            raise ValueError("rounds must be at least 1")

    @property
    def slices(self) -> int:
        """Slices per measurement and round."""
        return max(1, round(self.seconds / self.rounds / self.slice_seconds))

    @property
    def slice_length(self) -> float:
        """Seconds of one slice: a round's share divided evenly, so no slice is left over."""
        return self.seconds / self.rounds / self.slices

    @property
    def warm_up(self) -> float:
        """Seconds each measurement runs untimed before the first round."""
        return min(_MAX_WARM_UP, self.seconds / 5)

    def turns(self, items: Sequence[_T], progress: Progress = no_progress) -> Iterator[_T]:
        """Whose slice is next: every item once per turn, `slices` turns per round.

        Starts a round on every item's tally (and tells `progress`) before its first slice;
        the caller times each slice it is given and adds it with `item.tally.add(...)`.
        """
        for index in range(self.rounds):
            progress(f"round {index + 1}/{self.rounds}")
            for item in items:
                item.tally.start_round()
            for _ in range(self.slices):
                yield from items
