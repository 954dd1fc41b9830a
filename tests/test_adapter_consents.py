"""The adapter's consent API against a real nats-server: register, show, find, withdraw, form.

The adapter runs with enforcement on, so its check before publishing is exercised with the same
reason codes the broker gives. Records are read back from the registry as the broker would.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from adapter_helpers import (
    JOBCENTER,
    SPDI,
    SUCHT,
    Agency,
    agency_seed,
    eventually,
    fed,
    keyring,
    make_agency,
    put_in_inbox,
    referral_request,
    seal_to,
    submitted,
)
from aiohttp import web
from consent_helpers import consent_body, signed_consent
from envelope_helpers import CONSENT

from bridge.adapters.form import render_form
from bridge.adapters.revocation import derived_id
from bridge.adapters.service import Adapter
from bridge.config import DeliveryConfig
from bridge.consent import Registry
from bridge.crypto import open_envelope
from bridge.ids import new_message_id
from bridge.nats.subjects import consent_stream, submit_stream
from bridge.wire import (
    ConsentRevoked,
    DataCategory,
    DeletionConfirmed,
    Delivered,
    Purpose,
    Receipt,
    decode_body,
    encode_body,
)

CASE_FILE = "AZ 4711/26-Müller"  # the local reference: personal data, must stay in the adapter


def _at(days: float) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def consent_request(**changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "recipients": [SUCHT, SPDI],
        "purposes": ["counselling", "integration-support"],
        "categories": ["identity", "contact", "addiction"],
        "types": ["referral"],
        "valid_until": _at(90),
        "local_ref": CASE_FILE,
    }
    request.update(changes)
    return request


@dataclass
class Running:
    agency: Agency
    adapter: Adapter
    http: aiohttp.ClientSession
    admin: Any

    async def call(
        self, method: str, path: str, body: Any = None, *, scope: str = "consents:write"
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", **self.agency.auth(scope)}
        data = None if body is None else json.dumps(body).encode()
        async with self.http.request(
            method, f"{self.adapter.url}{path}", data=data, headers=headers
        ) as r:
            if r.content_type == "text/html":
                return r.status, await r.text()
            return r.status, await r.json(content_type=None)

    async def register(self, **changes: Any) -> dict[str, Any]:
        status, view = await self.call("POST", "/v1/consents", consent_request(**changes))
        assert status == 201, view
        return dict(view)


@pytest.fixture
async def jobcenter(tmp_path: Path, nats_env: Any) -> AsyncIterator[Running]:
    agency = make_agency(
        tmp_path, nats_env.url, agency_seed(nats_env, JOBCENTER), JOBCENTER, enforce_consent=True
    )
    admin = await nats_env.admin()
    async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
        yield Running(agency, adapter, http, admin)


async def test_a_registered_consent_is_signed_stored_and_names_no_client(
    jobcenter: Running,
) -> None:
    view = await jobcenter.register()
    consent_id = view["consent_id"]
    assert view["state"] == "active"
    assert view["local_ref"] == CASE_FILE
    assert view["recipients"] == sorted([SUCHT, SPDI])
    # What the broker reads: verified as the Jobcenter's, and without the local reference.
    registry = Registry(jobcenter.admin.js, timeout=2.0)
    state = await registry.state(JOBCENTER, consent_id, fed().directory)
    assert state is not None
    assert state.consent.body.purposes == ["counselling", "integration-support"]
    raw = await registry.raw(JOBCENTER, consent_id, "record")
    assert raw is not None
    assert b"4711" not in raw
    assert b"4711" not in raw
    status, again = await jobcenter.call("GET", f"/v1/consents/{consent_id}", scope="consents:read")
    assert status == 200
    assert again == view
    other = await jobcenter.register(local_ref="AZ 9999/26")
    status, found = await jobcenter.call(
        "GET", f"/v1/consents?local_ref={CASE_FILE}", scope="consents:read"
    )
    assert status == 200
    assert [item["consent_id"] for item in found["items"]] == [consent_id]
    assert other["consent_id"] != consent_id


@pytest.mark.parametrize(
    ("changes", "field", "code"),
    [
        ({"recipients": ["klinik-nirgendwo"]}, "$.recipients[0]", "recipient.unknown"),
        ({"recipients": [JOBCENTER]}, "$.recipients[0]", "recipient.self"),
        ({"purposes": ["gossip"]}, "$.purposes[0]", "request.invalid"),
        ({"categories": ["health", "shoe-size"]}, "$.categories[1]", "request.invalid"),
        ({"types": ["receipt"]}, "$.types[0]", "request.invalid"),
        (
            {"valid_from": _at(10), "valid_until": _at(5)},
            "$.valid_until",
            "consent.validity_order",
        ),
        ({"valid_until": _at(3 * 365)}, "$.valid_until", "consent.validity_too_long"),
        # Longer than the routing policy's 365 days, within the built-in default of two years:
        # the limit that counts is the signed policy's.
        ({"valid_until": _at(400)}, "$.valid_until", "consent.validity_too_long"),
        (
            {"valid_from": _at(200), "valid_until": _at(200 + 366)},
            "$.valid_until",
            "consent.validity_too_long",
        ),
        (
            {"valid_from": _at(-10), "valid_until": _at(-1)},
            "$.valid_until",
            "consent.validity_past",
        ),
        ({"recipients": []}, "$.recipients", "request.invalid"),
        ({"local_ref": ""}, "$.local_ref", "request.invalid"),
    ],
)
async def test_a_bad_consent_request_gets_422_naming_the_field(
    jobcenter: Running, changes: dict[str, Any], field: str, code: str
) -> None:
    status, problem = await jobcenter.call("POST", "/v1/consents", consent_request(**changes))
    assert status == 422, problem
    assert (problem["field"], problem["code"]) == (field, code)
    assert CASE_FILE not in json.dumps(problem)
    info = await jobcenter.admin.js.stream_info("BRIDGE_CONSENT_jobcenter-unna")
    assert info.state.messages == 0  # nothing was stored


async def test_the_adapter_refuses_what_the_broker_would_with_the_same_code(
    jobcenter: Running,
) -> None:
    view = await jobcenter.register()
    consent_id = view["consent_id"]
    short = await jobcenter.register(valid_until=_at(2))

    async def submit(**changes: Any) -> tuple[int, Any]:
        return await jobcenter.call(
            "POST",
            "/v1/messages",
            referral_request(**{"consent": consent_id, **changes}),
            scope="messages:send",
        )

    status, accepted = await submit()
    assert status == 202, accepted
    for changes, code in (
        ({"consent": "c-" + "ab" * 16}, "consent.unknown"),
        ({"consent": "c-" + "0" * 32}, "consent.missing"),
        ({"purpose": "case-handover"}, "consent.purpose_not_covered"),
        ({"categories": ["identity", "health"]}, "consent.category_not_covered"),
        ({"type": "handover", "body": _handover()}, "consent.type_not_covered"),
        ({"consent": short["consent_id"]}, "consent.outlived"),  # 14 days > 2 days
    ):
        status, problem = await submit(**changes)
        assert status == 422, (changes, problem)
        assert (problem["code"], problem["field"]) == (code, "$.consent")
    status, withdrawn = await jobcenter.call("DELETE", f"/v1/consents/{consent_id}")
    assert status == 200
    assert withdrawn["state"] == "withdrawn"
    assert withdrawn["withdrawn_at"]
    status, problem = await submit()
    assert (status, problem["code"]) == (422, "consent.withdrawn")
    assert await submitted(jobcenter.admin, JOBCENTER) == 1  # only the first got through
    # Withdrawing again changes nothing and says so.
    status, again = await jobcenter.call("DELETE", f"/v1/consents/{consent_id}")
    assert (status, again["withdrawn_at"]) == (200, withdrawn["withdrawn_at"])


async def test_every_consent_check_of_the_adapter_answers_422_with_the_brokers_code(
    jobcenter: Running,
) -> None:
    """The checks the table above does not reach: validity in time, recipients, issuers.

    Records the API would refuse to register (already expired; another agency's; one signed
    with another agency's key; one longer than the policy allows) are put into the registry by
    the admin, signed with the test federation's real keys."""
    federation = fed()
    registry = Registry(jobcenter.admin.js, timeout=2.0)
    now = int(datetime.datetime.now(datetime.UTC).timestamp())
    only_sucht = await jobcenter.register(recipients=[SUCHT])
    later = await jobcenter.register(valid_from=_at(1), valid_until=_at(60))
    expired = consent_body(
        federation,
        issuer=JOBCENTER,
        recipients=[SUCHT],
        purposes=["counselling"],
        categories=["addiction", "contact", "identity"],
        valid_from=now - 30 * 86400,
        valid_until=now - 86400,
        issued_at=now - 30 * 86400,
    )
    await registry.put(JOBCENTER, expired.id, "record", signed_consent(federation, expired))
    theirs = consent_body(
        federation,
        issuer=SUCHT,
        recipients=[JOBCENTER, SPDI],
        purposes=["counselling"],
        categories=["addiction", "contact", "identity"],
    )
    await registry.put(SUCHT, theirs.id, "record", signed_consent(federation, theirs))
    forged = consent_body(
        federation,
        issuer=JOBCENTER,
        recipients=[SUCHT],
        purposes=["counselling"],
        categories=["addiction", "contact", "identity"],
    )  # signed with the counselling service's key, stored in the Jobcenter's part
    await registry.put(
        JOBCENTER, forged.id, "record", signed_consent(federation, forged, f"{SUCHT}/sign")
    )
    too_long = consent_body(
        federation,
        issuer=JOBCENTER,
        recipients=[SUCHT],
        purposes=["counselling"],
        categories=["addiction", "contact", "identity"],
        valid_until=now + 400 * 86400,
    )  # longer than the policy's 365 days, which the API would refuse to register
    await registry.put(JOBCENTER, too_long.id, "record", signed_consent(federation, too_long))

    for consent_id, recipients, code in (
        (only_sucht["consent_id"], [SUCHT, SPDI], "consent.recipient_not_covered"),
        (later["consent_id"], [SUCHT], "consent.not_yet_valid"),
        (expired.id, [SUCHT], "consent.expired"),
        (theirs.id, [SPDI], "consent.issuer_not_accepted"),
        (forged.id, [SUCHT], "consent.invalid"),
        (too_long.id, [SUCHT], "consent.validity_too_long"),
    ):
        status, problem = await jobcenter.call(
            "POST",
            "/v1/messages",
            referral_request(recipients, consent=consent_id),
            scope="messages:send",
        )
        assert status == 422, (code, problem)
        assert (problem["code"], problem["field"]) == (code, "$.consent")
    assert await submitted(jobcenter.admin, JOBCENTER) == 0
    for consent_id, state in ((later["consent_id"], "not-yet-valid"), (expired.id, "expired")):
        status, view = await jobcenter.call(
            "GET", f"/v1/consents/{consent_id}", scope="consents:read"
        )
        assert (status, view["state"]) == (200, state)
    # Another agency's consent is not this agency's to show or to withdraw.
    for method, scope in (("GET", "consents:read"), ("DELETE", "consents:write")):
        status, problem = await jobcenter.call(method, f"/v1/consents/{theirs.id}", scope=scope)
        assert (status, problem["code"]) == (404, "consent.unknown")
    assert await registry.raw(SUCHT, theirs.id, "withdrawal") is None


async def test_a_withdrawn_consent_is_found_by_its_local_reference_as_withdrawn(
    jobcenter: Running,
) -> None:
    first = await jobcenter.register()
    second = await jobcenter.register(types=["handover"])
    status, gone = await jobcenter.call("DELETE", f"/v1/consents/{first['consent_id']}")
    assert status == 200
    path = f"/v1/consents?local_ref={CASE_FILE}"
    status, found = await jobcenter.call("GET", path, scope="consents:read")
    assert status == 200
    states = {item["consent_id"]: item["state"] for item in found["items"]}
    assert states == {first["consent_id"]: "withdrawn", second["consent_id"]: "active"}
    # The record is still the one signed at registration, the withdrawal a document beside it.
    registry = Registry(jobcenter.admin.js, timeout=2.0)
    state = await registry.state(JOBCENTER, first["consent_id"], fed().directory)
    assert state is not None
    assert state.withdrawal is not None
    assert state.withdrawal.body.at == int(
        datetime.datetime.fromisoformat(gone["withdrawn_at"]).timestamp()
    )
    records = await jobcenter.admin.js.stream_info(f"BRIDGE_CONSENT_{JOBCENTER}")
    withdrawals = await jobcenter.admin.js.stream_info(f"BRIDGE_WITHDRAWAL_{JOBCENTER}")
    assert (records.state.messages, withdrawals.state.messages) == (2, 1)


def _handover() -> Any:
    from bridge.wire import MessageType, encode_body
    from bridge.wire.examples import BODIES

    return json.loads(encode_body(BODIES[MessageType.HANDOVER]))


@pytest.mark.parametrize("lang", ["de", "en"])
async def test_the_release_form_names_every_recipient_purpose_and_category(
    jobcenter: Running, lang: str
) -> None:
    view = await jobcenter.register(
        purposes=[p.value for p in Purpose],
        categories=[c.value for c in DataCategory],
        types=["referral", "handover", "feedback"],
    )
    path = f"/v1/consents/{view['consent_id']}/form?lang={lang}"
    status, page = await jobcenter.call("GET", path, scope="consents:read")
    assert status == 200
    assert f'<html lang="{lang}">' in page
    assert "@media print" in page
    directory = fed().directory
    for agency in view["recipients"]:
        entry = directory.agency(agency)
        assert entry is not None
        assert html.escape(entry.name) in page
    from bridge.adapters import form

    for code in view["purposes"]:
        assert html.escape(form._PURPOSES[code][lang]) in page  # type: ignore[index]
    for code in view["categories"]:
        assert html.escape(form._CATEGORIES[code][lang]) in page  # type: ignore[index]
    for code in view["types"]:
        assert html.escape(form._TYPES[code][lang]) in page  # type: ignore[index]
    for moment in (view["valid_from"], view["valid_until"]):  # how long, in the page's language
        seconds = int(datetime.datetime.fromisoformat(moment).timestamp())
        assert form._date(seconds, lang) in page  # type: ignore[arg-type]
    assert CASE_FILE not in page  # the form is handed to the client; the case file is not on it
    # How to withdraw, and where: at the issuing agency, named.
    issuer = directory.agency(JOBCENTER)
    assert issuer is not None
    withdraw = form._TEXT[lang]["withdraw_text"].format(  # type: ignore[index]
        issuer=f"{html.escape(issuer.name)} ({JOBCENTER})"
    )
    assert withdraw in page
    assert ("jederzeit" if lang == "de" else "at any time") in withdraw
    status, problem = await jobcenter.call(
        "GET", f"/v1/consents/{view['consent_id']}/form?lang=fr", scope="consents:read"
    )
    assert (status, problem["field"]) == (422, "lang")


def test_the_form_escapes_what_it_shows() -> None:
    from consent_helpers import consent_body
    from envelope_helpers import federation

    body = consent_body(federation(), purposes=["x-<script>"])
    page = render_form(body, federation().directory, "en")
    assert "<script>" not in page


async def test_a_webhook_system_confirms_a_deletion_by_its_answer_or_by_a_call(
    tmp_path: Path, nats_env: Any
) -> None:
    """The recipient's side of a withdrawal, in webhook mode: the notice is pushed; an answer
    `{"deleted": true}` sends the signed confirmation at once, any other answer does not, and a
    later `POST /v1/inbox/{id}/deleted` does. Each confirmation names its notice and messages
    and is signed by the recipient for the issuer."""
    answers: dict[str, web.Response] = {}
    pushed: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        payload = json.loads(await request.read())
        pushed.append(payload["message_id"])
        return answers.get(payload["message_id"], web.Response(status=204))

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    agency = make_agency(
        tmp_path,
        nats_env.url,
        agency_seed(nats_env, SUCHT),
        SUCHT,
        delivery=DeliveryConfig(
            mode="webhook",
            webhook_url=f"http://{host}:{port}/hook",
            webhook_secret_file=str(secret),
            backoff_initial_seconds=0.05,
            backoff_max_seconds=0.2,
        ),
    )
    admin = await nats_env.admin()
    said_deleted, said_nothing = new_message_id(), new_message_id()
    answers[said_deleted] = web.json_response({"received": True, "deleted": True})
    answers[said_nothing] = web.json_response({"received": True, "deleted": "yes"})
    # In inbox order: the notice answered without `deleted` first, so that by the time the
    # second one's confirmation is there, a wrong confirmation of the first would be too.
    received = {said_nothing: [new_message_id()], said_deleted: [new_message_id()]}
    try:
        async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
            for notice, messages in received.items():
                body = ConsentRevoked(
                    consent=CONSENT,
                    withdrawn_at=datetime.datetime.now(datetime.UTC),
                    messages=tuple(messages),
                )
                envelope = seal_to(
                    SUCHT,
                    plaintext=encode_body(body),
                    message_type="consent-revoked",
                    message_id=notice,
                    purpose="delivery-confirmation",
                    categories=("delivery-metadata",),
                )
                await put_in_inbox(admin, SUCHT, envelope, notice)

            async def confirmations() -> dict[str, tuple[str, DeletionConfirmed]] | None:
                found = await _confirmations(admin)
                return found if said_deleted in found else None

            first = await eventually(confirmations, what="the answer's confirmation")
            await eventually(
                lambda: _true(set(received) <= set(pushed)), what="both notices pushed"
            )
            assert said_nothing not in await _confirmations(admin)
            url = f"{adapter.url}/v1/inbox/{said_nothing}/deleted"
            async with http.post(url, headers=agency.auth("inbox:ack")) as r:
                assert r.status == 200, await r.text()
                called = (await r.json())["message_id"]
            async with http.post(url, headers=agency.auth("inbox:ack")) as r:  # a retry
                assert (r.status, (await r.json())["message_id"]) == (200, called)
            unknown = f"{adapter.url}/v1/inbox/{new_message_id()}/deleted"
            async with http.post(unknown, headers=agency.auth("inbox:ack")) as r:
                assert (r.status, (await r.json())["code"]) == (404, "notice.unknown")
    finally:
        await runner.cleanup()
    found = await _confirmations(admin)
    assert set(found) == set(received)
    assert found[said_deleted][0] == first[said_deleted][0]
    assert found[said_nothing][0] == called
    for notice, (_, confirmation) in found.items():
        assert confirmation.in_reply_to == notice
        assert confirmation.consent == CONSENT
        assert list(confirmation.messages) == received[notice]


async def _true(value: bool) -> bool:
    return value


async def _confirmations(admin: Any) -> dict[str, tuple[str, DeletionConfirmed]]:
    """Notice id -> (message id, body) of each deletion confirmation the counselling service
    submitted, opened as the Jobcenter (signature checked against the directory)."""
    found: dict[str, tuple[str, DeletionConfirmed]] = {}
    info = await admin.js.stream_info(submit_stream(SUCHT))
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if not info.state.messages:
            break
        msg = await admin.js.get_msg(submit_stream(SUCHT), seq)
        opened = open_envelope(msg.data, keyring(JOBCENTER), fed().directory)
        if opened.header.type != "deletion-confirmed":
            continue
        body = decode_body("deletion-confirmed", opened.plaintext)
        assert isinstance(body, DeletionConfirmed)
        assert opened.header.sender == SUCHT
        assert opened.header.reply_to == body.in_reply_to
        found[body.in_reply_to] = (opened.header.id, body)
    return found


async def test_only_an_answer_to_a_notice_sent_to_that_recipient_confirms_a_deletion(
    jobcenter: Running, caplog: pytest.LogCaptureFixture
) -> None:
    """The issuer folds a deletion confirmation only if it answers a notice it sends that very
    agency: another recipient's, or one answering no notice at all, could make the consent
    look deleted where nothing was. A receipt for a notice is expected, not a warning."""
    caplog.set_level(logging.INFO, logger="bridge.adapters")
    view = await jobcenter.register()
    consent_id = view["consent_id"]
    status, _ = await jobcenter.call("DELETE", f"/v1/consents/{consent_id}")
    assert status == 200
    to_sucht = derived_id(b"bridge/consent-revoked/v1", consent_id, SUCHT)
    now = datetime.datetime.now(datetime.UTC)

    async def answer(sender: str, notice: str, body: Any, kind: str) -> None:
        message_id = new_message_id()
        envelope = seal_to(
            JOBCENTER,
            sender=sender,
            plaintext=encode_body(body),
            message_type=kind,
            message_id=message_id,
            reply_to=notice,
            purpose="delivery-confirmation",
            categories=("delivery-metadata",),
            consent=consent_id,
        )
        await put_in_inbox(jobcenter.admin, JOBCENTER, envelope, message_id)

    def confirmation(notice: str) -> DeletionConfirmed:
        return DeletionConfirmed(
            in_reply_to=notice, consent=consent_id, deleted_at=now, messages=(new_message_id(),)
        )

    # The social-psychiatric service answers the notice meant for the counselling service, and
    # a notice id nobody was sent; then the counselling service answers its own.
    await answer(SPDI, to_sucht, confirmation(to_sucht), "deletion-confirmed")
    stray = new_message_id()
    await answer(SPDI, stray, confirmation(stray), "deletion-confirmed")
    await answer(
        SUCHT,
        to_sucht,
        Receipt(in_reply_to=to_sucht, received_at=now, disposition=Delivered()),
        "receipt",
    )
    await answer(SUCHT, to_sucht, confirmation(to_sucht), "deletion-confirmed")

    async def confirmed() -> set[str] | None:
        _, view = await jobcenter.call("GET", f"/v1/consents/{consent_id}", scope="consents:read")
        done = {e["recipient"] for e in view["events"] if e["state"] == "deletion-confirmed"}
        return done or None

    assert await eventually(confirmed, what="the counselling service's confirmation") == {SUCHT}
    await eventually(
        lambda: _true(caplog.text.count("answers no notice of ours") == 2),
        what="both stray confirmations refused",
    )
    assert f"receipt from {SUCHT} for consent notice {to_sucht}" in caplog.text
    assert "is for no message sent to its sender" not in caplog.text
    assert await confirmed() == {SUCHT}


async def test_while_the_registry_cannot_be_read_the_adapter_answers_503_and_sends_nothing(
    jobcenter: Running,
) -> None:
    """Reads of the registry fail (direct gets find no responder), writes still work: a
    consent is registered (201, not a 503 whose retry would register it twice); showing it and
    sending under it answer 503 with Retry-After and nothing is submitted; both work again
    once reads are answered."""
    admin = jobcenter.admin
    config = (await admin.js.stream_info(consent_stream(JOBCENTER, "record"))).config
    await admin.js.update_stream(dataclasses.replace(config, allow_direct=False))
    try:
        view = await jobcenter.register()
        consent_id = view["consent_id"]
        assert view["state"] == "active"
        headers = {"Content-Type": "application/json", **jobcenter.agency.auth()}
        for method, path, body in (
            ("GET", f"/v1/consents/{consent_id}", None),
            ("POST", "/v1/messages", referral_request(consent=consent_id)),
        ):
            data = None if body is None else json.dumps(body).encode()
            async with jobcenter.http.request(
                method, f"{jobcenter.adapter.url}{path}", data=data, headers=headers
            ) as r:
                problem = await r.json()
                assert (r.status, problem["code"]) == (503, "consent.registry_unavailable")
                assert int(r.headers["Retry-After"]) > 0
        assert await submitted(admin, JOBCENTER) == 0
    finally:
        await admin.js.update_stream(dataclasses.replace(config, allow_direct=True))
    status, again = await jobcenter.call("GET", f"/v1/consents/{consent_id}", scope="consents:read")
    assert (status, again["consent_id"]) == (200, consent_id)
    status, accepted = await jobcenter.call(
        "POST", "/v1/messages", referral_request(consent=consent_id), scope="messages:send"
    )
    assert status == 202, accepted
    assert await submitted(admin, JOBCENTER) == 1
