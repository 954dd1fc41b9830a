"""docs/consent.md's worked example, run against real adapters with enforcement on: the
documented request registers, the documented answer has the documented shape, and every
refusal the example names comes with the code it names."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
from adapter_helpers import JOBCENTER, SPDI, SUCHT, Agency, agency_seed, make_agency

from bridge.adapters.service import Adapter
from bridge.wire import MessageType, encode_body
from bridge.wire.examples import BODIES

DOC = (Path(__file__).parent.parent / "docs" / "consent.md").read_text()
EXAMPLE = DOC.split("## Worked example", 1)[1].split("\n## ", 1)[0]


def _documented() -> tuple[dict[str, Any], dict[str, Any]]:
    """The request body and the answer body of the example's two http blocks."""
    blocks = re.findall(r"```http\n(.*?)```", EXAMPLE, re.S)
    request = json.loads(blocks[0].split("\n\n", 1)[1])
    answer = json.loads(blocks[1].split("\n\n", 1)[1])
    return request, answer


async def _call(
    http: aiohttp.ClientSession,
    agency: Agency,
    adapter: Adapter,
    method: str,
    path: str,
    body: Any = None,
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **agency.auth()}
    data = None if body is None else json.dumps(body).encode()
    async with http.request(method, f"{adapter.url}{path}", data=data, headers=headers) as r:
        return r.status, await r.json(content_type=None)


def _message(kind: MessageType, recipients: list[str], consent: str, **changes: Any) -> Any:
    request = {
        "type": kind.value,
        "recipients": recipients,
        "consent": consent,
        "purpose": "integration-support",
        "categories": ["identity", "contact", "addiction"],
        "body": json.loads(encode_body(BODIES[kind])),
    }
    request.update(changes)
    return request


async def test_the_worked_example_does_what_it_says(tmp_path: Path, nats_env: Any) -> None:
    request, answer = _documented()
    # The documented date lies in the example's own time; keep it within the policy's limit.
    until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=180)
    request["valid_until"] = until.strftime("%Y-%m-%dT%H:%M:%SZ")
    agencies = {
        agency: make_agency(
            tmp_path, nats_env.url, agency_seed(nats_env, agency), agency, enforce_consent=True
        )
        for agency in (JOBCENTER, SUCHT)
    }
    async with (
        Adapter(agencies[JOBCENTER].config) as jobcenter,
        Adapter(agencies[SUCHT].config) as sucht,
        aiohttp.ClientSession() as http,
    ):

        async def as_jobcenter(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            return await _call(http, agencies[JOBCENTER], jobcenter, method, path, body)

        status, view = await as_jobcenter("POST", "/v1/consents", request)
        assert status == 201, view
        assert set(view) == set(answer)
        for key in (
            "issuer",
            "recipients",
            "purposes",
            "categories",
            "types",
            "state",
            "local_ref",
        ):
            assert view[key] == answer[key], key
        cid = view["consent_id"]

        def sent(kind: MessageType, recipients: list[str], **changes: Any) -> Any:
            return _message(kind, recipients, cid, **changes)

        status, body = await as_jobcenter(
            "POST", "/v1/messages", sent(MessageType.REFERRAL, [SUCHT, SPDI])
        )
        assert status == 202, body
        with_notes = sent(
            MessageType.REFERRAL, [SUCHT, SPDI], categories=["identity", "contact", "case-notes"]
        )
        status, body = await as_jobcenter("POST", "/v1/messages", with_notes)
        assert (status, body["code"]) == (422, "consent.category_not_covered")
        status, body = await as_jobcenter(
            "POST", "/v1/messages", sent(MessageType.REFERRAL, ["klinik-dortmund"])
        )
        assert (status, body["code"]) == (422, "recipient.unknown")  # not in the directory
        # Had the consent named the Suchtberatung only, a referral to both is not covered.
        status, narrow = await as_jobcenter(
            "POST", "/v1/consents", {**request, "recipients": [SUCHT]}
        )
        assert status == 201, narrow
        both = _message(MessageType.REFERRAL, [SUCHT, SPDI], narrow["consent_id"])
        status, body = await as_jobcenter("POST", "/v1/messages", both)
        assert (status, body["code"]) == (422, "consent.recipient_not_covered")
        # The Suchtberatung's feedback naming the Jobcenter's consent, at its own adapter.
        feedback = sent(MessageType.FEEDBACK, [JOBCENTER], categories=["health", "addiction"])
        status, body = await _call(http, agencies[SUCHT], sucht, "POST", "/v1/messages", feedback)
        assert (status, body["code"]) == (422, "consent.issuer_not_accepted")

        status, found = await as_jobcenter("GET", "/v1/consents?local_ref=AZ%204711%2F26")
        assert status == 200, found
        assert cid in json.dumps(found)

        status, withdrawn = await as_jobcenter("DELETE", f"/v1/consents/{cid}")
        assert status == 200, withdrawn
        status, view = await as_jobcenter("GET", f"/v1/consents/{cid}")
        assert (view["state"], "withdrawn_at" in view) == ("withdrawn", True)
        status, body = await as_jobcenter(
            "POST", "/v1/messages", sent(MessageType.REFERRAL, [SUCHT])
        )
        assert (status, body["code"]) == (422, "consent.withdrawn")
        status, again = await as_jobcenter("DELETE", f"/v1/consents/{cid}")
        assert status == 200, again
        assert again["withdrawn_at"] == view["withdrawn_at"]
