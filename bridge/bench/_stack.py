"""The stack `bridge bench e2e` measures: the demo federation of `bridge up`, as real processes.

A fresh state directory (free ports, new keys) below the run's directory; nats-server with
bridge's durability settings; the broker and the three demo adapters as child processes with
their own logs, each waited for until it is ready. The local systems around them live in the
benchmark process (`bridge.bench._local`). `stop()` stops the children, last started first,
then nats-server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import aiohttp
import nats.errors
from nats.aio.client import Client as NATS

from ..nats.identities import Credentials, Identity
from ..nats.provision import provision_at
from ..nats.server import NatsServer
from ..nats.subjects import BROKER_CONSUMER, submit_stream
from ..nats.transport import connect
from ..up.layout import DEMO_AGENCIES
from ..up.state import Stack, prepare
from ..up.supervisor import ChildSpec, Probe, Supervisor
from ._procfs import Watched
from ._timing import Progress

__all__ = ["SENDER", "BenchStack"]

SENDER: Final = "jobcenter-unna"
_PROBE_TIMEOUT: Final = 2.0
_START_TIMEOUT: Final = 120.0  # a loaded 2-core machine starts Python processes slowly


class BenchStack:
    """nats-server, broker and adapters of a new demo state directory below `root`."""

    def __init__(self, root: Path) -> None:
        self.stack: Stack = prepare(root / "state", port_base=0)
        self.server = NatsServer.from_layout(self.stack.layout.nats)
        self.supervisor = Supervisor()
        self.admin: NATS | None = None
        self.processes: list[Watched] = []

    def __repr__(self) -> str:
        return f"BenchStack({self.stack.layout.root}, processes={self.processes!r})"

    @property
    def layout_root(self) -> Path:
        return self.stack.layout.root

    def admin_seed(self) -> Path:
        return Credentials(self.stack.layout.nats.creds_dir).seed_file(Identity.admin())

    def seed(self, identity: Identity) -> Path:
        return Credentials(self.stack.layout.nats.creds_dir).seed_file(identity)

    async def start(self, progress: Progress) -> None:
        layout = self.stack.layout
        agencies = [agency.id for agency in DEMO_AGENCIES]
        await self.server.start()
        progress(f"nats-server ready on {self.server.url}")
        await provision_at(self.server.url, self.admin_seed(), agencies)
        self.admin = await connect(
            self.server.url, self.admin_seed(), Identity.admin().inbox_prefix, "bridge-bench-e2e"
        )
        assert self.server.pid is not None
        self.processes.append(Watched("nats-server", self.server.pid))
        async with aiohttp.ClientSession() as session:
            broker = await self.supervisor.start(
                _component("broker", layout.broker_config, layout.broker_log, self._broker_probe())
            )
            self.processes.append(Watched("broker", broker.pid))
            progress("broker ready")
            for agency in DEMO_AGENCIES:
                url = f"{self.stack.adapter_url(agency.id)}/readyz"
                child = await self.supervisor.start(
                    _component(
                        f"adapter {agency.id}",
                        layout.adapter_config(agency.id),
                        layout.adapter_log(agency.id),
                        _http_probe(session, url),
                    )
                )
                self.processes.append(Watched(f"adapter {agency.id}", child.pid))
                progress(f"adapter {agency.id} ready ({agency.delivery})")
        self.processes.append(Watched("bench (local systems)", os.getpid()))

    def _broker_probe(self) -> Probe:
        """Ready once the broker has a pull request waiting on every agency's submit stream."""
        admin = self.admin
        assert admin is not None

        async def probe() -> bool:
            js = admin.jetstream(timeout=_PROBE_TIMEOUT)
            try:
                for agency in DEMO_AGENCIES:
                    info = await js.consumer_info(submit_stream(agency.id), BROKER_CONSUMER)
                    if not info.num_waiting:
                        return False
            except (nats.errors.Error, TimeoutError, OSError):
                return False
            return True

        return probe

    def dead(self) -> Sequence[str]:
        """Names of children that exited although nobody stopped them."""
        return [c.name for c in self.supervisor.children if c.returncode is not None]

    async def stop(self) -> None:
        try:
            await self.supervisor.stop_all()
        finally:
            if self.admin is not None:
                with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
                    async with asyncio.timeout(5.0):
                        await self.admin.close()
            await self.server.stop()


def _component(name: str, config: Path, log_file: Path, probe: Probe) -> ChildSpec:
    return ChildSpec(
        name=name,
        argv=(sys.executable, "-m", "bridge", name.split()[0], "-c", str(config)),
        log_file=log_file,
        ready=probe,
        start_timeout=_START_TIMEOUT,
    )


def _http_probe(session: aiohttp.ClientSession, url: str) -> Probe:
    async def probe() -> bool:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=_PROBE_TIMEOUT)) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    return probe
