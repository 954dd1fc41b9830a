"""The client's disclosure report (GDPR Art. 15, § 83 SGB X): who received what, when and why.

`GET /v1/disclosures?local_ref=…` (or `?consent=…`) finds this agency's consents for the client
in its own store, asks the broker what the audit trail says about them (`bridge.audit.disclosure`)
and folds the events into one line per message and recipient: which agency, which type of
message, when, for what purpose and which kinds of data, under which consent, and how it ended
(delivered, receipted, rejected, withdrawn, expired, deleted). JSON, or a printable HTML page in
German or English. The report holds nothing the agency does not already hold: no content, and
no local reference (the caller has it). It says that it was built from the audit trail and how
far that trail verified.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from ..audit import AuditEvent, AuditKind
from ..audit.disclosure import DisclosureAnswer, DisclosureQuery
from ..federation.directory import Directory
from ..http.problems import ApiProblem
from ..nats.subjects import disclosure_subject
from .api import ConsentView
from .consents import Consents
from .form import _CATEGORIES, _PURPOSES, _TYPES, Lang

__all__ = ["Disclosure", "DisclosureReport", "Disclosures", "render_report"]

_SYSTEM_TYPES: Final = frozenset({"receipt", "consent-revoked", "deletion-confirmed"})
# Later states win: a message's outcome for one recipient is the last of these it reached.
_OUTCOME: Final = {
    AuditKind.ROUTED: ("routed", 1),
    AuditKind.DELIVERED: ("delivered", 2),
    AuditKind.RECEIPTED: ("receipted", 3),
    AuditKind.REJECTED: ("rejected", 4),
    AuditKind.EXPIRED: ("expired", 4),
    AuditKind.WITHDRAWN: ("withdrawn", 4),
}

Outcome = Literal[
    "submitted", "routed", "delivered", "receipted", "rejected", "expired", "withdrawn", "deleted"
]


class Step(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    kind: str
    at: datetime.datetime
    reason: str | None = None


class Disclosure(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One message to one recipient (or, when the broker refused it, to none)."""

    message_id: str
    type: str
    recipient: str | None
    purpose: str | None
    categories: list[str]
    consent: str | None
    sent_at: datetime.datetime
    outcome: Outcome
    reason: str | None = None
    steps: list[Step] = msgspec.field(default_factory=list)


class AuditSource(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    first: int
    last: int
    signed_upto: int
    verified: bool
    truncated: bool


class DisclosureReport(msgspec.Struct, frozen=True, kw_only=True):
    agency: str
    generated_at: datetime.datetime
    source: str
    audit: AuditSource
    consents: list[ConsentView]
    disclosures: list[Disclosure]


_SOURCE: Final = (
    "Built from bridge's audit trail (stream BRIDGE_AUDIT): hash-chained, signed records of "
    "every step, which nobody can alter or delete unnoticed. It shows metadata only, never the "
    "content of a message."
)


@dataclass
class _Line:
    """A disclosure while it is being folded."""

    type: str | None = None
    purpose: str | None = None
    categories: list[str] = field(default_factory=list)
    consent: str | None = None
    sent_at: datetime.datetime | None = None
    outcome: str = "submitted"
    rank: int = 0
    reason: str | None = None
    steps: list[Step] = field(default_factory=list)


def _copy(line: _Line) -> _Line:
    copy = _Line(**vars(line))
    copy.steps, copy.categories = list(line.steps), list(line.categories)
    return copy


def _fold(events: list[AuditEvent], agency: str) -> list[Disclosure]:
    """One line per message of `agency` and recipient, in the order the events came."""
    lines: dict[tuple[str, str | None], _Line] = {}
    deleted: dict[tuple[str, str], datetime.datetime] = {}  # (recipient, consent) -> when
    for event in events:
        if event.kind is AuditKind.DELETION_CONFIRMED and event.agency and event.consent:
            deleted.setdefault((event.agency, event.consent), event.at)
            continue
        if event.message_id is None or event.sender != agency:
            continue
        if event.message_type is not None and event.message_type.value in _SYSTEM_TYPES:
            continue
        key = (event.message_id, event.recipient)
        line = lines.get(key)
        if line is None:
            whole = lines.get((event.message_id, None))  # what happened before it went out
            line = lines[key] = _copy(whole) if whole is not None else _Line()
        if event.message_type is not None:
            line.type = event.message_type.value
        line.purpose = event.purpose or line.purpose
        line.consent = event.consent or line.consent
        line.categories = list(event.categories or line.categories)
        if line.sent_at is None and event.kind in (AuditKind.SUBMITTED, AuditKind.ROUTED):
            line.sent_at = event.at
        line.steps.append(Step(kind=event.kind.value, at=event.at, reason=event.reason))
        if event.kind in _OUTCOME:
            name, rank = _OUTCOME[event.kind]
            if rank >= line.rank:
                line.outcome, line.rank, line.reason = name, rank, event.reason
    out = []
    per_recipient = {message_id for message_id, recipient in lines if recipient is not None}
    for (message_id, recipient), line in lines.items():
        if line.type is None or (recipient is None and message_id in per_recipient):
            continue  # unverified; or the whole message, which its recipients' lines repeat
        outcome, reason, steps = line.outcome, line.reason, list(line.steps)
        gone = deleted.get((recipient or "", line.consent or ""))
        if gone is not None and outcome in ("delivered", "receipted"):
            outcome, reason = "deleted", None
            steps.append(Step(kind="deletion-confirmed", at=gone))
        out.append(
            Disclosure(
                message_id=message_id,
                type=line.type,
                recipient=recipient,
                purpose=line.purpose,
                categories=line.categories,
                consent=line.consent,
                sent_at=line.sent_at or steps[0].at,
                outcome=outcome,  # type: ignore[arg-type]
                reason=reason,
                steps=steps,
            )
        )
    return sorted(out, key=lambda d: (d.sent_at, d.message_id, d.recipient or ""))


class Disclosures:
    def __init__(
        self,
        *,
        agency: str,
        nc: Callable[[], NATS],
        consents: Consents,
        clock: Callable[[], float],
        timeout: float,
    ) -> None:
        self._agency = agency
        self._nc = nc
        self._consents = consents
        self._clock = clock
        self._timeout = timeout

    async def report(self, *, local_ref: str | None, consent_id: str | None) -> DisclosureReport:
        if (local_ref is None) == (consent_id is None):
            raise ApiProblem(
                422,
                "give exactly one of local_ref and consent",
                reason="request.invalid",
                field="local_ref",
            )
        if local_ref is not None:
            views = (await self._consents.for_local_ref(local_ref)).items
            if not views:
                raise ApiProblem(
                    404,
                    "this agency holds no consent for that reference",
                    reason="disclosure.unknown_reference",
                )
        else:
            assert consent_id is not None
            views = [await self._consents.view(consent_id)]  # 404 unless this agency's
        answer = await self._ask([v.consent_id for v in views])
        views = [msgspec.structs.replace(v, local_ref=None) for v in views]
        now = datetime.datetime.fromtimestamp(int(self._clock()), datetime.UTC)
        return DisclosureReport(
            agency=self._agency,
            generated_at=now,
            source=_SOURCE,
            audit=AuditSource(
                stream="BRIDGE_AUDIT",
                first=answer.first,
                last=answer.last,
                signed_upto=answer.signed_upto,
                verified=answer.verified,
                truncated=answer.truncated,
            ),
            consents=views,
            disclosures=_fold(answer.events, self._agency),
        )

    async def _ask(self, consents: list[str]) -> DisclosureAnswer:
        query = msgspec.json.encode(DisclosureQuery(consents=consents[:64]))
        try:
            reply = await self._nc().request(
                disclosure_subject(self._agency), query, timeout=self._timeout
            )
            answer = msgspec.json.decode(reply.data, type=DisclosureAnswer)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise ApiProblem(
                503,
                "the audit trail cannot be asked right now; retry",
                reason="disclosure.unavailable",
            ) from exc
        except msgspec.DecodeError as exc:
            raise ApiProblem(
                502, "the broker's answer was unreadable", reason="disclosure.unavailable"
            ) from exc
        if answer.error == "consent.unknown":
            raise ApiProblem(404, "no such consent of this agency", reason="consent.unknown")
        if answer.error is not None:
            raise ApiProblem(
                503,
                "the audit trail cannot be asked right now; retry",
                reason="disclosure.unavailable",
            )
        return answer


# -- the printable page ----------------------------------------------------------------------

_WORDS: Final[Mapping[Lang, Mapping[str, str]]] = {
    "de": {
        "title": "Auskunft: wer welche Angaben über Sie erhalten hat",
        "intro": "Diese Auskunft nach Art. 15 DSGVO und § 83 SGB X zeigt, welche Nachrichten "
        "{agency} über Sie an andere Stellen übermittelt hat, wann, wozu und auf Grund welcher "
        "Einwilligung, und was daraus geworden ist. Sie enthält keine Inhalte.",
        "source": "Grundlage ist das Prüfprotokoll von bridge: fortlaufend verkettete, signierte "
        "Einträge, die niemand unbemerkt ändern oder löschen kann.",
        "verified": "Das Protokoll wurde beim Erstellen geprüft: Einträge {first} bis {last}, "
        "unversehrt.",
        "unverified": "Achtung: Das Protokoll ließ sich beim Erstellen nicht vollständig prüfen.",
        "consents": "Ihre Einwilligungen",
        "disclosures": "Übermittlungen",
        "none": "Es wurde nichts übermittelt.",
        "when": "Wann",
        "to": "An",
        "what": "Was",
        "why": "Wozu",
        "data": "Welche Angaben",
        "outcome": "Was daraus wurde",
        "consent": "Einwilligung",
        "valid": "gültig vom {start} bis zum {end}",
        "withdrawn_at": "widerrufen am {at}",
        "generated": "Erstellt am {at}",
    },
    "en": {
        "title": "Who received information about you",
        "intro": "This statement (GDPR Art. 15, SGB X § 83) shows which messages {agency} sent "
        "about you to other agencies, when, what for and under which consent, and what became "
        "of them. It contains no content.",
        "source": "It is built from bridge's audit trail: chained, signed records that nobody "
        "can change or delete unnoticed.",
        "verified": "The trail was checked when this was made: records {first} to {last}, intact.",
        "unverified": "Caution: the trail could not be fully checked when this was made.",
        "consents": "Your consents",
        "disclosures": "What was passed on",
        "none": "Nothing was passed on.",
        "when": "When",
        "to": "To",
        "what": "What",
        "why": "What for",
        "data": "Which information",
        "outcome": "What happened",
        "consent": "Consent",
        "valid": "valid from {start} until {end}",
        "withdrawn_at": "withdrawn on {at}",
        "generated": "Made on {at}",
    },
}

_OUTCOMES: Final[Mapping[str, Mapping[Lang, str]]] = {
    "submitted": {"de": "abgeschickt", "en": "sent"},
    "routed": {
        "de": "zugestellt, noch nicht abgeholt",
        "en": "delivered to the agency's inbox, not yet collected",
    },
    "delivered": {"de": "bei der Stelle angekommen", "en": "received by the agency"},
    "receipted": {"de": "angekommen und bestätigt", "en": "received and confirmed"},
    "rejected": {"de": "abgelehnt, nicht übermittelt", "en": "refused, not passed on"},
    "expired": {"de": "nicht abgeholt und gelöscht", "en": "not collected, deleted"},
    "withdrawn": {
        "de": "nach Ihrem Widerruf gelöscht, bevor die Stelle sie abholte",
        "en": "deleted after you withdrew your consent, before it was collected",
    },
    "deleted": {
        "de": "angekommen; die Stelle hat die Löschung bestätigt",
        "en": "received; the agency confirmed it deleted it",
    },
}

_STYLE: Final = """
body { font-family: sans-serif; max-width: 52em; margin: 2em auto; line-height: 1.45; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.4em; }
table { border-collapse: collapse; width: 100%; font-size: .95em; }
th, td { border: 1px solid #999; padding: .3em .4em; text-align: left; vertical-align: top; }
.ref { font-family: monospace; font-size: .85em; color: #444; }
@media print { body { margin: 0; max-width: none; font-size: 10pt; }
  @page { size: A4; margin: 2cm; } tr { break-inside: avoid; } }
"""


def _label(table: Mapping[str, Mapping[Lang, str]], code: str | None, lang: Lang) -> str:
    if code is None:
        return "–"
    return html.escape(table.get(code, {}).get(lang, code))


def _agency(directory: Directory, agency: str | None) -> str:
    if agency is None:
        return "–"
    entry = directory.agency(agency)
    return html.escape(entry.name if entry is not None else agency)


def _day(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def render_report(report: DisclosureReport, directory: Directory, lang: Lang) -> str:
    w = _WORDS[lang]
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="{lang}"><head><meta charset="utf-8">',
        f"<title>{esc(w['title'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(w['title'])}</h1>",
        f"<p>{esc(w['intro']).format(agency=_agency(directory, report.agency))}</p>",
        f"<p>{esc(w['source'])} "
        + (
            esc(w["verified"]).format(first=report.audit.first, last=report.audit.last)
            if report.audit.verified
            else f"<strong>{esc(w['unverified'])}</strong>"
        )
        + "</p>",
        f"<h2>{esc(w['consents'])}</h2><ul>",
    ]
    for view in report.consents:
        validity = esc(w["valid"]).format(start=_day(view.valid_from), end=_day(view.valid_until))
        if view.withdrawn_at is not None:
            validity += ", " + esc(w["withdrawn_at"]).format(at=_day(view.withdrawn_at))
        recipients = ", ".join(_agency(directory, r) for r in view.recipients)
        purposes = ", ".join(_label(_PURPOSES, p, lang) for p in view.purposes)
        parts.append(
            f"<li>{recipients}: {purposes}; {validity} "
            f'<span class="ref">{esc(view.consent_id)}</span></li>'
        )
    parts.append(f"</ul><h2>{esc(w['disclosures'])}</h2>")
    if not report.disclosures:
        parts.append(f"<p>{esc(w['none'])}</p>")
    else:
        head = "".join(
            f"<th>{esc(w[k])}</th>"
            for k in ("when", "to", "what", "why", "data", "outcome", "consent")
        )
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>")
        for d in report.disclosures:
            data = ", ".join(_label(_CATEGORIES, c, lang) for c in d.categories)
            outcome = _label(_OUTCOMES, d.outcome, lang)
            if d.reason:
                outcome += f' <span class="ref">({esc(d.reason)})</span>'
            parts.append(
                f"<tr><td>{_day(d.sent_at)}</td><td>{_agency(directory, d.recipient)}</td>"
                f"<td>{_label(_TYPES, d.type, lang)}</td><td>{_label(_PURPOSES, d.purpose, lang)}"
                f"</td><td>{data}</td><td>{outcome}</td>"
                f'<td class="ref">{esc(d.consent or "–")}</td></tr>'
            )
        parts.append("</tbody></table>")
    parts.append(f'<p class="ref">{esc(w["generated"]).format(at=_day(report.generated_at))}</p>')
    parts.append("</body></html>")
    return "\n".join(parts)
