"""A signed file a running component holds: loaded at start, reloaded when the file changes.

Shared by the key directory and the policy, with the serial state that refuses a rollback. A
change is noticed by the file's stamp (mtime, size, inode) without reading it. A new file that
the subclass's `_load` refuses (bad signature, rollback, wrong federation, a serial state that
cannot be written) is logged with its reason and the last good version kept, and the same
refused file is not tried again until it changes; a file that disappears is logged once and
the last good version kept too: an operator's mistake must not stop a
component, and whoever can write the file can at most keep it on a version it already trusted.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

from ._cancel import pause
from ._files import write_file
from .errors import BridgeError

__all__ = ["SerialState", "WatchedFile"]

T = TypeVar("T")

_Stamp = tuple[int, int, int]  # mtime_ns, size, inode: cheap change detection without reading


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class WatchedFile(Generic[T]):
    """The current verified version of a signed file, and the means to reload it.

    Subclasses set `what` (for the log), `log`, and implement `_load` (raising a `BridgeError`
    when the file is not acceptable) and `_version` (how a version is named in the log).
    """

    what: ClassVar[str]
    log: ClassVar[logging.Logger]

    def __init__(self, path: Path) -> None:
        self._path = path
        self._refused: _Stamp | None = None
        self._stamp = _stamp(path)
        self._current = self._load()

    def _load(self) -> T:
        raise NotImplementedError

    def _version(self, value: T) -> str:
        raise NotImplementedError

    @property
    def current(self) -> T:
        return self._current

    def reload_if_changed(self) -> bool:
        """Reload if the file changed since the last look; return whether a new one is in use."""
        stamp = _stamp(self._path)
        if stamp is None:
            if self._stamp is not None:  # it was there: say so once, keep the last good one
                self._stamp = None
                self.log.error(
                    "%s file is gone, keeping %s", self.what, self._version(self._current)
                )
            return False
        if stamp == self._stamp or stamp == self._refused:
            return False
        try:
            loaded = self._load()
        except BridgeError as exc:
            self._refused = stamp
            self.log.error(
                "new %s refused, keeping %s: %s [%s]",
                self.what,
                self._version(self._current),
                exc,
                exc.reason,
            )
            return False
        self._stamp = stamp
        self._refused = None
        previous, self._current = self._current, loaded
        if self._version(previous) != self._version(loaded):
            self.log.info(
                "%s reloaded: %s -> %s", self.what, self._version(previous), self._version(loaded)
            )
        return True

    async def watch(self, interval: float) -> None:
        """Check the file every `interval` seconds, forever (until cancelled)."""
        while True:
            await pause(interval)
            await asyncio.to_thread(self.reload_if_changed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self._path)!r}, {self._version(self._current)})"


class SerialState:
    """The highest serial of a signed file a component has accepted, kept in a small file.

    Subclasses name the file (`what`, for messages; `reason`, the error's reason code) and the
    family of the error (`_error`).
    """

    what: ClassVar[str]
    reason: ClassVar[str]

    def __init__(self, path: Path) -> None:
        self.path = path

    def _error(self, message: str) -> BridgeError:
        raise NotImplementedError

    def highest(self) -> int:
        try:
            text = self.path.read_text().strip()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise self._error(
                f"cannot read {self.what} serial state {self.path}: {exc.strerror}"
            ) from exc
        if not text.isdigit():
            raise self._error(f"{self.what} serial state {self.path} is corrupt")
        return int(text)

    def record(self, serial: int) -> None:
        if serial <= self.highest():
            return
        # Synced before it counts: a serial forgotten in a crash would reopen the rollback door.
        write_file(self.path, f"{serial}\n".encode(), mode=0o644)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"
