"""`bridge token`: a bearer token for an agency's adapter, or for ops, in the embedded stack.

Prints the token alone on stdout, so `TOKEN=$(bridge token --agency ...)` works. The token is
signed with the agency's demo token key in the state directory; it is the only secret this
command ever prints, and only because it was asked for.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "token", help="print a bearer token for an adapter or ops in the embedded stack"
    )
    parser.add_argument("--state", type=Path, default=Path(".bridge"), help="state directory")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--agency", metavar="ID", help="agency id, e.g. spdi-unna")
    who.add_argument(
        "--ops", action="store_true", help="a token with the ops role for the ops dashboard and API"
    )
    parser.add_argument(
        "--scope",
        action="append",
        metavar="SCOPE",
        help="scope to grant (repeatable; default: all of messages:send messages:read "
        "inbox:read inbox:ack)",
    )
    parser.add_argument(
        "--lifetime", type=int, default=12 * 3600, metavar="SECONDS", help="default 12 hours"
    )
    parser.add_argument("--subject", help="the token's subject (default <agency>-local-system)")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import sys

    from ..http.auth import SCOPES
    from ..up.state import open_stack

    stack = open_stack(args.state)
    if args.ops:
        if args.scope or args.subject:
            print("bridge token: --ops takes neither --scope nor --subject", file=sys.stderr)
            return 2
        print(stack.ops_token(args.lifetime))
        return 0
    scopes = args.scope or list(SCOPES)
    print(stack.token(args.agency, scopes, args.lifetime, subject=args.subject))
    return 0
