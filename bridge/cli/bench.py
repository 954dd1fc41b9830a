"""`bridge bench`: measure bridge on this machine. One subcommand per benchmark module.

Subcommands register themselves in `_SUBCOMMANDS`; a new benchmark (`nats`, end-to-end) adds a
`_register_*` function there and a module beside `bridge.bench.crypto`.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

__all__ = ["register"]

# Mirrors bridge.crypto.DEFAULT_LIMITS.max_recipients, which is not imported here so that
# `bridge --help` does not load the crypto stack; bridge.bench.crypto.run() checks it again.
_MAX_RECIPIENTS = 16


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "bench",
        help="measure throughput on this machine",
        description="Measure bridge on this machine. Results are ratios and rates, not targets.",
    )
    subcommands = parser.add_subparsers(dest="bench_command", metavar="BENCH", required=True)
    for register_subcommand in _SUBCOMMANDS:
        register_subcommand(subcommands)


def _register_crypto(subcommands: Any) -> None:
    parser = subcommands.add_parser(
        "crypto",
        help="seal/verify/open throughput against the cost of their primitives",
        description=(
            "Time seal, verify and open for 1 KiB and 64 KiB bodies, and every primitive they "
            "call, in the same run. The ratio is recipe throughput divided by the throughput "
            "its primitives alone would allow (1.00 = no overhead). See docs/bench.md."
        ),
    )
    parser.add_argument(
        "--seconds",
        type=_positive_float,
        default=1.0,
        metavar="S",
        help="time per measurement, over all rounds (default: 1.0; a run takes about 30 x S)",
    )
    parser.add_argument(
        "--recipients",
        type=_recipients,
        default=3,
        metavar="N",
        help=f"recipients per envelope, 1 to {_MAX_RECIPIENTS} (default: 3)",
    )
    parser.add_argument(
        "--rounds",
        type=_positive_int,
        default=3,
        metavar="R",
        help="rounds per measurement; the median is reported (default: 3)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=_run_crypto)


def _run_crypto(args: argparse.Namespace) -> int:
    from ..bench import crypto

    def progress(message: str) -> None:
        print(f"bench crypto: {message}", file=sys.stderr, flush=True)

    result = crypto.run(
        seconds=args.seconds, recipients=args.recipients, rounds=args.rounds, progress=progress
    )
    if args.json:
        sys.stdout.buffer.write(crypto.to_json(result))
        sys.stdout.flush()
    else:
        print(crypto.render_text(result), end="")
    return 0


_SUBCOMMANDS = (_register_crypto,)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _recipients(text: str) -> int:
    value = _positive_int(text)
    if value > _MAX_RECIPIENTS:
        raise argparse.ArgumentTypeError(f"at most {_MAX_RECIPIENTS}")
    return value
