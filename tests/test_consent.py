"""Consent records, their registry on a real nats-server, and the broker's enforcement.

Records are signed with the test federation's real keys. The registry's protection is tested
as an attacker would try it: tampered bytes, another agency's or an unknown key, a record put
into another agency's part (by the admin, and refused to the agency itself by NATS), a replay
after a withdrawal. The broker runs with enforcement on and gets one submission per reason code.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import nats
import nats.errors
import pytest
from consent_helpers import MESSAGE_PURPOSE, consent_body, signed_consent, signed_withdrawal
from envelope_helpers import DAY, RECIPIENTS, SENDER, Federation, federation, seal_referral
from test_broker import Agency, make_broker, wait_for, write_config

import bridge
from bridge.consent import (
    REASONS,
    MessageFacts,
    Registry,
    evaluate,
    policy_rule,
    sign_consent,
    verify_consent,
    verify_withdrawal,
)
from bridge.errors import ConsentDenied, ConsentInvalid, PolicyError
from bridge.federation.directory import Directory
from bridge.ids import NO_CONSENT, new_message_id
from bridge.nats.identities import Identity
from bridge.nats.provision import provision
from bridge.nats.subjects import HDR_CONSENT, HDR_MSG_ID, consent_stream, consent_subject
from bridge.policy import parse_policy
from bridge.wire import DeliveryState

if TYPE_CHECKING:
    from conftest import NatsEnv

NOW = int(time.time())
COUNSELLING, SPDI = RECIPIENTS
STRANGER_KEY = "klinik-dortmund/sign"


@pytest.fixture
def fed() -> Federation:
    return federation(NOW)


# -- records, without NATS --------------------------------------------------------------------


def test_a_signed_record_verifies_and_any_change_does_not(fed: Federation) -> None:
    body = consent_body(fed)
    data = signed_consent(fed, body)
    assert verify_consent(data, fed.directory, SENDER).body == body
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        with pytest.raises(ConsentInvalid):
            verify_consent(bytes(tampered), fed.directory, SENDER)


def test_records_signed_by_another_or_unknown_key_are_refused(fed: Federation) -> None:
    body = consent_body(fed)
    for label in (f"{SPDI}/sign", STRANGER_KEY, f"{SENDER}/sign-revoked", f"{SENDER}/enc"):
        if label.endswith("/enc"):
            continue  # an encryption key cannot sign at all
        with pytest.raises(ConsentInvalid):
            verify_consent(signed_consent(fed, body, label), fed.directory, SENDER)
    # Signed by its real issuer, but looked for in another agency's part of the registry.
    with pytest.raises(ConsentInvalid):
        verify_consent(signed_consent(fed, body), fed.directory, SPDI)


def test_a_withdrawal_is_bound_to_its_consent_and_issuer(fed: Federation) -> None:
    body = consent_body(fed)
    data = signed_withdrawal(fed, body)
    assert verify_withdrawal(data, fed.directory, SENDER, body.id).body.id == body.id
    with pytest.raises(ConsentInvalid):
        verify_withdrawal(data, fed.directory, SENDER, consent_body(fed).id)
    with pytest.raises(ConsentInvalid):  # a withdrawal is not a record, nor the other way
        verify_consent(data, fed.directory, SENDER)
    with pytest.raises(ConsentInvalid):
        verify_withdrawal(signed_consent(fed, body), fed.directory, SENDER, body.id)


def test_signing_refuses_an_unsorted_or_inverted_record(fed: Federation) -> None:
    key = fed.key(f"{SENDER}/sign")
    for changes in (
        {"recipients": sorted(RECIPIENTS, reverse=True)},
        {"valid_until": NOW - 2 * DAY},
        {"recipients": [SENDER]},
    ):
        with pytest.raises(ConsentInvalid):
            sign_consent(consent_body(fed, **changes), key)


def test_evaluate_gives_each_reason_in_order(fed: Federation) -> None:
    body = consent_body(fed)
    good = MessageFacts(
        consent=body.id,
        sender=SENDER,
        recipients=(COUNSELLING,),
        type="referral",
        purpose=body.purposes[0],
        categories=tuple(body.categories),
        expires_at=NOW + DAY,
    )
    evaluate(body, False, good, NOW)
    cases = {
        "consent.withdrawn": (True, good, NOW),
        "consent.not_yet_valid": (False, good, body.valid_from - 1),
        "consent.expired": (False, good, body.valid_until),
        "consent.validity_too_long": (False, good, NOW),  # with a limit of 30 days less 1 s
        "consent.type_not_covered": (False, _facts(good, type="handover"), NOW),
        "consent.recipient_not_covered": (False, _facts(good, recipients=("x",)), NOW),
        "consent.purpose_not_covered": (False, _facts(good, purpose="case-handover"), NOW),
        "consent.category_not_covered": (False, _facts(good, categories=("identity",)), NOW),
        "consent.outlived": (False, _facts(good, expires_at=body.valid_until + 1), NOW),
    }
    evaluate(body, False, good, NOW, max_validity=body.valid_until - body.valid_from)
    for reason, (withdrawn, facts, now) in cases.items():
        limit = body.valid_until - body.valid_from - (reason == "consent.validity_too_long")
        with pytest.raises(ConsentDenied) as info:
            evaluate(body, withdrawn, facts, now, max_validity=limit)
        assert info.value.reason == reason


def _facts(facts: MessageFacts, **changes: object) -> MessageFacts:
    return dataclasses.replace(facts, **changes)  # type: ignore[arg-type]


# -- the registry on NATS ---------------------------------------------------------------------


async def test_an_agency_cannot_write_into_another_agencys_part(
    nats_env: NatsEnv, fed: Federation
) -> None:
    """A raw nats-py connection with the Jobcenter's own credentials, no bridge code between."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    identity = Identity.for_agency(SENDER)
    nc = await nats.connect(
        nats_env.url,
        nkeys_seed=str(nats_env.seed_file(identity)),
        inbox_prefix=identity.inbox_prefix,
        error_cb=on_error,
        max_reconnect_attempts=0,
    )
    try:
        js = nc.jetstream(timeout=1.0)
        body = consent_body(fed, issuer=SPDI, recipients=[SENDER])
        foreign = consent_subject(SPDI, body.id, "record")
        with pytest.raises((TimeoutError, nats.errors.Error)):
            await js.publish(foreign, signed_consent(fed, body, f"{SENDER}/sign"))
        await nc.flush(timeout=5)
        # Its own part it may write.
        own = consent_body(fed)
        await js.publish(consent_subject(SENDER, own.id, "record"), signed_consent(fed, own))
    finally:
        await nc.close()
    assert any("permissions violation" in str(e).lower() for e in errors), errors
    admin = await nats_env.admin()
    registry = Registry(admin.js, timeout=2.0)
    assert await registry.raw(SPDI, body.id, "record") is None
    assert await registry.raw(SENDER, own.id, "record") is not None


async def test_nothing_in_the_registry_is_replaced_or_removed(
    nats_env: NatsEnv, fed: Federation
) -> None:
    jobcenter = await nats_env.connect(Identity.for_agency(SENDER))
    registry = Registry(jobcenter.js, timeout=2.0)
    body = consent_body(fed)
    original = signed_consent(fed, body)
    await registry.put(SENDER, body.id, "record", original)
    await registry.put(SENDER, body.id, "record", original)  # a retry: the same write, once
    await registry.put(SENDER, body.id, "withdrawal", signed_withdrawal(fed, body))
    # Replaying the old record, or a broader version of it, after the withdrawal: refused.
    wider = signed_consent(fed, msgspec.structs.replace(body, types=["handover", "referral"]))
    with pytest.raises(PolicyError) as info:
        await registry.put(SENDER, body.id, "record", wider)
    assert info.value.reason == "consent.exists"
    with pytest.raises(PolicyError):
        await registry.put(SENDER, body.id, "withdrawal", signed_withdrawal(fed, body, NOW + 1))
    # The same, published raw with a fresh message id: the server refuses a second message.
    with pytest.raises(nats.errors.Error):
        await jobcenter.js.publish(consent_subject(SENDER, body.id, "record"), original)
    admin = await nats_env.admin()
    for kind in ("record", "withdrawal"):
        stream = consent_stream(SENDER, kind)
        info = await admin.js.stream_info(stream)
        assert info.state.messages == 1
        with pytest.raises(nats.errors.Error):  # not even the admin can delete a record
            await admin.js.delete_msg(stream, 1)
        with pytest.raises(nats.errors.Error):
            await admin.js.purge_stream(stream)
    state = await Registry(admin.js, timeout=2.0).state(SENDER, body.id, fed.directory)
    assert state is not None
    assert state.withdrawn
    assert state.consent.raw == original


async def test_a_misplaced_or_forged_record_does_not_verify(
    nats_env: NatsEnv, fed: Federation
) -> None:
    admin = await nats_env.admin()
    registry = Registry(admin.js, timeout=2.0)
    spdi_own = consent_body(fed, issuer=SPDI, recipients=[SENDER])
    moved = consent_body(fed)
    # The admin (who may write anywhere) puts records where their issuers did not.
    await registry.put(SENDER, spdi_own.id, "record", signed_consent(fed, spdi_own))
    await registry.put(SPDI, moved.id, "record", signed_consent(fed, moved))
    for issuer, consent_id in ((SENDER, spdi_own.id), (SPDI, moved.id)):
        with pytest.raises(ConsentInvalid):
            await registry.state(issuer, consent_id, fed.directory)


# -- the broker's enforcement -----------------------------------------------------------------


async def _register(env: NatsEnv, fed: Federation, issuer: str, body_data: bytes, cid: str) -> None:
    """Store a record as its issuer's own adapter would (the admin for misplaced ones)."""
    client = await env.connect(Identity.for_agency(issuer))
    await Registry(client.js, timeout=2.0).put(issuer, cid, "record", body_data)
    await env.close_client(client)


async def test_the_broker_rejects_each_uncovered_message_with_its_reason(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    admin = Registry((await nats_env.admin()).js, timeout=2.0)
    cases: dict[str, str] = {}  # message id -> expected reason ("" = routed)

    async def case(reason: str, consent_id: str, **seal: object) -> None:
        mid = new_message_id()
        cases[mid] = reason
        seal.setdefault("purpose", MESSAGE_PURPOSE)
        await jobcenter.submit(seal_referral(fed, message_id=mid, consent=consent_id, **seal), mid)

    async def own(**changes: object) -> str:
        body = consent_body(fed, **changes)
        await _register(nats_env, fed, SENDER, signed_consent(fed, body), body.id)
        return body.id

    jobcenter = await Agency.connect(nats_env, SENDER)
    good = await own()
    await case("", good)
    await case("consent.missing", NO_CONSENT)
    await case("consent.unknown", consent_body(fed).id)
    theirs = consent_body(fed, issuer=SPDI, recipients=sorted([COUNSELLING, SENDER]))
    await _register(nats_env, fed, SPDI, signed_consent(fed, theirs), theirs.id)
    await case("consent.issuer_not_accepted", theirs.id)
    withdrawn = consent_body(fed)
    await _register(nats_env, fed, SENDER, signed_consent(fed, withdrawn), withdrawn.id)
    await admin.put(SENDER, withdrawn.id, "withdrawal", signed_withdrawal(fed, withdrawn))
    await case("consent.withdrawn", withdrawn.id)
    await case("consent.not_yet_valid", await own(valid_from=NOW + DAY))
    await case("consent.expired", await own(valid_from=NOW - 9 * DAY, valid_until=NOW - DAY))
    # Longer than the policy's 365 days: refused at the adapter, so written around it.
    await case("consent.validity_too_long", await own(valid_until=NOW + 365 * DAY))
    await case("consent.type_not_covered", await own(types=["handover"]))
    await case("consent.recipient_not_covered", await own(recipients=[COUNSELLING]))
    await case("consent.purpose_not_covered", await own(purposes=["case-handover"]))
    await case("consent.category_not_covered", await own(categories=["contact"]))
    await case("consent.outlived", await own(valid_until=NOW + 2 * DAY))  # message: 7 days
    # Forged or tampered records in the sender's own part (written by the admin).
    for forged in (
        signed_consent(fed, consent_body(fed), f"{SPDI}/sign"),  # another agency's key
        signed_consent(fed, consent_body(fed), STRANGER_KEY),  # a key not in the directory
    ):
        cid = msgspec.msgpack.decode(forged[25:-3373])["id"]
        await admin.put(SENDER, cid, "record", forged)
        await case("consent.invalid", cid)
    tampered_body = consent_body(fed)
    tampered = bytearray(signed_consent(fed, tampered_body))
    tampered[40] ^= 0x01
    await admin.put(SENDER, tampered_body.id, "record", bytes(tampered))
    await case("consent.invalid", tampered_body.id)
    # The social-psychiatric service's genuine record, put into the Jobcenter's part.
    misplaced = consent_body(fed, issuer=SPDI, recipients=sorted([COUNSELLING, SENDER]))
    await admin.put(SENDER, misplaced.id, "record", signed_consent(fed, misplaced))
    await case("consent.invalid", misplaced.id)
    # A flow the policy does not allow (the Jobcenter gives no feedback), under a consent that
    # would cover it: refused by the policy before any consent is looked at.
    await case("policy.route_denied", await own(types=["feedback"]), message_type="feedback")
    assert set(REASONS) <= set(cases.values())

    config = write_config(tmp_path, nats_env, fed, enforce_consent=True)
    async with make_broker(config) as broker:
        await wait_for("every submission decided", lambda: _decided(broker) == len(cases))
    events = await jobcenter.statuses()
    decided = {(e.message_id, e.reason) for e in events if e.state is DeliveryState.REJECTED}
    assert decided == {(m, r) for m, r in cases.items() if r}
    routed = {e.message_id for e in events if e.state is DeliveryState.ROUTED}
    assert routed == {m for m, r in cases.items() if not r}
    for recipient in RECIPIENTS:  # nothing but the covered message reached an inbox
        inbox = await (await Agency.connect(nats_env, recipient)).inbox()
        assert [m.headers[HDR_CONSENT] for m in inbox] == [good]


def _decided(broker: object) -> int:
    stats = broker.statistics()  # type: ignore[attr-defined]
    return int(stats.routed + stats.rejected_total)


async def test_while_the_registry_is_unreadable_messages_are_held_then_routed(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    body = consent_body(fed)
    record = signed_consent(fed, body)
    await _register(nats_env, fed, SENDER, record, body.id)
    admin = await nats_env.admin()
    # The issuer's registry is gone: nobody can read it.
    await admin.js.delete_stream(consent_stream(SENDER, "record"))
    jobcenter = await Agency.connect(nats_env, SENDER)
    mid = new_message_id()
    data = seal_referral(fed, message_id=mid, consent=body.id, purpose=MESSAGE_PURPOSE)
    await jobcenter.submit(data, mid)
    config = write_config(tmp_path, nats_env, fed, enforce_consent=True)
    async with make_broker(config) as broker:
        await wait_for("held twice", lambda: broker.statistics().deferred >= 2)
        assert _decided(broker) == 0  # neither routed nor rejected, and nothing in an inbox
        assert await jobcenter.statuses() == []
    # The registry comes back with the record while no broker runs: a running one could read the
    # re-created, still empty registry in between and rightly refuse the consent as unknown.
    await provision(admin.js, nats_env.agencies)
    await _register(nats_env, fed, SENDER, record, body.id)
    async with make_broker(config) as broker:
        # The first broker may have fetched the message once more as it stopped; that copy
        # comes back only after the consumer's ack wait (30 s), so wait beyond it.
        await wait_for("routed", lambda: broker.statistics().routed == 1, within=60.0)
    assert broker.statistics().rejected_total == 0
    inbox = await (await Agency.connect(nats_env, COUNSELLING)).inbox()
    assert [m.headers[HDR_CONSENT] for m in inbox] == [body.id]


async def test_a_running_broker_holds_while_the_registry_is_unreadable_then_delivers(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    """The same broker, without a restart: it holds the message while no read of the registry
    gets an answer, and routes it once reads are answered again. The record stays in the
    registry throughout, so no moment exists in which the consent would look unknown."""
    body = consent_body(fed)
    await _register(nats_env, fed, SENDER, signed_consent(fed, body), body.id)
    admin = await nats_env.admin()
    config = (await admin.js.stream_info(consent_stream(SENDER, "record"))).config
    # Direct gets (all the broker's and the adapters' reads) now find no responder.
    await admin.js.update_stream(dataclasses.replace(config, allow_direct=False))
    jobcenter = await Agency.connect(nats_env, SENDER)
    mid = new_message_id()
    data = seal_referral(fed, message_id=mid, consent=body.id, purpose=MESSAGE_PURPOSE)
    await jobcenter.submit(data, mid)
    async with make_broker(write_config(tmp_path, nats_env, fed, enforce_consent=True)) as broker:
        await wait_for("held twice", lambda: broker.statistics().deferred >= 2)
        assert _decided(broker) == 0
        assert await jobcenter.statuses() == []
        assert await (await Agency.connect(nats_env, COUNSELLING)).inbox() == []
        await admin.js.update_stream(dataclasses.replace(config, allow_direct=True))
        await wait_for("routed", lambda: broker.statistics().routed == 1, within=60.0)
        assert broker.statistics().rejected_total == 0
    routed = [e for e in await jobcenter.statuses() if e.state is DeliveryState.ROUTED]
    assert sorted((e.message_id, e.recipient) for e in routed) == sorted(
        (mid, r) for r in RECIPIENTS
    )
    for recipient in RECIPIENTS:  # routed once, to every recipient
        inbox = await (await Agency.connect(nats_env, recipient)).inbox()
        assert [m.headers[HDR_CONSENT] for m in inbox] == [body.id]


async def test_a_withdrawal_removes_undelivered_copies_and_tells_the_sender(
    nats_env: NatsEnv, tmp_path: Path, fed: Federation
) -> None:
    body = consent_body(fed)
    await _register(nats_env, fed, SENDER, signed_consent(fed, body), body.id)
    other = consent_body(fed)  # another client's consent: its messages stay
    await _register(nats_env, fed, SENDER, signed_consent(fed, other), other.id)
    jobcenter = await Agency.connect(nats_env, SENDER)
    under = [new_message_id(), new_message_id()]
    kept = new_message_id()
    for mid in under:
        await jobcenter.submit(
            seal_referral(fed, message_id=mid, consent=body.id, purpose=MESSAGE_PURPOSE), mid
        )
    await jobcenter.submit(
        seal_referral(fed, message_id=kept, consent=other.id, purpose=MESSAGE_PURPOSE), kept
    )
    # The notice about this very withdrawal, already routed when the broker purges (the issuing
    # adapter sends it as it stores the withdrawal): it names the consent and must stay.
    notice = new_message_id()
    await jobcenter.submit(
        seal_referral(
            fed,
            recipients=[SPDI],
            message_id=notice,
            consent=body.id,
            message_type="consent-revoked",
            purpose="delivery-confirmation",
            categories=["delivery-metadata"],
        ),
        notice,
    )
    config = write_config(tmp_path, nats_env, fed, enforce_consent=True)
    async with make_broker(config) as broker:
        await wait_for("routed", lambda: broker.statistics().routed == 4)
        delivered = await (await Agency.connect(nats_env, COUNSELLING)).inbox()  # taken
        assert len(delivered) == 3
        sender_side = await nats_env.connect(Identity.for_agency(SENDER))
        registry = Registry(sender_side.js, timeout=2.0)
        await registry.put(SENDER, body.id, "withdrawal", signed_withdrawal(fed, body))
        await wait_for("withdrawn", lambda: broker.statistics().withdrawn == 2)
        late = new_message_id()
        await jobcenter.submit(
            seal_referral(fed, message_id=late, consent=body.id, purpose=MESSAGE_PURPOSE), late
        )
        await wait_for("late one decided", lambda: broker.statistics().rejected_total == 1)
    spdi_inbox = await (await Agency.connect(nats_env, SPDI)).inbox()
    assert sorted(m.headers[HDR_MSG_ID] for m in spdi_inbox) == sorted(
        f"{SENDER}.{mid}.{SPDI}" for mid in (kept, notice)
    )
    events = await jobcenter.statuses()
    withdrawn = {
        (e.message_id, e.recipient, e.reason) for e in events if e.state is DeliveryState.WITHDRAWN
    }
    assert withdrawn == {(mid, SPDI, "consent.withdrawn") for mid in under}
    assert {(e.message_id, e.reason) for e in events if e.state is DeliveryState.REJECTED} == {
        (late, "consent.withdrawn")
    }


def test_the_signed_policy_says_which_flows_need_whose_consent(fed: Federation) -> None:
    rules = parse_policy((Path(bridge.__file__).parent / "up" / "demo-policy.toml").read_bytes())
    rule = policy_rule(rules, fed.directory)
    referral = rule(SENDER, COUNSELLING, "referral")
    assert referral.required
    assert referral.issuers == {SENDER}
    for notice in ("receipt", "consent-revoked", "deletion-confirmed"):
        assert not rule(SENDER, COUNSELLING, notice).required
        assert not rule(COUNSELLING, SENDER, notice).required


async def test_a_cached_record_stops_counting_once_its_key_is_revoked(
    nats_env: NatsEnv, fed: Federation
) -> None:
    body = consent_body(fed)
    await _register(nats_env, fed, SENDER, signed_consent(fed, body), body.id)
    registry = Registry((await nats_env.admin()).js, timeout=2.0)
    assert await registry.state(SENDER, body.id, fed.directory) is not None  # now cached
    kid = fed.record(f"{SENDER}/sign").kid
    revoked = Directory(
        msgspec.structs.replace(
            fed.directory.body, revoked=sorted([*fed.directory.body.revoked, kid])
        )
    )
    with pytest.raises(ConsentInvalid):
        await registry.state(SENDER, body.id, revoked)
