"""An agency behind its own NATS leaf node keeps accepting submissions while the hub is away.

Real processes on loopback: the hub (the embedded server with a leaf-node port), the
jobcenter's leaf node (config from `bridge.nats.leaf`), and between them a TCP relay the test
can cut and restore, standing in for the agency's line. The broker and the counselling
service's adapter run at the hub, the jobcenter's adapter behind its leaf. Waits poll with
deadlines; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats.errors
import pytest
from adapter_helpers import (
    JOBCENTER,
    SPDI,
    SUCHT,
    Agency,
    broker_config,
    eventually,
    make_agency,
    referral_request,
)

from bridge.adapters.service import Adapter
from bridge.broker import Broker
from bridge.cli import main
from bridge.config import (
    NatsClientConfig,
)
from bridge.nats.identities import Credentials, Identity
from bridge.nats.leaf import HUB_SEED_FILE, LeafSettings, configure_leaf, is_leaf, leaf_server
from bridge.nats.provision import ProvisionSettings, provision_at, provision_leaf
from bridge.nats.server import (
    NatsServer,
    ServerLayout,
    ServerSettings,
    configure,
    find_nats_server,
    free_port,
)
from bridge.nats.subjects import (
    HUB_DOMAIN,
    inbox_stream,
    outbox_stream,
    report_stream,
    report_subject,
    submit_stream,
    submit_subject,
)
from bridge.nats.transport import connect

pytestmark = pytest.mark.slow

AGENCIES = (JOBCENTER, SUCHT, SPDI)


class Line:
    """A TCP relay from the leaf to the hub's leaf-node port: the agency's line to the hub."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target = target_port
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Refuse new connections and break the open ones, as a line that goes down."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for a, b in self._pairs:
            a.transport.abort()
            b.transport.abort()
        self._pairs.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.transport.abort()
            return
        self._pairs.add((writer, up_writer))
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(_pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    sink.transport.abort()


@dataclass
class Site:
    root: Path
    hub: NatsServer
    hub_creds: Credentials
    leaf: NatsServer
    leaf_creds: Credentials
    line: Line
    session: aiohttp.ClientSession
    agencies: dict[str, Agency] = field(default_factory=dict)
    adapters: dict[str, Adapter] = field(default_factory=dict)
    broker: Broker | None = None

    async def start_broker(self) -> None:
        nats = NatsClientConfig(
            url=self.hub.url,
            seed_file=str(self.hub_creds.seed_file(Identity.broker())),
            request_timeout_seconds=5,
        )
        config = broker_config(self.root, nats)
        self.broker = Broker(config, name="broker-1", fetch_wait=1.0, retry_delay=0.5)
        await self.broker.__aenter__()

    async def start_adapter(self, agency: str, *, behind_leaf: bool) -> Adapter:
        server, creds = (self.leaf, self.leaf_creds) if behind_leaf else (self.hub, self.hub_creds)
        seed = creds.seed_file(Identity.for_agency(agency))
        made = make_agency(self.root / "agencies", server.url, seed, agency)
        if behind_leaf:
            nats_config = msgspec.structs.replace(made.config.nats, hub_domain=HUB_DOMAIN)
            made.config = msgspec.structs.replace(made.config, nats=nats_config)
        adapter = Adapter(made.config, fetch_timeout=1.0)
        await adapter.start()
        self.agencies[agency] = made
        self.adapters[agency] = adapter
        return adapter

    async def submit(self, sender: str, recipient: str) -> str:
        made, adapter = self.agencies[sender], self.adapters[sender]
        headers = {
            **made.auth("messages:send"),
            "Content-Type": "application/json",
            "Idempotency-Key": str(uuid.uuid4()),
        }
        body = msgspec.json.encode(referral_request([recipient]))
        async with self.session.post(
            f"{adapter.url}/v1/messages", data=body, headers=headers
        ) as response:
            answer = await response.json()
            assert response.status == 202, answer
            return str(answer["message_id"])

    async def status(self, sender: str, message_id: str) -> Any:
        made, adapter = self.agencies[sender], self.adapters[sender]
        async with self.session.get(
            f"{adapter.url}/v1/messages/{message_id}", headers=made.auth("messages:read")
        ) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def pull_all(self, agency: str) -> list[str]:
        """Read and acknowledge everything the agency's pull inbox holds right now."""
        made, adapter = self.agencies[agency], self.adapters[agency]
        async with self.session.get(
            f"{adapter.url}/v1/inbox", headers=made.auth("inbox:read")
        ) as response:
            assert response.status == 200
            items = (await response.json())["items"]
        taken = []
        for item in items:
            url = f"{adapter.url}/v1/inbox/{item['message_id']}/ack"
            async with self.session.post(url, headers=made.auth("inbox:ack")) as response:
                assert response.status in (200, 204), await response.text()
                taken.append(item["message_id"])
        return taken

    async def held(self, server: NatsServer, creds: Credentials, stream: str) -> int:
        """How many messages `stream` holds, asked as the admin of that server."""
        admin = Identity.admin()
        nc = await connect(server.url, creds.seed_file(admin), admin.inbox_prefix, "test-admin")
        try:
            return int((await nc.jetstream(timeout=5).stream_info(stream)).state.messages)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await nc.close()


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    hub_layout = ServerLayout.in_state(tmp_path / "hub")
    configure(
        hub_layout, ServerSettings(leaf_port=free_port(), leaf_agencies=(JOBCENTER,)), AGENCIES
    )
    hub = NatsServer.from_layout(hub_layout)
    hub_creds = Credentials(hub_layout.creds_dir)
    settings = msgspec.json.decode(hub_layout.settings_file.read_bytes(), type=ServerSettings)
    assert settings.leaf_port is not None
    line = Line(settings.leaf_port)
    leaf_layout = ServerLayout.in_state(tmp_path / "leaf")
    configure_leaf(
        leaf_layout,
        LeafSettings(agency=JOBCENTER, hub_urls=[f"nats-leaf://127.0.0.1:{line.port}"]),
        hub_creds.seed_file(Identity.leaf(JOBCENTER)),
    )
    leaf = leaf_server(leaf_layout)
    leaf_creds = Credentials(leaf_layout.creds_dir)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    s = Site(tmp_path, hub, hub_creds, leaf, leaf_creds, line, session)
    try:
        await hub.start()
        await line.up()
        await leaf.start()
        await provision_at(
            hub.url,
            hub_creds.seed_file(Identity.admin()),
            AGENCIES,
            ProvisionSettings(leaf_agencies=(JOBCENTER,)),
        )
        admin = Identity.admin()
        nc = await connect(
            leaf.url, leaf_creds.seed_file(admin), admin.inbox_prefix, "test-leaf-admin"
        )
        try:
            await provision_leaf(nc.jetstream(timeout=5), JOBCENTER)
        finally:
            await nc.close()
        yield s
    finally:
        for adapter in s.adapters.values():
            await adapter.stop()
        if s.broker is not None:
            await s.broker.__aexit__(None, None, None)
        await session.close()
        await line.cut()
        await leaf.stop()
        await hub.stop()


async def test_submissions_behind_a_cut_line_are_accepted_and_flow_once_it_returns(
    site: Site,
) -> None:
    await site.start_broker()
    await site.start_adapter(SUCHT, behind_leaf=False)
    await site.start_adapter(JOBCENTER, behind_leaf=True)

    # With the line up, a referral takes the whole way: leaf outbox, hub, broker, inbox, and
    # its status events back to the adapter behind the leaf.
    first = await site.submit(JOBCENTER, SUCHT)
    taken: list[str] = []

    async def pulled(message_id: str) -> bool:
        taken.extend(await site.pull_all(SUCHT))
        return message_id in taken

    await eventually(lambda: pulled(first), within=60, what="the first referral pulled")

    async def outbox_empty() -> bool:
        return await site.held(site.leaf, site.leaf_creds, outbox_stream(JOBCENTER)) == 0

    # The hub acknowledges what it stored to the leaf, which only then drops its copy.
    await eventually(outbox_empty, within=60, what="the leaf's outbox emptied by the hub")
    await site.line.cut()
    during = [await site.submit(JOBCENTER, SUCHT) for _ in range(3)]  # 202 with the hub away
    # They wait on the leaf; nothing reached the hub without the line.
    assert await site.held(site.leaf, site.leaf_creds, outbox_stream(JOBCENTER)) == 3
    assert await site.held(site.hub, site.hub_creds, submit_stream(JOBCENTER)) == 0
    status = await site.status(JOBCENTER, during[0])
    assert [e["state"] for e in status["events"]] == ["accepted"]

    await site.line.up()

    async def all_pulled() -> bool:
        taken.extend(await site.pull_all(SUCHT))
        return set(during) <= set(taken)

    await eventually(all_pulled, within=90, what="every referral sent while the line was down")

    async def timelines_complete() -> bool:
        # A status event may first go to a pull request the cut left behind; it comes again
        # after the consumer's ack wait, so the whole timeline may take that long.
        for message_id in during:
            status = await site.status(JOBCENTER, message_id)
            if {r["agency"]: r.get("state") for r in status["recipients"]} != {SUCHT: "receipted"}:
                return False
            if not {"routed", "delivered"} <= {e["state"] for e in status["events"]}:
                return False
        return True

    await eventually(timelines_complete, within=120, what="the timelines behind the leaf")
    events = [e["state"] for e in (await site.status(JOBCENTER, during[0]))["events"]]
    # Accepted while the line was down, before anything the hub did with it.
    assert events[0] == "accepted"
    assert sorted(events) == ["accepted", "delivered", "receipted", "routed"]
    # A later message is a barrier: no second copy of an earlier one can still be on its way.
    barrier = await site.submit(JOBCENTER, SUCHT)
    await eventually(lambda: pulled(barrier), within=60, what="the barrier referral")
    counts = {m: taken.count(m) for m in [first, *during, barrier]}
    assert counts == dict.fromkeys(counts, 1)
    await eventually(outbox_empty, within=60, what="the leaf's outbox emptied again")


async def test_the_hub_takes_from_a_leaf_only_what_its_agency_may_send(site: Site) -> None:
    # The leaf is the agency's own server: its admin may publish anything there. What
    # reaches the hub is bounded by the hub's user for the leaf, not by the leaf's config.
    admin = Identity.admin()
    # The agency's reply prefix: the hub sends the leaf answers for that one only.
    replies = Identity.for_agency(JOBCENTER).inbox_prefix
    nc = await connect(site.leaf.url, site.leaf_creds.seed_file(admin), replies, "test-forger")
    try:
        js = nc.jetstream(timeout=2)
        for subject in (
            submit_subject(SUCHT),  # as another agency
            report_subject(SUCHT, str(uuid.uuid4())),  # a report in another's name
            f"bridge.inbox.{SUCHT}",  # straight into an inbox
        ):
            with pytest.raises(nats.errors.Error):  # nobody at the hub takes it
                await js.publish(subject, b"forged", headers={"Nats-Msg-Id": str(uuid.uuid4())})
        # The agency's own report does reach the hub: the check above can fail.
        ack = await js.publish(report_subject(JOBCENTER, str(uuid.uuid4())), b"{}")
        assert ack.stream == report_stream(JOBCENTER)
    finally:
        await nc.close()
    for sender in (JOBCENTER, SUCHT):
        assert await site.held(site.hub, site.hub_creds, submit_stream(sender)) == 0
    for recipient in (JOBCENTER, SUCHT):
        assert await site.held(site.hub, site.hub_creds, inbox_stream(recipient)) == 0


def test_bridge_nats_sets_up_a_hub_and_a_leaf_that_nats_server_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hub, leaf = tmp_path / "hub", tmp_path / "leaf"
    port = free_port()
    argv = ["nats", "config", "--state", str(hub), "--leaf-port", str(port)]
    assert main([*argv, *(f"--agency={a}" for a in AGENCIES), f"--leaf-agency={JOBCENTER}"]) == 0
    seed = Credentials(ServerLayout.in_state(hub).creds_dir).seed_file(Identity.leaf(JOBCENTER))
    argv = ["nats", "leaf-config", "--state", str(leaf), "--agency", JOBCENTER]
    assert main([*argv, "--hub", f"nats-leaf://127.0.0.1:{port}", "--hub-seed", str(seed)]) == 0
    for state in (hub, leaf):
        config = ServerLayout.in_state(state).config_file
        assert config.stat().st_mode & 0o077 == 0
        checked = subprocess.run(
            [str(find_nats_server()), "-t", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    seed_conf = ServerLayout.in_state(leaf).root / HUB_SEED_FILE
    assert seed_conf.stat().st_mode & 0o077 == 0
    assert seed.read_text().strip() in seed_conf.read_text()
    assert seed.read_text().strip() not in ServerLayout.in_state(leaf).config_file.read_text()
    assert is_leaf(ServerLayout.in_state(leaf))
    assert not is_leaf(ServerLayout.in_state(hub))
    # An agency outside the federation cannot get a leaf user, and nothing is written for it.
    stranger = ["nats", "config", "--state", str(hub), "--leaf-agency", "unknown-agency"]
    capsys.readouterr()
    assert main(stranger) != 0
    assert "[nats.leaf]" in capsys.readouterr().err
    assert not (ServerLayout.in_state(hub).creds_dir / "leaf-unknown-agency.nk").exists()
