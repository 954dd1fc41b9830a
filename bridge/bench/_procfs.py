"""What the kernel says about a process: CPU seconds used and memory held (Linux `/proc`).

The end-to-end benchmark charges each process of the stack for its CPU time per message and
reports its peak memory; both come from here. Elsewhere than Linux every reading is `None`,
and the benchmark says "not measured" rather than guessing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = ["Watched", "cpu_seconds", "rss_bytes"]

_PROC: Final = Path("/proc")


def _ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return 100


_TICKS: Final = _ticks()


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of `pid` so far, in seconds; None if it cannot be read."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    except (IndexError, ValueError):
        return None
    return (utime + stime) / _TICKS


def rss_bytes(pid: int) -> int | None:
    """Resident memory of `pid` now (VmRSS), in bytes; None if it cannot be read."""
    try:
        status = (_PROC / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            try:
                return int(parts[1]) * 1024  # always in kB
            except (IndexError, ValueError):
                return None
    return None


@dataclass
class Watched:
    """One process of the stack under a name, and the highest resident memory seen in it."""

    name: str
    pid: int
    peak_rss: int = 0
    cpu_mark: float = field(default=0.0, repr=False)

    def sample_memory(self) -> None:
        rss = rss_bytes(self.pid)
        if rss is not None and rss > self.peak_rss:
            self.peak_rss = rss

    def reset_peak(self) -> None:
        self.peak_rss = 0
        self.sample_memory()

    def mark_cpu(self) -> None:
        self.cpu_mark = cpu_seconds(self.pid) or 0.0

    def cpu_since_mark(self) -> float:
        now = cpu_seconds(self.pid)
        return 0.0 if now is None else max(0.0, now - self.cpu_mark)
