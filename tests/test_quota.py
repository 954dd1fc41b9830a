"""Per-agency quotas: one agency floods; it hears 429, the recipient's inbox stays within its
quota, the broker says why it waits, and the other agencies keep flowing.

Quotas are limits of the store itself (ProvisionSettings): each sender's submit stream holds at
most `submit_max_msgs` messages and `submit_max_bytes` bytes, and each recipient's inbox stream at
most `inbox_max_msgs_per_recipient` messages and `inbox_max_bytes_per_recipient` bytes. Small
quotas here make the flood short.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from adapter_helpers import (
    JOBCENTER,
    SPDI,
    SUCHT,
    Agency,
    agency_seed,
    broker_config,
    eventually,
    fed,
    make_agency,
    referral_request,
    seal_to,
)
from nats.js import api
from policy_helpers import POLICY, signed_policy
from prometheus_client import generate_latest

from bridge.adapters.service import Adapter
from bridge.broker import Broker
from bridge.cli import main
from bridge.config import (
    NatsClientConfig,
    load_provision_config,
)
from bridge.errors import ConfigError, TransportError
from bridge.ids import new_message_id
from bridge.nats.identities import Identity
from bridge.nats.provision import PENDING_NOTE_BYTES, Action, ProvisionSettings
from bridge.nats.subjects import (
    PENDING_STREAM,
    consent_stream,
    inbox_consumer,
    inbox_stream,
    inbox_subject,
    submit_stream,
    submit_subject,
)
from bridge.nats.transport import bind_pull, fetch, publish_durable

QUOTA = 3
# The demo policy, and for this test only: the social-psychiatric service may refer back.
QUOTA_POLICY = (
    POLICY
    + """
[[flows]]
name = "test-service-refers-back"
from = "social-psychiatric-service"
to = "jobcenter"
types = ["referral"]
purposes = ["counselling"]
categories = ["identity", "contact", "addiction"]
consent_required = false
"""
)


def write_quota_policy(path: Path) -> None:
    path.write_bytes(signed_policy(fed(), QUOTA_POLICY)[0])


@pytest.fixture
async def env(nats_env_unprovisioned: Any) -> Any:
    await nats_env_unprovisioned.provision(
        settings=ProvisionSettings(submit_max_msgs=QUOTA, inbox_max_msgs_per_recipient=QUOTA)
    )
    return nats_env_unprovisioned


class Site:
    def __init__(self, env: Any, root: Path, session: aiohttp.ClientSession) -> None:
        self.env = env
        self.root = root
        self.session = session
        self.adapters: list[tuple[Adapter, Agency]] = []
        self.broker: Broker | None = None

    async def adapter(self, agency: str) -> tuple[Adapter, Agency]:
        made = make_agency(self.root, self.env.url, agency_seed(self.env, agency), agency)
        write_quota_policy(Path(made.config.policy.file))
        adapter = Adapter(made.config, fetch_timeout=1.0)
        await adapter.start()
        self.adapters.append((adapter, made))
        return adapter, made

    async def submit(self, sender: tuple[Adapter, Agency], recipient: str) -> tuple[int, Any]:
        adapter, agency = sender
        headers = {
            **agency.auth("messages:send"),
            "Content-Type": "application/json",
            "Idempotency-Key": str(uuid.uuid4()),
        }
        async with self.session.post(
            f"{adapter.url}/v1/messages",
            data=msgspec.json.encode(referral_request([recipient])),
            headers=headers,
        ) as response:
            return response.status, (await response.json(), response.headers)

    async def start_broker(self) -> Broker:
        nats = NatsClientConfig(
            url=self.env.url, seed_file=str(self.env.seed_file(Identity.broker()))
        )
        policy = signed_policy(fed(), QUOTA_POLICY)[0]
        # Consents are another module's subject.
        config = broker_config(self.root, nats, policy=policy)
        self.broker = Broker(config, fetch_wait=0.5, retry_delay=0.2)
        await self.broker.__aenter__()
        return self.broker

    async def waiting(self, stream: str, subject: str) -> int:
        admin = await self.env.admin()
        try:
            info = await admin.js.stream_info(stream, subjects_filter=subject)
        finally:
            await self.env.close_client(admin)
        return int((info.state.subjects or {}).get(subject, 0))

    async def close(self) -> None:
        for adapter, _ in self.adapters:
            await adapter.stop()
        if self.broker is not None:
            await self.broker.__aexit__(None, None, None)
        await self.session.close()


@pytest.fixture
async def site(env: Any, tmp_path: Path) -> AsyncIterator[Site]:
    s = Site(env, tmp_path, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)))
    try:
        yield s
    finally:
        await s.close()


async def test_a_flooding_agency_hears_429_and_the_others_keep_flowing(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    flooder = await site.adapter(JOBCENTER)
    other = await site.adapter(SPDI)

    # No broker yet: the flooder's own submit stream fills up to its quota, then refuses.
    for _ in range(QUOTA):
        status, _ = await site.submit(flooder, SUCHT)
        assert status == 202
    status, (problem, headers) = await site.submit(flooder, SUCHT)
    assert status == 429, problem
    assert problem["code"] == "quota.sender_full"
    assert int(headers["Retry-After"]) >= 1
    # Another agency's quota is its own.
    status, _ = await site.submit(other, JOBCENTER)
    assert status == 202

    caplog.set_level(logging.WARNING, logger="bridge.broker")
    broker = await site.start_broker()

    async def first_round_routed() -> bool:
        return broker.statistics().routed == QUOTA + 1

    await eventually(first_round_routed, what="the first submissions routed")
    assert await site.waiting(inbox_stream(SUCHT), inbox_subject(SUCHT)) == QUOTA

    # The recipient's inbox is at its quota: more from the flooder waits in the flooder's own
    # stream (the broker says why), until that is full too and the flooder hears 429 again.
    refused = 0
    for _ in range(QUOTA + 1):
        status, (problem, _) = await site.submit(flooder, SUCHT)
        if status == 429:
            refused += 1
            assert problem["code"] == "quota.sender_full"
        else:
            assert status == 202, problem
    assert refused >= 1

    async def broker_says_why() -> bool:
        return "quota.recipient_full" in caplog.text

    await eventually(broker_says_why, what="the broker's reason code")
    assert await site.waiting(inbox_stream(SUCHT), inbox_subject(SUCHT)) == QUOTA
    assert await site.waiting(submit_stream(JOBCENTER), f"bridge.submit.{JOBCENTER}") == QUOTA

    # Meanwhile everybody else's traffic flows.
    routed = broker.statistics().routed
    status, _ = await site.submit(other, JOBCENTER)
    assert status == 202

    async def other_routed() -> bool:
        return broker.statistics().routed == routed + 1

    await eventually(other_routed, what="the other agency's message routed")
    assert await site.waiting(inbox_stream(JOBCENTER), inbox_subject(JOBCENTER)) == 2
    assert await site.waiting(inbox_stream(SUCHT), inbox_subject(SUCHT)) == QUOTA


async def test_quotas_of_a_running_store_are_changed_in_place(nats_env: Any) -> None:
    settings = ProvisionSettings(
        submit_max_msgs=7,
        inbox_max_msgs_per_recipient=9,
        inbox_max_bytes_per_recipient=4 * ProvisionSettings().max_msg_size,
    )
    report = await nats_env.provision(settings=settings)
    updated = {change.name: change.fields for change in report.by_action(Action.UPDATED)}
    assert "max_msgs" in updated[submit_stream(JOBCENTER)]
    assert {"max_msgs", "max_bytes"} <= set(updated[inbox_stream(SUCHT)])
    admin = await nats_env.admin()
    for recipient in (JOBCENTER, SPDI, SUCHT):  # each recipient's own quota
        inbox = (await admin.js.stream_info(inbox_stream(recipient))).config
        assert (inbox.max_msgs, inbox.max_bytes) == (9, settings.inbox_max_bytes_per_recipient)
        assert inbox.discard == api.DiscardPolicy.NEW
    assert (await admin.js.stream_info(submit_stream(SPDI))).config.max_msgs == 7


async def test_a_sender_at_its_byte_quota_is_refused_as_full_and_the_others_are_not(
    nats_env_unprovisioned: Any,
) -> None:
    # The smallest byte quota the settings allow: one largest message. Each publish here is
    # under half of it, so the third is over the sender's bytes while far under its messages.
    settings = ProvisionSettings()
    await nats_env_unprovisioned.provision(
        settings=ProvisionSettings(submit_max_bytes=settings.max_msg_size)
    )
    payload = b"\0" * (settings.max_msg_size * 4 // 10)
    flooder = await nats_env_unprovisioned.connect(Identity.for_agency(JOBCENTER))
    for _ in range(2):
        await publish_durable(
            flooder.js, submit_subject(JOBCENTER), payload, msg_id=str(uuid.uuid4())
        )
    with pytest.raises(TransportError) as full:
        await publish_durable(
            flooder.js, submit_subject(JOBCENTER), payload, msg_id=str(uuid.uuid4())
        )
    assert full.value.reason == "transport.stream_full"  # the adapter's 429 quota.sender_full
    other = await nats_env_unprovisioned.connect(Identity.for_agency(SPDI))
    ack = await publish_durable(other.js, submit_subject(SPDI), payload, msg_id=str(uuid.uuid4()))
    assert ack.stream == submit_stream(SPDI)


async def test_a_recipients_byte_quota_holds_the_excess_until_it_drains(
    nats_env_unprovisioned: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One sender floods a recipient with large messages: the recipient's inbox stream stays
    within its bytes while far below its message quota, the rest waits in the sender's stream
    (the broker says why), another recipient still gets its message, and once the recipient
    takes what it holds, everything arrives, each message once."""
    env = nats_env_unprovisioned
    quota = ProvisionSettings().max_msg_size  # the smallest byte quota allowed: one largest message
    await env.provision(
        settings=ProvisionSettings(
            inbox_max_bytes_per_recipient=quota, inbox_max_msgs_per_recipient=50
        )
    )
    flooder = await env.connect(Identity.for_agency(JOBCENTER))
    flood: list[str] = []
    for _ in range(5):  # each envelope ~40% of the quota: two fit, five do not
        message_id = new_message_id()
        envelope = seal_to(SUCHT, plaintext=b"\0" * (quota * 4 // 10), message_id=message_id)
        await publish_durable(flooder.js, submit_subject(JOBCENTER), envelope, msg_id=message_id)
        flood.append(message_id)

    caplog.set_level(logging.WARNING, logger="bridge.broker")
    site = Site(env, tmp_path, aiohttp.ClientSession())
    try:
        broker = await site.start_broker()

        async def inbox_full() -> bool:
            return "the inbox of suchtberatung-unna is at its quota of bytes" in caplog.text

        await eventually(
            inbox_full, what="the broker holding the flood at the byte quota", within=60.0
        )
        assert "quota.recipient_full" in caplog.text
        metrics = generate_latest(broker.metrics.registry).decode()
        full = 'bridge_broker_recipient_full_total{quota="bytes",recipient="suchtberatung-unna"}'
        assert full in metrics
        assert 'quota="messages"' not in metrics
        admin = await env.admin()
        state = (await admin.js.stream_info(inbox_stream(SUCHT))).state
        assert state.messages == 2  # far below the message quota of 50
        assert state.bytes <= quota

        # The excess waits in the sender's own stream: nothing lost, nothing rejected. The
        # broker's acks of the two routed submissions are not awaited (nats-py's `ack` only
        # publishes), so the work queue drops them a moment after the log line: wait for that.
        async def excess_waiting() -> bool:
            waiting = await site.waiting(submit_stream(JOBCENTER), submit_subject(JOBCENTER))
            assert waiting >= 3, waiting  # the held three are never dropped
            return waiting == 3

        await eventually(
            excess_waiting, what="the routed two acknowledged, the excess waiting", within=60.0
        )
        assert broker.statistics().rejected == {}

        # Another recipient's traffic flows meanwhile, even from the flooder.
        other = new_message_id()
        await publish_durable(
            flooder.js,
            submit_subject(JOBCENTER),
            seal_to(SPDI, message_id=other),
            msg_id=other,
        )

        async def other_routed() -> bool:
            info = await admin.js.stream_info(inbox_stream(SPDI))
            return int(info.state.messages) == 1

        await eventually(other_routed, what="the other recipient's message routed", within=60.0)
        assert (await admin.js.stream_info(inbox_stream(SUCHT))).state.messages == 2

        # The recipient takes what it holds; the rest follows, never beyond the quota.
        recipient = await env.connect(Identity.for_agency(SUCHT))
        sub = await bind_pull(recipient.js, inbox_stream(SUCHT), inbox_consumer(SUCHT))
        taken: list[str] = []

        async def all_taken() -> bool:
            stored = (await admin.js.stream_info(inbox_stream(SUCHT))).state.bytes
            assert stored <= quota
            for msg in await fetch(sub, 4, 1.0):
                taken.append(msg.headers["Nats-Msg-Id"])
                await msg.ack_sync()
            return len(taken) >= len(flood)

        await eventually(all_taken, what="the whole flood delivered", within=120.0)
        assert sorted(taken) == sorted(f"{JOBCENTER}.{m}.{SUCHT}" for m in flood)  # each once

        async def settled() -> bool:
            return broker.statistics().routed == len(flood) + 1

        await eventually(settled, what="every submission routed", within=60.0)
        assert await site.waiting(submit_stream(JOBCENTER), submit_subject(JOBCENTER)) == 0
        assert (await admin.js.stream_info(inbox_stream(SUCHT))).state.messages == 0
        assert await fetch(sub, 4, 1.0) == []  # and no second copy of any
    finally:
        await site.close()


async def test_quotas_in_the_provisioning_config_reach_the_store(
    nats_env_unprovisioned: Any, tmp_path: Path
) -> None:
    env = nats_env_unprovisioned
    f = fed()
    (tmp_path / "policy.bin").write_bytes(signed_policy(f, QUOTA_POLICY)[0])
    (tmp_path / "anchor.json").write_bytes(msgspec.json.encode(f.anchor.public_record()))
    one = ProvisionSettings().max_msg_size

    def config(quotas: str) -> Path:
        path = tmp_path / "provision.toml"
        path.write_text(
            f"agencies = {json.dumps(list(env.agencies))}\n"
            "replicas = 1\n"
            f'[nats]\nurl = "{env.url}"\nseed_file = "{env.seed_file(Identity.admin())}"\n'
            '[policy]\nfile = "policy.bin"\nanchor = "anchor.json"\n'
            f"[quotas]\n{quotas}\n"
        )
        return path

    # A recipient quota too small for one message is refused before the server is asked.
    with pytest.raises(ConfigError) as info:
        load_provision_config(config("inbox_max_bytes_per_recipient = 1000"))
    assert "[quotas] inbox_max_bytes_per_recipient" in str(info.value)
    with pytest.raises(ConfigError):
        load_provision_config(config("inbox_max_bytes = 1000000000"))  # no such quota

    path = config(
        f"inbox_max_bytes_per_recipient = {2 * one}\ninbox_max_msgs_per_recipient = 40\n"
        "consent_max_msgs_per_issuer = 1000"
    )
    assert await asyncio.to_thread(main, ["nats", "provision", "--config", str(path)]) == 0
    admin = await env.admin()
    for agency in env.agencies:
        inbox = (await admin.js.stream_info(inbox_stream(agency))).config
        assert (inbox.max_msgs, inbox.max_bytes) == (40, 2 * one)
        submit = (await admin.js.stream_info(submit_stream(agency))).config
        assert submit.max_bytes == ProvisionSettings().submit_max_bytes  # left out: the default
        records = await admin.js.stream_info(consent_stream(agency, "record"))
        assert records.config.max_msgs == 1000


async def test_the_pending_notes_have_room_for_every_copy_the_inboxes_may_hold(
    nats_env: Any,
) -> None:
    """The broker notes every routed copy in the one BRIDGE_PENDING; full, it would refuse the
    next note and the broker would hold every agency's submissions. So it is sized from the
    inbox quotas, whatever they are set to."""
    quota = 2_000_000  # with three agencies, far beyond the status streams' default size
    await nats_env.provision(settings=ProvisionSettings(inbox_max_msgs_per_recipient=quota))
    admin = await nats_env.admin()
    pending = (await admin.js.stream_info(PENDING_STREAM)).config
    assert pending.max_bytes >= len(nats_env.agencies) * quota * PENDING_NOTE_BYTES
    assert pending.discard == api.DiscardPolicy.NEW
