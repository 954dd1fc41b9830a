"""What a broker counts: decisions and retries since it was created (metadata only)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["BrokerStatistics", "Counters"]


@dataclass(frozen=True, slots=True)
class BrokerStatistics:
    """Counters since the broker was created.

    `routed`: submissions stored in every recipient's inbox. `rejected`: submissions refused,
    by reason code. `redelivered`: deliveries of a submission that had been delivered before.
    `deferred`: submissions handed back for a later retry after a transport failure.
    `terminated`: submissions without a valid message id (they cannot be reported).
    `internal_errors`: unexpected failures while handling a submission.
    `withdrawn`: inbox copies removed because their consent was withdrawn.
    `over_budget`: submissions handed back because their sender's rejection budget was spent.
    `directory_serial`, `policy_serial`, `policy_hash`: the versions in use now.
    """

    routed: int
    rejected: Mapping[str, int]
    redelivered: int
    deferred: int
    terminated: int
    internal_errors: int
    directory_serial: int
    policy_serial: int
    policy_hash: str
    withdrawn: int = 0
    over_budget: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass
class Counters:
    routed: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    redelivered: int = 0
    deferred: int = 0
    terminated: int = 0
    internal_errors: int = 0
    withdrawn: int = 0
    over_budget: int = 0
