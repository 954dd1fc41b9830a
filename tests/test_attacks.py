# ruff: noqa: F811 - the `e2e` fixture is imported from test_e2e and requested by name
"""Regression tests for what an outside attack campaign found (issue 6), against a real stack.

Each attack is made as the campaign made it: with an agency's own NATS credentials on a raw
nats-py connection, or with an envelope that agency sealed with its own keys. The stack is the
one `test_e2e` runs (nats-server, broker, three adapters, the demo sink), so a test passes only
if the genuine traffic still gets through.
"""

from __future__ import annotations

import datetime
import logging

import nats
import pytest
from test_e2e import COUNSELLING, E2E, JOBCENTER, SPDI, e2e, eventually  # noqa: F401 - fixture

from bridge.adapters.receipts import receipt_categories, receipt_message_id
from bridge.crypto import Keyring, seal
from bridge.demo import demo_referral
from bridge.federation.directory import Directory, load_anchor
from bridge.ids import new_message_id
from bridge.nats.identities import Credentials, Identity
from bridge.nats.subjects import HDR_MSG_ID, submit_subject
from bridge.wire import Delivered, Disposition, Purpose, Receipt, Rejected, encode_body


async def _raw_connection(e2e: E2E, agency: str) -> nats.NATS:
    """A plain nats-py client with `agency`'s credentials: what an attacker holds."""
    identity = Identity.for_agency(agency)
    seed = Credentials(e2e.stack.layout.nats.creds_dir).seed_file(identity)
    return await nats.connect(
        e2e.server.url,
        nkeys_seed=str(seed),
        inbox_prefix=identity.inbox_prefix.encode(),
        allow_reconnect=False,
    )


async def test_a_co_recipient_cannot_suppress_a_receipt_with_garbage(e2e: E2E) -> None:
    """Finding 1: garbage under the other recipient's receipt id must not pre-empt it."""
    message_id = await e2e.submit(JOBCENTER, [COUNSELLING, SPDI], demo_referral())
    await e2e.wait_pushed(message_id)  # the co-recipient has the message id now

    attacker = await _raw_connection(e2e, COUNSELLING)
    try:
        ack = await attacker.jetstream().publish(
            submit_subject(COUNSELLING),
            b"\x00\x01\x02\x03",
            headers={HDR_MSG_ID: receipt_message_id(message_id, SPDI)},
        )
        assert not ack.duplicate  # stored: the attack itself works as far as NATS goes
    finally:
        await attacker.close()

    await e2e.pull(SPDI, message_id)  # SPDI's adapter now sends its genuine receipt
    await e2e.wait_states(JOBCENTER, message_id, {COUNSELLING: "receipted", SPDI: "receipted"})


def _forged_receipt(
    e2e: E2E,
    agency: str,
    original_id: str,
    disposition: Disposition,
    *,
    received_at: datetime.datetime,
    message_id: str | None = None,
) -> tuple[str, bytes]:
    """A receipt `agency` seals with its own keys, saying whatever it likes."""
    keyring = Keyring.load(e2e.stack.layout.keys_dir(agency))
    config = e2e.broker_config()
    directory = Directory.load_file(
        config.path(config.directory.file), load_anchor(config.path(config.directory.anchor))
    )
    message_id = message_id or new_message_id()
    body = Receipt(in_reply_to=original_id, received_at=received_at, disposition=disposition)
    envelope = seal(
        encode_body(body),
        message_type="receipt",
        sender=keyring,
        recipients=[JOBCENTER],
        directory=directory,
        consent=f"c-{'0' * 32}",
        purpose=Purpose.DELIVERY_CONFIRMATION.value,
        categories=receipt_categories(),
        lifetime=3600,
        reply_to=original_id,
        message_id=message_id,
    )
    return message_id, envelope


async def _submit_raw(e2e: E2E, agency: str, message_id: str, envelope: bytes) -> None:
    attacker = await _raw_connection(e2e, agency)
    try:
        await attacker.jetstream().publish(
            submit_subject(agency), envelope, headers={HDR_MSG_ID: message_id}
        )
    finally:
        await attacker.close()


async def _routed(e2e: E2E, count: int) -> None:
    async def enough() -> bool | None:
        assert e2e.broker is not None
        return True if e2e.broker.statistics().routed >= count else None

    await eventually(f"{count} submissions routed", enough)


async def test_a_co_recipient_cannot_pre_empt_a_receipt_with_its_own_envelope(
    e2e: E2E,
) -> None:
    """Finding 1, one step on: a valid envelope under the id must not pre-empt it either.

    The co-recipient seals a well-formed receipt with its own keys but the other recipient's
    receipt id, so the broker routes it. The ids the broker stores the routed copy and its
    status events under must not collide with those of the other recipient's receipt.
    """
    message_id = await e2e.submit(JOBCENTER, [COUNSELLING, SPDI], demo_referral())
    await e2e.wait_pushed(message_id)
    await e2e.wait_states(JOBCENTER, message_id, {COUNSELLING: "receipted", SPDI: "routed"})

    forged_id, envelope = _forged_receipt(
        e2e,
        COUNSELLING,
        message_id,
        Delivered(),
        received_at=datetime.datetime.now(datetime.UTC),
        message_id=receipt_message_id(message_id, SPDI),
    )
    await _submit_raw(e2e, COUNSELLING, forged_id, envelope)
    await _routed(e2e, 3)  # the referral, the genuine receipt and the forged one

    await e2e.pull(SPDI, message_id)
    await e2e.wait_states(JOBCENTER, message_id, {COUNSELLING: "receipted", SPDI: "receipted"})


async def test_a_receipt_is_final_and_a_contradicting_one_is_refused_and_logged(
    e2e: E2E, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 2: a second receipt saying `rejected`, backdated, changes nothing."""
    caplog.set_level(logging.INFO, logger="bridge")
    message_id = await e2e.submit(JOBCENTER, [COUNSELLING], demo_referral())
    await e2e.wait_states(JOBCENTER, message_id, {COUNSELLING: "receipted"})

    forged_id, envelope = _forged_receipt(
        e2e,
        COUNSELLING,
        message_id,
        Rejected(reason="envelope.malformed"),
        received_at=datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC),
    )
    await _submit_raw(e2e, COUNSELLING, forged_id, envelope)

    async def logged() -> bool | None:
        return (
            True if f"receipt {forged_id} from {COUNSELLING} contradicts" in caplog.text else None
        )

    await eventually("the contradicting receipt refused and logged", logged)
    status = await e2e.status(JOBCENTER, message_id)
    assert [r["state"] for r in status["recipients"]] == ["receipted"]
    assert "rejected" not in {e["state"] for e in status["events"]}


async def test_a_receipt_cannot_backdate_the_timeline(e2e: E2E) -> None:
    """Finding 2: event times are never before the message existed, whatever a receipt says."""
    message_id = await e2e.submit(JOBCENTER, [SPDI], demo_referral())
    await e2e.wait_states(JOBCENTER, message_id, {SPDI: "routed"})
    forged_id, envelope = _forged_receipt(
        e2e,
        SPDI,
        message_id,
        Delivered(),
        received_at=datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC),
    )
    await _submit_raw(e2e, SPDI, forged_id, envelope)
    status = await e2e.wait_states(JOBCENTER, message_id, {SPDI: "receipted"})
    created = datetime.datetime.fromisoformat(status["created_at"])
    for event in status["events"]:
        assert datetime.datetime.fromisoformat(event["at"]) >= created, event
