"""The printable release form of a consent (Schweigepflichtentbindung), in German or English.

One HTML page with print styles, in plain language: who may receive data, which kinds of data,
for what, for how long, and how to withdraw. It is rendered from the signed record (and agency
names from the key directory), so the client reads exactly what bridge enforces. Every value
is HTML-escaped; the page loads nothing from elsewhere.
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Mapping
from typing import Final, Literal

from ..consent import ConsentBody
from ..federation.directory import Directory

__all__ = ["LANGUAGES", "render_form"]

Lang = Literal["de", "en"]
LANGUAGES: Final = ("de", "en")

_PURPOSES: Final[Mapping[str, Mapping[Lang, str]]] = {
    "integration-support": {
        "de": "Unterstützung bei der Eingliederung in Arbeit (§ 16a SGB II)",
        "en": "support for finding work (SGB II § 16a)",
    },
    "counselling": {"de": "Beratung durch die empfangende Stelle", "en": "counselling"},
    "treatment-coordination": {
        "de": "Abstimmung der Behandlung",
        "en": "coordinating treatment",
    },
    "case-handover": {"de": "Übergabe des Falls", "en": "handing the case over"},
    "delivery-confirmation": {
        "de": "Bestätigung des Empfangs",
        "en": "confirming receipt",
    },
}

_CATEGORIES: Final[Mapping[str, Mapping[Lang, str]]] = {
    "identity": {
        "de": "Angaben zur Person (Name, Geburtsdatum)",
        "en": "who you are (name, date of birth)",
    },
    "contact": {
        "de": "Kontaktdaten (Anschrift, Telefon, E-Mail)",
        "en": "how to reach you (address, phone, e-mail)",
    },
    "health": {"de": "Gesundheitsdaten", "en": "health information"},
    "addiction": {
        "de": "Angaben zu Sucht und Suchtbehandlung",
        "en": "information about addiction and its treatment",
    },
    "social-situation": {
        "de": "soziale Lage (Wohnen, Schulden, Familie)",
        "en": "your social situation (housing, debts, family)",
    },
    "employment": {"de": "Arbeit, Ausbildung und Leistungen", "en": "work, training and benefits"},
    "case-notes": {"de": "Vermerke und Einschätzungen", "en": "case notes and assessments"},
    "delivery-metadata": {"de": "technische Zustellangaben", "en": "technical delivery details"},
}

_TYPES: Final[Mapping[str, Mapping[Lang, str]]] = {
    "referral": {"de": "Vermittlung", "en": "referral"},
    "handover": {"de": "Übergabe", "en": "handover"},
    "feedback": {"de": "Rückmeldung", "en": "feedback"},
}

_TEXT: Final[Mapping[Lang, Mapping[str, str]]] = {
    "de": {
        "title": "Einwilligung und Entbindung von der Schweigepflicht",
        "intro": "Ich willige ein, dass {issuer} die unten genannten Angaben über mich an die "
        "unten genannten Stellen weitergibt, nur zu den genannten Zwecken und nur in der "
        "genannten Zeit. Insoweit entbinde ich die Beteiligten von der Schweigepflicht.",
        "recipients": "Wer die Angaben erhalten darf",
        "categories": "Welche Angaben",
        "purposes": "Wofür",
        "types": "Welche Nachrichten",
        "validity": "Wie lange",
        "validity_text": "vom {start} bis zum {end}",
        "withdraw": "Widerruf",
        "withdraw_text": "Sie können diese Einwilligung jederzeit ohne Angabe von Gründen "
        "widerrufen, mündlich oder schriftlich bei {issuer}. Nach dem Widerruf wird nichts mehr "
        "übermittelt; noch nicht zugestellte Nachrichten werden gelöscht, und die Stellen, die "
        "schon Angaben erhalten haben, werden zur Löschung aufgefordert. Was bis zum Widerruf "
        "rechtmäßig übermittelt wurde, bleibt davon unberührt.",
        "voluntary": "Die Einwilligung ist freiwillig. Wenn Sie nicht einwilligen, entstehen "
        "Ihnen daraus keine Nachteile bei Ihren Leistungen.",
        "reference": "Kennung der Einwilligung",
        "place_date": "Ort, Datum",
        "signature": "Unterschrift",
    },
    "en": {
        "title": "Consent and release from confidentiality",
        "intro": "I agree that {issuer} may pass on the information about me named below to the "
        "agencies named below, only for the purposes named and only during the time named. To "
        "this extent I release those involved from their duty of confidentiality.",
        "recipients": "Who may receive the information",
        "categories": "Which information",
        "purposes": "What for",
        "types": "Which messages",
        "validity": "For how long",
        "validity_text": "from {start} until {end}",
        "withdraw": "Withdrawing your consent",
        "withdraw_text": "You can withdraw this consent at any time without giving reasons, "
        "orally or in writing, at {issuer}. After that nothing more is passed on; messages not "
        "yet delivered are deleted, and agencies that already received information are asked "
        "to delete it. What was lawfully passed on before you withdrew is not affected.",
        "voluntary": "Your consent is voluntary. If you do not agree, this will not count "
        "against you or your benefits.",
        "reference": "Consent reference",
        "place_date": "Place, date",
        "signature": "Signature",
    },
}

_STYLE: Final = """
body { font-family: sans-serif; max-width: 42em; margin: 2em auto; line-height: 1.45; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.4em; }
.sign { display: flex; gap: 3em; margin-top: 4em; }
.sign div { flex: 1; border-top: 1px solid #000; padding-top: .3em; font-size: .9em; }
.ref { font-family: monospace; font-size: .85em; color: #444; }
@media print {
  body { margin: 0; max-width: none; font-size: 11pt; }
  @page { size: A4; margin: 2cm; }
  h2, li { break-inside: avoid; }
}
"""


def _agency(directory: Directory, agency: str) -> str:
    entry = directory.agency(agency)
    name = entry.name if entry is not None else agency
    return f"{html.escape(name)} ({html.escape(agency)})"


def _label(table: Mapping[str, Mapping[Lang, str]], code: str, lang: Lang) -> str:
    text = table.get(code, {}).get(lang)
    return html.escape(text) if text else html.escape(code)


def _date(seconds: int, lang: Lang) -> str:
    day = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return day.strftime("%d.%m.%Y %H:%M UTC" if lang == "de" else "%Y-%m-%d %H:%M UTC")


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{item}</li>" for item in items) + "</ul>"


def render_form(body: ConsentBody, directory: Directory, lang: Lang) -> str:
    """The release form of `body` as a complete HTML document in `lang`."""
    t = _TEXT[lang]
    issuer = _agency(directory, body.issuer)
    sections = [
        (t["recipients"], _list([_agency(directory, r) for r in body.recipients])),
        (t["categories"], _list([_label(_CATEGORIES, c, lang) for c in body.categories])),
        (t["purposes"], _list([_label(_PURPOSES, p, lang) for p in body.purposes])),
        (t["types"], _list([_label(_TYPES, k, lang) for k in body.types])),
        (
            t["validity"],
            "<p>"
            + t["validity_text"].format(
                start=_date(body.valid_from, lang), end=_date(body.valid_until, lang)
            )
            + "</p>",
        ),
        (t["withdraw"], "<p>" + t["withdraw_text"].format(issuer=issuer) + "</p>"),
    ]
    parts = [
        "<!DOCTYPE html>",
        f'<html lang="{lang}"><head><meta charset="utf-8">',
        f"<title>{html.escape(t['title'])}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(t['title'])}</h1>",
        f"<p>{t['intro'].format(issuer=issuer)}</p>",
        *(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections),
        f"<p>{html.escape(t['voluntary'])}</p>",
        f'<p class="ref">{html.escape(t["reference"])}: {html.escape(body.id)}</p>',
        f'<div class="sign"><div>{html.escape(t["place_date"])}</div>'
        f"<div>{html.escape(t['signature'])}</div></div>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
