"""`bridge bench`: measure bridge on this machine. One subcommand per benchmark module.

Subcommands register themselves in `_SUBCOMMANDS`: `crypto`, `nats` and `e2e`; a new benchmark
adds a `_register_*` function there and a module beside `bridge.bench.crypto`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["register"]

# Mirrors bridge.crypto.DEFAULT_LIMITS.max_recipients, which is not imported here so that
# `bridge --help` does not load the crypto stack; bridge.bench.crypto.run() checks it again.
_MAX_RECIPIENTS = 16
# The same for bridge.bench.nats (MAX_SIZES, MAX_WINDOW, ENVELOPE_MAX_BYTES); run() checks again.
_MAX_SIZES = 8
_MAX_WINDOW = 1024
_MAX_SIZE = 1024 * 1024


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
    _add_rounds_and_json(parser)
    parser.set_defaults(handler=_run_crypto)


def _run_crypto(args: argparse.Namespace) -> int:
    from ..bench import crypto

    result = crypto.run(
        seconds=args.seconds,
        recipients=args.recipients,
        rounds=args.rounds,
        progress=_progress("crypto"),
    )
    _emit(crypto.to_json(result) if args.json else crypto.render_text(result))
    return 0


def _register_nats(subcommands: Any) -> None:
    parser = subcommands.add_parser(
        "nats",
        help="JetStream publish throughput with and without an fsync per write",
        description=(
            "Start two temporary nats-servers, one syncing every write to disk (bridge's "
            "default) and one with nats-server's periodic sync, and time acknowledged publishes "
            "into BRIDGE_SUBMIT as an agency, one at a time and with a window outstanding, "
            "against core NATS publish+flush in the same run. See docs/bench.md."
        ),
    )
    parser.add_argument(
        "--seconds",
        type=_positive_float,
        default=2.0,
        metavar="S",
        help="time per measurement, over all rounds (default: 2.0; a run takes about "
        "6 x sizes x S plus a few seconds)",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=(1024, 65536),
        metavar="B,B",
        help=f"payload sizes in bytes, comma-separated, at most {_MAX_SIZES} (default: 1024,65536)",
    )
    parser.add_argument(
        "--window",
        type=_window,
        default=64,
        metavar="N",
        help=f"publishes outstanding in the windowed runs, 2 to {_MAX_WINDOW} (default: 64)",
    )
    _add_rounds_and_json(parser)
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the temporary stores go (default: the system's temporary directory); "
        "the fsync cost depends on its file system",
    )
    parser.set_defaults(handler=_run_nats)


def _run_nats(args: argparse.Namespace) -> int:
    from ..bench import nats

    result = asyncio.run(
        nats.run(
            seconds=args.seconds,
            rounds=args.rounds,
            sizes=args.sizes,
            window=args.window,
            directory=args.dir,
            progress=_progress("nats"),
        )
    )
    _emit(nats.to_json(result) if args.json else nats.render_text(result))
    return 0


def _register_e2e(subcommands: Any) -> None:
    parser = subcommands.add_parser(
        "e2e",
        help="the whole stack end to end, against the transport and crypto limits beneath it",
        description=(
            "Start nats-server, the broker and three adapters as real processes, drive them "
            "from local systems over HTTP (webhook and pull deliveries), and measure "
            "throughput, latency at half of it, CPU per message per process, durable writes "
            "per message and peak memory under a backlog; beside them the transport limit "
            "(raw nats-py, same streams and durability) and the crypto floor, in the same "
            "run. A run takes about 5 minutes with the defaults. See docs/bench.md."
        ),
    )
    parser.add_argument(
        "--seconds",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="each throughput and each latency measurement (default: 10)",
    )
    parser.add_argument(
        "--window",
        type=_window,
        default=32,
        metavar="N",
        help="messages in flight end to end for the throughput (default: 32)",
    )
    parser.add_argument(
        "--backlog",
        type=_backlogs,
        default=(1000, 5000),
        metavar="SMALL,LARGE",
        help="backlogs for the memory measurement (default: 1000,5000; 100000 is the target's "
        "and fills in about ten minutes here with the default --fill)",
    )
    parser.add_argument(
        "--fill",
        choices=("inbox", "http"),
        default="inbox",
        help="how the backlog is filled: stored in the recipient's inbox as the broker routes "
        "it (default), or submitted through the sending adapter (about half an hour for 100000)",
    )
    parser.add_argument(
        "--memory-only",
        action="store_true",
        help="measure only the memory under a backlog (no throughput, latency or limits)",
    )
    parser.add_argument(
        "--attachment",
        type=_attachment_mib,
        default=100,
        metavar="MIB",
        help="the one-file case: one attachment of MIB MiB end to end, against a raw object "
        "store put and get of as many bytes (default: 100; 0 leaves it out)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a shape check in well under a minute (tiny windows and runs): numbers mean nothing",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record py-spy profiles of every Python process during each throughput "
        "measurement into DIR (needs py-spy; profiling slows the run)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write the result as JSON to FILE",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the temporary stack goes (default: the system's temporary directory)",
    )
    parser.set_defaults(handler=_run_e2e)


def _attachment_mib(raw: str) -> int:
    if not raw.isdigit() or int(raw) > 100:
        raise argparse.ArgumentTypeError("an attachment is 0 to 100 MiB")
    return int(raw)


def _run_e2e(args: argparse.Namespace) -> int:
    from ..bench import e2e

    if args.quick:
        settings = e2e.Settings.quick_check()
    else:
        settings = e2e.Settings(
            seconds=args.seconds,
            window=args.window,
            backlogs=args.backlog,
            attachment_bytes=args.attachment * 1024 * 1024,
        )
    settings = dataclasses.replace(settings, fill=args.fill, memory_only=args.memory_only)
    result = asyncio.run(
        e2e.run(settings, directory=args.dir, profile=args.profile, progress=_progress("e2e"))
    )
    if args.output is not None:
        args.output.write_bytes(e2e.to_json(result))
    _emit(e2e.to_json(result) if args.json else e2e.render_text(result))
    return 0


_SUBCOMMANDS = (_register_crypto, _register_nats, _register_e2e)


def _add_rounds_and_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rounds",
        type=_positive_int,
        default=3,
        metavar="R",
        help="rounds per measurement; the median is reported (default: 3)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _progress(bench: str) -> Callable[[str], None]:
    def progress(message: str) -> None:
        print(f"bench {bench}: {message}", file=sys.stderr, flush=True)

    return progress


def _emit(output: bytes | str) -> None:
    """JSON as the module encoded it (bytes), text as rendered; progress went to stderr."""
    if isinstance(output, bytes):
        sys.stdout.buffer.write(output)
        sys.stdout.flush()
    else:
        print(output, end="")


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


def _sizes(text: str) -> tuple[int, ...]:
    parts = text.split(",")
    if len(parts) > _MAX_SIZES:
        raise argparse.ArgumentTypeError(f"at most {_MAX_SIZES} sizes")
    sizes = tuple(_positive_int(part.strip()) for part in parts)
    if any(size > _MAX_SIZE for size in sizes):
        raise argparse.ArgumentTypeError(f"a size is at most {_MAX_SIZE} bytes (one envelope)")
    if len(set(sizes)) != len(sizes):
        raise argparse.ArgumentTypeError("a size is given twice")
    return sizes


def _window(text: str) -> int:
    value = _positive_int(text)
    if not 2 <= value <= _MAX_WINDOW:
        raise argparse.ArgumentTypeError(f"must be between 2 and {_MAX_WINDOW}")
    return value


def _backlogs(text: str) -> tuple[int, int]:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError("give two counts, SMALL,LARGE")
    small, large = (_positive_int(part.strip()) for part in parts)
    if not small < large <= 1_000_000:
        raise argparse.ArgumentTypeError("SMALL must be below LARGE, LARGE at most 1000000")
    return small, large


def _recipients(text: str) -> int:
    value = _positive_int(text)
    if value > _MAX_RECIPIENTS:
        raise argparse.ArgumentTypeError(f"at most {_MAX_RECIPIENTS}")
    return value
