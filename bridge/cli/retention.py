"""`bridge retention check`: list anything the store keeps past its limit, and where.

Reads every stream and bucket of the account with its own connection (the admin identity; read
requests only). Exits 0 and lists nothing on a healthy system, 1 listing each overdue message
(stream, sequence, subject, by how much), 2 on a usage or connection error.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "retention", help="check that nothing is kept longer than its retention limit"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="inspect every stream and bucket")
    check.add_argument("--state", type=Path, help="the embedded stack's state directory")
    check.add_argument("--nats-url", metavar="URL", help="NATS server (without --state)")
    check.add_argument("--seed", type=Path, metavar="FILE", help="the admin identity's nkey seed")
    check.add_argument(
        "--slack",
        type=int,
        default=60,
        metavar="SECONDS",
        help="grace for the server's expiry timer (default 60)",
    )
    check.add_argument(
        "--max-per-stream",
        type=int,
        default=10_000,
        metavar="N",
        help="read at most N messages per stream, oldest first (default 10000)",
    )
    check.set_defaults(handler=_check)


def _check(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..nats.identities import Credentials, Identity

    if args.state is not None:
        from ..up.state import open_stack

        stack = open_stack(args.state)
        url = args.nats_url or stack.nats_url
        seed = args.seed or Credentials(stack.layout.nats.creds_dir).seed_file(Identity.admin())
    elif args.nats_url is None or args.seed is None:
        raise ConfigError("give --nats-url and --seed, or --state", reason="cli.usage")
    else:
        url, seed = args.nats_url, args.seed
    if args.slack < 0 or args.max_per_stream < 1:
        raise ConfigError("--slack must be >= 0 and --max-per-stream >= 1", reason="cli.usage")
    report = asyncio.run(_run(url, seed, args.slack, args.max_per_stream))
    for line in report.lines():
        print(line)
    inspected = sum(report.streams.values())
    if report.healthy:
        print(
            f"retention check: {len(report.streams)} streams, {inspected} messages inspected, "
            "nothing older than its limit"
        )
        return 0
    return 1


async def _run(url: str, seed: Path, slack: int, max_per_stream: int) -> Any:
    from ..nats.retention import check_retention
    from ..nats.subjects import role_inbox_prefix
    from ..nats.transport import connect

    nc = await connect(url, seed, role_inbox_prefix("admin"), "bridge-retention-check")
    try:
        return await check_retention(
            nc.jetstream(timeout=10), now=time.time, slack=slack, max_per_stream=max_per_stream
        )
    finally:
        await nc.close()
