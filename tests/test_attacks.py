# ruff: noqa: F811 - the `e2e` fixture is imported from test_e2e and requested by name
"""Regression tests for what an outside attack campaign found (issue 6), against a real stack.

Each attack is made as the campaign made it: with an agency's own NATS credentials on a raw
nats-py connection, or with an envelope that agency sealed with its own keys. The stack is the
one `test_e2e` runs (nats-server, broker, three adapters, the demo sink), so a test passes only
if the genuine traffic still gets through.
"""

from __future__ import annotations

import datetime

import nats
from test_e2e import COUNSELLING, E2E, JOBCENTER, SPDI, e2e, eventually  # noqa: F401 - fixture

from bridge.adapters.receipts import receipt_categories, receipt_message_id
from bridge.crypto import Keyring, seal
from bridge.demo import demo_referral
from bridge.federation.directory import Directory, load_anchor
from bridge.nats.identities import Credentials, Identity
from bridge.nats.subjects import HDR_MSG_ID, submit_subject
from bridge.wire import Delivered, Purpose, Receipt, encode_body


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

    keyring = Keyring.load(e2e.stack.layout.keys_dir(COUNSELLING))
    config = e2e.broker_config()
    directory = Directory.load_file(
        config.path(config.directory.file), load_anchor(config.path(config.directory.anchor))
    )
    forged_id = receipt_message_id(message_id, SPDI)
    now = int(datetime.datetime.now(datetime.UTC).timestamp())
    body = Receipt(
        in_reply_to=message_id,
        received_at=datetime.datetime.fromtimestamp(now, datetime.UTC),
        disposition=Delivered(),
    )
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
        reply_to=message_id,
        message_id=forged_id,
        now=now,
    )
    attacker = await _raw_connection(e2e, COUNSELLING)
    try:
        await attacker.jetstream().publish(
            submit_subject(COUNSELLING), envelope, headers={HDR_MSG_ID: forged_id}
        )
    finally:
        await attacker.close()

    async def routed() -> bool | None:
        assert e2e.broker is not None
        return True if e2e.broker.statistics().routed >= 3 else None

    await eventually("the forged receipt routed", routed)

    await e2e.pull(SPDI, message_id)
    await e2e.wait_states(JOBCENTER, message_id, {COUNSELLING: "receipted", SPDI: "receipted"})
