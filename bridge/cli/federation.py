"""`bridge federation`: the operator's trust anchor, draft and signed key directory.

The work is done by `bridge.federation.operator`; this module only parses and prints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .keys import add_passphrase_options, format_time, passphrase_from_args

__all__ = ["register"]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "federation", help="trust anchor, agencies and the signed key directory"
    )
    sub = parser.add_subparsers(dest="federation_command", metavar="SUBCOMMAND", required=True)

    init = sub.add_parser(
        "init", help="create the trust anchor and an empty draft", allow_abbrev=False
    )
    init.add_argument("--dir", required=True, type=Path, help="federation directory")
    init.add_argument("--federation", required=True, metavar="ID", help="the federation id")
    init.add_argument(
        "--valid-days", type=int, default=5 * 365, metavar="N", help="anchor validity, default 1825"
    )
    add_passphrase_options(init, "that encrypts anchor.key")
    init.set_defaults(handler=_init)

    add = sub.add_parser(
        "add-agency", help="add an agency to the draft, or merge its new keys", allow_abbrev=False
    )
    add.add_argument("--dir", required=True, type=Path, help="federation directory")
    add.add_argument("--id", required=True, metavar="ID", help="the agency id")
    add.add_argument("--name", required=True, help="the agency's display name")
    add.add_argument(
        "--role", required=True, help="jobcenter, counselling, social-psychiatric-service, ..."
    )
    add.add_argument(
        "--keys", required=True, type=Path, metavar="BUNDLE", help="the agency's .pub.json"
    )
    add.set_defaults(handler=_add_agency)

    revoke = sub.add_parser("revoke", help="mark a key id revoked in the draft", allow_abbrev=False)
    revoke.add_argument("--dir", required=True, type=Path, help="federation directory")
    revoke.add_argument("--kid", required=True, metavar="HEX", help="the key id (32 hex digits)")
    revoke.set_defaults(handler=_revoke)

    sign = sub.add_parser(
        "sign", help="sign the draft as the next directory serial", allow_abbrev=False
    )
    sign.add_argument("--dir", required=True, type=Path, help="federation directory")
    sign.add_argument(
        "--valid-days", type=int, default=30, metavar="N", help="directory validity, default 30"
    )
    sign.add_argument(
        "--out", type=Path, metavar="FILE", help="where to write it (default DIR/directory.bin)"
    )
    add_passphrase_options(sign, "of anchor.key")
    sign.set_defaults(handler=_sign)

    show = sub.add_parser(
        "show", help="verify the signed directory and summarise it", allow_abbrev=False
    )
    show.add_argument("--dir", required=True, type=Path, help="federation directory")
    show.add_argument(
        "--file", type=Path, metavar="FILE", help="a signed directory (default DIR/directory.bin)"
    )
    show.set_defaults(handler=_show)


def _init(args: argparse.Namespace) -> int:
    from ..federation.operator import ANCHOR_KEY, ANCHOR_PUB, DRAFT, init_federation

    record = init_federation(
        args.dir, args.federation, days=args.valid_days, passphrase=passphrase_from_args(args)
    )
    print(f"trust anchor {record.kid} (valid until {format_time(record.not_after)})")
    print(f"private key: {args.dir / ANCHOR_KEY} (keep it offline)")
    print(f"pin this in every component: {args.dir / ANCHOR_PUB}")
    print(f"draft: {args.dir / DRAFT}")
    return 0


def _add_agency(args: argparse.Namespace) -> int:
    from ..federation.operator import add_agency, load_bundle

    change = add_agency(args.dir, args.id, args.name, args.role, load_bundle(args.keys))
    verb = "added" if change.created else "updated"
    print(
        f"{verb} {change.entry.id} ({change.entry.role}): {len(change.added)} new keys, "
        f"{len(change.entry.keys)} in all; run `bridge federation sign` to publish"
    )
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from ..federation.operator import revoke_key

    agency, newly = revoke_key(args.dir, args.kid)
    state = "revoked" if newly else "was already revoked"
    print(f"key {args.kid.strip().lower()} of {agency} {state}; run `bridge federation sign`")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from ..federation.operator import sign_draft

    directory, path = sign_draft(
        args.dir, days=args.valid_days, passphrase=passphrase_from_args(args), out=args.out
    )
    body = directory.body
    print(
        f"signed serial {body.serial}: {len(body.agencies)} agencies, "
        f"{len(body.revoked)} revoked keys, expires {format_time(body.expires_at)}"
    )
    print(f"written to {path}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from ..federation.operator import show_directory

    directory = show_directory(args.dir, path=args.file)
    body = directory.body
    revoked = set(body.revoked)
    print(
        f"federation {body.federation}, serial {body.serial}, issued "
        f"{format_time(body.issued_at)}, expires {format_time(body.expires_at)}"
    )
    for entry in body.agencies:
        uses = [k.use for k in entry.keys]
        dead = sum(k.kid in revoked for k in entry.keys)
        print(
            f"  {entry.id:<24} {entry.role:<27} sign {uses.count('sign')}, enc "
            f"{uses.count('enc')}, revoked {dead}  {entry.name}"
        )
    print(f"{len(body.agencies)} agencies, {len(body.revoked)} revoked keys")
    return 0
