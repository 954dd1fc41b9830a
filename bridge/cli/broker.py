"""`bridge broker -c FILE`: run one broker in the foreground until SIGTERM or Ctrl-C.

Configuration errors (the file, the key directory, the trust anchor) fail before anything
connects and end as a one-line message with exit code 2 (see `bridge.cli.main`). A clean
shutdown exits 0. Logs go to stderr, one line per decision, metadata only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

__all__ = ["register"]


from ..errors import BridgeError, reasons_of
from . import stop_quietly_until_running
from ._service import add_service_options


def register(commands: Any) -> None:
    parser = commands.add_parser("broker", help="verify and route submissions between agencies")
    add_service_options(parser, "broker config (TOML)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    stop_quietly_until_running()
    from ..broker import Broker
    from ..config import load_broker_config
    from ..telemetry import configure_logging

    config = load_broker_config(args.config)
    configure_logging(args.log_level, args.log_format)
    broker = Broker(config)  # loads and checks the key directory before connecting
    return asyncio.run(_serve(broker))


async def _serve(broker: Any) -> int:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, broker.stop)
    try:
        await broker.run()
    except BridgeError:
        raise  # one line on stderr and exit 2 (bridge.cli.main)
    except Exception as exc:
        # Reason codes only: an exception's text may quote what it parsed. Exit non-zero, so
        # that the supervisor restarts a broker whose loops died.
        logging.getLogger("bridge.broker").critical(
            "broker failed (%s); exiting for a restart", reasons_of(exc)
        )
        return 1
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    return 0
