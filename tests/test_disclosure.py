"""The client's disclosure report, checked against a scripted scenario on the whole stack.

A Jobcenter registers one consent for a client, then: a referral is delivered and receipted, a
second is refused by the broker, a handover expires undelivered, a last referral is withdrawn
when the client withdraws the consent, and the counselling service confirms it deleted what it
had. The report (`GET /v1/disclosures?local_ref=…`) must say exactly that, built from the audit
trail, in JSON and in printable HTML (de, en); and it is refused for a reference or a consent the
agency does not hold. Last, `bridge retention check` and `bridge audit verify` pass on the stack
after `bridge demo`.
"""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import sys
import uuid
from typing import Any

import msgspec
from test_e2e import COUNSELLING, E2E, JOBCENTER, SPDI, _in_days, e2e, eventually

from bridge.audit import AuditKind, ChainVerifier, load_audit_public_key
from bridge.audit.reader import stream_records
from bridge.config import ExpiryConfig, PolicyConfig
from bridge.demo import demo_referral, run_demo
from bridge.nats.identities import Credentials, Identity
from bridge.nats.subjects import AUDIT_STREAM
from bridge.nats.transport import connect
from bridge.policy import sign_policy_file
from bridge.wire import MessageType
from bridge.wire.examples import BODIES

__all__ = ["e2e"]  # the fixture, imported for pytest

CASE = "AZ 4711/26-Mustermann"  # the Jobcenter's own reference: never leaves its adapter
DAY = 86400


async def _call(e2e: E2E, method: str, agency: str, path: str, scopes: list[str]) -> Any:
    async with e2e.session.request(
        method, f"{e2e.stack.adapter_url(agency)}{path}", headers=e2e._headers(agency, scopes)
    ) as r:
        body = await r.text()
        return r.status, body


async def _register(e2e: E2E) -> str:
    request = {
        "recipients": [COUNSELLING, SPDI],
        "purposes": ["integration-support"],
        "categories": ["identity", "contact", "addiction"],
        "types": ["referral", "handover"],
        "valid_until": _in_days(300),
        "local_ref": CASE,
    }
    async with e2e.session.post(
        f"{e2e.stack.adapter_url(JOBCENTER)}/v1/consents",
        data=msgspec.json.encode(request),
        headers={**e2e._headers(JOBCENTER, ["consents:write"]), "Content-Type": "application/json"},
    ) as r:
        answer = await r.json()
        assert r.status == 201, answer
    return str(answer["consent_id"])


async def test_the_report_matches_what_happened(e2e: E2E) -> None:
    # A broker whose handovers wait only seconds and whose referrals may live ten days at most:
    # a newer policy that only the broker has taken yet (the adapters still allow more).
    await e2e.stop_broker()
    config = e2e.broker_config()
    layout = e2e.stack.layout
    strict = layout.root / "strict-policy.toml"
    strict.write_text(
        layout.policy_source.read_text()
        .replace('max_lifetime = "30d"    # the longest', 'max_lifetime = "10d"  # the longest', 1)
        .replace('inbox_ttl = "14d"       # the longest', 'inbox_ttl = "10d"  # the longest', 1)
        .replace(
            'max_lifetime = "30d"\ninbox_ttl = "14d"', 'max_lifetime = "30d"\ninbox_ttl = 6', 1
        )
    )
    _, signed = sign_policy_file(
        layout.federation_dir, strict, out=layout.broker_dir / "strict-policy.bin"
    )
    policy = PolicyConfig(file=str(signed), serial_state=config.policy.serial_state)
    await e2e.start_broker(
        msgspec.structs.replace(
            config, policy=policy, expiry=ExpiryConfig(check_seconds=1, warn_fraction=0.5)
        )
    )
    consent = await _register(e2e)
    send = {"consent": consent, "purpose": "integration-support"}

    week = 7 * DAY
    delivered = await e2e.submit(
        JOBCENTER, [COUNSELLING], demo_referral(), lifetime_seconds=week, **send
    )
    await e2e.wait_states(JOBCENTER, delivered, {COUNSELLING: "receipted"})
    refused = await e2e.submit(
        JOBCENTER, [COUNSELLING], demo_referral(), lifetime_seconds=20 * DAY, **send
    )
    await e2e.wait_states(JOBCENTER, refused, {COUNSELLING: "rejected"})
    expired = await e2e.submit(JOBCENTER, [SPDI], BODIES[MessageType.HANDOVER], **send)
    await e2e.wait_states(JOBCENTER, expired, {SPDI: "expired"})
    withdrawn = await e2e.submit(JOBCENTER, [SPDI], demo_referral(), lifetime_seconds=week, **send)
    await e2e.wait_states(JOBCENTER, withdrawn, {SPDI: "routed"})

    status, _ = await _call(e2e, "DELETE", JOBCENTER, f"/v1/consents/{consent}", ["consents:write"])
    assert status == 200
    await e2e.wait_states(JOBCENTER, withdrawn, {SPDI: "withdrawn"})

    async def notice() -> Any:
        found = [d for d in e2e.sink.deliveries if d.payload.get("type") == "consent-revoked"]
        return found[0].message_id if found else None

    notice_id = await eventually("the consent-revoked notice", notice)
    status, _ = await _call(
        e2e, "POST", COUNSELLING, f"/v1/inbox/{notice_id}/deleted", ["inbox:ack"]
    )
    assert status == 200

    async def report() -> Any:
        status, body = await _call(
            e2e, "GET", JOBCENTER, f"/v1/disclosures?local_ref={CASE}", ["consents:read"]
        )
        assert status == 200, body
        answer = msgspec.json.decode(body)
        outcomes = {(d["message_id"], d.get("recipient")) for d in answer["disclosures"]}
        done = any(d["outcome"] == "deleted" for d in answer["disclosures"])
        return answer if done and len(outcomes) == 4 else None

    answer = await eventually("the deletion in the report", report)
    got = {
        (d["message_id"], d.get("recipient")): (d["outcome"], d.get("reason"), d["type"])
        for d in answer["disclosures"]
    }
    assert got == {
        (delivered, COUNSELLING): ("deleted", None, "referral"),
        (refused, None): ("rejected", "policy.lifetime", "referral"),
        (expired, SPDI): ("expired", "retention.expired", "handover"),
        (withdrawn, SPDI): ("withdrawn", "consent.withdrawn", "referral"),
    }
    for line in answer["disclosures"]:
        assert line["consent"] == consent
        assert line["purpose"] == "integration-support"
        assert sorted(line["categories"]) == ["addiction", "contact", "identity"]
    steps = {d["message_id"]: [s["kind"] for s in d["steps"]] for d in answer["disclosures"]}
    assert steps[delivered][-3:] == ["delivered", "receipted", "deletion-confirmed"]
    assert answer["audit"]["verified"] is True
    assert "audit trail" in answer["source"]
    (view,) = answer["consents"]
    assert view["state"] == "withdrawn"
    assert CASE not in msgspec.json.encode(answer).decode()  # the reference stays with the caller

    for lang, words in (("de", ("Auskunft", "abgelehnt", "gelöscht")), ("en", ("refused",))):
        status, page = await _call(
            e2e,
            "GET",
            JOBCENTER,
            f"/v1/disclosures?local_ref={CASE}&format=html&lang={lang}",
            ["consents:read"],
        )
        assert status == 200
        assert f'<html lang="{lang}">' in page
        for word in words:
            assert word in page
        assert "Suchtberatung Unna" in page
        assert "Sozialpsychiatrischer Dienst Kreis Unna" in page
        assert CASE not in page

    # The audit trail also holds the consent's registration and withdrawal, signed and chained.
    ops_seed = Credentials(e2e.stack.layout.nats.creds_dir).seed_file(Identity.ops())
    public = load_audit_public_key(e2e.stack.layout.audit_public_key)

    async def audited() -> set[AuditKind] | None:
        nc = await connect(e2e.server.url, ops_seed, Identity.ops().inbox_prefix, "test-ops")
        try:
            verifier = ChainVerifier(public, AUDIT_STREAM)
            kinds = set()
            async for seq, data in stream_records(nc.jetstream(timeout=5)):
                event = verifier.add(seq, data).event
                if event is not None and event.consent == consent and event.agency == JOBCENTER:
                    kinds.add(event.kind)
        finally:
            await nc.close()
        wanted = {AuditKind.CONSENT_REGISTERED, AuditKind.CONSENT_WITHDRAWN}
        return kinds if wanted <= kinds else None

    about = await eventually("the consent's registration and withdrawal audited", audited)
    assert AuditKind.DELETION_CONFIRMED not in about  # that one names the confirming agency

    # Refused for what the agency does not hold: another reference, another agency's consent.
    status, body = await _call(
        e2e, "GET", JOBCENTER, "/v1/disclosures?local_ref=AZ%200000", ["consents:read"]
    )
    assert (status, msgspec.json.decode(body)["code"]) == (404, "disclosure.unknown_reference")
    stranger = f"c-{uuid.uuid4().hex}"
    status, body = await _call(
        e2e, "GET", COUNSELLING, f"/v1/disclosures?consent={consent}", ["consents:read"]
    )
    assert status == 404
    status, _ = await _call(
        e2e, "GET", JOBCENTER, f"/v1/disclosures?consent={stranger}", ["consents:read"]
    )
    assert status == 404
    status, _ = await _call(e2e, "GET", JOBCENTER, f"/v1/disclosures?local_ref={CASE}", [])
    assert status == 403


async def test_retention_check_and_audit_verify_pass_after_the_demo(e2e: E2E) -> None:
    out = io.StringIO()
    await run_demo(e2e.stack, out, patience=30)
    state = str(e2e.stack.layout.root)
    case = re.search(r"case file (DEMO-[0-9A-F]+)", out.getvalue())
    assert case is not None

    async def bridge(*args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bridge", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    report = await bridge(
        "report", "--state", state, "--agency", JOBCENTER, "--local-ref", case.group(1)
    )
    assert report.returncode == 0, report.stderr
    lines = msgspec.json.decode(report.stdout)["disclosures"]
    assert {(d["recipient"], d["outcome"]) for d in lines} == {
        (COUNSELLING, "receipted"),
        (SPDI, "receipted"),
    }
    unknown = await bridge("report", "--state", state, "--agency", JOBCENTER, "--local-ref", "X1")
    assert unknown.returncode == 1
    assert "disclosure.unknown_reference" in unknown.stderr
    assert "X1" not in unknown.stderr

    await e2e.stop_broker()  # a clean stop signs what it wrote
    retention = await bridge("retention", "check", "--state", state)
    assert retention.returncode == 0, retention.stdout + retention.stderr
    assert "nothing older than its limit" in retention.stdout
    verify = await bridge("audit", "verify", "--state", state)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "intact" in verify.stdout
    assert "0 not yet signed" in verify.stdout
