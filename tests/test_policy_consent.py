"""Whose consents count is the signed policy's to say: a real broker routes under a consent of
another agency when the flow's `consent_issuers` accepts it, and refuses one it does not."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from consent_helpers import MESSAGE_PURPOSE, consent_body, signed_consent
from envelope_helpers import RECIPIENTS, SENDER, federation, seal_referral
from policy_helpers import signed_policy
from test_broker import (
    BROKER_POLICY,
    NOW,
    Agency,
    _install,
    make_broker,
    wait_for,
    write_config,
)

from bridge.consent import Registry
from bridge.ids import new_message_id
from bridge.nats.identities import Identity
from bridge.wire import DeliveryState

if TYPE_CHECKING:
    from conftest import NatsEnv

COUNSELLING, SPDI = RECIPIENTS
ISSUERS = 'consent_issuers = ["sender"]    # only the Jobcenter'


async def _register(env: NatsEnv, issuer: str, data: bytes, consent_id: str) -> None:
    """Store a record as the issuer's own adapter would, with the issuer's NATS identity."""
    client = await env.connect(Identity.for_agency(issuer))
    await Registry(client.js, timeout=2.0).put(issuer, consent_id, "record", data)
    await env.close_client(client)


async def test_a_consent_of_an_agency_the_flow_accepts_counts_and_no_other(
    nats_env: NatsEnv, tmp_path: Path
) -> None:
    fed = federation(NOW)  # the brokers' clock in test_broker
    assert ISSUERS in BROKER_POLICY
    # The Jobcenter's referrals may also rest on a consent a Suchtberatung obtained (for a
    # referral onwards to the social-psychiatric service, say), but not on that service's own.
    wider = 'consent_issuers = ["sender", "counselling"]  # only the Jobcenter'
    text = BROKER_POLICY.replace(ISSUERS, wider, 1)
    config = write_config(tmp_path, nats_env, fed, enforce_consent=True)
    _install(tmp_path / "policy.bin", signed_policy(fed, text)[0])
    jobcenter = await Agency.connect(nats_env, SENDER)
    expected = {}
    for issuer, recipient, outcome in (
        (SENDER, SPDI, ""),
        (COUNSELLING, SPDI, ""),  # a declared role the flow accepts
        (SPDI, COUNSELLING, "consent.issuer_not_accepted"),  # a role it does not
    ):
        body = consent_body(fed, issuer=issuer, recipients=[recipient])
        await _register(nats_env, issuer, signed_consent(fed, body), body.id)
        mid = new_message_id()
        data = seal_referral(
            fed,
            recipients=[recipient],
            message_id=mid,
            consent=body.id,
            purpose=MESSAGE_PURPOSE,
        )
        await jobcenter.submit(data, mid)
        expected[mid] = outcome
    async with make_broker(config) as broker:
        stats = broker.statistics
        await wait_for("all decided", lambda: stats().routed + stats().rejected_total == 3)
    events = await jobcenter.statuses()
    decided = {
        e.message_id: e.reason or ""
        for e in events
        if e.state in (DeliveryState.ROUTED, DeliveryState.REJECTED)
    }
    assert decided == expected
    assert len(await (await Agency.connect(nats_env, SPDI)).inbox()) == 2
    assert await (await Agency.connect(nats_env, COUNSELLING)).inbox() == []  # nothing refused
