"""A fuzzer against the adapter's HTTP API: schemathesis reads `/openapi.json` from a running
adapter and sends generated requests, valid and invalid, to every operation.

What must hold for every answer: no 5xx; every 4xx is `application/problem+json` with a code;
no value the request carried (path, query, headers, body, keys included) comes back in the
answer or goes to a log. Examples are derandomized (the same requests in every run), and their
number is bounded so that the test stays within CI's budget.
"""

# ruff: noqa: F811 - the `e2e` fixture is imported from test_e2e and requested by name

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from test_e2e import E2E, SPDI, e2e  # noqa: F401 - fixture

from bridge.http.auth import SCOPES

EXAMPLES_PER_OPERATION = 20
_MIN_ECHO = 12  # shorter generated strings occur in answers by chance ("referral", "$.body")


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


def _fuzz(document: dict[str, Any], url: str, token: str) -> tuple[list[str], set[str], int]:
    """Run every operation in both modes; the failures, the sent values and the call count."""
    schema = schemathesis.openapi.from_dict(document)
    known = json.dumps(document)
    failures: list[str] = []
    sent: set[str] = set()
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
        parts = (case.path_parameters, case.query, case.headers, case.body)
        values = {s for s in _strings(parts) if len(s) >= _MIN_ECHO and s not in known}
        answer = response.text + "".join(v for vs in response.headers.values() for v in vs)
        # Fuzzer data, not real personal data: named in the failure so that it can be reproduced.
        failures.extend(
            f"{where}: {response.status_code} echoes the request value {v!r}"
            for v in values
            if v in answer
        )
        sent.update(values)

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
    failures, sent, calls = await asyncio.to_thread(_fuzz, document, url, token)
    assert failures == []
    assert calls >= EXAMPLES_PER_OPERATION  # the fuzzer really reached the adapter
    formatter = logging.Formatter()  # tracebacks too: a library's exception may quote input
    logged = "\n".join(
        record.getMessage()
        + (formatter.formatException(record.exc_info) if record.exc_info else "")
        for record in caplog.records
        if record.name.startswith(("bridge", "aiohttp"))
    )
    assert [v for v in sent if v in logged] == []
