"""`bridge up`: the whole embedded stack in one command (nats-server, broker, demo agencies).

The first run creates the state directory; later runs resume it with the same keys, ports and
JetStream store. docs/running.md explains the directory, the output and how to run the parts
separately.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "up", help="run nats-server, the broker and three demo agencies' adapters"
    )
    parser.add_argument("--state", type=Path, default=Path(".bridge"), help="state directory")
    parser.add_argument("--host", help="listen address, first run only (default 127.0.0.1)")
    parser.add_argument(
        "--port-base",
        type=int,
        metavar="PORT",
        help="first run only: NATS on PORT, adapters on PORT+1..PORT+3, demo sink on PORT+9; "
        "0 picks free ports (default: NATS 4222, adapters 8401-8403, sink 8409)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    from ..up.layout import StateLayout
    from ..up.run import hold_lock, run_stack
    from ..up.state import prepare

    with hold_lock(StateLayout(args.state.absolute())):
        stack = prepare(args.state, host=args.host, port_base=args.port_base)
        if args.port_base is not None and not stack.created:
            print(
                f"bridge up: --port-base is for a new state directory; keeping the ports "
                f"recorded in {stack.layout.ports_file}",
                file=sys.stderr,
            )
        return asyncio.run(run_stack(stack))
