"""`bridge report`: a client's disclosure report from an adapter, as JSON or printable HTML.

Asks the agency's adapter (`GET /v1/disclosures`), which builds the report from the audit trail
(docs/audit.md). With `--state DIR` the embedded stack's adapter and a short-lived token of its
own are used; otherwise give `--url` and `--token-file` (a token with `consents:read`). The local
reference is sent in the request only, never printed in an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "report", help="a client's disclosure report: who received what, when and why"
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--local-ref", metavar="REF", help="the agency's own reference for the client")
    who.add_argument("--consent", metavar="ID", help="one of the agency's consent ids")
    parser.add_argument("--state", type=Path, help="the embedded stack's state directory")
    parser.add_argument("--agency", metavar="ID", help="the agency (with --state)")
    parser.add_argument("--url", metavar="URL", help="the adapter's base URL (without --state)")
    parser.add_argument("--token-file", type=Path, metavar="FILE", help="bearer token (0600)")
    parser.add_argument("--format", choices=("json", "html"), default="json")
    parser.add_argument("--lang", choices=("de", "en"), default="de")
    parser.add_argument("--out", type=Path, metavar="FILE", help="write here, not to stdout")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from ..errors import ConfigError

    if args.state is not None:
        from ..up.state import open_stack

        if args.agency is None:
            raise ConfigError("--state needs --agency", reason="cli.usage")
        stack = open_stack(args.state)
        url = args.url or stack.adapter_url(args.agency)
        token = stack.token(args.agency, ["consents:read"], 300)
    elif args.url is None or args.token_file is None:
        raise ConfigError(
            "give --url and --token-file, or --state and --agency", reason="cli.usage"
        )
    else:
        url = args.url
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read {args.token_file}: {exc.strerror}", reason="cli.usage"
            ) from exc
    status, body = asyncio.run(_fetch(url, token, args))
    if status != 200:
        print(f"bridge report: the adapter answered {status}: {_problem(body)}", file=sys.stderr)
        return 1
    if args.out is not None:
        args.out.write_bytes(body)
    else:
        sys.stdout.write(body.decode("utf-8"))
    return 0


def _problem(body: bytes) -> str:
    import msgspec

    try:
        problem = msgspec.json.decode(body)
        return f"{problem.get('title', '')} [{problem.get('code', '')}]"
    except (msgspec.DecodeError, AttributeError):
        return "no details"


async def _fetch(url: str, token: str, args: argparse.Namespace) -> tuple[int, bytes]:
    import aiohttp

    from ..errors import TransportError

    params = {"format": args.format, "lang": args.lang}
    if args.local_ref is not None:
        params["local_ref"] = args.local_ref
    else:
        params["consent"] = args.consent
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
            session.get(
                f"{url.rstrip('/')}/v1/disclosures",
                params=params,
                headers={"Authorization": f"Bearer {token}"},
            ) as response,
        ):
            return response.status, await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise TransportError(
            f"cannot reach the adapter ({type(exc).__name__})", reason="cli.unreachable"
        ) from exc
