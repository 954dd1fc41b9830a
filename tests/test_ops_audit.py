"""Ops follows the audit trail: withdrawals, consents, refusals, deletions, destroyed keys.

One test drives a real stack (a consent withdrawn while its message waits undelivered) and
checks the ops views, the metrics and the rebuild after a restart; the others fold audit
records, encoded exactly as the broker stores them, into a book of their own.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from ops_helpers import JOBCENTER, SPDI, OpsStack, eventually, ops_stack
from prometheus_client.parser import text_string_to_metric_families

from bridge.audit import GENESIS, AuditEvent, AuditKind, AuditRecord, encode_record
from bridge.demo import demo_referral
from bridge.ops.alerts import AlertBook
from bridge.ops.audit import AuditFollower
from bridge.ops.config import Thresholds
from bridge.ops.metrics import OpsMetrics
from bridge.ops.tracker import Tracker, Transition
from bridge.ops.views import OpsState
from bridge.wire import MessageType

CONSENT_REF = "c-" + "5e" * 16
CATEGORIES = ("identity", "contact", "addiction")


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[OpsStack]:
    async for running in ops_stack(tmp_path):
        yield running


def _scraped(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.slow
async def test_a_withdrawal_shows_from_the_audit_trail_and_survives_a_restart(
    env: OpsStack,
) -> None:
    consent = await env.register_consent(
        JOBCENTER, [SPDI], "integration-support", CATEGORIES, "referral"
    )
    message_id = await env.submit(JOBCENTER, [SPDI], demo_referral(), consent=consent)
    await env.wait_rows(message_id, {SPDI: "routed"})
    await env.withdraw_consent(JOBCENTER, consent)
    rows = await env.wait_rows(message_id, {SPDI: "withdrawn"})
    assert rows[SPDI]["reason"] == "consent.withdrawn"

    async def recorded() -> dict[str, Any] | None:
        audit: dict[str, Any] = await env.get("/v1/audit")
        kinds = {item["kind"] for item in audit["recent"]}
        return audit if {"withdrawn", "consent-withdrawn"} <= kinds else None

    audit = await eventually("the withdrawal in the ops audit view", recorded)
    assert audit["rebuilt"] is True
    assert audit["policy"]  # the broker recorded the policy it enforces
    counts = {c["kind"]: c for c in audit["counts"]}
    assert counts["withdrawn"]["total"] == 1
    assert counts["consent-withdrawn"]["total"] == 1
    assert counts["routed"]["total"] >= 1
    assert all(c["today"] <= c["total"] for c in counts.values())
    jobcenter = next(a for a in audit["agencies"] if a["agency"] == JOBCENTER)
    assert jobcenter["consents_withdrawn"] == 1
    assert jobcenter["consents_registered"] >= 1
    withdrawn = next(item for item in audit["recent"] if item["kind"] == "withdrawn")
    assert (withdrawn["message_id"], withdrawn["sender"], withdrawn["recipient"]) == (
        message_id,
        JOBCENTER,
        SPDI,
    )
    # Metadata only: the consent's id, purpose and categories never reach ops' views.
    for text in (json.dumps(audit), json.dumps(rows)):
        assert consent not in text
        assert "integration-support" not in text
        assert "addiction" not in text

    overview = await env.get("/v1/overview")
    same_day = overview["generated_at"][:10] == rows[SPDI]["steps"]["withdrawn"][:10]
    assert overview["withdrawn_today"] == (1 if same_day else 0)

    assert env.ops is not None
    async with env.session.get(f"{env.ops.metrics_url}/metrics") as response:
        text = await response.text()
    samples = _scraped(text)
    assert samples[("bridge_ops_audit_events_total", frozenset({("kind", "withdrawn")}))] == 1
    key = frozenset({("agency", JOBCENTER), ("kind", "consents_withdrawn")})
    assert samples[("bridge_ops_audit_agency_events", key)] == 1
    assert samples[("bridge_ops_audit_last_sequence", frozenset())] >= audit["last_sequence"]
    assert consent not in text

    await env.stop_ops()
    await env.start_ops()

    async def rebuilt() -> dict[str, Any] | None:
        again: dict[str, Any] = await env.get("/v1/audit")
        return (
            again if again["rebuilt"] and again["last_sequence"] >= audit["last_sequence"] else None
        )

    again = await eventually("the audit view rebuilt", rebuilt)
    counts_again = {c["kind"]: c["total"] for c in again["counts"]}
    assert counts_again["withdrawn"] == 1
    assert counts_again["consent-withdrawn"] == 1
    assert next(a for a in again["agencies"] if a["agency"] == JOBCENTER) == jobcenter
    assert (await env.rows(message_id))[SPDI]["state"] == "withdrawn"


# -- folding records, without a stack -----------------------------------------------------------

AT = datetime.datetime(2026, 3, 2, 9, 30, tzinfo=datetime.UTC)


class _Fold:
    def __init__(self) -> None:
        self.state = OpsState(Tracker(100), Thresholds(), (JOBCENTER, SPDI), 0.0)
        self.metrics = OpsMetrics(self.state, AlertBook())
        self.changes: list[Transition] = []
        self.follower = AuditFollower(
            js=None,  # type: ignore[arg-type]  # folding never reads NATS
            book=self.state.audit,
            tracker=self.state.tracker,
            metrics=self.metrics,
            on_transition=self.changes.append,
        )
        self.seq = 0

    def event(self, **fields: Any) -> None:
        self.raw(AuditRecord(seq=self.seq + 1, prev=GENESIS, event=AuditEvent(at=AT, **fields)))

    def raw(self, record: AuditRecord | bytes) -> None:
        self.seq += 1
        data = record if isinstance(record, bytes) else encode_record(record)
        self.follower.fold(self.seq, data)

    def skipped(self, reason: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "bridge_ops_events_skipped_total", {"reason": reason}
        )
        return value or 0.0


def test_refusals_for_consent_deletions_and_destroyed_keys_are_counted_per_agency() -> None:
    fold = _Fold()
    refused, other = str(uuid.uuid4()), str(uuid.uuid4())
    kid = "ab" * 16
    fold.event(kind=AuditKind.CONSENT_REGISTERED, agency=JOBCENTER, consent=CONSENT_REF)
    fold.event(
        kind=AuditKind.REJECTED,
        message_id=refused,
        sender=JOBCENTER,
        message_type=MessageType.REFERRAL,
        reason="consent.revoked",
    )
    fold.event(kind=AuditKind.REJECTED, message_id=other, sender=JOBCENTER, reason="envelope.bad")
    fold.event(kind=AuditKind.DELETION_CONFIRMED, agency=SPDI, sender=SPDI, consent=CONSENT_REF)
    fold.event(kind=AuditKind.KEY_DESTROYED, agency=SPDI, key_id=kid)
    fold.event(kind=AuditKind.POLICY_CHANGED, version="f" * 64)
    fold.event(kind=AuditKind.DIRECTORY_CHANGED, version="7")

    view = fold.state.audit.view(AT.timestamp())
    agencies = {a.agency: a for a in view.agencies}
    assert agencies[JOBCENTER].consents_registered == 1
    assert agencies[JOBCENTER].consent_refusals == 1  # the envelope refusal is not one
    assert agencies[SPDI].deletions_confirmed == 1
    assert agencies[SPDI].keys_destroyed == 1
    assert (view.policy, view.directory_serial) == ("f" * 64, "7")
    counts = {c.kind: (c.total, c.today) for c in view.counts}
    assert counts["rejected"] == (2, 2)
    assert counts["key-destroyed"] == (1, 1)
    assert [item.kind for item in view.recent][:2] == ["directory-changed", "policy-changed"]
    assert kid not in str(view)
    assert CONSENT_REF not in str(view)
    # A rejection in the trail ends the message's leg in the tracker, as its status event does.
    assert [(c.message_id, c.step, c.reason) for c in fold.changes] == [
        (refused, "rejected", "consent.revoked"),
        (other, "rejected", "envelope.bad"),
    ]
    tomorrow = fold.state.audit.view(AT.timestamp() + 86400)
    assert {c.kind: c.today for c in tomorrow.counts}["rejected"] == 0


def test_the_usual_course_is_counted_but_not_listed_and_a_repeat_changes_no_leg() -> None:
    fold = _Fold()
    mid = str(uuid.uuid4())
    about = {"message_id": mid, "sender": JOBCENTER, "message_type": MessageType.REFERRAL}
    step = [
        AuditEvent(at=AT, kind=kind, **about)  # type: ignore[arg-type]
        for kind in (AuditKind.SUBMITTED, AuditKind.ACCEPTED)
    ]
    fold.raw(AuditRecord(seq=fold.seq + 1, prev=GENESIS, events=step))  # one step, one record
    fold.event(kind=AuditKind.ROUTED, recipient=SPDI, **about)
    fold.event(kind=AuditKind.EXPIRED, recipient=SPDI, reason="retention.expired", **about)
    fold.event(kind=AuditKind.EXPIRED, recipient=SPDI, reason="retention.expired", **about)
    view = fold.state.audit.view(AT.timestamp())
    assert [item.kind for item in view.recent] == ["expired", "expired"]
    totals = {c.kind: c.total for c in view.counts}
    assert (totals["submitted"], totals["accepted"], totals["routed"]) == (1, 1, 1)
    assert [(c.recipient, c.step) for c in fold.changes] == [(SPDI, "expired")]
    leg = fold.state.tracker.get(mid)
    assert leg is not None
    assert leg.legs[SPDI].state == "expired"


def test_malformed_records_and_unknown_agencies_are_skipped_and_checkpoints_counted() -> None:
    fold = _Fold()
    fold.raw(b"{not json")
    fold.raw(b'{"v":1,"seq":1,"prev":"' + GENESIS.encode() + b'"}')  # neither event nor checkpoint
    fold.event(kind=AuditKind.KEY_DESTROYED, agency="stranger-agency", key_id="cd" * 16)
    fold.raw(AuditRecord(seq=fold.seq + 1, prev=GENESIS, checkpoint="c2lnbmVk"))
    stranger = AuditEvent(at=AT, kind=AuditKind.CONSENT_WITHDRAWN, agency="stranger-agency")
    known = AuditEvent(at=AT, kind=AuditKind.CONSENT_WITHDRAWN, agency=JOBCENTER)
    fold.raw(AuditRecord(seq=fold.seq + 1, prev=GENESIS, events=[stranger, known]))
    book = fold.state.audit
    assert fold.skipped("malformed") == 2
    assert fold.skipped("unknown_source") == 2  # in a group, only the stranger's event
    assert (book.checkpoints, book.events, book.last_sequence) == (1, 1, 5)
    assert book.view(AT.timestamp()).agencies[0].consents_withdrawn == 1
