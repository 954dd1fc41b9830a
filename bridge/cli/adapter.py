"""`bridge adapter -c FILE`: run one agency's adapter in the foreground until SIGTERM or SIGINT.

A clean stop exits 0. If the adapter's background work fails (see `Adapter.wait`), the adapter
is stopped and the process exits 1, so that its supervisor restarts it.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

from . import stop_quietly_until_running


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "adapter", help="run an agency's adapter (local HTTP API, delivery, receipts)"
    )
    parser.add_argument(
        "-c", "--config", type=Path, required=True, metavar="FILE", help="adapter TOML config"
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
    from ..config import load_adapter_config
    from ..telemetry import configure_logging

    config = load_adapter_config(args.config)  # a ConfigError becomes one line and exit 2
    configure_logging(args.log_level, args.log_format)
    return asyncio.run(_serve(config))


async def _serve(config: Any) -> int:
    from ..adapters.service import Adapter

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Adapter(config) as adapter:
            print(f"adapter {config.agency} listening on {adapter.url}", flush=True)
            stopping = asyncio.ensure_future(stop.wait())
            failing = asyncio.ensure_future(adapter.wait())
            try:
                await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                failing.cancel()
                await asyncio.wait({stopping, failing})
            if not stop.is_set():
                return 1  # the failure was logged where it happened
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    return 0
