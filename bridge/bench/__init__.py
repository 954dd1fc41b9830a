"""Benchmarks behind `bridge bench`, one module per subject (`crypto`, later `nats` and more).

Each module measures on the machine it runs on and reports ratios that stay comparable across
machines; none of them sets a performance target. They are imported by the command line only
when a benchmark runs, so that `bridge --help` stays fast.
"""

from __future__ import annotations

__all__: list[str] = []
