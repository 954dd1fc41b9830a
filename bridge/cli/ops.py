"""`bridge ops -c FILE`: the monitoring service, in the foreground until SIGTERM or Ctrl-C.

Exits 0 on a signal, non-zero if its background work fails (so a supervisor restarts it).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

from . import stop_quietly_until_running

__all__ = ["register"]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "ops", help="delivery monitoring: dashboard, JSON views, metrics and alerts"
    )
    parser.add_argument(
        "-c", "--config", type=Path, required=True, metavar="FILE", help="ops config (TOML)"
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR")
    )
    parser.add_argument(
        "--log-format", default="text", choices=("text", "json"), help="json: one object a line"
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    stop_quietly_until_running()
    from ..ops import load_ops_config
    from ..telemetry import configure_logging

    config = load_ops_config(args.config)
    configure_logging(args.log_level, args.log_format)
    return asyncio.run(_serve(config))


async def _serve(config: Any) -> int:
    from ..ops import Ops

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Ops(config) as ops:
            print(f"ops listening on {ops.url}", flush=True)
            stopping = asyncio.ensure_future(stop.wait())
            working = asyncio.ensure_future(ops.wait())
            await asyncio.wait({stopping, working}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if working.done():
                working.result()  # raises what ended the background work
                return 1
            working.cancel()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    return 0
