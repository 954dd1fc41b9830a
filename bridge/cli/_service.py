"""What `bridge broker`, `bridge adapter` and `bridge ops` share: their options and, for the
services with an async context and a `wait()`, running in the foreground until a signal.

Imports stay light: `bridge --help` loads every command module. `serve` exits 0 on SIGTERM or
SIGINT, and 1 when the service's background work ends on its own (it only ends by failing; the
failure is logged where it happened, or by the service as it stops), so a supervisor restarts
it. An error while starting (a port in use, a bad key file) propagates: a `BridgeError` becomes
one line and exit code 2 (`bridge.cli.main`).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Protocol, TypeVar

__all__ = ["Service", "add_service_options", "serve"]


class Service(Protocol):
    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> object: ...

    async def wait(self) -> None: ...


_S = TypeVar("_S", bound=Service)


def add_service_options(parser: argparse.ArgumentParser, config_help: str) -> None:
    parser.add_argument(
        "-c", "--config", type=Path, required=True, metavar="FILE", help=config_help
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="least severe log level written to stderr (default INFO)",
    )
    parser.add_argument(
        "--log-format", default="text", choices=("text", "json"), help="json: one object a line"
    )


async def serve(service: _S, announce: Callable[[_S], str]) -> int:
    """Run `service` until a signal (0) or until its background work ends (1)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        async with service:
            print(announce(service), flush=True)
            stopping = asyncio.ensure_future(stop.wait())
            failing = asyncio.ensure_future(service.wait())
            try:
                await asyncio.wait({stopping, failing}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                failing.cancel()
                await asyncio.wait({stopping, failing})
            if not stop.is_set():
                return 1
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    return 0
