"""The embedded stack behind `bridge up`: its state directory, child processes and demo sink.

`state.prepare` creates or resumes a state directory with a demo federation of three agencies;
`supervisor` runs nats-server's companions (broker, adapters) as child processes and stops them
in order; `sink` is the demo's stand-in for a counselling service's local system. The command
itself is `bridge.cli.up`; docs/running.md describes what it starts and prints.
"""

from __future__ import annotations

__all__: list[str] = []
