"""The policy as a running component holds it: loaded at start, reloaded when its file changes.

A new file is taken only if it verifies against the pinned trust anchor, parses, belongs to the
federation of the key directory, and its serial is not below the highest this component has
accepted (kept in its serial state file, so a restart cannot be rolled back either). A bad new
file is logged with its reason and the last good policy kept: an operator's mistake must not
stop routing, and whoever can write the file can at most keep a component on a policy it
already trusted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .._watched import WatchedFile
from ..crypto import PublicKeyRecord
from ..errors import SignedPolicyError
from ._signed import Policy, PolicySerialState, load_policy_file

__all__ = ["PolicyHolder"]


class PolicyHolder(WatchedFile[Policy]):
    """The current verified `Policy`, and the means to reload it."""

    what = "policy"
    log = logging.getLogger("bridge.policy")

    def __init__(
        self,
        path: Path,
        anchor: PublicKeyRecord,
        state: PolicySerialState,
        *,
        federation: Callable[[], str],
        max_lifetime: int | None = None,
    ) -> None:
        """Load the policy now; raises `SignedPolicyError` if it is not acceptable.

        `federation()` says which federation the policy must be for (the key directory's);
        `max_lifetime` is the envelope maximum (`[limits] max_lifetime`), which no type's
        `max_lifetime` may exceed: a limit the envelope check would never let apply misleads.
        """
        self._max_lifetime = max_lifetime
        self._anchor = anchor
        self._state = state
        self._federation = federation
        super().__init__(path)

    def _load(self) -> Policy:
        policy = load_policy_file(self._path, self._anchor, state=None)
        expected = self._federation()
        if policy.federation != expected:
            raise SignedPolicyError(
                f"the policy is for federation {policy.federation}, the key directory for "
                f"{expected}",
                reason="policy.federation",
            )
        beyond = [
            name
            for name, limits in policy.limits.items()
            if self._max_lifetime is not None and limits.max_lifetime > self._max_lifetime
        ]
        if beyond:
            raise SignedPolicyError(
                f"the policy's max_lifetime for {', '.join(beyond)} exceeds the envelope maximum "
                f"of {self._max_lifetime}s ([limits] max_lifetime)",
                reason="policy.limits",
            )
        # Checked before the serial is recorded, so a policy refused here cannot raise the bar.
        if policy.serial < (highest := self._state.highest()):
            raise SignedPolicyError(
                f"policy serial {policy.serial} is older than {highest} already seen",
                reason="policy.rollback",
            )
        self._state.record(policy.serial)
        return policy

    def _version(self, value: Policy) -> str:
        return f"serial {value.serial} ({value.hash})"
