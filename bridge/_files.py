"""Writing files that must never be seen half-written or, when secret, readable by others.

One implementation for key files, NATS seeds, configs, tokens and state records: a temporary
file created with O_EXCL and O_NOFOLLOW in the target's directory (so a pre-placed file or
symlink is refused) with its final mode from the first byte, synced, then moved into place, and
the directory synced so the move survives a crash.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from .errors import ConfigError

__all__ = ["write_file", "write_private_file"]


def write_private_file(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Write `data` to `path` with mode 0600, atomically (see `write_file`)."""
    write_file(path, data, mode=0o600, overwrite=overwrite)


def write_file(path: Path, data: bytes, *, mode: int, overwrite: bool = True) -> None:
    """Readers see the old file or the new one, never a part; `mode` holds from the start.

    With `overwrite=False` an existing `path` is left untouched and `ConfigError` with reason
    `file.exists` is raised (the new file is linked into place, which fails if one exists).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, mode)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}", reason="file.write") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # the umask may have removed bits we want
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as exc:
                raise ConfigError(
                    f"{path} exists; refusing to overwrite it", reason="file.exists"
                ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}", reason="file.write") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
