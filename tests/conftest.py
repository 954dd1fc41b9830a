"""Shared fixtures: a real, private nats-server per test, with a small provisioned federation.

`nats_env` is what most tests want: a fresh server on a free loopback port with its own store,
identities for `FEDERATION`, and streams, consumers and buckets provisioned. Connect as any
identity with `await nats_env.connect(Identity.for_agency("jobcenter-unna"))`; connections are
closed and the server stopped when the test ends. Override the `nats_federation` fixture in a
test module to use other agencies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from bridge.nats.identities import Credentials, Identity
from bridge.nats.provision import ProvisionReport, ProvisionSettings, provision
from bridge.nats.server import NatsServer, ServerLayout, ServerSettings, configure
from bridge.nats.transport import connect

FEDERATION = ("jobcenter-unna", "suchtberatung-unna", "spdi-unna")


@dataclass
class NatsClient:
    """A connection as one identity, with the asynchronous errors the server sent it."""

    identity: Identity
    nc: NATS
    js: JetStreamContext
    errors: list[Exception] = field(default_factory=list)

    async def permission_errors(self) -> list[str]:
        """Permission violations reported so far, lowercased (as nats-py reports them)."""
        await self.nc.flush(timeout=5)
        found = (str(e).lower() for e in self.errors)
        return [text for text in found if "permissions violation" in text]

    async def expect_violations(self, *fragments: str, within: float = 3.0) -> list[str]:
        """Wait until the server has reported a violation containing each fragment.

        The server's -ERR can arrive after the PONG of a flush, so this polls (bounded).
        """
        wanted = [fragment.lower() for fragment in fragments]
        deadline = asyncio.get_running_loop().time() + within
        while True:
            seen = await self.permission_errors()
            missing = [w for w in wanted if not any(w in text for text in seen)]
            if not missing:
                return seen
            if asyncio.get_running_loop().time() >= deadline:
                raise AssertionError(f"no permission violation for {missing}; got {seen}")
            await asyncio.sleep(0.02)


@dataclass
class NatsEnv:
    """A running embedded server and the identities of a federation."""

    layout: ServerLayout
    settings: ServerSettings
    server: NatsServer
    credentials: Credentials
    agencies: tuple[str, ...]
    clients: list[NatsClient] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    def seed_file(self, identity: Identity) -> Path:
        return self.credentials.seed_file(identity)

    async def connect(self, identity: Identity, *, api_timeout: float = 2.0) -> NatsClient:
        """Connect as `identity` with bridge's options; closed when the test ends."""
        errors: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            errors.append(exc)

        nc = await connect(
            self.url,
            self.seed_file(identity),
            identity.inbox_prefix,
            f"test-{identity.name}",
            first_connect_timeout=5.0,
            reconnect_time_wait=1,
            error_cb=on_error,
        )
        client = NatsClient(identity, nc, nc.jetstream(timeout=api_timeout), errors)
        self.clients.append(client)
        return client

    async def admin(self) -> NatsClient:
        return await self.connect(Identity.admin())

    async def provision(
        self, agencies: Sequence[str] | None = None, settings: ProvisionSettings | None = None
    ) -> ProvisionReport:
        admin = await self.admin()
        wanted = self.agencies if agencies is None else agencies
        report = await provision(admin.js, wanted, settings)
        await self.close_client(admin)
        return report

    async def close_client(self, client: NatsClient) -> None:
        if client in self.clients:
            self.clients.remove(client)
        await client.nc.close()

    async def close(self) -> None:
        for client in list(self.clients):
            await self.close_client(client)
        await self.server.stop()


@pytest.fixture
def nats_federation() -> tuple[str, ...]:
    """The agencies of the test federation; override in a module for another one."""
    return FEDERATION


@pytest.fixture
async def nats_env_unprovisioned(
    tmp_path: Path, nats_federation: tuple[str, ...]
) -> AsyncIterator[NatsEnv]:
    """A fresh server with identities for the federation, but no streams yet."""
    layout = ServerLayout.in_state(tmp_path / "state")
    settings = configure(layout, ServerSettings(), nats_federation)
    server = NatsServer.from_layout(layout)
    await server.start()
    env = NatsEnv(
        layout=layout,
        settings=settings,
        server=server,
        credentials=Credentials(layout.creds_dir),
        agencies=tuple(nats_federation),
    )
    try:
        yield env
    finally:
        await env.close()


@pytest.fixture
async def nats_env(nats_env_unprovisioned: NatsEnv) -> NatsEnv:
    """A fresh server with identities, streams, consumers and KV buckets for the federation."""
    await nats_env_unprovisioned.provision()
    return nats_env_unprovisioned
