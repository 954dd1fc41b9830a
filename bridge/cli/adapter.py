"""`bridge adapter -c FILE`: run one agency's adapter in the foreground until SIGTERM or SIGINT.

A clean stop exits 0. If the adapter's background work fails (see `Adapter.wait`), the adapter
is stopped and the process exits 1, so that its supervisor restarts it.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from . import stop_quietly_until_running
from ._service import add_service_options, serve


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "adapter", help="run an agency's adapter (local HTTP API, delivery, receipts)"
    )
    add_service_options(parser, "adapter TOML config")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    stop_quietly_until_running()
    from ..adapters.service import Adapter
    from ..config import load_adapter_config
    from ..telemetry import configure_logging

    config = load_adapter_config(args.config)  # a ConfigError becomes one line and exit 2
    configure_logging(args.log_level, args.log_format)
    return asyncio.run(
        serve(Adapter(config), lambda a: f"adapter {config.agency} listening on {a.url}")
    )
