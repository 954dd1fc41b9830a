# ruff: noqa: F811 - the `e2e` fixture is imported from test_e2e and requested by name
"""Regression tests for what an outside attack campaign found (issue 6), against a real stack.

Each attack is made as the campaign made it: with an agency's own NATS credentials on a raw
nats-py connection, or with an envelope that agency sealed with its own keys. The stack is the
one `test_e2e` runs (nats-server, broker, three adapters, the demo sink), so a test passes only
if the genuine traffic still gets through.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import msgspec
import nats
import pytest
from adapter_helpers import SPDI as SPDI_AGENCY
from adapter_helpers import SUCHT, Agency, agency_seed, make_agency, put_in_inbox, seal_to
from adapter_helpers import eventually as wait_for
from consent_helpers import consent_body, signed_consent, signed_withdrawal
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from envelope_helpers import federation
from http_helpers import SECRET_BYTES, check_malformed, raw_http
from test_e2e import COUNSELLING, E2E, JOBCENTER, SPDI, e2e, eventually  # noqa: F401 - fixture

from bridge.adapters.api import MAX_LIFETIME_SECONDS
from bridge.adapters.receipts import receipt_categories, receipt_message_id
from bridge.adapters.service import Adapter
from bridge.broker._nats import status_msg_id
from bridge.consent import Registry
from bridge.crypto import Keyring, seal
from bridge.demo import demo_referral
from bridge.federation.directory import Directory, load_anchor
from bridge.ids import new_message_id
from bridge.nats.identities import Credentials, Identity
from bridge.nats.subjects import HDR_MSG_ID, consent_subject, report_subject, submit_subject
from bridge.up.layout import TOKEN_ISSUER, demo_agency
from bridge.wire import (
    Delivered,
    DeliveryState,
    Disposition,
    Purpose,
    Receipt,
    Rejected,
    encode_body,
)


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
    consent: str = f"c-{'0' * 32}",
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
        consent=consent,
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


async def test_a_receipt_cannot_postdate_the_timeline(e2e: E2E) -> None:
    """Finding 2, the other bound: a receipt claiming a time in the future is recorded at the
    sender adapter's clock, not at the recipient's claim."""
    message_id = await e2e.submit(JOBCENTER, [SPDI], demo_referral())
    await e2e.wait_states(JOBCENTER, message_id, {SPDI: "routed"})
    future = datetime.datetime(2100, 1, 1, tzinfo=datetime.UTC)
    forged_id, envelope = _forged_receipt(e2e, SPDI, message_id, Delivered(), received_at=future)
    await _submit_raw(e2e, SPDI, forged_id, envelope)
    status = await e2e.wait_states(JOBCENTER, message_id, {SPDI: "receipted"})
    checked = datetime.datetime.now(datetime.UTC)
    delivered = [e for e in status["events"] if e["state"] == "delivered"]
    assert delivered, status["events"]
    for event in status["events"]:
        assert datetime.datetime.fromisoformat(event["at"]) <= checked, event


# -- malformed HTTP (findings 3, 4 and 6) ---------------------------------------------------------


def _bearer(e2e: E2E) -> bytes:
    token = e2e.stack.token(JOBCENTER, ["messages:send", "messages:read"], 600)
    return f"Authorization: Bearer {token}\r\n".encode()


MALFORMED: dict[str, tuple[Callable[[E2E], bytes], tuple[int, str]]] = {
    # name: (the raw request, the status and code of the last answer; all are problems)
    # The body is longer than Content-Length says: its rest arrives as a "request" of its own.
    "content-length-too-small": (
        lambda e2e: (
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n"
            + _bearer(e2e)
            + b"Content-Type: application/json\r\nContent-Length: 9\r\n\r\n"
            + b'{"body": {"name": "'
            + SECRET_BYTES
            + b'"}}'
        ),
        (400, "request.malformed"),
    ),
    "authorization-over-8190-bytes": (
        lambda e2e: (
            b"GET /v1/messages/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + SECRET_BYTES * 250
            + b"\r\nConnection: close\r\n\r\n"
        ),
        (401, "auth.token_too_large"),
    ),
    "authorization-over-the-parser-limit": (
        lambda e2e: (
            b"GET /v1/messages/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + SECRET_BYTES * 1000
            + b"\r\n\r\n"
        ),
        (431, "request.header_too_large"),
    ),
    "other-header-over-8190-bytes": (
        lambda e2e: (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Note: "
            + SECRET_BYTES * 250
            + b"\r\nConnection: close\r\n\r\n"
        ),
        (431, "request.header_too_large"),
    ),
    "path-over-8-KiB": (
        lambda e2e: (
            b"GET /v1/messages/"
            + SECRET_BYTES * 250
            + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ),
        (414, "request.uri_too_long"),
    ),
    "path-over-the-parser-limit": (
        lambda e2e: b"GET /v1/messages/" + SECRET_BYTES * 1000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        (414, "request.uri_too_long"),
    ),
    "not-a-request-line": (
        lambda e2e: SECRET_BYTES + b" / HTTP/1.1\r\nHost: x\r\n\r\n",
        (400, "request.malformed"),
    ),
    "control-character-in-a-header": (
        lambda e2e: (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Note: " + SECRET_BYTES + b"\x01\r\n\r\n"
        ),
        (400, "request.malformed"),
    ),
    "idempotency-key-with-del": (
        lambda e2e: (
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n"
            + _bearer(e2e)
            + b"Idempotency-Key: "
            + SECRET_BYTES
            + b"\x7f\r\nContent-Length: 0\r\n\r\n"
        ),
        (400, "idempotency.key_invalid"),
    ),
    "authorization-with-a-control-character": (
        lambda e2e: (
            b"GET /v1/messages/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + SECRET_BYTES
            + b"\x7f\r\n\r\n"
        ),
        (401, "auth.invalid"),
    ),
    "trace": (
        lambda e2e: b"TRACE /v1/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        (405, "http.method_not_allowed"),
    ),
    "unknown-message-path": (
        lambda e2e: (
            b"GET /v1/messages/"
            + SECRET_BYTES
            + b" HTTP/1.1\r\nHost: x\r\n"
            + _bearer(e2e)
            + b"Connection: close\r\n\r\n"
        ),
        (404, "id.message_malformed"),
    ),
}


async def test_malformed_http_is_answered_with_problems_that_quote_nothing(
    e2e: E2E, caplog: pytest.LogCaptureFixture
) -> None:
    """Findings 3, 4 and 6: raw bytes to a real adapter; the answers and the logs."""
    caplog.set_level(logging.DEBUG)
    url = e2e.stack.adapter_url(JOBCENTER)
    await check_malformed(url, caplog)  # what every bridge HTTP server gets
    await check_malformed(
        url, caplog, {name: (build(e2e), want) for name, (build, want) in MALFORMED.items()}
    )
    trace = await raw_http(url, MALFORMED["trace"][0](e2e))
    assert trace[0][1]["allow"] == "POST"


async def test_the_demo_sink_quotes_nothing_either(
    e2e: E2E, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await check_malformed(e2e.stack.sink_url, caplog)


async def test_the_brokers_health_port_quotes_nothing_either(
    e2e: E2E, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker serves no API, but its health and metrics port parses HTTP all the same."""
    caplog.set_level(logging.DEBUG)
    assert e2e.broker is not None
    assert e2e.broker.health_url is not None
    await check_malformed(e2e.broker.health_url, caplog)


async def test_a_lifetime_one_second_too_long_is_named_so(e2e: E2E) -> None:
    """Finding 6: one second over the maximum is `request.lifetime_too_long`; at the maximum
    the lifetime passes (the made-up consent is what is refused next)."""
    answers: dict[int, Any] = {}
    for lifetime in (MAX_LIFETIME_SECONDS + 1, MAX_LIFETIME_SECONDS):
        request = {
            "type": "referral",
            "recipients": [COUNSELLING],
            "consent": f"c-{'1' * 32}",
            "purpose": "integration-support",
            "categories": ["identity"],
            "body": demo_referral(),
            "lifetime_seconds": lifetime,
        }
        async with e2e.session.post(
            f"{e2e.stack.adapter_url(JOBCENTER)}/v1/messages",
            data=msgspec.json.encode(request),
            headers={
                "Authorization": f"Bearer {e2e.stack.token(JOBCENTER, ['messages:send'], 600)}",
                "Content-Type": "application/json",
            },
        ) as response:
            problem = await response.json(content_type=None)
            assert response.status == 422, problem
            assert response.headers["Server"] == "bridge"
        answers[lifetime] = problem
    over = answers[MAX_LIFETIME_SECONDS + 1]
    assert (over["code"], over["field"]) == ("request.lifetime_too_long", "$.lifetime_seconds")
    assert answers[MAX_LIFETIME_SECONDS]["field"] == "$.consent"  # the lifetime itself passed


async def test_registered_claims_of_the_wrong_json_type_are_refused(e2e: E2E) -> None:
    """Finding 5: every registered claim of the wrong JSON type is refused with 401, among them
    `"exp": "1795..."` (a numeric string), which pyjwt's own int() check accepts."""
    entry = demo_agency(JOBCENTER)
    key = load_pem_private_key(
        e2e.stack.layout.token_private_key(JOBCENTER).read_bytes(), password=None
    )
    now = int(time.time())
    good = {
        "iss": TOKEN_ISSUER,
        "aud": entry.audience,
        "sub": "case-system",
        "scope": "messages:read",
        "iat": now,
        "exp": now + 600,
    }
    url = f"{e2e.stack.adapter_url(JOBCENTER)}/v1/messages/{new_message_id()}"
    for changes, status in (
        ({}, 404),  # the positive twin: a valid token reaches the handler
        ({"exp": str(now + 600)}, 401),
        ({"iat": str(now)}, 401),
        ({"nbf": str(now)}, 401),
        ({"exp": float(now + 600)}, 404),  # a NumericDate may have a fraction
        ({"exp": True}, 401),
        ({"exp": None}, 401),
        ({"iat": True}, 401),
        ({"nbf": False}, 401),
        ({"iss": 1}, 401),
        ({"iss": [TOKEN_ISSUER]}, 401),
        ({"sub": 42}, 401),
        ({"aud": 7}, 401),
        ({"aud": [entry.audience, 7]}, 401),
        ({"jti": 99}, 401),
    ):
        # Signed as JWS over the JSON as it stands: pyjwt's encode refuses some wrong types.
        claims = json.dumps({**good, **changes}).encode()
        token = jwt.PyJWS().encode(claims, key, algorithm="EdDSA")  # type: ignore[arg-type]
        async with e2e.session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == status, (changes, await response.text())


# -- one message id from two senders ------------------------------------------------------------


async def _take(
    http: aiohttp.ClientSession, url: str, agency: Agency, mid: str, sender: str
) -> None:
    """As the local system: wait for `sender`'s item `mid` in the pull inbox, then ack it."""

    async def listed() -> bool | None:
        async with http.get(f"{url}/v1/inbox", headers=agency.auth("inbox:read")) as r:
            items = (await r.json())["items"]
        held = {(item["message_id"], item["sender"]) for item in items}
        return True if (mid, sender) in held else None

    await wait_for(listed, what=f"{sender}'s {mid} in the inbox")
    async with http.post(f"{url}/v1/inbox/{mid}/ack", headers=agency.auth("inbox:ack")) as r:
        assert r.status == 204


async def _put(admin: Any, mid: str, sender: str) -> None:
    envelope = seal_to(SUCHT, sender=sender, message_id=mid)
    await put_in_inbox(admin, SUCHT, envelope, f"{sender}.{mid}")


async def test_a_copied_message_id_does_not_make_the_recipient_drop_the_genuine_message(
    tmp_path: Path, nats_env: Any
) -> None:
    """A co-recipient that sends the recipient its own message under a message id it has seen
    must not make the recipient's adapter treat the genuine message as already delivered."""
    agency = make_agency(tmp_path, nats_env.url, agency_seed(nats_env, SUCHT), SUCHT)  # pull
    admin = await nats_env.admin()
    copied, held, restarted = new_message_id(), new_message_id(), new_message_id()
    async with aiohttp.ClientSession() as http:
        async with Adapter(agency.config) as adapter:
            # The copy first, taken; then the genuine message: delivered as well.
            await _put(admin, copied, SPDI_AGENCY)
            await _take(http, adapter.url, agency, copied, SPDI_AGENCY)
            await _put(admin, copied, JOBCENTER)
            await _take(http, adapter.url, agency, copied, JOBCENTER)
            # Both at once: the second waits until the first is taken, and does not replace it.
            await _put(admin, held, JOBCENTER)
            await _put(admin, held, SPDI_AGENCY)
            await _take(http, adapter.url, agency, held, JOBCENTER)
            await _take(http, adapter.url, agency, held, SPDI_AGENCY)
            # The copy taken before a restart (only the delivered record remembers it).
            await _put(admin, restarted, SPDI_AGENCY)
            await _take(http, adapter.url, agency, restarted, SPDI_AGENCY)
        async with Adapter(agency.config) as adapter:
            await _put(admin, restarted, JOBCENTER)
            await _take(http, adapter.url, agency, restarted, JOBCENTER)


# -- the shared consent registry ----------------------------------------------------------------


async def test_a_recipient_cannot_suppress_the_withdrawal_of_a_consent(nats_env: Any) -> None:
    """Every recipient knows a consent id; publishing on its own registry subject under the id
    the issuer's withdrawal would have used must not make the shared stream drop it."""
    fed = federation(int(time.time()))
    issuer = JOBCENTER
    body = consent_body(fed)
    issuer_client = await nats_env.connect(Identity.for_agency(issuer))
    registry = Registry(issuer_client.js, timeout=5.0)
    await registry.put(issuer, body.id, "record", signed_consent(fed, body))

    attacker = SPDI_AGENCY  # a recipient under this consent
    identity = Identity.for_agency(attacker)
    nc = await nats.connect(
        nats_env.url,
        nkeys_seed=str(nats_env.seed_file(identity)),
        inbox_prefix=identity.inbox_prefix.encode(),
        allow_reconnect=False,
    )
    try:
        for guess in (f"{issuer}.{body.id}.withdrawal", f"{issuer}.{body.id}.record"):
            own = consent_subject(attacker, f"c-{new_message_id().replace('-', '')}", "withdrawal")
            await nc.jetstream().publish(own, b"garbage", headers={HDR_MSG_ID: guess})
    finally:
        await nc.close()

    withdrawal = signed_withdrawal(fed, body)
    await registry.put(issuer, body.id, "withdrawal", withdrawal)
    assert await registry.raw(issuer, body.id, "withdrawal") == withdrawal
    await registry.put(issuer, body.id, "withdrawal", withdrawal)  # a retry: still fine


async def test_a_receipt_that_arrives_after_the_withdrawal_still_brings_a_notice(e2e: E2E) -> None:
    """A copy the local system took at the moment of the withdrawal is still told to be deleted.

    The withdrawal's notices name what had reached a local system by then; a receipt that
    arrives later (its copy was taken just before the purge) must bring a notice of its own.
    """
    consent = await e2e.register_consent(
        JOBCENTER, [SPDI], "integration-support", ("identity", "contact", "addiction"), "referral"
    )
    message_id = await e2e.submit(JOBCENTER, [SPDI], demo_referral(), consent=consent)
    await e2e.wait_states(JOBCENTER, message_id, {SPDI: "routed"})
    url = f"{e2e.stack.adapter_url(JOBCENTER)}/v1/consents/{consent}"
    async with e2e.session.delete(url, headers=e2e._headers(JOBCENTER, ["consents:write"])) as r:
        assert r.status == 200, await r.text()
    receipt_id, envelope = _forged_receipt(
        e2e,
        SPDI,
        message_id,
        Delivered(),
        received_at=datetime.datetime.now(datetime.UTC),
        consent=consent,
    )
    await _submit_raw(e2e, SPDI, receipt_id, envelope)

    async def notified() -> bool | None:
        async with e2e.session.get(url, headers=e2e._headers(JOBCENTER, ["consents:read"])) as r:
            view = await r.json()
        return True if any(e["state"] == "notified" for e in view["events"]) else None

    await eventually("a notice for the late receipt", notified)

    async def pulled_notice() -> str | None:
        for item in await e2e.inbox(SPDI):
            if item != message_id:
                return item
        return None

    notice = await eventually("the notice in the pull inbox", pulled_notice)
    async with e2e.session.get(
        f"{e2e.stack.adapter_url(SPDI)}/v1/inbox/{notice}",
        headers=e2e._headers(SPDI, ["inbox:read"]),
    ) as r:
        item = await r.json()
    assert item["body"]["messages"] == [message_id]


async def test_a_co_recipient_cannot_suppress_the_brokers_status_event(e2e: E2E) -> None:
    """Finding 1 for the status stream: every agency reports there too (`bridge.report.<own>`),
    so garbage under a status event's id the broker will use must not make it drop the event."""
    consent = await e2e.register_consent(
        JOBCENTER,
        [COUNSELLING, SPDI],
        "integration-support",
        ("identity", "contact", "addiction"),
        "referral",
    )
    message_id = await e2e.submit(JOBCENTER, [COUNSELLING, SPDI], demo_referral(), consent=consent)
    await e2e.wait_pushed(message_id)  # the co-recipient has the message id now
    await e2e.wait_states(JOBCENTER, message_id, {COUNSELLING: "receipted", SPDI: "routed"})

    attacker = await _raw_connection(e2e, COUNSELLING)
    try:
        for suffix in ("", ".r"):  # the sender's event, and the recipient's
            ack = await attacker.jetstream().publish(
                report_subject(COUNSELLING, message_id),
                b"\x00\x01\x02\x03",
                headers={
                    HDR_MSG_ID: status_msg_id(JOBCENTER, message_id, DeliveryState.WITHDRAWN, SPDI)
                    + suffix
                },
            )
            assert not ack.duplicate
    finally:
        await attacker.close()

    url = f"{e2e.stack.adapter_url(JOBCENTER)}/v1/consents/{consent}"
    async with e2e.session.delete(url, headers=e2e._headers(JOBCENTER, ["consents:write"])) as r:
        assert r.status == 200, await r.text()
    await e2e.wait_states(JOBCENTER, message_id, {COUNSELLING: "receipted", SPDI: "withdrawn"})
