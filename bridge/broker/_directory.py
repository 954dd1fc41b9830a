"""The key directory as the broker holds it: loaded at start, reloaded when its file changes.

A new file is loaded only if it verifies against the pinned trust anchor and its serial is not
lower than the highest one this broker has ever accepted (kept in the serial state file, so a
restart cannot be rolled back either). A bad new file is logged and the old directory kept: an
operator's mistake must not stop routing, and an attacker who can write the file can at most
keep the broker on the directory it already trusts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from .._cancel import pause
from ..crypto import PublicKeyRecord
from ..errors import DirectoryError
from ..federation.directory import Directory, SerialState, load_anchor

__all__ = ["DirectoryHolder"]

log = logging.getLogger("bridge.broker")

_Stamp = tuple[int, int, int]  # mtime_ns, size, inode: cheap change detection without reading


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class DirectoryHolder:
    """The current verified `Directory`, and the means to reload it."""

    def __init__(
        self,
        path: Path,
        anchor: PublicKeyRecord,
        state: SerialState,
        *,
        clock: Callable[[], float],
    ) -> None:
        """Load the directory now; raises `DirectoryError` if it is not acceptable."""
        self._path = path
        self._anchor = anchor
        self._state = state
        self._clock = clock
        self._stamp = _stamp(path)
        self._current = Directory.load_file(path, anchor, state=state, now=int(clock()))
        self._refused: _Stamp | None = None
        self._expired_logged = False

    @classmethod
    def open(
        cls, path: Path, anchor_path: Path, state_path: Path, *, clock: Callable[[], float]
    ) -> DirectoryHolder:
        return cls(path, load_anchor(anchor_path), SerialState(state_path), clock=clock)

    @property
    def current(self) -> Directory:
        return self._current

    def usable(self) -> Directory | None:
        """The directory if it has not expired; `None` (logged once) if it has.

        Routing on an expired directory would trust revocations that may be stale; rejecting
        everything would punish senders for an operator's lapse. So the broker pauses instead.
        """
        if self._current.body.expires_at > int(self._clock()):
            self._expired_logged = False
            return self._current
        if not self._expired_logged:
            log.error(
                "key directory serial %d has expired; routing paused until a new one is installed",
                self._current.serial,
            )
            self._expired_logged = True
        return None

    def reload_if_changed(self) -> bool:
        """Reload if the file changed since the last look; return whether a new one is in use."""
        stamp = _stamp(self._path)
        if stamp is None or stamp == self._stamp or stamp == self._refused:
            return False
        try:
            directory = Directory.load_file(
                self._path, self._anchor, state=self._state, now=int(self._clock())
            )
        except DirectoryError as exc:
            self._refused = stamp
            log.error(
                "new key directory refused, keeping serial %d: %s [%s]",
                self._current.serial,
                exc,
                exc.reason,
            )
            return False
        except OSError as exc:  # the serial state file could not be written
            self._refused = stamp
            log.error("new key directory not recorded, keeping the old one: %s", exc)
            return False
        self._stamp = stamp
        self._refused = None
        previous, self._current = self._current.serial, directory
        log.info("key directory reloaded: serial %d -> %d", previous, directory.serial)
        return True

    async def watch(self, interval: float) -> None:
        """Check the file every `interval` seconds, forever (until cancelled)."""
        while True:
            await pause(interval)
            self.reload_if_changed()

    def __repr__(self) -> str:
        return f"DirectoryHolder({str(self._path)!r}, serial={self._current.serial})"
