"""A fuzzer against the adapter's HTTP API: schemathesis reads `/openapi.json` from a running
adapter and sends generated requests, valid and invalid, to every operation.

What must hold for every answer: no 5xx; every 4xx is `application/problem+json` with a code;
no value the request carried (path, query, headers, body, keys included) comes back in the
answer or goes to a log, in any form: as sent, URL-decoded (as the adapter reads a path or a
query), or escaped (JSON in an answer, repr in a log), which is why every string of a JSON answer
is also checked after decoding it. The one exemption: a 2xx answer returns the resource the
client just created or asked for by id, so those request parts (`_RETURNED`) may appear in it;
never in a problem, never in a log. Examples are derandomized (the same requests in every run),
and their number is bounded so that the test stays within CI's budget.

Hypothesis also draws string constants from the local (non-test) modules already imported, that
is from the bridge's own source. Which of them a pytest worker has imported depends on which
other test modules ran there before, so the requests differed between runs: the test imports
every bridge module first, so that it sends the same requests in every run. A value drawn from
the bridge's own string literals (a reason code such as `request.invalid`) is something the
adapter says on its own; finding it in an answer proves no echo, so such values are not checked.
"""

# ruff: noqa: F811 - the `e2e` fixture is imported from test_e2e and requested by name

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib
import json
import logging
import pkgutil
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from test_e2e import E2E, SPDI, e2e  # noqa: F401 - fixture

import bridge
from bridge.http.auth import SCOPES

EXAMPLES_PER_OPERATION = 20
_MIN_ECHO = 12  # shorter generated strings occur in answers by chance ("referral", "$.body")

# The request parts a 2xx answer returns by design, per operation: the resource asked for by its
# id in the path (its `id`, `consent_id`, `message_id`; the consent form shows its id), by the
# local reference in the query (the consents found carry it), or just created from the body (a
# registered consent's fields). Only these, only in a 2xx: a problem or a log line never quotes.
_RETURNED: Final = {
    ("GET", "/v1/uploads/{upload_id}"): "path",
    ("PUT", "/v1/uploads/{upload_id}"): "path",
    ("GET", "/v1/messages/{message_id}"): "path",
    ("GET", "/v1/inbox/{message_id}"): "path",
    ("POST", "/v1/inbox/{message_id}/deleted"): "path",
    ("GET", "/v1/consents/{consent_id}"): "path",
    ("DELETE", "/v1/consents/{consent_id}"): "path",
    ("GET", "/v1/consents/{consent_id}/form"): "path",
    ("GET", "/v1/consents"): "query",
    ("GET", "/v1/disclosures"): "query",
    ("POST", "/v1/consents"): "body",
}


def _import_all_of_bridge() -> None:
    """Every bridge module imported, so that Hypothesis's pool of constants is the same in every
    run, whatever else this worker ran before."""
    for module in pkgutil.walk_packages(bridge.__path__, "bridge."):
        if not module.name.endswith(".__main__"):  # that one runs the command line
            importlib.import_module(module.name)


def _own_words() -> str:
    """Every string literal in the bridge's source (f-strings' fixed parts included)."""
    words = [
        node.value
        for path in Path(bridge.__file__).parent.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    return "\n".join(words)


def _strings(value: Any) -> Iterator[str]:
    """Every string in a request part, keys of objects included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _forms(value: str, known: str) -> list[str]:
    """The forms in which a sent value could come back: as sent and URL-decoded (`%XX`, `+`), each
    also JSON- and repr-escaped (control characters, quotes); not those too short to tell from
    chance, nor those that are the adapter's own words."""
    if len(value) < _MIN_ECHO:
        return []
    decoded = {value, urllib.parse.unquote(value), urllib.parse.unquote_plus(value)}
    escaped = {
        form
        for plain in decoded
        for form in (
            plain,
            json.dumps(plain)[1:-1],
            json.dumps(plain, ensure_ascii=False)[1:-1],
            repr(plain)[1:-1],
        )
    }
    return sorted(form for form in escaped if len(form) >= _MIN_ECHO and form not in known)


def _echoed(forms: Iterable[str], texts: list[str]) -> str | None:
    """The first form found in any of the texts, or None."""
    return next((form for form in forms for text in texts if form in text), None)


def _answer_texts(response: schemathesis.Response) -> list[str]:
    """What a client reads: the raw text, the headers, and every string of a JSON body (keys
    included) decoded, so that a value the JSON escaped is found as sent."""
    headers = (f"{name}: {value}" for name, values in response.headers.items() for value in values)
    texts = [response.text, "\n".join(headers)]
    with contextlib.suppress(ValueError):  # not JSON (HTML, bytes): the raw text is read
        texts.extend(_strings(response.json()))
    return texts


def _fuzz(
    document: dict[str, Any], url: str, token: str
) -> tuple[list[str], dict[str, list[str]], int]:
    """Run every operation in both modes; the failures, each sent value's forms, the call count."""
    schema = schemathesis.openapi.from_dict(document)
    # Not request values but the adapter's own words: its API description and its literals.
    known = json.dumps(document) + _own_words()
    failures: list[str] = []
    sent: dict[str, list[str]] = {}
    calls = 0
    session = requests.Session()
    auth = {"Authorization": f"Bearer {token}"}

    def check(case: schemathesis.Case) -> None:
        nonlocal calls
        try:
            response = case.call(base_url=url, session=session, headers=auth, timeout=20)
        except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, ValueError):
            return  # the client library refused to send it; nothing reached the adapter
        calls += 1
        where = f"{case.method} {case.path}"
        if response.status_code >= 500:
            failures.append(f"{where}: {response.status_code}")
        if 400 <= response.status_code < 500:
            kind = "".join(response.headers.get("content-type", []))
            if not kind.startswith("application/problem+json") or "code" not in response.json():
                failures.append(f"{where}: {response.status_code} {kind}, not a problem")
        parts = {
            "path": case.path_parameters,
            "query": case.query,
            "headers": case.headers,
            "body": case.body,
        }
        ok = 200 <= response.status_code < 300
        returned = _RETURNED.get((case.method, case.path)) if ok else None
        texts = _answer_texts(response)
        for part, value in parts.items():
            for sent_value in _strings(value):
                if sent_value not in sent:
                    sent[sent_value] = _forms(sent_value, known)
                forms = sent[sent_value]
                found = None if part == returned else _echoed(forms, texts)
                if found is not None:
                    # Fuzzer data, not real personal data: named so that it can be reproduced.
                    failures.append(
                        f"{where}: {response.status_code} echoes the {part} value "
                        f"{sent_value!r} as {found!r}"
                    )

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                check(case)

            try:
                run()
            except Unsatisfiable:
                # Nothing to make invalid (no parameters, no body): the valid calls ran.
                assert mode is schemathesis.GenerationMode.NEGATIVE
    session.close()
    return failures, sent, calls


async def test_fuzzed_requests_get_no_5xx_only_problems_and_no_echo(
    e2e: E2E, caplog: pytest.LogCaptureFixture
) -> None:
    for server_side in ("bridge", "aiohttp"):  # not the fuzzer's own client logs
        caplog.set_level(logging.DEBUG, logger=server_side)
    url = e2e.stack.adapter_url(SPDI)  # pull delivery: every endpoint is live
    token = e2e.stack.token(SPDI, SCOPES, 600)
    async with e2e.session.get(
        f"{url}/openapi.json", headers={"Authorization": f"Bearer {token}"}
    ) as response:
        document = await response.json()
    _import_all_of_bridge()
    failures, sent, calls = await asyncio.to_thread(_fuzz, document, url, token)
    assert failures == [], "\n".join(failures)
    assert calls >= EXAMPLES_PER_OPERATION  # the fuzzer really reached the adapter
    formatter = logging.Formatter()  # tracebacks too: a library's exception may quote input
    logged = [
        record.getMessage()
        + (formatter.formatException(record.exc_info) if record.exc_info else "")
        for record in caplog.records
        if record.name.startswith(("bridge", "aiohttp"))
    ]
    assert [(v, f) for v, forms in sent.items() if (f := _echoed(forms, logged))] == []
