"""Crypto-shredding: destroy an old private encryption key once nothing sealed to it can live.

A message can be sealed to an encryption key only while the key directory lists it as valid
and unrevoked (the broker and the recipient refuse it otherwise), and a message lives at most
`max_lifetime` seconds. So the last moment anything sealed to key K can still be around is

    last_use(K) + max_lifetime,  last_use(K) = K.not_after, or, if the directory revokes K,
                                 the directory's issue time plus a reload margin if earlier.

After that the key is destroyed: its file is overwritten with random bytes, synced and removed,
so that a copy of a ciphertext left in a backup can no longer be opened. Signing keys are never
shredded (they only ever verified, and verifying needs only public keys).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from ..crypto import KeyLookup
from ..crypto.keys import KeyFileInfo, key_file_info
from ..errors import ConfigError

__all__ = ["RELOAD_MARGIN", "ShredItem", "destroy_key_file", "plan_shred"]

RELOAD_MARGIN: Final = 3600
"""How long after a directory is issued every component is assumed to have loaded it."""


@dataclass(frozen=True, slots=True)
class ShredItem:
    info: KeyFileInfo
    revoked: bool
    last_use: int  # the last moment a message could have been sealed to it
    destroy_at: int  # when the last such message has passed its lifetime

    def due(self, now: int) -> bool:
        return now >= self.destroy_at


class _Revocations:
    def __init__(self, directory: KeyLookup, issued_at: int) -> None:
        self._directory = directory
        self._issued_at = issued_at

    def last_use(self, info: KeyFileInfo) -> tuple[bool, int]:
        revoked = self._directory.is_revoked(bytes.fromhex(info.kid))
        if revoked:
            return True, min(info.not_after, self._issued_at + RELOAD_MARGIN)
        return False, info.not_after


def plan_shred(
    keys_dir: Path, directory: KeyLookup, issued_at: int, *, max_lifetime: int
) -> list[ShredItem]:
    """Every encryption key file in `keys_dir` with when it may be destroyed, soonest first.

    `issued_at` is the loaded directory's issue time: a key it revokes was revoked by then.
    """
    revocations = _Revocations(directory, issued_at)
    items = []
    for path in sorted(keys_dir.glob("*.key")):
        info = key_file_info(path)
        if info.use != "enc":
            continue
        revoked, last_use = revocations.last_use(info)
        items.append(ShredItem(info, revoked, last_use, last_use + max_lifetime))
    return sorted(items, key=lambda item: (item.destroy_at, item.info.kid))


def destroy_key_file(path: Path) -> None:
    """Overwrite the file with random bytes, sync, remove it, and sync its directory."""
    try:
        size = path.stat().st_size
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            os.write(fd, os.urandom(max(size, 1)))
            os.fsync(fd)
        finally:
            os.close(fd)
        path.unlink()
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise ConfigError(
            f"cannot destroy key file {path}: {exc.strerror}", reason="keys.shred_failed"
        ) from exc


def due_items(items: Iterable[ShredItem], now: int) -> list[ShredItem]:
    return [item for item in items if item.due(now)]
