"""A three-node NATS cluster on loopback for tests: TLS everywhere, rendered by bridge's own code.

The node configs come from `bridge.nats.cluster.render_node` (the same code `bridge init` uses),
with certificates from a throwaway CA (tests/pki.py), free ports and temporary stores. Each node
is a `NatsServer`, so it can be killed and started again like the embedded one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client as NATS
from pki import ThrowawayCA

from bridge.nats.cluster import ClusterNode, ClusterSettings, TlsFiles, render_node
from bridge.nats.identities import Credentials, Identity, render_accounts
from bridge.nats.provision import ProvisionReport, ProvisionSettings, provision
from bridge.nats.server import NatsServer, free_port
from bridge.nats.transport import connect

NODES = ("n1", "n2", "n3")


@dataclass
class Cluster:
    root: Path
    settings: ClusterSettings
    ca: ThrowawayCA
    credentials: Credentials
    agencies: tuple[str, ...]
    servers: dict[str, NatsServer] = field(default_factory=dict)
    clients: list[NATS] = field(default_factory=list)

    @classmethod
    def prepare(cls, root: Path, agencies: Sequence[str]) -> Cluster:
        root.mkdir(parents=True, exist_ok=True)
        ca = ThrowawayCA(root / "tls")
        credentials = Credentials.create(root / "creds")
        credentials.ensure_federation(agencies)
        accounts = root / "accounts.conf"
        accounts.write_text(render_accounts(credentials, agencies))
        nodes = [
            ClusterNode(
                name=name,
                host="127.0.0.1",
                client_port=free_port(),
                cluster_port=free_port(),
            )
            for name in NODES
        ]
        settings = ClusterSettings(name="test", nodes=nodes, listen_host="127.0.0.1")
        cluster = cls(root, settings, ca, credentials, tuple(sorted(agencies)))
        for node in nodes:
            issued = ca.issue(node.name)
            tls = TlsFiles(
                ca_file=str(ca.ca_file),
                cert_file=str(issued.cert_file),
                key_file=str(issued.key_file),
            )
            node_dir = root / node.name
            node_dir.mkdir()
            config = node_dir / "nats-server.conf"
            config.write_text(
                render_node(
                    settings,
                    node.name,
                    tls=tls,
                    store_dir=str(node_dir / "jetstream"),
                    accounts_file="../accounts.conf",
                )
            )
            cluster.servers[node.name] = NatsServer(
                config_file=config,
                log_file=node_dir / "nats-server.log",
                run_dir=node_dir / "run",
                host="127.0.0.1",
                port=node.client_port,
                start_timeout=30.0,
            )
        return cluster

    @property
    def urls(self) -> list[str]:
        return self.settings.client_urls()

    def tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca.ca_file))

    async def start(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for server in self.servers.values():
                tg.create_task(server.start())

    async def connect(self, identity: Identity, name: str | None = None) -> NATS:
        nc = await connect(
            self.urls,
            self.credentials.seed_file(identity),
            identity.inbox_prefix,
            name or f"test-{identity.name}",
            first_connect_timeout=20.0,
            reconnect_time_wait=1,
            tls=self.tls_context(),
        )
        self.clients.append(nc)
        return nc

    async def provision(
        self, agencies: Sequence[str] | None = None, settings: ProvisionSettings | None = None
    ) -> ProvisionReport:
        nc = await self.connect(Identity.admin(), "test-provision")
        try:
            return await provision(
                nc.jetstream(timeout=10),
                self.agencies if agencies is None else agencies,
                settings or ProvisionSettings(replicas=3),
                unavailable_wait=60.0,
            )
        finally:
            await self.close_client(nc)

    async def stream_leader(self, stream: str) -> str:
        nc = await self.connect(Identity.admin(), "test-leader")
        try:
            info = await nc.jetstream(timeout=10).stream_info(stream)
        finally:
            await self.close_client(nc)
        assert info.cluster is not None
        assert info.cluster.leader
        return str(info.cluster.leader)

    async def close_client(self, nc: NATS) -> None:
        if nc in self.clients:
            self.clients.remove(nc)
        if not nc.is_closed:
            await nc.close()

    async def stop(self) -> None:
        for nc in list(self.clients):
            await self.close_client(nc)
        for server in self.servers.values():
            await server.stop()
