"""Ops on its own against a real nats-server: who may read it, bad input, bad events, and that
its NATS identity can only read.

No broker or adapters run here: events are published into the status stream directly, as the
broker and the agencies' identities (and as the admin, to plant what no identity may send).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import nats
import nats.errors
import nats.js.errors
import pytest
from http_helpers import SECRET_BYTES, check_malformed
from nats.js import api
from ops_helpers import COUNSELLING, JOBCENTER, SPDI, eventually
from prometheus_client.parser import text_string_to_metric_families

from bridge.http.auth import mint_token
from bridge.nats.identities import Credentials, Identity
from bridge.nats.provision import provision_at
from bridge.nats.server import NatsServer
from bridge.nats.subjects import (
    heartbeat_subject,
    inbox_consumer,
    inbox_stream,
    report_stream,
    report_subject,
    status_stream,
    status_subject,
    submit_stream,
    submit_subject,
)
from bridge.nats.transport import connect, publish_durable
from bridge.ops import Ops, load_ops_config
from bridge.up.layout import DEMO_AGENCIES, OPS_AUDIENCE, TOKEN_ISSUER
from bridge.up.state import Stack, prepare
from bridge.wire import Component, DeliveryState, MessageType, StatusEvent, encode_status_event


class Env:
    def __init__(self, stack: Stack, server: NatsServer, ops: Ops, session: aiohttp.ClientSession):
        self.stack, self.server, self.ops, self.session = stack, server, ops, session
        self.creds = Credentials(stack.layout.nats.creds_dir)

    async def get(self, path: str, token: str | None = None) -> tuple[int, Any, str]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        async with self.session.get(f"{self.ops.url}{path}", headers=headers) as response:
            text = await response.text()
            return response.status, response.headers.get("Content-Type", ""), text

    async def publish_as(self, identity: Identity, subject: str, data: bytes) -> None:
        nc = await connect(
            self.server.url, self.creds.seed_file(identity), identity.inbox_prefix, "test"
        )
        try:
            await publish_durable(nc.jetstream(), subject, data, msg_id=str(uuid.uuid4()))
        finally:
            await nc.close()

    async def skipped(self) -> dict[str, float]:
        async with self.session.get(f"{self.ops.url}/metrics") as response:
            text = await response.text()
        return {
            s.labels["reason"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "bridge_ops_events_skipped_total"
        }


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    stack = prepare(tmp_path / "state", port_base=0)
    server = NatsServer.from_layout(stack.layout.nats)
    await server.start()
    admin = Credentials(stack.layout.nats.creds_dir).seed_file(Identity.admin())
    await provision_at(server.url, admin, [a.id for a in DEMO_AGENCIES])
    ops = Ops(load_ops_config(stack.layout.ops_config))
    await ops.start()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    try:
        await eventually("ops ready", lambda: _true(ops.ready()))
        yield Env(stack, server, ops, session)
    finally:
        await session.close()
        await ops.stop()
        await server.stop()


async def _true(value: bool) -> bool | None:
    return True if value else None


def _event(
    state: DeliveryState,
    sender: str,
    recipient: str | None,
    component: Component,
    message_id: str | None = None,
) -> StatusEvent:
    return StatusEvent(
        message_id=message_id or str(uuid.uuid4()),
        sender=sender,
        recipient=recipient,
        message_type=MessageType.REFERRAL,
        state=state,
        at=datetime.datetime.now(datetime.UTC),
        component=component,
    )


async def test_views_need_a_token_with_the_ops_role(env: Env) -> None:
    status, content_type, body = await env.get("/v1/overview")
    assert (status, content_type) == (401, "application/problem+json")
    forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."
    status, _, body = await env.get("/v1/messages", forged)
    assert status == 401
    assert forged not in body
    # An adapter's token is for another audience.
    status, _, _ = await env.get("/v1/overview", env.stack.token(JOBCENTER))
    assert status == 401
    # Signed by the ops key, for ops, but without the ops role.
    no_role = mint_token(
        env.stack.layout.ops_token_private_key,
        issuer=TOKEN_ISSUER,
        audience=OPS_AUDIENCE,
        subject="someone",
        scopes=["messages:read"],
    )
    for path in (
        "/v1/overview",
        "/v1/messages",
        "/v1/health",
        "/v1/latency",
        "/v1/alerts",
        "/v1/audit",
        "/v1/events",
        "/openapi.json",
    ):
        status, content_type, _ = await env.get(path, no_role)
        assert (status, content_type) == (403, "application/problem+json"), path
    status, _, _ = await env.get("/v1/overview", env.stack.ops_token())
    assert status == 200
    # The dashboard's files hold no data and load without a token; health needs none either.
    for path in (
        "/",
        "/static/app.js",
        "/static/i18n.js",
        "/static/style.css",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        status, _, _ = await env.get(path)
        assert status == 200, path


async def test_the_api_is_read_only(env: Env) -> None:
    token = env.stack.ops_token()
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        async with env.session.request(
            method, f"{env.ops.url}/v1/messages", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 405


_OUT_OF_RANGE = (
    ("limit=0", "$.limit"),
    ("limit=501", "$.limit"),
    ("limit=ten", "$.limit"),
    ("view=everything", "$.view"),
    ("state=lost", "$.state"),
    ("type=letter", "$.type"),
    ("sender=Not.An.Agency", "$.sender"),
    ("limit=5&limit=6", "$.limit"),
)


async def test_out_of_range_query_parameters_get_400_naming_the_field(env: Env) -> None:
    for query, field in _OUT_OF_RANGE:
        status, content_type, body = await env.get(f"/v1/messages?{query}", env.stack.ops_token())
        assert (status, content_type) == (400, "application/problem+json"), query
        problem = msgspec.json.decode(body)
        assert problem["field"] == field, query
        value = query.split("=", 1)[1].split("&")[0]
        if len(value) > 3:  # a distinctive value: it must not come back
            assert value not in body


async def test_malformed_http_to_ops_is_answered_with_problems_that_quote_nothing(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """Ops serves HTTP like the adapter (issue 6, findings 3, 4 and 6): raw bytes, and what
    comes back and goes to the log. An unknown path's problem has no `instance` echoing it."""
    caplog.set_level(logging.DEBUG)
    await check_malformed(env.ops.url, caplog)
    token = f"Authorization: Bearer {env.stack.ops_token()}\r\n".encode()
    await check_malformed(
        env.ops.url,
        caplog,
        {
            "unknown-path-with-a-token": (
                b"GET /v1/"
                + SECRET_BYTES
                + b" HTTP/1.1\r\nHost: x\r\n"
                + token
                + b"Connection: close\r\n\r\n",
                (404, "http.not_found"),
            ),
            "trace-on-the-api": (
                b"TRACE /v1/overview HTTP/1.1\r\nHost: x\r\n"
                + token
                + b"Connection: close\r\n\r\n",
                (405, "http.method_not_allowed"),
            ),
        },
    )


async def test_unknown_and_latency_parameters_are_refused_without_echo(env: Env) -> None:
    token = env.stack.ops_token()
    status, _, body = await env.get("/v1/messages?x%3Cscript%3E=1", token)
    assert status == 400
    assert "script" not in body
    status, _, body = await env.get("/v1/latency?window_seconds=604800&bucket_seconds=1", token)
    assert status == 400
    assert msgspec.json.decode(body)["field"] == "$.bucket_seconds"
    status, _, body = await env.get("/v1/latency?window_seconds=59", token)
    assert msgspec.json.decode(body)["field"] == "$.window_seconds"
    for query in ("limit=0", "limit=201", "view=stuck"):
        status, _, body = await env.get(f"/v1/audit?{query}", token)
        assert status == 400, query
        assert "stuck" not in body
    assert msgspec.json.decode(body)["code"] == "query.unknown"


async def test_malformed_and_foreign_events_are_counted_and_skipped(env: Env) -> None:
    good = _event(DeliveryState.ACCEPTED, JOBCENTER, SPDI, Component.ADAPTER)
    admin = Identity.admin()
    # Not JSON, on a status subject.
    await env.publish_as(admin, status_subject(JOBCENTER, str(uuid.uuid4())), b"\xff{not json")
    # A status event on the subject of an agency that is neither its sender nor recipient.
    await env.publish_as(
        Identity.broker(),
        status_subject(COUNSELLING, good.message_id),
        encode_status_event(
            _event(DeliveryState.ROUTED, JOBCENTER, SPDI, Component.BROKER, good.message_id)
        ),
    )
    # spdi reports a delivery to counselling: only counselling can say that.
    lie = _event(DeliveryState.DELIVERED, JOBCENTER, COUNSELLING, Component.ADAPTER)
    await env.publish_as(
        Identity.for_agency(SPDI), report_subject(SPDI, lie.message_id), encode_status_event(lie)
    )
    # And one true report, which must still be folded after all that.
    await env.publish_as(
        Identity.for_agency(JOBCENTER),
        report_subject(JOBCENTER, good.message_id),
        encode_status_event(good),
    )
    token = env.stack.ops_token()

    async def folded() -> dict[str, Any] | None:
        _, _, body = await env.get("/v1/messages", token)
        rows = msgspec.json.decode(body)["items"]
        return rows if any(r["message_id"] == good.message_id for r in rows) else None

    rows = await eventually("the true report folded", folded)
    assert {r["message_id"] for r in rows} == {good.message_id}
    assert rows[0]["state"] == "submitted"
    skipped = await env.skipped()
    assert skipped == {"malformed": 1.0, "unknown_source": 2.0}

    # A heartbeat that is not one, and one from an agency that is not in the federation.
    nc = await connect(env.server.url, env.creds.seed_file(admin), admin.inbox_prefix, "t")
    try:
        await nc.publish(heartbeat_subject("adapter", SPDI), b"[]")
        await nc.publish(heartbeat_subject("adapter", "stranger"), b"{}")
        await nc.flush()
    finally:
        await nc.close()

    async def counted() -> bool | None:
        now = await env.skipped()
        return True if now.get("malformed") == 3.0 else None

    await eventually("the bad heartbeats counted", counted)
    assert env.ops.ready()


async def test_the_ops_identity_can_read_but_never_write(env: Env) -> None:
    await env.publish_as(
        Identity.broker(),
        status_subject(JOBCENTER, str(uuid.uuid4())),
        encode_status_event(_event(DeliveryState.ROUTED, JOBCENTER, SPDI, Component.BROKER)),
    )
    accepted = _event(DeliveryState.ACCEPTED, JOBCENTER, SPDI, Component.ADAPTER)
    await env.publish_as(
        Identity.for_agency(JOBCENTER),
        report_subject(JOBCENTER, accepted.message_id),
        encode_status_event(accepted),
    )
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    ops = Identity.ops()
    nc = await nats.connect(
        env.server.url,
        nkeys_seed=str(env.creds.seed_file(ops)),
        inbox_prefix=ops.inbox_prefix,
        error_cb=on_error,
        allow_reconnect=False,
    )
    js = nc.jetstream(timeout=1.0)
    try:
        # What it may: read the status stream, and the consumers' backlogs.
        first = await js.get_msg(
            status_stream(JOBCENTER), seq=1, subject=">", next=True, direct=True
        )
        assert first.seq == 1
        # And each agency's report stream.
        reports = report_stream(JOBCENTER)
        assert (await js.stream_info(reports)).state.messages == 1
        report = await js.get_msg(reports, seq=1, subject=">", next=True, direct=True)
        assert report.subject == report_subject(JOBCENTER, accepted.message_id)
        info = await js.consumer_info(inbox_stream(SPDI), inbox_consumer(SPDI))
        assert info.num_pending == 0
        # What it may not: publish anything, change, delete or consume.
        attempts = [
            js.publish(submit_subject(JOBCENTER), b"x"),
            js.publish(report_subject(SPDI, str(uuid.uuid4())), b"x"),
            js.publish(status_subject(JOBCENTER, str(uuid.uuid4())), b"x"),
            js.delete_msg(status_stream(JOBCENTER), 1),
            js.purge_stream(status_stream(JOBCENTER)),
            js.delete_stream(status_stream(JOBCENTER)),
            js.purge_stream(reports),
            js.delete_msg(reports, 1),
            js.delete_consumer(inbox_stream(SPDI), inbox_consumer(SPDI)),
            js.add_consumer(status_stream(JOBCENTER), api.ConsumerConfig(durable_name="ops-tap")),
            js.stream_info(submit_stream(JOBCENTER)),
            js.get_msg(inbox_stream(SPDI), 1),
        ]
        results = await asyncio.gather(
            *(asyncio.wait_for(a, 3.0) for a in attempts), return_exceptions=True
        )
        for result in results:
            assert isinstance(result, Exception), result
        await nc.publish(heartbeat_subject("broker", "fake-broker"), b"{}")
        await nc.flush()

        async def violations() -> list[str] | None:
            found = [str(e).lower() for e in errors if "permissions violation" in str(e).lower()]
            return found if any("heartbeat" in f for f in found) else None

        found = await eventually("the violations reported", violations, deadline=5)
        assert any("stream.delete" in f for f in found)
    finally:
        await nc.close()
    admin = Identity.admin()
    nc = await connect(env.server.url, env.creds.seed_file(admin), admin.inbox_prefix, "t")
    try:
        for stream in (status_stream(JOBCENTER), reports):
            info = await nc.jetstream().stream_info(stream)
            assert info.state.messages == 1  # nothing deleted, nothing added
    finally:
        await nc.close()
