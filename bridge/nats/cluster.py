"""Server configs for a production NATS deployment: a TLS cluster of three (or five) nodes.

The embedded server (`bridge.nats.server`) is one process on loopback without TLS. A real
deployment runs three (or five) nats-server nodes that replicate JetStream (streams provisioned
with `replicas=3`), with TLS for clients and mutual TLS between the nodes.

This module only renders text: `render_node` writes the config of one node. It includes the
identities' `accounts` block from `bridge.nats.identities` (public keys only) as a file of its
own, so a change of the federation rewrites one file and a reload (SIGHUP) picks it up.
docs/nats.md explains the design; `deploy/nats/` holds the configs rendered for the example.
"""

from __future__ import annotations

import json
from typing import Annotated, Final

import msgspec

from ..errors import ConfigError
from .server import DEFAULT_MAX_PAYLOAD, check_host
from .subjects import HUB_DOMAIN

__all__ = [
    "HUB_DOMAIN",
    "ClusterNode",
    "ClusterSettings",
    "TlsFiles",
    "render_node",
]


_Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
_NAME_RE: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"
_Name = Annotated[str, msgspec.Meta(pattern=_NAME_RE)]


class TlsFiles(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """PEM files of one server: the CA that signed its peers, its certificate and its key."""

    ca_file: str
    cert_file: str
    key_file: str


class ClusterNode(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One hub node: its name, the address others reach it at, and its ports."""

    name: _Name
    host: str
    client_port: _Port = 4222
    cluster_port: _Port = 6222
    monitor_port: _Port | None = None
    # Agencies' leaf nodes connect here (TLS, each with its `leaf-<agency>` nkey).
    leaf_port: _Port | None = None

    def __post_init__(self) -> None:
        check_host(self.host)
        ports = [self.client_port, self.cluster_port, self.monitor_port, self.leaf_port]
        used = [p for p in ports if p is not None]
        if len(set(used)) != len(used):
            raise ConfigError(f"node {self.name}: its ports must differ", reason="nats.cluster")


class ClusterSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The hub cluster. `listen_host` is where every node binds (all interfaces by default)."""

    name: _Name = "bridge"
    nodes: list[ClusterNode]
    listen_host: str = "0.0.0.0"  # noqa: S104 - a cluster is reached from other machines
    max_payload: int = DEFAULT_MAX_PAYLOAD
    sync_always: bool = True
    verify_clients: bool = False

    def __post_init__(self) -> None:
        check_host(self.listen_host)
        if len(self.nodes) not in (3, 5):
            raise ConfigError(
                "a cluster has 3 or 5 nodes (a majority must survive one loss)",
                reason="nats.cluster",
            )
        names = [node.name for node in self.nodes]
        if len(set(names)) != len(names):
            raise ConfigError("node names must differ", reason="nats.cluster")

    def node(self, name: str) -> ClusterNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ConfigError(f"no node {name!r} in the cluster", reason="nats.cluster")

    def leaf_urls(self) -> list[str]:
        """Where agencies' leaf nodes connect: every node that accepts them."""
        return [
            f"tls://{_host(node.host)}:{node.leaf_port}"
            for node in self.nodes
            if node.leaf_port is not None
        ]

    def client_urls(self) -> list[str]:
        """The URLs clients are given: `tls://` to every node."""
        return [f"tls://{_host(n.host)}:{n.client_port}" for n in self.nodes]


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _include(path: str) -> str:
    if path.startswith("/"):
        raise ConfigError(
            "include paths are relative to the config file's directory", reason="nats.cluster"
        )
    return f"include {_q(path)}"


def _q(value: str) -> str:
    if any(ord(c) < 0x20 for c in value):
        raise ConfigError(
            "a path or name in a NATS config has control characters", reason="nats.cluster"
        )
    return json.dumps(value, ensure_ascii=False)


def _tls_block(indent: str, tls: TlsFiles, *, verify: bool, timeout: float = 5.0) -> list[str]:
    lines = [
        f"{indent}tls {{",
        f"{indent}  ca_file: {_q(tls.ca_file)}",
        f"{indent}  cert_file: {_q(tls.cert_file)}",
        f"{indent}  key_file: {_q(tls.key_file)}",
        f"{indent}  timeout: {timeout:g}",
    ]
    if verify:
        lines.append(f"{indent}  verify: true")
    return [*lines, f"{indent}}}"]


def _jetstream(store_dir: str, domain: str, sync_always: bool) -> list[str]:
    lines = ["jetstream {", f"  store_dir: {_q(store_dir)}", f"  domain: {_q(domain)}"]
    if sync_always:
        lines.append('  sync_interval: "always"')
    return [*lines, "}"]


def render_node(
    settings: ClusterSettings,
    name: str,
    *,
    tls: TlsFiles,
    store_dir: str,
    accounts_file: str,
) -> str:
    """The config of hub node `name`.

    Clients must use TLS (`tls://` URLs); nodes authenticate each other by certificate (mutual
    TLS on the cluster port). Include files are paths relative to the config file's directory
    (nats-server resolves `include` so, even for absolute paths). `accounts_file` holds the
    `accounts` block rendered by `render_accounts`.
    """
    node = settings.node(name)
    listen = settings.listen_host
    lines = [
        "# Generated by `bridge init`; re-run it instead of editing this file.",
        "# Public keys only: the seeds stay with the processes that use them.",
        f"server_name: {_q(node.name)}",
        f"listen: {_q(f'{_host(listen)}:{node.client_port}')}",
        f"max_payload: {settings.max_payload}",
    ]
    if node.monitor_port is not None:
        lines.append(f"http: {_q(f'{_host(listen)}:{node.monitor_port}')}")
    lines += _tls_block("", tls, verify=settings.verify_clients)
    lines += _jetstream(store_dir, HUB_DOMAIN, settings.sync_always)
    routes = [
        f"nats-route://{_host(peer.host)}:{peer.cluster_port}"
        for peer in settings.nodes
        if peer.name != node.name
    ]
    lines += [
        "cluster {",
        f"  name: {_q(settings.name)}",
        f"  listen: {_q(f'{_host(listen)}:{node.cluster_port}')}",
        *_tls_block("  ", tls, verify=True),
        "  routes: [",
        *(f"    {_q(route)}" for route in routes),
        "  ]",
        "}",
    ]
    if node.leaf_port is not None:
        # Leaf nodes verify the hub by its certificate and authenticate with their nkey.
        lines += [
            "leafnodes {",
            f"  listen: {_q(f'{_host(listen)}:{node.leaf_port}')}",
            *_tls_block("  ", tls, verify=False),
            "}",
        ]
    lines.append(_include(accounts_file))
    return "\n".join(lines) + "\n"
