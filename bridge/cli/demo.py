"""`bridge demo`: one referral through the running embedded stack, narrated step by step.

Run `bridge up` first (in another terminal); the demo only talks to it over HTTP.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "demo", help="send a referral through the running stack and show its journey"
    )
    parser.add_argument("--state", type=Path, default=Path(".bridge"), help="state directory")
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="wait per step (30)"
    )
    parser.add_argument(
        "--withdraw",
        action="store_true",
        help="then withdraw the client's consent and show what follows, step by step",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio
    import sys

    from ..demo import DemoFailed, run_demo
    from ..up.state import open_stack

    stack = open_stack(args.state)
    try:
        asyncio.run(run_demo(stack, sys.stdout, patience=args.timeout, withdraw=args.withdraw))
    except DemoFailed as exc:
        print(f"bridge demo: {exc}", file=sys.stderr)
        return 1
    return 0
