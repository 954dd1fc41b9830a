"""`bridge nats`: set up, run and provision the embedded NATS server.

`config` creates the identities of a federation and the server config under `<state>/nats/`;
`serve` runs the server in the foreground; `provision` creates streams, consumers and buckets.
Re-running `config` with more agencies adds them; a running `serve` picks them up on SIGHUP.
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
    config.set_defaults(handler=_config)

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
    settings = ServerSettings(**{**msgspec.structs.asdict(base), **changes})
    if changes.get("port") == "auto" and layout.settings_file.exists():
        layout.settings_file.unlink()  # asked for a new free port: forget the old one
    stored = configure(layout, settings, agencies)
    print(f"nats config:  {layout.config_file}")
    print(f"identities:   {layout.creds_dir} ({len(agencies)} agencies, broker, ops, admin)")
    print(f"url:          {stored.url}")
    print(f"durability:   {'fsync every write' if stored.sync_always else 'server default'}")
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
    from ..nats.server import NatsServer, ServerLayout

    server = NatsServer.from_layout(ServerLayout.in_state(args.state))
    return asyncio.run(_run_server(server, ServerLayout.in_state(args.state).log_file))


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
    from ..nats.provision import provision_at
    from ..nats.server import ServerLayout, load_settings
    from ..policy import provision_settings
    from .retention import retention_policy

    changes: dict[str, Any] = {}
    if args.config is not None:
        return _provision_deployment(args, changes)
    policy = retention_policy(args.policy, args.anchor, args.state)
    layout = ServerLayout.in_state(args.state)
    credentials = Credentials(layout.creds_dir)
    agencies = args.agency or list(credentials.agencies())
    url = args.url or load_settings(layout).url
    if args.duplicate_window is not None:
        changes["duplicate_window"] = args.duplicate_window
    if args.replicas is not None:
        changes["replicas"] = args.replicas
    settings = provision_settings(policy.rules, **changes)
    admin_seed = credentials.seed_file(Identity.admin())
    report = asyncio.run(provision_at(url, admin_seed, agencies, settings))
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
