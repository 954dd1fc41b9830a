"""Child processes that do not outlive the process that started them.

`bridge up` and the embedded nats-server start children in their own sessions (so Ctrl-C
reaches only the parent, which then stops them in order). If the parent is killed outright,
nothing would stop them; on Linux, PR_SET_PDEATHSIG makes the kernel send them SIGTERM.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys
from collections.abc import Callable
from typing import Final

__all__ = ["parent_death_signal"]

_PR_SET_PDEATHSIG: Final = 1


def parent_death_signal() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the child when its parent dies, if available."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return hook
