"""`bridge keys`: an agency's own keys (create, list, rotate) and its public bundle.

The work is done by `bridge.federation.operator`; this module only parses and prints. Passphrases
come from a file or an environment variable, never from argv, which every user can read with `ps`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

__all__ = ["add_passphrase_options", "format_time", "passphrase_from_args", "register"]


def add_passphrase_options(parser: argparse.ArgumentParser, purpose: str) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--passphrase-file", type=Path, metavar="FILE", help=f"read the passphrase {purpose}"
    )
    group.add_argument(
        "--passphrase-env", metavar="VAR", help=f"take the passphrase {purpose} from $VAR"
    )


def passphrase_from_args(args: argparse.Namespace) -> bytes | None:
    from ..federation.operator import read_passphrase

    return read_passphrase(file=args.passphrase_file, env=args.passphrase_env)


def format_time(timestamp: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def register(commands: Any) -> None:
    parser = commands.add_parser("keys", help="create, list and rotate an agency's keys")
    sub = parser.add_subparsers(dest="keys_command", metavar="SUBCOMMAND", required=True)

    new = sub.add_parser(
        "new", help="create an agency's signing and encryption key", allow_abbrev=False
    )
    new.add_argument("--agency", required=True, metavar="ID", help="the agency id")
    new.add_argument("--dir", required=True, type=Path, help="key directory (created, 0700)")
    new.add_argument("--valid-days", type=int, default=365, metavar="N", help="default 365")
    add_passphrase_options(new, "that encrypts the key files")
    new.set_defaults(handler=_new)

    show = sub.add_parser(
        "show", help="list the keys (never a secret) or print the public bundle", allow_abbrev=False
    )
    show.add_argument("--dir", required=True, type=Path, help="key directory")
    show.add_argument(
        "--public", action="store_true", help="print the public bundle JSON for the operator"
    )
    add_passphrase_options(show, "of encrypted key files")
    show.set_defaults(handler=_show)

    rotate = sub.add_parser(
        "rotate", help="add a new current key pair; old keys stay for opening", allow_abbrev=False
    )
    rotate.add_argument("--dir", required=True, type=Path, help="key directory")
    rotate.add_argument("--valid-days", type=int, default=365, metavar="N", help="default 365")
    add_passphrase_options(rotate, "of the key files")
    rotate.set_defaults(handler=_rotate)

    shred = sub.add_parser(
        "shred",
        help="destroy encryption keys nothing sealed to can still live; record it in the audit",
        allow_abbrev=False,
    )
    shred.add_argument(
        "-c", "--config", type=Path, required=True, metavar="FILE", help="the adapter's config"
    )
    shred.add_argument("--dry-run", action="store_true", help="only show what would go, and when")
    shred.set_defaults(handler=_shred)


def _new(args: argparse.Namespace) -> int:
    from ..crypto import kid_hex
    from ..federation.operator import new_keys

    keyring, bundle = new_keys(
        args.dir, args.agency, days=args.valid_days, passphrase=passphrase_from_args(args)
    )
    made = keyring.keys()
    for key in made:
        print(
            f"created {key.use} key {kid_hex(key.kid)} (valid until {format_time(key.not_after)})"
        )
    print(f"public bundle: {bundle} (give it to the federation operator)")
    return 0


def _show(args: argparse.Namespace) -> int:
    import msgspec

    from ..crypto import Keyring
    from ..federation.operator import key_statuses

    keyring = Keyring.load(args.dir, passphrase_from_args(args))
    if args.public:
        print(msgspec.json.format(msgspec.json.encode(keyring.public()), indent=2).decode())
        return 0
    print(f"agency {keyring.agency}, {len(keyring.keys())} keys in {args.dir}")
    for status in key_statuses(keyring):
        print(
            f"  {status.use:<4}  {status.kid}  {format_time(status.not_before)} .. "
            f"{format_time(status.not_after)}  {status.state}"
        )
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from ..crypto import kid_hex
    from ..federation.operator import rotate_keys

    keyring, made, bundle = rotate_keys(
        args.dir, days=args.valid_days, passphrase=passphrase_from_args(args)
    )
    for key in made:
        print(f"new current {key.use} key {kid_hex(key.kid)}")
    print(f"{len(keyring.keys())} keys in all; public bundle: {bundle}")
    print("hand the bundle to the federation operator: until the directory lists the new")
    print("signing key, the broker rejects what this agency signs")
    return 0


def _shred(args: argparse.Namespace) -> int:
    import asyncio
    import os

    from ..adapters.shred import shred_keys
    from ..config import load_adapter_config
    from ..errors import ConfigError

    config = load_adapter_config(args.config)
    passphrase = None
    if config.passphrase_env is not None and not args.dry_run:
        value = os.environ.get(config.passphrase_env)
        if value is None:
            raise ConfigError(
                f"the key passphrase variable {config.passphrase_env} is not set",
                reason="config.missing",
            )
        passphrase = value.encode()
    report = asyncio.run(shred_keys(config, dry_run=args.dry_run, passphrase=passphrase))
    for item in report.plan:
        due = item.due(report.now)
        verdict = ("would destroy" if args.dry_run else "destroyed") if due else "keep until"
        print(
            f"  enc  {item.info.kid}  valid until {format_time(item.info.not_after)}"
            f"{'  revoked' if item.revoked else ''}  {verdict} {format_time(item.destroy_at)}"
        )
    if not report.plan:
        print("no encryption keys")
    if not args.dry_run:
        print(
            f"destroyed {len(report.destroyed)}; recorded in the audit trail: "
            f"{len(report.notified)}"
        )
    return 0
