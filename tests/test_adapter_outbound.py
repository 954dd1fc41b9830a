"""The adapter's outbound API against a real nats-server: submit, idempotency, refusals, auth.

Submissions are read back from BRIDGE_SUBMIT as admin and verified with the directory; no broker
runs. Every refusal is checked to publish nothing and to name the field without echoing values.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from adapter_helpers import (
    JOBCENTER,
    NOW,
    SPDI,
    SUCHT,
    Agency,
    agency_seed,
    eventually,
    fed,
    last_submitted,
    make_agency,
    referral_request,
    submitted,
)
from openapi_spec_validator import validate
from policy_helpers import POLICY, signed_policy

from bridge.adapters.service import Adapter
from bridge.crypto import verify
from bridge.federation.directory import sign_directory
from bridge.nats.subjects import HDR_MSG_ID
from bridge.policy import PolicySerialState

MARKER = "Zyxwvutsrq"  # a value that must never come back in a problem


@dataclass
class Running:
    agency: Agency
    adapter: Adapter
    http: aiohttp.ClientSession
    admin: Any

    @property
    def url(self) -> str:
        return self.adapter.url

    async def submit(
        self, request: Any, *, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> tuple[int, dict[str, Any], Any]:
        hdrs = {"Content-Type": "application/json", **self.agency.auth()}
        hdrs.update(headers or {})
        data = raw if raw is not None else json.dumps(request).encode()
        async with self.http.post(f"{self.url}/v1/messages", data=data, headers=hdrs) as r:
            return r.status, dict(r.headers), await r.json(content_type=None)


@pytest.fixture
async def jobcenter(tmp_path: Path, nats_env: Any) -> AsyncIterator[Running]:
    agency = make_agency(tmp_path, nats_env.url, agency_seed(nats_env, JOBCENTER), JOBCENTER)
    admin = await nats_env.admin()
    async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
        yield Running(agency, adapter, http, admin)


async def test_submit_publishes_a_verifiable_envelope_after_the_puback(jobcenter: Running) -> None:
    status, headers, body = await jobcenter.submit(referral_request())
    assert status == 202, body
    message_id = body["message_id"]
    assert headers["Location"] == f"/v1/messages/{message_id}"
    msg = await last_submitted(jobcenter.admin, JOBCENTER)
    assert msg.headers[HDR_MSG_ID] == message_id
    envelope = verify(msg.data, fed().directory)
    assert envelope.header.id == message_id
    assert envelope.header.sender == JOBCENTER
    assert [r.agency for r in envelope.header.recipients] == [SUCHT]
    assert envelope.header.categories == ["identity", "contact", "addiction"]

    async with jobcenter.http.get(
        f"{jobcenter.url}/v1/messages/{message_id}", headers=jobcenter.agency.auth("messages:read")
    ) as r:
        assert r.status == 200
        timeline = await r.json()
    assert [e["state"] for e in timeline["events"]] == ["accepted"]
    assert timeline["recipients"] == [{"agency": SUCHT, "state": "accepted"}]


async def test_idempotency_key_gives_one_message(jobcenter: Running) -> None:
    request = referral_request()
    key = {"Idempotency-Key": "case-4711-attempt"}
    first = await jobcenter.submit(request, headers=key)
    second = await jobcenter.submit(request, headers=key)
    assert first[0] == second[0] == 202
    assert first[2]["message_id"] == second[2]["message_id"]
    assert await submitted(jobcenter.admin, JOBCENTER) == 1

    changed = referral_request(purpose="case-handover")
    status, _, problem = await jobcenter.submit(changed, headers=key)
    assert status == 422
    assert problem["code"] == "idempotency.mismatch"

    # The key is per caller: another token subject gets its own message.
    other = {**key, **jobcenter.agency.auth(subject="another-system")}
    status, _, body = await jobcenter.submit(request, headers=other)
    assert status == 202
    assert body["message_id"] != first[2]["message_id"]
    assert await submitted(jobcenter.admin, JOBCENTER) == 2


def _with_body(**changes: Any) -> dict[str, Any]:
    request = referral_request()
    request["body"] = {**request["body"], **changes}
    return request


def _without(field: str) -> dict[str, Any]:
    request = referral_request()
    del request[field]
    return request


BAD_REQUESTS = {
    "unknown field": ({**referral_request(), MARKER: 1}, 422, "request.invalid", "$"),
    "body field of wrong type": (_with_body(urgency=MARKER), 422, "body.invalid", "$.body.urgency"),
    "body of another type": (
        referral_request(type="feedback", categories=["health"]),
        422,
        "body.type_mismatch",
        "$.body.type",
    ),
    "unknown recipient": (
        referral_request(recipients=["klinik-" + MARKER.lower()]),
        422,
        "recipient.unknown",
        "$.recipients[0]",
    ),
    "malformed recipient": (
        referral_request(recipients=[MARKER]),
        422,
        "request.invalid",
        "$.recipients[0]",
    ),
    "missing consent": (_without("consent"), 422, "request.invalid", "$.consent"),
    "bad purpose code": (referral_request(purpose=MARKER), 422, "request.invalid", "$.purpose"),
    "category not allowed for type": (
        referral_request(type="feedback", categories=["identity"]),
        422,
        "body.type_mismatch",
        "$.body.type",
    ),
    "self as recipient": (
        referral_request(recipients=[JOBCENTER]),
        422,
        "recipient.self",
        "$.recipients[0]",
    ),
    "lifetime too long": (
        referral_request(lifetime_seconds=10**9),
        422,
        "request.lifetime_too_long",
        "$.lifetime_seconds",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_request_is_refused_naming_the_field_and_nothing_is_published(
    jobcenter: Running, case: str
) -> None:
    request, want_status, want_code, want_field = BAD_REQUESTS[case]
    status, headers, problem = await jobcenter.submit(request)
    assert status == want_status, problem
    assert headers["Content-Type"].startswith("application/problem+json")
    assert problem["code"] == want_code
    assert problem["field"] == want_field
    assert problem["status"] == want_status
    assert {"type", "title", "detail"} <= problem.keys()
    assert MARKER not in json.dumps(problem)
    assert MARKER.lower() not in json.dumps(problem)
    assert await submitted(jobcenter.admin, JOBCENTER) == 0


async def test_category_not_allowed_for_a_feedback(jobcenter: Running) -> None:
    request = referral_request(
        type="feedback",
        categories=["health", "identity"],
        body={
            "type": "feedback",
            "in_reply_to": "0b7e6c52-2f1d-4c3a-9e8b-5d4f3a2b1c0d",
            "outcome": {"code": "measure-started"},
            "occurred_on": "2026-03-04",
        },
    )
    status, _, problem = await jobcenter.submit(request)
    assert status == 422, problem
    assert problem["code"] == "request.category_not_allowed"
    assert problem["field"] == "$.categories[1]"
    assert problem["pointer"] == "/categories/1"
    assert await submitted(jobcenter.admin, JOBCENTER) == 0


@pytest.mark.parametrize(
    ("raw", "content_type", "want_status", "want_code"),
    [
        (b'{"type": "referral",', "application/json", 400, "request.malformed"),
        (b"x" * (768 * 1024 + 1), "application/json", 413, "request.too_large"),
        (b"{}", "text/plain", 415, "request.media_type"),
    ],
    ids=["not json", "too large", "wrong media type"],
)
async def test_unparseable_requests(
    jobcenter: Running, raw: bytes, content_type: str, want_status: int, want_code: str
) -> None:
    status, _, problem = await jobcenter.submit(
        None, raw=raw, headers={"Content-Type": content_type}
    )
    assert status == want_status
    assert problem["code"] == want_code
    assert await submitted(jobcenter.admin, JOBCENTER) == 0


async def test_too_large_by_content_length_is_refused_before_reading(jobcenter: Running) -> None:
    async with jobcenter.http.post(
        f"{jobcenter.url}/v1/messages",
        data=b"{}",
        headers={
            "Content-Type": "application/json",
            "Content-Length": str(10**9),
            **jobcenter.agency.auth(),
        },
    ) as r:
        assert r.status == 413


def _tokens(agency: Agency) -> dict[str, tuple[dict[str, str], int]]:
    return {
        "missing": ({}, 401),
        "not bearer": ({"Authorization": "Basic dXNlcjpwdw=="}, 401),
        "garbage": ({"Authorization": "Bearer not.a.jwt"}, 401),
        "expired": (
            {"Authorization": "Bearer " + agency.token(now=NOW - 7200, lifetime=60)},
            401,
        ),
        "wrong scope": ({"Authorization": "Bearer " + agency.token("messages:read")}, 403),
    }


@pytest.mark.parametrize("case", ["missing", "not bearer", "garbage", "expired", "wrong scope"])
async def test_tokens_are_checked_before_anything_else(jobcenter: Running, case: str) -> None:
    auth, want = _tokens(jobcenter.agency)[case]
    async with jobcenter.http.post(
        f"{jobcenter.url}/v1/messages",
        data=json.dumps(referral_request()).encode(),
        headers={"Content-Type": "application/json", **auth},
    ) as r:
        assert r.status == want
        assert r.headers["Content-Type"].startswith("application/problem+json")
        if want == 401:
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
        problem = await r.json(content_type=None)
    assert problem["code"] == ("auth.invalid_token" if want == 401 else "auth.insufficient_scope")
    assert await submitted(jobcenter.admin, JOBCENTER) == 0


async def test_every_endpoint_but_health_needs_a_token(jobcenter: Running) -> None:
    some_id = "7f3c8a52-1d4e-4b6f-9a2c-5e8d0b1f4a73"
    for method, path in [
        ("GET", f"/v1/messages/{some_id}"),
        ("GET", "/v1/inbox"),
        ("GET", f"/v1/inbox/{some_id}"),
        ("POST", f"/v1/inbox/{some_id}/ack"),
        ("GET", "/openapi.json"),
    ]:
        async with jobcenter.http.request(method, jobcenter.url + path) as r:
            assert r.status == 401, path
    for path in ("/healthz", "/readyz"):
        async with jobcenter.http.get(jobcenter.url + path) as r:
            assert r.status == 200, path


async def test_unknown_and_malformed_message_ids_are_404(jobcenter: Running) -> None:
    auth = jobcenter.agency.auth("messages:read")
    for message_id in ("7f3c8a52-1d4e-4b6f-9a2c-5e8d0b1f4a73", "not-an-id", "..%2F"):
        async with jobcenter.http.get(
            f"{jobcenter.url}/v1/messages/{message_id}", headers=auth
        ) as r:
            assert r.status == 404
            assert r.headers["Content-Type"].startswith("application/problem+json")


async def test_openapi_document_validates(jobcenter: Running) -> None:
    async with jobcenter.http.get(
        f"{jobcenter.url}/openapi.json", headers=jobcenter.agency.auth("inbox:read")
    ) as r:
        assert r.status == 200
        document = await r.json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    assert "SubmitRequest" in document["components"]["schemas"]


async def test_nats_down_gives_503_with_retry_after(jobcenter: Running, nats_env: Any) -> None:
    await nats_env.server.stop()

    async def not_ready() -> bool:
        async with jobcenter.http.get(f"{jobcenter.url}/readyz") as r:
            return r.status == 503

    await eventually(not_ready, what="readyz to report NATS down")
    status, headers, problem = await jobcenter.submit(
        referral_request(), headers={"Idempotency-Key": "k-1"}
    )
    assert status == 503, problem
    assert int(headers["Retry-After"]) > 0
    assert problem["code"].startswith(("store.", "transport."))


# A narrower policy than the demo's: one of each refusal is reachable through the API.
NARROW_POLICY = (
    POLICY.replace('"health", "addiction", "social-situation"', '"health", "social-situation"', 1)
    .replace('max_lifetime = "30d"    # the longest', 'max_lifetime = "2d"    # the longest', 1)
    .replace('inbox_ttl = "14d"       # the longest', 'inbox_ttl = "1d"       # the longest', 1)
    .replace("max_bytes = 1048576     # the whole", "max_bytes = 4096     # the whole", 1)
)
_FEEDBACK_BODY = {
    "type": "feedback",
    "in_reply_to": "0b7e6c52-2f1d-4c3a-9e8b-5d4f3a2b1c0d",
    "outcome": {"code": "measure-started"},
    "occurred_on": "2026-03-04",
}
POLICY_REFUSALS = {
    "flow not allowed": (
        referral_request(type="feedback", categories=["health"], body=_FEEDBACK_BODY),
        "policy.route_denied",
        "$.recipients[0]",
    ),
    "purpose": (
        referral_request(purpose="delivery-confirmation"),
        "policy.purpose_denied",
        "$.purpose",
    ),
    "category": (
        referral_request(categories=["identity", "addiction"]),
        "policy.category_denied",
        "$.categories[1]",
    ),
    "lifetime": (
        referral_request(categories=["identity", "contact"], lifetime_seconds=3 * 86400),
        "policy.lifetime",
        "$.lifetime_seconds",
    ),
    "size": (
        referral_request(categories=["identity", "contact"], lifetime_seconds=86400),
        "policy.too_large",
        "$.body",
    ),
}


def _narrow_agency(tmp_path: Path, nats_env: Any) -> Agency:
    agency = make_agency(tmp_path, nats_env.url, agency_seed(nats_env, JOBCENTER), JOBCENTER)
    Path(agency.config.policy.file).write_bytes(signed_policy(fed(), NARROW_POLICY)[0])
    return agency


@pytest.fixture
async def narrow(tmp_path: Path, nats_env: Any) -> AsyncIterator[Running]:
    agency = _narrow_agency(tmp_path, nats_env)
    admin = await nats_env.admin()
    async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
        yield Running(agency, adapter, http, admin)


async def test_policy_refusals_carry_the_brokers_reason_and_publish_nothing(
    narrow: Running,
) -> None:
    assert narrow.adapter.policy().hash == signed_policy(fed(), NARROW_POLICY)[1].hash
    for case, (request, code, field) in POLICY_REFUSALS.items():
        status, _, problem = await narrow.submit(request)
        assert (status, problem["code"], problem["field"]) == (422, code, field), case
    assert await submitted(narrow.admin, JOBCENTER) == 0


async def test_a_new_directory_is_taken_and_a_rollback_kept_out(
    tmp_path: Path, nats_env: Any, caplog: pytest.LogCaptureFixture
) -> None:
    agency = make_agency(tmp_path, nats_env.url, agency_seed(nats_env, JOBCENTER), JOBCENTER)
    c = agency.config
    config = msgspec.structs.replace(
        c, directory=msgspec.structs.replace(c.directory, reload_seconds=1)
    )
    path = Path(c.directory.file)
    f = fed()

    def install(serial: int) -> None:
        new = path.with_suffix(".new")
        new.write_bytes(
            sign_directory(msgspec.structs.replace(f.directory.body, serial=serial), f.anchor)
        )
        os.replace(new, path)  # a new inode, as an operator's tools would leave it

    async with Adapter(config) as adapter:
        assert adapter.directory().serial == f.directory.serial
        install(f.directory.serial + 2)

        async def serial(wanted: int) -> bool:
            return adapter.directory().serial == wanted

        async def refused() -> bool:
            return "directory.rollback" in caplog.text

        await eventually(lambda: serial(f.directory.serial + 2), what="the new directory taken")
        install(f.directory.serial + 1)  # older than the one in use
        await eventually(refused, what="the rollback refused")
        assert adapter.directory().serial == f.directory.serial + 2
        assert adapter.ready()


async def test_a_running_adapter_takes_a_new_policy_and_keeps_its_last_good_one(
    tmp_path: Path, nats_env: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The adapter reloads the signed policy as the broker does: a newer serial is enforced at
    once; a tampered file or an older serial is refused, logged, and the last good one kept."""
    agency = make_agency(tmp_path, nats_env.url, agency_seed(nats_env, JOBCENTER), JOBCENTER)
    c = agency.config
    config = msgspec.structs.replace(
        c, directory=msgspec.structs.replace(c.directory, reload_seconds=1)
    )
    path = Path(c.policy.file)
    first = signed_policy(fed())[1]
    # Serial 2 no longer lets the Jobcenter refer to the social-psychiatric service.
    stricter_text = POLICY.replace(
        'to = ["counselling", "social-psychiatric-service"]', 'to = ["counselling"]', 1
    )
    assert stricter_text != POLICY
    stricter_data, stricter = signed_policy(fed(), stricter_text, serial=2)
    tampered = bytearray(stricter_data)
    tampered[100] ^= 1

    def install(data: bytes) -> None:
        new = path.with_suffix(".new")
        new.write_bytes(data)
        os.replace(new, path)  # a new inode, as an operator's tools would leave it

    async def logged(reason: str) -> bool:
        return any(
            "new policy refused, keeping serial" in r.getMessage()
            and f"[{reason}]" in r.getMessage()
            for r in caplog.records
        )

    caplog.set_level(logging.INFO, logger="bridge.policy")
    admin = await nats_env.admin()
    to_spdi = referral_request(recipients=[SPDI])
    async with Adapter(config) as adapter, aiohttp.ClientSession() as http:
        running = Running(agency, adapter, http, admin)
        assert adapter.policy().hash == first.hash
        install(bytes(tampered))
        await eventually(lambda: logged("policy.signature_invalid"), what="the tampered refused")
        assert adapter.policy().hash == first.hash
        status, _, body = await running.submit(to_spdi)
        assert status == 202, body  # still under serial 1
        install(stricter_data)

        async def taken() -> bool:
            return adapter.policy().serial == 2

        await eventually(taken, what="serial 2 taken")
        assert adapter.policy().hash == stricter.hash
        install(signed_policy(fed(), serial=1)[0])
        await eventually(lambda: logged("policy.rollback"), what="the rollback refused")
        assert adapter.policy().hash == stricter.hash
        status, _, problem = await running.submit(to_spdi)
        assert (status, problem["code"]) == (422, "policy.route_denied")
        status, _, body = await running.submit(referral_request())  # counselling: still allowed
        assert status == 202, body
        assert adapter.ready()
    assert await submitted(admin, JOBCENTER) == 2
    assert PolicySerialState(Path(c.policy.serial_state)).highest() == 2
