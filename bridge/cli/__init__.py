"""The `bridge` command line: one module per command group, each with a `register()`.

Command modules import their heavy dependencies inside their handlers, so `bridge --help` stays
fast. A handler returns an exit code; a `BridgeError` becomes a one-line message and exit code 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence

from ..errors import BridgeError

__all__ = ["build_parser", "main", "stop_quietly_until_running"]

# Order is the order in `bridge --help`.
_COMMAND_MODULES = (
    "keys",
    "federation",
    "policy",
    "init",
    "nats",
    "broker",
    "adapter",
    "ops",
    "token",
    "up",
    "demo",
    "audit",
    "report",
    "retention",
    "bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridge",
        description="Secure messaging and handover bridge between public agencies.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(commands)
    return parser


def stop_quietly_until_running() -> None:
    """Make SIGTERM before the event loop takes over a clean exit (0), not a kill (-15).

    A supervisor may stop a service while it is still importing or loading its config; nothing
    has started then, so there is nothing to undo. The service's own handlers replace this one.
    """

    def exit_cleanly(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, exit_cleanly)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args)
    except BridgeError as exc:
        print(f"bridge: error: {exc} [{exc.reason}]", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
