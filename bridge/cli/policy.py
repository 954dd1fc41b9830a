"""`bridge policy`: check a routing policy, sign it as the next version, explain a decision.

`check FILE` reads a policy's TOML text (or a signed `policy.bin`, verified against the trust
anchor) and prints what it allows; a bad file ends with the line at fault and exit code 2.
`sign` is the operator's step that publishes a new version (docs/policy.md). `explain` shows
the decision on a message and the rule behind it: for a header given as a JSON file, or for a
message id, read from the audit trail. The work is in `bridge.policy`; this module parses and
prints.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from .keys import add_passphrase_options, format_time, passphrase_from_args

__all__ = ["register"]


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "policy", help="check, sign and explain the federation's routing policy"
    )
    sub = parser.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)

    check = sub.add_parser(
        "check", help="validate a policy file and print what it allows", allow_abbrev=False
    )
    check.add_argument("file", type=Path, metavar="FILE", help="policy TOML, or a signed one")
    check.add_argument(
        "--anchor", type=Path, metavar="FILE", help="trust anchor record, for a signed policy"
    )
    check.set_defaults(handler=_check)

    sign = sub.add_parser("sign", help="sign a policy file as the next version", allow_abbrev=False)
    sign.add_argument("file", type=Path, metavar="FILE", help="the reviewed policy TOML")
    sign.add_argument("--dir", required=True, type=Path, help="federation directory")
    sign.add_argument(
        "--out", type=Path, metavar="FILE", help="where to write it (default DIR/policy.bin)"
    )
    add_passphrase_options(sign, "of anchor.key")
    sign.set_defaults(handler=_sign)

    explain = sub.add_parser(
        "explain", help="the decision on a message and the rule behind it", allow_abbrev=False
    )
    where = explain.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--dir", type=Path, help="federation directory (anchor, directory.bin, policy.bin)"
    )
    where.add_argument(
        "--state", type=Path, help="the embedded stack's state directory (bridge up)"
    )
    explain.add_argument(
        "--policy", type=Path, metavar="FILE", help="explain with this policy (TOML or signed)"
    )
    what = explain.add_mutually_exclusive_group(required=True)
    what.add_argument("--header", type=Path, metavar="FILE", help="a message header as JSON")
    what.add_argument("--message-id", metavar="ID", help="a message on the audit trail")
    explain.add_argument("--nats-url", metavar="URL", help="NATS server (with --message-id)")
    explain.add_argument("--seed", type=Path, metavar="FILE", help="nkey seed (ops identity)")
    explain.set_defaults(handler=_explain)


def _load(path: Path, anchor: Path | None) -> tuple[Any, str, str | None]:
    """The policy's rules, a line naming its version and its hash (None for a draft), from
    TOML or a signed file."""
    from ..errors import ConfigError
    from ..federation.directory import load_anchor
    from ..policy import MAGIC, load_policy_file, parse_policy, read_policy_source

    try:
        with path.open("rb") as handle:
            signed = handle.read(4) == MAGIC
    except OSError as exc:
        raise ConfigError(
            f"cannot read policy file {path}: {exc.strerror}", reason="policy.missing"
        ) from exc
    if not signed:
        rules = parse_policy(read_policy_source(path))
        return rules, "not signed (a draft)", None
    if anchor is None:
        raise ConfigError(
            f"{path} is a signed policy: name the trust anchor with --anchor", reason="cli.usage"
        )
    policy = load_policy_file(path, load_anchor(anchor))
    version = f"serial {policy.serial}, signed {format_time(policy.issued_at)}, hash {policy.hash}"
    return policy.rules, version, policy.hash


def _check(args: argparse.Namespace) -> int:
    from ..policy import describe

    rules, version, _ = _load(args.file, args.anchor)
    print(describe(rules, version))
    return 0


def _sign(args: argparse.Namespace) -> int:
    from ..policy import sign_policy_file

    policy, path = sign_policy_file(
        args.dir, args.file, passphrase=passphrase_from_args(args), out=args.out
    )
    print(
        f"policy of federation {policy.federation} signed as serial {policy.serial} "
        f"(hash {policy.hash}) and written to {path}; copy it where brokers and adapters "
        "read it (they take it within their reload interval)"
    )
    return 0


def _federation_dir(args: argparse.Namespace) -> Path:
    if args.dir is not None:
        return Path(args.dir)
    from ..up.state import open_stack

    return open_stack(args.state).layout.federation_dir


def _explain(args: argparse.Namespace) -> int:
    from ..federation.directory import Directory, load_anchor
    from ..federation.operator import ANCHOR_PUB, SIGNED
    from ..policy import SIGNED_POLICY

    fed_dir = _federation_dir(args)
    anchor = fed_dir / ANCHOR_PUB
    directory = Directory.load_file(fed_dir / SIGNED, load_anchor(anchor))
    rules, version, digest = _load(args.policy or fed_dir / SIGNED_POLICY, anchor)
    if args.header is not None:
        return _explain_header(args.header, rules, directory, version)
    return asyncio.run(_explain_message(args, rules, directory, version, digest))


def _explain_header(path: Path, rules: Any, directory: Any, version: str) -> int:
    import msgspec

    from ..errors import ConfigError
    from ..policy import HeaderFacts, explain

    try:
        if path.stat().st_size > 64 * 1024:
            raise ConfigError(f"header file {path} is too large", reason="cli.usage")
        facts = msgspec.json.decode(path.read_bytes(), type=HeaderFacts)
    except OSError as exc:
        raise ConfigError(
            f"cannot read header file {path}: {exc.strerror}", reason="cli.usage"
        ) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # NOTE: msgspec names the field and the constraint, not the value.
        raise ConfigError(f"header file {path}: {exc}", reason="cli.usage") from exc
    decision, text = explain(rules, directory, facts, version)
    print(text)
    return 0 if decision.allowed else 1


async def _explain_message(
    args: argparse.Namespace, rules: Any, directory: Any, version: str, digest: str | None
) -> int:
    """What the audit trail says the broker decided on a message, under which policy version
    (the hash each decision names), and which rule of the given policy the routed flows
    follow."""
    from ..audit import AuditKind, decode_record
    from ..audit.reader import stream_records
    from ..errors import ConfigError
    from ..ids import check_message_id
    from ..nats.identities import Credentials, Identity
    from ..nats.subjects import role_inbox_prefix
    from ..nats.transport import connect

    message_id = check_message_id(args.message_id)
    if args.state is not None:
        from ..up.state import open_stack

        stack = open_stack(args.state)
        url = args.nats_url or stack.nats_url
        seed = args.seed or Credentials(stack.layout.nats.creds_dir).seed_file(Identity.ops())
    elif args.nats_url is None or args.seed is None:
        raise ConfigError(
            "--message-id needs --nats-url and --seed (or --state)", reason="cli.usage"
        )
    else:
        url, seed = args.nats_url, args.seed
    nc = await connect(url, seed, role_inbox_prefix("ops"), "bridge-policy-explain")
    in_force: str | None = None
    decided: list[tuple[str, Any]] = []
    try:
        js = nc.jetstream(timeout=10)
        async for _, data in stream_records(js):
            for event in decode_record(data).all_events:
                if event.kind is AuditKind.POLICY_CHANGED:
                    in_force = event.version
                elif event.message_id == message_id and event.kind in (
                    AuditKind.ROUTED,
                    AuditKind.REJECTED,
                    AuditKind.ACCEPTED,
                ):
                    # A decision names its policy version; on records written before it did,
                    # the version last recorded as changed is the best guess.
                    decided.append((event.version or in_force or "unknown", event))
    finally:
        await nc.close()
    if not decided:
        print(f"message {message_id} is not on the audit trail")
        return 1
    print(f"message {message_id}, explained with the policy {version}")
    for hash_in_force, event in decided:
        if event.kind is AuditKind.ACCEPTED:
            continue
        print(
            f"{format_time(int(event.at.timestamp()))} {event.kind.value} "
            f"{event.sender} -> {event.recipient or '(all recipients)'} {event.message_type} "
            f"purpose {event.purpose} categories {', '.join(event.categories or [])}"
            + (f" [{event.reason}]" if event.reason else "")
            + f"; decided under policy {hash_in_force}"
        )
        if event.kind is AuditKind.ROUTED and event.recipient and event.message_type:
            sender, recipient = directory.agency(event.sender), directory.agency(event.recipient)
            rule = (
                rules.rule_for(sender.role, recipient.role, str(event.message_type))
                if sender and recipient
                else None
            )
            print(
                f"  rule: {rule.name!r} (line {rule.line})"
                if rule
                else "  rule: none in this policy version (it no longer allows this flow)"
            )
        elif event.kind is AuditKind.REJECTED and (event.reason or "").startswith("policy."):
            print(_sender_rules(rules, directory, event))
    if any(hash_in_force != digest for hash_in_force, _ in decided):
        print("note: decided under another policy version than the one shown; its rules may differ")
    return 0


def _sender_rules(rules: Any, directory: Any, event: Any) -> str:
    """The rules a message the policy refused was measured against. The audit trail does not
    name the recipients of a refused message, so: every rule letting the sender's role send
    its type, with what each lets pass."""
    entry = directory.agency(event.sender) if event.sender else None
    kind = str(event.message_type)
    if entry is None:
        return "  rule: none (the sender is not in the key directory)"
    found = [r for r in rules.rules if entry.role in r.senders and kind in r.types]
    if not found:
        return f"  rule: none in this policy version lets a {entry.role} send a {kind}"
    return "\n".join(
        f"  measured against rule {r.name!r} (line {r.line}), to {', '.join(r.recipients)}: "
        f"purposes {', '.join(sorted(r.purposes))}; categories {', '.join(sorted(r.categories))}"
        for r in found
    )
