"""`bridge retention check`: list anything the store keeps past its limit, and where.

Reads every stream and bucket of the account with its own connection (the admin identity; read
requests only), and judges each against its own limits and the signed policy's (`--policy` and
`--anchor`, found under `--state` for the embedded stack). Exits 0 and lists nothing on a
healthy system, 1 listing each overdue message (stream, sequence, subject, by how much) and each
stream that keeps longer than the policy allows, 2 on a usage or connection error.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "retention_policy"]


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
        "--policy",
        type=Path,
        metavar="FILE",
        help="the signed routing policy (policy.bin) whose limits apply (default: under --state)",
    )
    check.add_argument(
        "--anchor", type=Path, metavar="FILE", help="the trust anchor's public record for --policy"
    )
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


def retention_policy(policy: Path | None, anchor: Path | None, state: Path | None) -> Any:
    """The signed policy whose retention limits apply (`bridge.policy.Policy`): the files
    given, or the embedded stack's under `state`; refused (`retention.no_policy`) without."""
    from ..errors import ConfigError
    from ..federation.directory import load_anchor
    from ..federation.operator import ANCHOR_PUB
    from ..policy import SIGNED_POLICY, load_policy_file

    if policy is None and anchor is None and state is not None:
        from ..up.layout import StateLayout

        federation_dir = StateLayout(state).federation_dir
        policy, anchor = federation_dir / SIGNED_POLICY, federation_dir / ANCHOR_PUB
        if not policy.exists():
            policy = anchor = None
    if policy is None or anchor is None:
        raise ConfigError(
            "every age limit comes from the signed routing policy: give --policy and --anchor",
            reason="retention.no_policy",
        )
    return load_policy_file(policy, load_anchor(anchor))


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
    policy = retention_policy(args.policy, args.anchor, args.state)
    report = asyncio.run(_run(url, seed, policy, args.slack, args.max_per_stream))
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


async def _run(url: str, seed: Path, policy: Any, slack: int, max_per_stream: int) -> Any:
    from ..adapters.store import pull_deadline
    from ..nats.retention import check_retention
    from ..nats.subjects import role_inbox_prefix
    from ..nats.transport import connect
    from ..policy import store_limits

    nc = await connect(url, seed, role_inbox_prefix("admin"), "bridge-retention-check")
    try:
        return await check_retention(
            nc.jetstream(timeout=10),
            now=time.time,
            limits=store_limits(policy.rules),
            deadlines=pull_deadline,
            slack=slack,
            max_per_stream=max_per_stream,
        )
    finally:
        await nc.close()
