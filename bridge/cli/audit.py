"""`bridge audit`: make the audit signing key, verify the trail, export a range of it.

`verify` reads the audit stream with its own read-only connection (the ops identity by
default) and checks every record and checkpoint, or checks an export offline (`--file`). It
exits 0 when the chain holds, 1 naming the first record that does not fit, 2 on a usage or
connection error. With `--state DIR` the embedded stack's address, identity and key are used.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", type=Path, help="the embedded stack's state directory")
    parser.add_argument("--nats-url", metavar="URL", help="NATS server (without --state)")
    parser.add_argument(
        "--seed", type=Path, metavar="FILE", help="nkey seed of a read-only identity (ops)"
    )
    parser.add_argument(
        "--key", type=Path, metavar="FILE", help="the pinned audit public key (JSON record)"
    )


def register(commands: Any) -> None:
    parser = commands.add_parser("audit", help="verify and export the tamper-evident audit trail")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    keygen = actions.add_parser("keygen", help="create the broker's audit signing key")
    keygen.add_argument("--key", type=Path, required=True, metavar="FILE", help="private key")
    keygen.add_argument(
        "--public", type=Path, required=True, metavar="FILE", help="public key record (JSON)"
    )
    keygen.set_defaults(handler=_keygen)

    verify = actions.add_parser("verify", help="check the chain and every checkpoint")
    _connection_options(verify)
    verify.add_argument(
        "--file", type=Path, metavar="EXPORT", help="check an export offline instead"
    )
    verify.set_defaults(handler=_verify)

    export = actions.add_parser("export", help="write records as JSON lines, with checkpoints")
    _connection_options(export)
    export.add_argument("--out", type=Path, required=True, metavar="FILE")
    export.add_argument("--from", dest="first", type=int, metavar="SEQ", help="first record")
    export.add_argument("--to", dest="last", type=int, metavar="SEQ", help="last record")
    export.set_defaults(handler=_export)


def _keygen(args: argparse.Namespace) -> int:
    from ..audit import generate_audit_key
    from ..crypto import kid_hex

    key = generate_audit_key(args.key, args.public)
    print(f"audit signing key {kid_hex(key.kid)} written to {args.key}; public: {args.public}")
    return 0


def _public_key(args: argparse.Namespace) -> Any:
    from ..audit import load_audit_public_key
    from ..errors import ConfigError

    if args.key is not None:
        return load_audit_public_key(args.key)
    if args.state is not None:
        from ..up.layout import StateLayout

        return load_audit_public_key(StateLayout(args.state.absolute()).audit_public_key)
    raise ConfigError("name the audit public key with --key (or --state)", reason="cli.usage")


def _where(args: argparse.Namespace) -> tuple[str, Path]:
    from ..errors import ConfigError
    from ..nats.identities import Credentials, Identity

    if args.state is not None:
        from ..up.state import open_stack

        stack = open_stack(args.state)
        seed = Credentials(stack.layout.nats.creds_dir).seed_file(Identity.ops())
        return args.nats_url or stack.nats_url, args.seed or seed
    if args.nats_url is None or args.seed is None:
        raise ConfigError("give --nats-url and --seed, or --state", reason="cli.usage")
    return args.nats_url, args.seed


async def _connected(url: str, seed: Path) -> Any:
    from ..nats.subjects import role_inbox_prefix
    from ..nats.transport import connect

    return await connect(url, seed, role_inbox_prefix("ops"), "bridge-audit")


def _verify(args: argparse.Namespace) -> int:
    from ..audit import AuditBroken, verify_records
    from ..audit.reader import file_records
    from ..nats.subjects import AUDIT_STREAM

    public = _public_key(args)
    try:
        if args.file is not None:
            report = verify_records(file_records(args.file), public, AUDIT_STREAM)
            problems: list[str] = []
        else:
            url, seed = _where(args)
            report, problems = asyncio.run(_verify_live(url, seed, public))
    except AuditBroken as exc:
        print(f"bridge audit verify: FAILED at record {exc.seq}: {exc} [{exc.reason}]")
        return 1
    for problem in problems:
        print(f"bridge audit verify: FAILED: {problem}")
    if problems:
        return 1
    print(report)
    return 0


async def _verify_live(url: str, seed: Path, public: Any) -> tuple[Any, list[str]]:
    from ..audit import ChainVerifier
    from ..audit.reader import stream_records, stream_state
    from ..nats.subjects import AUDIT_STREAM

    nc = await _connected(url, seed)
    try:
        js = nc.jetstream(timeout=10)
        state = await stream_state(js)
        verifier = ChainVerifier(public, AUDIT_STREAM)
        async for seq, data in stream_records(js):
            verifier.add(seq, data)
        return verifier.report(), state.problems()
    finally:
        await nc.close()


def _export(args: argparse.Namespace) -> int:
    url, seed = _where(args)
    first, last = asyncio.run(_export_live(url, seed, args))
    if not first:
        print("bridge audit export: the range holds no records", file=sys.stderr)
        return 1
    print(f"records {first}..{last} written to {args.out}")
    return 0


async def _export_live(url: str, seed: Path, args: argparse.Namespace) -> tuple[int, int]:
    from ..audit.reader import export

    nc = await _connected(url, seed)
    try:
        return await export(nc.jetstream(timeout=10), args.out, first=args.first, last=args.last)
    finally:
        await nc.close()
