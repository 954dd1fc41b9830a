"""The policy as a running component holds it: loaded at start, reloaded when its file changes.

A new file is taken only if it verifies against the pinned trust anchor, parses, belongs to the
federation of the key directory, and its serial is not below the highest this component has
accepted (kept in its serial state file, so a restart cannot be rolled back either). A bad new
file is logged with its reason and the last good policy kept: an operator's mistake must not
stop routing, and whoever can write the file can at most keep a component on a policy it
already trusted.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from .._cancel import pause
from ..crypto import PublicKeyRecord
from ..errors import BridgeError, SignedPolicyError
from ._signed import Policy, PolicySerialState, load_policy_file

__all__ = ["PolicyHolder"]

log = logging.getLogger("bridge.policy")

_Stamp = tuple[int, int, int]  # mtime_ns, size, inode: cheap change detection without reading


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class PolicyHolder:
    """The current verified `Policy`, and the means to reload it."""

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
        self._path = path
        self._anchor = anchor
        self._state = state
        self._federation = federation
        self._stamp = _stamp(path)
        self._current = self._load()
        self._refused: _Stamp | None = None

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

    @property
    def current(self) -> Policy:
        return self._current

    def reload_if_changed(self) -> bool:
        """Reload if the file changed since the last look; return whether a new one is in use."""
        stamp = _stamp(self._path)
        if stamp is None or stamp == self._stamp or stamp == self._refused:
            return False
        try:
            policy = self._load()
        except BridgeError as exc:
            self._refused = stamp
            log.error(
                "new policy refused, keeping serial %d (%s): %s [%s]",
                self._current.serial,
                self._current.hash,
                exc,
                exc.reason,
            )
            return False
        self._stamp = stamp
        self._refused = None
        previous, self._current = self._current, policy
        if policy.hash != previous.hash:
            log.info(
                "policy reloaded: serial %d -> %d (%s)", previous.serial, policy.serial, policy.hash
            )
        return True

    async def watch(self, interval: float) -> None:
        """Check the file every `interval` seconds, forever (until cancelled)."""
        while True:
            await pause(interval)
            await asyncio.to_thread(self.reload_if_changed)

    def __repr__(self) -> str:
        return f"PolicyHolder({str(self._path)!r}, serial={self._current.serial})"
