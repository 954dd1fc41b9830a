"""The key directory as a running component holds it: loaded at start, reloaded when it changes.

A new file is loaded only if it verifies against the pinned trust anchor and its serial is not
lower than the highest one this component has ever accepted (kept in the serial state file, so a
restart cannot be rolled back either). A bad new file is logged and the old directory kept: an
operator's mistake must not stop routing, and an attacker who can write the file can at most
keep a component on the directory it already trusts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from .._watched import WatchedFile
from ..crypto import PublicKeyRecord
from ..federation.directory import Directory, SerialState, load_anchor

__all__ = ["DirectoryHolder"]


class DirectoryHolder(WatchedFile[Directory]):
    """The current verified `Directory`, and the means to reload it."""

    what = "key directory"
    log = logging.getLogger("bridge.federation")

    def __init__(
        self,
        path: Path,
        anchor: PublicKeyRecord,
        state: SerialState,
        *,
        clock: Callable[[], float],
    ) -> None:
        """Load the directory now; raises `DirectoryError` if it is not acceptable."""
        self._anchor = anchor
        self._state = state
        self._clock = clock
        self._expired_logged = False
        super().__init__(path)

    @classmethod
    def open(
        cls, path: Path, anchor_path: Path, state_path: Path, *, clock: Callable[[], float]
    ) -> DirectoryHolder:
        return cls(path, load_anchor(anchor_path), SerialState(state_path), clock=clock)

    def _load(self) -> Directory:
        return Directory.load_file(
            self._path, self._anchor, state=self._state, now=int(self._clock())
        )

    def _version(self, value: Directory) -> str:
        return f"serial {value.serial}"

    def usable(self) -> Directory | None:
        """The directory if it has not expired; `None` (logged once) if it has.

        Routing on an expired directory would trust revocations that may be stale; rejecting
        everything would punish senders for an operator's lapse. So the broker pauses instead.
        """
        if self._current.body.expires_at > int(self._clock()):
            self._expired_logged = False
            return self._current
        if not self._expired_logged:
            self.log.error(
                "key directory serial %d has expired; routing paused until a new one is installed",
                self._current.serial,
            )
            self._expired_logged = True
        return None
