"""`bridge ops -c FILE`: the monitoring service, in the foreground until SIGTERM or Ctrl-C.

Exits 0 on a signal, 1 if its background work fails (so a supervisor restarts it).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from . import stop_quietly_until_running
from ._service import add_service_options, serve

__all__ = ["register"]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "ops", help="delivery monitoring: dashboard, JSON views, metrics and alerts"
    )
    add_service_options(parser, "ops config (TOML)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    stop_quietly_until_running()
    from ..ops import Ops, load_ops_config
    from ..telemetry import configure_logging

    config = load_ops_config(args.config)
    configure_logging(args.log_level, args.log_format)
    return asyncio.run(serve(Ops(config), lambda ops: f"ops listening on {ops.url}"))
