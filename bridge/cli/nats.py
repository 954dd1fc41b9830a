"""`bridge nats`: set up, run and provision the embedded NATS server.

`config` creates the identities of a federation and the server config under `<state>/nats/`;
`serve` runs the server in the foreground; `provision` creates streams, consumers and buckets.
Re-running `config` with more agencies adds them; a running `serve` picks them up on SIGHUP.
`leaf-config` prepares an agency's own leaf node instead (docs/nats.md); `serve` and
`provision` then run and provision that leaf.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(commands: Any) -> None:
    parser = commands.add_parser("nats", help="set up, run and provision the embedded NATS server")
    sub = parser.add_subparsers(dest="nats_command", metavar="SUBCOMMAND", required=True)

    config = sub.add_parser("config", help="create NATS identities and the server config")
    _state_arg(config)
    config.add_argument(
        "--agency",
        action="append",
        default=[],
        metavar="ID",
        help="agency of the federation (repeatable; added to those already configured)",
    )
    config.add_argument("--host", help="listen address (default 127.0.0.1)")
    config.add_argument("--port", help="client port, or 'auto' for a free one (default: keep)")
    config.add_argument("--max-payload", type=int, metavar="BYTES", help="largest message")
    config.add_argument(
        "--sync",
        choices=("always", "server-default"),
        help="fsync every write before acknowledging it (always), or periodically",
    )
    config.add_argument("--monitor-port", type=int, help="enable HTTP monitoring on this port")
    config.add_argument("--max-file-store", type=int, metavar="BYTES", help="JetStream disk cap")
    config.add_argument("--leaf-port", type=int, help="accept agencies' leaf nodes on this port")
    config.add_argument(
        "--leaf-agency",
        action="append",
        default=[],
        metavar="ID",
        help="agency whose leaf node may connect (repeatable; added to those configured)",
    )
    config.set_defaults(handler=_config)

    leaf = sub.add_parser("leaf-config", help="prepare an agency's own NATS leaf node")
    _state_arg(leaf)
    leaf.add_argument("--agency", required=True, metavar="ID", help="the agency it serves")
    leaf.add_argument(
        "--hub",
        action="append",
        required=True,
        metavar="URL",
        help="the hub's leaf-node URL, nats-leaf:// or tls:// (repeatable: each hub node)",
    )
    leaf.add_argument(
        "--hub-seed", type=Path, required=True, metavar="FILE", help="the seed of leaf-<agency>"
    )
    leaf.add_argument("--hub-ca", metavar="FILE", help="CA of the hub's TLS certificates")
    leaf.add_argument("--host", default="127.0.0.1", help="listen address for the adapter")
    leaf.add_argument("--port", default="auto", help="client port, or 'auto' (default: keep)")
    leaf.set_defaults(handler=_leaf_config)

    serve = sub.add_parser("serve", help="run the embedded nats-server until Ctrl-C or SIGTERM")
    _state_arg(serve)
    serve.set_defaults(handler=_serve)

    provision = sub.add_parser("provision", help="create or update streams, consumers and buckets")
    _state_arg(provision)
    provision.add_argument("--url", help="NATS URL (default: the embedded server's)")
    provision.add_argument(
        "--agency",
        action="append",
        default=[],
        metavar="ID",
        help="agency to provision (repeatable; default: every configured agency)",
    )
    provision.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a deployment's provision.toml (bridge init) instead of --state",
    )
    provision.add_argument(
        "--policy",
        type=Path,
        metavar="FILE",
        help="the signed routing policy (policy.bin) that sets every age limit "
        "(default: the embedded stack's, under --state)",
    )
    provision.add_argument(
        "--anchor", type=Path, metavar="FILE", help="the trust anchor's public record for --policy"
    )
    provision.add_argument("--duplicate-window", type=float, metavar="SECONDS")
    provision.add_argument("--replicas", type=int, choices=(1, 3, 5))
    provision.set_defaults(handler=_provision)


def _state_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", type=Path, default=Path(".bridge"), help="state directory")


def _config(args: argparse.Namespace) -> int:
    import msgspec

    from ..errors import ConfigError
    from ..nats.identities import Credentials, check_federation
    from ..nats.server import ServerLayout, ServerSettings, configure, load_settings

    layout = ServerLayout.in_state(args.state)
    given = check_federation(args.agency)  # before anything is written
    known = Credentials(layout.creds_dir).agencies() if layout.creds_dir.exists() else ()
    agencies = sorted(set(known) | set(given))
    if not agencies:
        raise ConfigError("name at least one --agency", reason="nats.no_agencies")
    base = load_settings(layout) if layout.settings_file.exists() else ServerSettings()
    changes: dict[str, Any] = {}
    if args.host is not None:
        changes["host"] = args.host
    if args.port is not None:
        changes["port"] = _port(args.port)
    if args.max_payload is not None:
        changes["max_payload"] = args.max_payload
    if args.sync is not None:
        changes["sync_always"] = args.sync == "always"
    if args.monitor_port is not None:
        changes["monitor_port"] = args.monitor_port
    if args.max_file_store is not None:
        changes["max_file_store"] = args.max_file_store
    if args.leaf_port is not None:
        changes["leaf_port"] = args.leaf_port
    if args.leaf_agency:
        changes["leaf_agencies"] = tuple(
            sorted(set(base.leaf_agencies) | set(check_federation(args.leaf_agency)))
        )
    settings = ServerSettings(**{**msgspec.structs.asdict(base), **changes})
    if changes.get("port") == "auto" and layout.settings_file.exists():
        layout.settings_file.unlink()  # asked for a new free port: forget the old one
    stored = configure(layout, settings, agencies)
    print(f"nats config:  {layout.config_file}")
    print(f"identities:   {layout.creds_dir} ({len(agencies)} agencies, broker, ops, admin)")
    print(f"url:          {stored.url}")
    print(f"durability:   {'fsync every write' if stored.sync_always else 'server default'}")
    if stored.leaf_port is not None:
        leaves = ", ".join(stored.leaf_agencies) or "none yet"
        print(f"leaf nodes:   port {stored.leaf_port} for {leaves}")
    return 0


def _leaf_config(args: argparse.Namespace) -> int:
    from ..nats.leaf import HUB_SEED_FILE, LeafSettings, configure_leaf
    from ..nats.server import ServerLayout

    layout = ServerLayout.in_state(args.state)
    settings = LeafSettings(
        agency=args.agency,
        hub_urls=args.hub,
        host=args.host,
        port=_port(args.port),  # type: ignore[arg-type]
        hub_tls_ca_file=None if args.hub_ca is None else str(Path(args.hub_ca).resolve()),
    )
    stored = configure_leaf(layout, settings, args.hub_seed)
    print(f"leaf config:  {layout.config_file} (the hub seed in {layout.root / HUB_SEED_FILE})")
    print(f"identities:   {layout.creds_dir} (agency-{stored.agency} for the adapter, admin)")
    print(f'url:          {stored.url} (the adapter\'s [nats] url, with hub_domain = "hub")')
    return 0


def _port(value: str) -> int | str:
    from ..errors import ConfigError

    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise ConfigError("--port must be a number or 'auto'", reason="nats.settings") from None


def _serve(args: argparse.Namespace) -> int:
    from ..nats.leaf import is_leaf, leaf_server
    from ..nats.server import NatsServer, ServerLayout

    layout = ServerLayout.in_state(args.state)
    server = leaf_server(layout) if is_leaf(layout) else NatsServer.from_layout(layout)
    return asyncio.run(_run_server(server, layout.log_file))


async def _run_server(server: Any, log_file: Path) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
    try:
        await server.start()
        print(f"nats-server ready on {server.url}; log: {log_file}; Ctrl-C stops it", flush=True)
        exited = asyncio.create_task(server.wait())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not exited.done():
                exited.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await exited
        if exited.done() and not exited.cancelled():
            print(f"nats-server exited with code {exited.result()}:\n{server.log_tail()}")
            return 1
        return 0
    finally:
        await server.stop()
        for sig in (*signals, signal.SIGHUP):
            loop.remove_signal_handler(sig)


def _provision(args: argparse.Namespace) -> int:
    from ..nats.identities import Credentials, Identity
    from ..nats.leaf import is_leaf
    from ..nats.provision import provision_at
    from ..nats.server import ServerLayout, load_settings
    from ..policy import provision_settings
    from .retention import retention_policy

    changes: dict[str, Any] = {}
    if args.config is not None:
        return _provision_deployment(args, changes)
    layout = ServerLayout.in_state(args.state)
    if is_leaf(layout):
        return _provision_leaf(args, layout)
    policy = retention_policy(args.policy, args.anchor, args.state)
    credentials = Credentials(layout.creds_dir)
    agencies = args.agency or list(credentials.agencies())
    server = load_settings(layout)
    url = args.url or server.url
    if args.duplicate_window is not None:
        changes["duplicate_window"] = args.duplicate_window
    if args.replicas is not None:
        changes["replicas"] = args.replicas
    changes["leaf_agencies"] = tuple(a for a in server.leaf_agencies if a in agencies)
    settings = provision_settings(policy.rules, **changes)
    admin_seed = credentials.seed_file(Identity.admin())
    report = asyncio.run(provision_at(url, admin_seed, agencies, settings))
    print(report)
    return 0


def _provision_leaf(args: argparse.Namespace, layout: Any) -> int:
    from ..errors import ConfigError
    from ..nats.identities import Credentials, Identity
    from ..nats.leaf import load_leaf_settings
    from ..nats.provision import provision_leaf_at
    from ..policy import provision_settings
    from .retention import retention_policy

    if args.agency or args.replicas not in (None, 1):
        raise ConfigError(
            "a leaf node serves one agency with one copy: leave out --agency and --replicas",
            reason="nats.settings",
        )
    settings = load_leaf_settings(layout)
    policy = retention_policy(args.policy, args.anchor, None)  # the outbox's age limit
    changes: dict[str, Any] = {}
    if args.duplicate_window is not None:
        changes["duplicate_window"] = args.duplicate_window
    admin_seed = Credentials(layout.creds_dir).seed_file(Identity.admin())
    report = asyncio.run(
        provision_leaf_at(
            args.url or settings.url,
            admin_seed,
            settings.agency,
            provision_settings(policy.rules, **changes),
        )
    )
    print(report)
    return 0


def _provision_deployment(args: argparse.Namespace, changes: dict[str, Any]) -> int:
    from ..config import load_provision_config, nats_tls_context
    from ..errors import ConfigError
    from ..nats.provision import provision_at
    from ..policy import provision_settings
    from .retention import retention_policy

    if args.url or args.agency or args.policy or args.anchor:
        raise ConfigError(
            "--config names the URLs, agencies and policy; leave out --url, --agency, "
            "--policy and --anchor",
            reason="nats.settings",
        )
    config = load_provision_config(args.config)
    policy = retention_policy(
        config.path(config.policy.file), config.path(config.policy.anchor), None
    )
    changes["replicas"] = args.replicas or config.replicas
    changes["leaf_agencies"] = tuple(config.leaf_agencies)
    changes.update(config.quotas.settings())
    if args.duplicate_window is not None:
        changes["duplicate_window"] = args.duplicate_window
    report = asyncio.run(
        provision_at(
            config.nats.url,
            config.path(config.nats.seed_file),
            config.agencies,
            provision_settings(policy.rules, **changes),
            tls=nats_tls_context(config.nats, config.path),
        )
    )
    print(report)
    return 0
