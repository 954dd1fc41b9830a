"""The consent registry under per-issuer quotas, and its move from the one shared stream.

Each issuer keeps its records in `BRIDGE_CONSENT_<issuer>` and its withdrawals in
`BRIDGE_WITHDRAWAL_<issuer>`, each bounded (ProvisionSettings `consent_max_*_per_issuer`). One
agency registering without end fills only its own record stream: it hears 429, the others
still register and withdraw, and it can still withdraw. Earlier versions kept every issuer's
documents in one stream `BRIDGE_CONSENT`, which provisioning copies and then removes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.errors
import pytest
from adapter_helpers import JOBCENTER, SPDI, SUCHT, agency_seed, eventually, make_agency
from nats.js import api
from test_adapter_consents import Running, consent_request

from bridge.adapters.service import Adapter
from bridge.consent import Registry, new_consent_id
from bridge.errors import ConfigError
from bridge.nats.identities import Identity
from bridge.nats.provision import Action, ProvisionSettings
from bridge.nats.subjects import consent_stream, consent_subject

QUOTA = 3


@pytest.fixture
async def sites(tmp_path: Path, nats_env_unprovisioned: Any) -> AsyncIterator[list[Running]]:
    env = nats_env_unprovisioned
    await env.provision(settings=ProvisionSettings(consent_max_msgs_per_issuer=QUOTA))
    admin = await env.admin()
    running = []
    async with aiohttp.ClientSession() as http:
        try:
            for agency in (JOBCENTER, SPDI):
                made = make_agency(
                    tmp_path, env.url, agency_seed(env, agency), agency, enforce_consent=True
                )
                adapter = Adapter(made.config)
                await adapter.start()
                running.append(Running(made, adapter, http, admin))
            yield running
        finally:
            for site in running:
                await site.adapter.stop()


async def test_an_issuer_at_its_quota_hears_429_and_everybody_can_still_withdraw(
    sites: list[Running],
) -> None:
    flooder, other = sites
    own = [(await flooder.register())["consent_id"] for _ in range(QUOTA)]
    status, problem = await flooder.call("POST", "/v1/consents", consent_request())
    assert status == 429, problem
    assert problem["code"] == "quota.registry_full"
    assert "AZ 4711" not in json.dumps(problem)  # nothing of the request echoed

    # Another issuer's registry is its own: it registers and withdraws as before.
    theirs = (await other.register(recipients=[JOBCENTER, SUCHT]))["consent_id"]
    status, view = await other.call("DELETE", f"/v1/consents/{theirs}")
    assert (status, view["state"]) == (200, "withdrawn"), view

    # The flooder's withdrawals have room of their own: a full record stream stops none.
    for consent_id in own:
        status, view = await flooder.call("DELETE", f"/v1/consents/{consent_id}")
        assert (status, view["state"]) == (200, "withdrawn"), view
    records = await flooder.admin.js.stream_info(consent_stream(JOBCENTER, "record"))
    assert records.state.messages == QUOTA


async def test_an_agency_cannot_write_into_another_issuers_registry(
    nats_env: Any,
) -> None:
    """With a raw connection and its own credentials, an agency can put nothing into another
    issuer's streams (so neither fill them nor pre-empt a document there), yet reads them."""
    issuer = await nats_env.connect(Identity.for_agency(JOBCENTER))
    consent_id = new_consent_id()
    await Registry(issuer.js, timeout=5.0).put(JOBCENTER, consent_id, "record", b"signed")

    identity = Identity.for_agency(SPDI)
    nc = await nats.connect(
        nats_env.url,
        nkeys_seed=str(nats_env.seed_file(identity)),
        inbox_prefix=identity.inbox_prefix.encode(),
        allow_reconnect=False,
    )
    try:
        js = nc.jetstream(timeout=1.0)
        for kind in ("record", "withdrawal"):
            with pytest.raises(nats.errors.Error):  # denied: no answer, or a refusal
                await js.publish(consent_subject(JOBCENTER, new_consent_id(), kind), b"junk")
            with pytest.raises(nats.errors.Error):  # not even into its own subject's stream
                await js.publish(
                    consent_subject(SPDI, new_consent_id(), kind),
                    b"junk",
                    stream=consent_stream(JOBCENTER, kind),
                )
        # Reading by subject, as every recipient's adapter does, works across issuers.
        assert await Registry(js, timeout=5.0).raw(JOBCENTER, consent_id, "record") == b"signed"
    finally:
        await nc.close()
    admin = await nats_env.admin()
    for kind, held in (("record", 1), ("withdrawal", 0)):
        info = await admin.js.stream_info(consent_stream(JOBCENTER, kind))
        assert info.state.messages == held


# -- from the registry of earlier versions -----------------------------------------------------

LEGACY = "BRIDGE_CONSENT"


async def _legacy_registry(admin: Any, *, empty: bool = False) -> list[tuple[str, bytes]]:
    """The one registry stream of earlier versions with its broker's consumers, and in it two
    issuers' records and one withdrawal (unless `empty`)."""
    await admin.js.add_stream(
        api.StreamConfig(
            name=LEGACY,
            subjects=["bridge.consent.*.*.record", "bridge.consent.*.*.withdrawal"],
            discard=api.DiscardPolicy.NEW,
            max_msgs_per_subject=1,
            discard_new_per_subject=True,
            deny_delete=True,
            deny_purge=True,
            allow_direct=True,
        )
    )
    for name, kind in (("broker-registrations", "record"), ("broker-withdrawals", "withdrawal")):
        await admin.js.add_consumer(
            LEGACY,
            api.ConsumerConfig(
                durable_name=name,
                filter_subject=f"bridge.consent.*.*.{kind}",
                ack_policy=api.AckPolicy.EXPLICIT,
            ),
        )
    first, second = new_consent_id(), new_consent_id()
    documents = [
        (consent_subject(JOBCENTER, first, "record"), b"record of the jobcenter"),
        (consent_subject(SPDI, second, "record"), b"record of the service"),
        (consent_subject(JOBCENTER, first, "withdrawal"), b"withdrawal of the jobcenter"),
    ]
    if empty:
        return []
    for subject, data in documents:
        await admin.js.publish(subject, data)
    return documents


async def _let_the_earlier_broker_process(admin: Any) -> None:
    for name in ("broker-registrations", "broker-withdrawals"):
        sub = await admin.js.pull_subscribe_bind(name, LEGACY)
        for msg in await sub.fetch(10, timeout=5):
            await msg.ack_sync()
        await sub.unsubscribe()


async def test_provisioning_moves_the_shared_registry_into_each_issuers_streams(
    nats_env_unprovisioned: Any,
) -> None:
    env = nats_env_unprovisioned
    admin = await env.admin()
    documents = await _legacy_registry(admin)

    # Its broker has not audited and applied them yet: nothing is moved.
    with pytest.raises(ConfigError) as refused:
        await env.provision()
    assert refused.value.reason == "provision.legacy_consent"
    assert (await admin.js.stream_info(LEGACY)).state.messages == len(documents)

    await _let_the_earlier_broker_process(admin)
    report = await env.provision()
    assert LEGACY in {c.name for c in report.by_action(Action.REMOVED)}
    with pytest.raises(nats.js.errors.NotFoundError):
        await admin.js.stream_info(LEGACY)
    registry = Registry(admin.js, timeout=5.0)
    for subject, data in documents:
        _, _, issuer, consent_id, kind = subject.split(".")
        assert await registry.raw(issuer, consent_id, kind) == data  # byte for byte
    # The earlier broker processed the copies: the new consumers start after them.
    for issuer, kind, consumer in (
        (JOBCENTER, "record", "broker-registrations"),
        (JOBCENTER, "withdrawal", "broker-withdrawals"),
        (SPDI, "record", "broker-registrations"),
    ):
        info = await admin.js.consumer_info(consent_stream(issuer, kind), consumer)
        assert info.num_pending == 0, (issuer, kind)
    await admin.js.publish(consent_subject(JOBCENTER, new_consent_id(), "record"), b"new")

    async def pending() -> int | None:
        # The consumer counts a stored message a moment after the publish is acknowledged.
        stream = consent_stream(JOBCENTER, "record")
        info = await admin.js.consumer_info(stream, "broker-registrations")
        return info.num_pending or None

    assert await eventually(pending, what="the new record pending for the broker") == 1
    assert not (await env.provision()).changed


async def test_a_move_cut_short_resumes_and_copies_each_document_once(
    nats_env_unprovisioned: Any,
) -> None:
    env = nats_env_unprovisioned
    admin = await env.admin()
    documents = await _legacy_registry(admin)
    await _let_the_earlier_broker_process(admin)
    # As a run cut short leaves it: the old stream moved aside, one document already copied.
    info = await admin.js.stream_info(LEGACY)
    await admin.js.update_stream(info.config.evolve(subjects=["bridge.legacy.consent"]))
    subject, data = documents[0]
    await admin.js.add_stream(
        api.StreamConfig(
            name=consent_stream(JOBCENTER, "record"),
            subjects=["bridge.consent.jobcenter-unna.*.record"],
        )
    )
    await admin.js.publish(subject, data)

    await env.provision()
    records = await admin.js.stream_info(consent_stream(JOBCENTER, "record"))
    assert records.state.messages == 1
    registry = Registry(admin.js, timeout=5.0)
    for subject, data in documents:
        _, _, issuer, consent_id, kind = subject.split(".")
        assert await registry.raw(issuer, consent_id, kind) == data
    with pytest.raises(nats.js.errors.NotFoundError):
        await admin.js.stream_info(LEGACY)


async def test_an_empty_shared_registry_is_simply_removed(nats_env_unprovisioned: Any) -> None:
    env = nats_env_unprovisioned
    admin = await env.admin()
    await _legacy_registry(admin, empty=True)
    report = await env.provision()
    assert LEGACY in {c.name for c in report.by_action(Action.REMOVED)}
    for issuer in env.agencies:
        for kind, consumer in (
            ("record", "broker-registrations"),
            ("withdrawal", "broker-withdrawals"),
        ):
            info = await admin.js.consumer_info(consent_stream(issuer, kind), consumer)
            assert info.config.deliver_policy == api.DeliverPolicy.ALL
