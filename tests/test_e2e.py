"""End to end: local systems talk HTTP to adapters; adapters, broker and nats-server do the rest.

Everything is real except that the components run in this process: a nats-server with its own
store, the broker, three adapters serving HTTP on free ports, and the demo sink standing in for
the counselling service's local system. The state directory is the one `bridge up` prepares, so
these tests also cover the configs it generates. Waits poll with deadlines; nothing asserts on
timing.
"""

from __future__ import annotations

import asyncio
import datetime
import errno
import hashlib
import io
import json
import logging
import secrets
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import msgspec
import nats
import nats.js.errors
import pytest
from nats.aio.msg import Msg

from bridge.adapters.service import Adapter
from bridge.broker import Broker
from bridge.config import BrokerConfig, load_adapter_config, load_broker_config
from bridge.demo import demo_referral, run_demo
from bridge.errors import BridgeError
from bridge.federation.directory import load_anchor
from bridge.federation.operator import ANCHOR_PUB
from bridge.nats.identities import Credentials, Identity
from bridge.nats.provision import provision_at
from bridge.nats.server import NatsServer
from bridge.nats.subjects import kv_bucket, kv_stream
from bridge.policy import SIGNED_POLICY, load_policy_file
from bridge.telemetry import HEARTBEAT_INTERVAL
from bridge.up.layout import DEMO_AGENCIES
from bridge.up.sink import DemoSink
from bridge.up.state import Stack, prepare
from bridge.wire import Body, Feedback, MeasureStarted, message_type_of

JOBCENTER = "jobcenter-unna"
COUNSELLING = "suchtberatung-unna"  # webhook delivery
SPDI = "spdi-unna"  # pull delivery
DEADLINE = 30.0
# Each demo step waits for several hops (adapter, broker, NATS, webhook, adapter); idle, the whole
# withdrawal demo takes about a second. On a loaded machine one hop can take as long as a
# consumer's ack_wait (30 s: a message fetched by a cancelled pull comes back only then),
# so a step is given well beyond that. The demo still names the step that did not happen.
DEMO_PATIENCE = 120.0
_T = TypeVar("_T")


async def eventually(
    what: str, check: Callable[[], Awaitable[_T | None]], deadline: float = DEADLINE
) -> _T:
    end = time.monotonic() + deadline
    while True:
        found = await check()
        if found is not None and found is not False:
            return found
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {deadline:g}s")
        await asyncio.sleep(0.1)


@dataclass
class E2E:
    """The running stack and HTTP helpers that act as each agency's local system."""

    stack: Stack
    server: NatsServer
    sink: DemoSink
    session: aiohttp.ClientSession
    adapters: dict[str, Adapter] = field(default_factory=dict)
    broker: Broker | None = None
    heartbeat_interval: float = HEARTBEAT_INTERVAL  # of the broker and the adapters

    def broker_config(self) -> BrokerConfig:
        return load_broker_config(self.stack.layout.broker_config)

    async def start_broker(self, config: BrokerConfig | None = None) -> None:
        assert self.broker is None
        broker = Broker(
            config or self.broker_config(),
            fetch_wait=1.0,
            retry_delay=0.5,
            heartbeat_interval=self.heartbeat_interval,
        )
        await broker.__aenter__()
        self.broker = broker

    async def stop_broker(self) -> None:
        if self.broker is not None:
            broker, self.broker = self.broker, None
            await broker.__aexit__(None, None, None)

    async def start_adapters(self) -> None:
        for agency in DEMO_AGENCIES:
            await self.start_adapter(agency.id)

    async def start_adapter(self, agency: str, **delivery: Any) -> None:
        """Start `agency`'s adapter; `delivery` overrides fields of its `[delivery]` table."""
        config = load_adapter_config(self.stack.layout.adapter_config(agency))
        if delivery:
            config = msgspec.structs.replace(
                config, delivery=msgspec.structs.replace(config.delivery, **delivery)
            )
        adapter = Adapter(config, fetch_timeout=1.0, heartbeat_interval=self.heartbeat_interval)
        await adapter.start()
        self.adapters[agency] = adapter

    async def stop_adapter(self, agency: str) -> None:
        await self.adapters.pop(agency).stop()

    async def stop(self) -> None:
        """Stop what runs, then the session, the sink and the server; name what hangs."""
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            (agency, lambda a=agency: self.stop_adapter(a)) for agency in list(self.adapters)
        ]
        steps += [
            ("broker", self.stop_broker),
            ("session", self.session.close),
            ("sink", self.sink.stop),
            ("server", self.server.stop),
        ]
        for name, stop in steps:
            try:
                await asyncio.wait_for(stop(), 30)
            except TimeoutError:
                print(f"teardown: stopping {name} hung", flush=True)
                raise

    def _headers(self, agency: str, scopes: list[str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.stack.token(agency, scopes, 600)}"}

    async def submit(
        self,
        sender: str,
        recipients: list[str],
        body: Body,
        *,
        categories: tuple[str, ...] = ("identity", "contact", "addiction"),
        purpose: str = "integration-support",
        lifetime_seconds: int | None = None,
        consent: str | None = None,
    ) -> str:
        kind = message_type_of(body).value
        if consent is None:
            consent = await self.register_consent(sender, recipients, purpose, categories, kind)
        status, answer = await self.try_submit(
            sender,
            recipients,
            body,
            consent=consent,
            categories=categories,
            purpose=purpose,
            lifetime_seconds=lifetime_seconds,
        )
        assert status == 202, answer
        return str(answer["message_id"])

    async def try_submit(
        self,
        sender: str,
        recipients: list[str],
        body: Body,
        *,
        consent: str,
        categories: tuple[str, ...],
        purpose: str,
        lifetime_seconds: int | None = None,
    ) -> tuple[int, Any]:
        request: dict[str, Any] = {
            "type": message_type_of(body).value,
            "recipients": recipients,
            "consent": consent,
            "purpose": purpose,
            "categories": list(categories),
            "body": body,
        }
        if lifetime_seconds is not None:
            request["lifetime_seconds"] = lifetime_seconds
        headers = {
            **self._headers(sender, ["messages:send"]),
            "Content-Type": "application/json",
            "Idempotency-Key": str(uuid.uuid4()),
        }
        async with self.session.post(
            f"{self.stack.adapter_url(sender)}/v1/messages",
            data=msgspec.json.encode(request),
            headers=headers,
        ) as response:
            return response.status, await response.json(content_type=None)

    async def register_consent(
        self,
        issuer: str,
        recipients: list[str],
        purpose: str,
        categories: tuple[str, ...],
        kind: str,
        local_ref: str | None = None,
    ) -> str:
        """Register the client's consent at the sender's adapter, as its case worker would."""
        request = {
            "recipients": recipients,
            "purposes": [purpose],
            "categories": list(categories),
            "types": [kind],
            "valid_until": _in_days(300),
            "local_ref": local_ref or f"case-{uuid.uuid4().hex[:8]}",
        }
        async with self.session.post(
            f"{self.stack.adapter_url(issuer)}/v1/consents",
            data=msgspec.json.encode(request),
            headers={
                **self._headers(issuer, ["consents:write"]),
                "Content-Type": "application/json",
            },
        ) as response:
            answer = await response.json()
            assert response.status == 201, answer
        return str(answer["consent_id"])

    async def status(self, sender: str, message_id: str) -> Any:
        async with self.session.get(
            f"{self.stack.adapter_url(sender)}/v1/messages/{message_id}",
            headers=self._headers(sender, ["messages:read"]),
        ) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def wait_states(self, sender: str, message_id: str, wanted: dict[str, str]) -> Any:
        """Wait until each recipient's summary state is the wanted one; return the status."""

        async def reached() -> Any:
            status = await self.status(sender, message_id)
            states = {r["agency"]: r.get("state") for r in status["recipients"]}
            return status if states == wanted else None

        return await eventually(f"{message_id} reaching {wanted}", reached)

    async def inbox(self, agency: str) -> list[str]:
        async with self.session.get(
            f"{self.stack.adapter_url(agency)}/v1/inbox",
            headers=self._headers(agency, ["inbox:read"]),
        ) as response:
            assert response.status == 200
            return [item["message_id"] for item in (await response.json())["items"]]

    async def pull(self, agency: str, message_id: str) -> Any:
        """Wait for the item in `agency`'s pull inbox, read it and acknowledge it."""

        async def listed() -> bool | None:
            return True if message_id in await self.inbox(agency) else None

        await eventually(f"{message_id} in {agency}'s inbox", listed)
        url = f"{self.stack.adapter_url(agency)}/v1/inbox/{message_id}"
        async with self.session.get(url, headers=self._headers(agency, ["inbox:read"])) as r:
            assert r.status == 200
            item = await r.json()
        async with self.session.post(
            f"{url}/ack", headers=self._headers(agency, ["inbox:ack"])
        ) as r:
            assert r.status in (200, 204), await r.text()
        return item

    def pushed(self, message_id: str) -> list[Any]:
        return [d.payload for d in self.sink.deliveries if d.message_id == message_id]

    async def wait_pushed(self, message_id: str) -> Any:
        async def found() -> Any:
            hits = self.pushed(message_id)
            return hits[0] if hits else None

        return await eventually(f"{message_id} pushed to the sink", found)


_E = TypeVar("_E", bound=E2E)


_START_TRIES = 3


def _port_taken(exc: BaseException) -> bool:
    """Whether a start failed because a port chosen as free was bound by another process before
    the part that was to listen on it bound it (nats-server cannot report a port 0)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        error = todo.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
            return True
        if isinstance(error, BridgeError) and (
            error.reason in ("natsd.port_in_use", "up.port_in_use")
            or "address already in use" in str(error).lower()  # nats-server's log tail
        ):
            return True
        if isinstance(error, BaseExceptionGroup):
            todo.extend(error.exceptions)
        todo.extend(e for e in (error.__cause__, error.__context__) if e is not None)
    return False


async def start_stack(
    tmp_path: Path,
    kind: type[_E],
    *,
    then: Callable[[_E], Awaitable[None]] | None = None,
    **fields: Any,
) -> _E:
    """The state `bridge up` prepares, a provisioned nats-server, the demo sink standing in for
    the counselling service and an HTTP session; then `then` (starting more of the stack).

    The ports are chosen free and bound later, so another process may take one in between: then
    everything started is stopped and all of it starts again in a fresh state on fresh ports.
    """
    for attempt in range(1, _START_TRIES + 1):
        state = tmp_path / ("state" if attempt == 1 else f"state-{attempt}")
        try:
            return await _start_stack_once(state, kind, then, **fields)
        except Exception as exc:
            if attempt == _START_TRIES or not _port_taken(exc):
                raise
            print("start-up: a port was taken meanwhile; starting again on fresh ports", flush=True)
    raise AssertionError("not reached")


async def _start_stack_once(
    state: Path, kind: type[_E], then: Callable[[_E], Awaitable[None]] | None, **fields: Any
) -> _E:
    stack = prepare(state, port_base=0)
    layout = stack.layout
    server = NatsServer.from_layout(layout.nats)
    await server.start()
    try:
        admin = Credentials(layout.nats.creds_dir).seed_file(Identity.admin())
        await provision_at(server.url, admin, [a.id for a in DEMO_AGENCIES])
        secret = layout.webhook_secret(COUNSELLING).read_bytes().strip()
        sink = DemoSink({COUNSELLING: secret}, stack.sink_access_token())
        await sink.start(stack.ports.host, stack.ports.sink)
    except BaseException:
        await server.stop()
        raise
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    env = kind(stack=stack, server=server, sink=sink, session=session, **fields)
    if then is not None:
        try:
            await then(env)
        except BaseException:
            await env.stop()
            raise
    return env


async def start_broker_and_adapters(env: E2E) -> None:
    await env.start_broker()
    await env.start_adapters()


@pytest.fixture
async def e2e(tmp_path: Path) -> AsyncIterator[E2E]:
    env = await start_stack(tmp_path, E2E, then=start_broker_and_adapters)
    try:
        yield env
    finally:
        await env.stop()


async def test_referral_reaches_webhook_and_pull_and_is_receipted(e2e: E2E) -> None:
    referral = demo_referral()
    message_id = await e2e.submit(JOBCENTER, [COUNSELLING, SPDI], referral)

    pushed = await e2e.wait_pushed(message_id)
    assert pushed["sender"] == JOBCENTER
    assert pushed["type"] == "referral"
    assert pushed["body"]["client"]["family_name"] == referral.client.family_name

    pulled = await e2e.pull(SPDI, message_id)
    assert pulled["body"]["reason"] == referral.reason
    assert message_id not in await e2e.inbox(SPDI)  # acknowledged: gone from the inbox

    status = await e2e.wait_states(
        JOBCENTER, message_id, {COUNSELLING: "receipted", SPDI: "receipted"}
    )
    seen = {(e["state"], e.get("recipient")) for e in status["events"]}
    for recipient in (COUNSELLING, SPDI):
        for state in ("routed", "delivered", "receipted"):
            assert (state, recipient) in seen, status
    assert len(e2e.pushed(message_id)) == 1
    # The broker's decisions name the policy version `bridge up` signed.
    anchor = load_anchor(e2e.stack.layout.federation_dir / ANCHOR_PUB)
    policy = load_policy_file(e2e.stack.layout.federation_dir / SIGNED_POLICY, anchor)
    assert {e.get("policy") for e in status["events"] if e["state"] == "routed"} == {policy.hash}


async def test_feedback_travels_back_to_the_jobcenter(e2e: E2E) -> None:
    referral_consent = await e2e.register_consent(
        JOBCENTER, [SPDI], "integration-support", ("identity", "contact", "addiction"), "referral"
    )
    referral_id = await e2e.submit(JOBCENTER, [SPDI], demo_referral(), consent=referral_consent)
    await e2e.pull(SPDI, referral_id)
    feedback = Feedback(
        in_reply_to=referral_id,
        outcome=MeasureStarted(),
        occurred_on=datetime.date.today(),
    )
    # The feedback needs the service's own consent: the Jobcenter's does not count for it.
    status, problem = await e2e.try_submit(
        SPDI,
        [JOBCENTER],
        feedback,
        consent=referral_consent,
        categories=("health",),
        purpose="integration-support",
    )
    assert (status, problem["code"]) == (422, "consent.issuer_not_accepted"), problem
    feedback_id = await e2e.submit(
        SPDI, [JOBCENTER], feedback, categories=("health",), purpose="integration-support"
    )
    item = await e2e.pull(JOBCENTER, feedback_id)
    assert item["sender"] == SPDI
    assert item["body"]["in_reply_to"] == referral_id
    await e2e.wait_states(SPDI, feedback_id, {JOBCENTER: "receipted"})


async def test_the_demo_runs_against_the_stack(e2e: E2E) -> None:
    out = io.StringIO()
    message_id = await run_demo(e2e.stack, out, patience=DEMO_PATIENCE)
    text = out.getvalue()
    assert message_id in text
    assert "Done: delivered and receipted for suchtberatung-unna and spdi-unna." in text


async def test_the_demo_shows_a_withdrawal_step_by_step(e2e: E2E) -> None:
    out = io.StringIO()
    await run_demo(e2e.stack, out, patience=DEMO_PATIENCE, withdraw=True)
    text = out.getvalue()
    steps = (
        "6. waiting",
        "7. withdrawn",
        "8. refused",
        "9. removed",
        "10. notified",
        "11. deleted",
        "12. consent",
    )
    at = [text.find(step) for step in steps]
    assert -1 not in at, text
    assert at == sorted(at), text
    assert "422 [consent.withdrawn]" in text
    assert "shows it withdrawn [consent.withdrawn]" in text
    assert text.count("s after the withdrawal") == 3  # removed, and both notices
    assert text.count("deletion-confirmed") == 2
    assert (
        "Done: consent withdrawn, deletion confirmed by suchtberatung-unna and spdi-unna." in text
    )


async def test_accepted_message_survives_broker_and_nats_restart_delivered_once(
    e2e: E2E,
) -> None:
    await e2e.stop_broker()
    message_id = await e2e.submit(JOBCENTER, [COUNSELLING], demo_referral())
    status = await e2e.status(JOBCENTER, message_id)
    assert {r["agency"]: r.get("state") for r in status["recipients"]} == {COUNSELLING: "accepted"}

    await e2e.server.kill()  # a crash: what was acknowledged must be on disk
    await e2e.server.start()
    await e2e.start_broker()

    await e2e.wait_states(JOBCENTER, message_id, {COUNSELLING: "receipted"})
    assert len(e2e.pushed(message_id)) == 1

    # Deliveries to one webhook are in order: once a later message is through, no redelivered
    # copy of the first can still be on its way.
    barrier = await e2e.submit(JOBCENTER, [COUNSELLING], demo_referral())
    await e2e.wait_states(JOBCENTER, barrier, {COUNSELLING: "receipted"})
    assert len(e2e.pushed(message_id)) == 1
    assert len(e2e.pushed(barrier)) == 1
    status = await e2e.status(JOBCENTER, message_id)
    states = [e["state"] for e in status["events"]]
    assert states.count("receipted") == 1
    assert {"accepted", "routed", "delivered", "receipted"} <= set(states)


def _feedback() -> Feedback:
    return Feedback(
        in_reply_to=str(uuid.uuid4()), outcome=MeasureStarted(), occurred_on=datetime.date.today()
    )


@pytest.mark.parametrize(
    ("sender", "recipients", "make_body", "categories"),
    [
        pytest.param(SPDI, [COUNSELLING], demo_referral, ("identity",), id="service-refers"),
        pytest.param(JOBCENTER, [COUNSELLING], _feedback, ("health",), id="jobcenter-feedback"),
        pytest.param(
            SPDI, [JOBCENTER, COUNSELLING], _feedback, ("health",), id="one-recipient-denied"
        ),
    ],
)
async def test_a_flow_the_policy_does_not_allow_is_refused_before_publishing(
    e2e: E2E,
    sender: str,
    recipients: list[str],
    make_body: Callable[[], Body],
    categories: tuple[str, ...],
) -> None:
    """The sending adapter applies the broker's policy: 422 with the broker's reason code."""
    status, problem = await e2e.try_submit(
        sender,
        recipients,
        make_body(),
        consent=f"c-{secrets.token_hex(16)}",  # the policy is checked before the consent
        categories=categories,
        purpose="integration-support",
    )
    assert status == 422, problem
    assert problem["code"] == "policy.route_denied"
    # The referral the Jobcenter sends next to the same recipients is the first anyone receives.
    barrier = await e2e.submit(JOBCENTER, [COUNSELLING, SPDI], demo_referral())
    await e2e.wait_pushed(barrier)
    assert [d.message_id for d in e2e.sink.deliveries] == [barrier]

    async def spdi_inbox() -> list[str] | None:
        items = await e2e.inbox(SPDI)
        return items if barrier in items else None

    assert await eventually("the referral in spdi's inbox", spdi_inbox) == [barrier]
    assert await e2e.inbox(JOBCENTER) == []
    await e2e.pull(SPDI, barrier)  # leave nothing held or in flight behind
    await e2e.wait_states(JOBCENTER, barrier, {COUNSELLING: "receipted", SPDI: "receipted"})


async def test_a_withdrawal_reaches_recipients_and_their_deletion_comes_back(e2e: E2E) -> None:
    recipients = [COUNSELLING, SPDI]
    consent = await e2e.register_consent(
        JOBCENTER,
        recipients,
        "integration-support",
        ("identity", "contact", "addiction"),
        "referral",
    )
    message_id = await e2e.submit(JOBCENTER, recipients, demo_referral(), consent=consent)
    await e2e.wait_pushed(message_id)
    await e2e.pull(SPDI, message_id)
    await e2e.wait_states(JOBCENTER, message_id, {COUNSELLING: "receipted", SPDI: "receipted"})

    url = f"{e2e.stack.adapter_url(JOBCENTER)}/v1/consents/{consent}"
    async with e2e.session.delete(url, headers=e2e._headers(JOBCENTER, ["consents:write"])) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["state"] == "withdrawn"

    async def pushed_notice() -> Any:
        notices = [
            d.payload for d in e2e.sink.deliveries if d.payload.get("type") == "consent-revoked"
        ]
        return notices[0] if notices else None

    notice = await eventually("the notice pushed to the counselling service", pushed_notice)
    assert notice["sender"] == JOBCENTER
    assert notice["body"] == {
        "type": "consent-revoked",
        "consent": consent,
        "withdrawn_at": notice["body"]["withdrawn_at"],
        "messages": [message_id],
    }

    async def pulled_notice() -> str | None:
        for item in await e2e.inbox(SPDI):
            if item != message_id:
                return item
        return None

    spdi_notice = await eventually("the notice in the pull inbox", pulled_notice)
    # The counselling service's system answered its webhook call with {"deleted": true} (the
    # demo sink does); the pull system confirms with a call of its own.
    async with e2e.session.post(
        f"{e2e.stack.adapter_url(SPDI)}/v1/inbox/{spdi_notice}/deleted",
        headers=e2e._headers(SPDI, ["inbox:ack"]),
    ) as r:
        assert r.status == 200, await r.text()
    assert spdi_notice not in await e2e.inbox(SPDI)

    async def confirmed() -> Any:
        async with e2e.session.get(url, headers=e2e._headers(JOBCENTER, ["consents:read"])) as r:
            view = await r.json()
        done = {e.get("recipient") for e in view["events"] if e["state"] == "deletion-confirmed"}
        return view if done == set(recipients) else None

    view = await eventually("both deletions confirmed to the Jobcenter", confirmed)
    notified = {e.get("recipient") for e in view["events"] if e["state"] == "notified"}
    assert notified == set(recipients)
    # Unknown notices are refused, and a new message under the consent is refused at once.
    async with e2e.session.post(
        f"{e2e.stack.adapter_url(SPDI)}/v1/inbox/{message_id}/deleted",
        headers=e2e._headers(SPDI, ["inbox:ack"]),
    ) as r:
        assert (r.status, (await r.json())["code"]) == (404, "notice.unknown")
    status, problem = await e2e.try_submit(
        JOBCENTER,
        recipients,
        demo_referral(),
        consent=consent,
        categories=("identity", "contact", "addiction"),
        purpose="integration-support",
    )
    assert (status, problem["code"], problem["field"]) == (422, "consent.withdrawn", "$.consent")


async def test_a_withdrawal_takes_a_waiting_message_out_of_the_pull_inbox(e2e: E2E) -> None:
    consent = await e2e.register_consent(
        JOBCENTER, [SPDI], "integration-support", ("identity", "contact", "addiction"), "referral"
    )
    message_id = await e2e.submit(JOBCENTER, [SPDI], demo_referral(), consent=consent)

    async def waiting() -> bool | None:
        return True if message_id in await e2e.inbox(SPDI) else None

    await eventually("the referral waiting in the pull inbox", waiting)
    url = f"{e2e.stack.adapter_url(JOBCENTER)}/v1/consents/{consent}"
    async with e2e.session.delete(url, headers=e2e._headers(JOBCENTER, ["consents:write"])) as r:
        assert r.status == 200, await r.text()

    async def gone() -> bool | None:
        return True if message_id not in await e2e.inbox(SPDI) else None

    await eventually("the referral gone from the pull inbox", gone)
    status = await e2e.wait_states(JOBCENTER, message_id, {SPDI: "withdrawn"})
    assert any(
        e["state"] == "withdrawn" and e.get("reason") == "consent.withdrawn"
        for e in status["events"]
    )
    async with e2e.session.get(
        f"{e2e.stack.adapter_url(SPDI)}/v1/inbox/{message_id}",
        headers=e2e._headers(SPDI, ["inbox:read"]),
    ) as r:
        assert r.status == 404


def _in_days(days: int) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_the_local_reference_never_leaves_the_adapter(
    e2e: E2E, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing published to NATS or stored in any stream names the case file number, not even
    the issuing adapter's own bucket (on the hub's NATS, it holds the number only sealed); no
    log line names it either.

    Everything that happens to a consent happens here: registration (and its audit record),
    a message under it, the client's disclosure report, the withdrawal with its purge, notices
    and deletion confirmations. An admin subscription to every subject sees all of it as it
    is published, and afterwards every stream is read message by message.
    """
    caplog.set_level(logging.DEBUG)
    case_file = f"AZ {secrets.token_hex(4)}/26-Müller"
    needles = [
        case_file.encode(),
        case_file.split("-")[0].encode(),  # the number alone, without the name
        hashlib.sha256(case_file.encode()).hexdigest().encode(),  # the bucket's index key
    ]
    own_bucket = kv_stream(JOBCENTER)
    seed = Credentials(e2e.stack.layout.nats.creds_dir).seed_file(Identity.admin())
    admin = await nats.connect(e2e.server.url, nkeys_seed=str(seed), max_reconnect_attempts=0)
    seen: list[tuple[str, bytes]] = []  # (subject, data and headers) of what names it

    def names_it(subject: str, data: bytes, headers: dict[str, str] | None) -> bool:
        blob = subject.encode() + data + repr(sorted((headers or {}).items())).encode()
        return any(needle in blob for needle in needles)

    async def watch(msg: Msg) -> None:
        if names_it(msg.subject, msg.data, msg.headers):
            seen.append((msg.subject, msg.data))

    sub = await admin.subscribe(">", cb=watch)
    try:
        recipients = [COUNSELLING, SPDI]
        consent = await e2e.register_consent(
            JOBCENTER,
            recipients,
            "integration-support",
            ("identity", "contact", "addiction"),
            "referral",
            local_ref=case_file,
        )
        message_id = await e2e.submit(JOBCENTER, recipients, demo_referral(), consent=consent)
        await e2e.wait_pushed(message_id)
        await e2e.pull(SPDI, message_id)
        await e2e.wait_states(JOBCENTER, message_id, {COUNSELLING: "receipted", SPDI: "receipted"})
        query = urllib.parse.urlencode({"local_ref": case_file})
        reports = f"{e2e.stack.adapter_url(JOBCENTER)}/v1/disclosures?{query}"
        async with e2e.session.get(
            reports, headers=e2e._headers(JOBCENTER, ["consents:read"])
        ) as r:
            assert r.status == 200, await r.text()
            assert case_file not in await r.text()
        url = f"{e2e.stack.adapter_url(JOBCENTER)}/v1/consents/{consent}"
        headers = e2e._headers(JOBCENTER, ["consents:write"])
        async with e2e.session.delete(url, headers=headers) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["local_ref"] == case_file  # shown to its own agency only

        def confirmed(by: set[str]) -> Callable[[], Awaitable[bool | None]]:
            async def check() -> bool | None:
                reader = e2e._headers(JOBCENTER, ["consents:read"])
                async with e2e.session.get(url, headers=reader) as r:
                    events = (await r.json())["events"]
                done = {e.get("recipient") for e in events if e["state"] == "deletion-confirmed"}
                return True if by <= done else None

            return check

        # The webhook system answered its notice with {"deleted": true} (the demo sink does).
        await eventually("the webhook system's deletion confirmed", confirmed({COUNSELLING}))
        notice = next(i for i in await e2e.inbox(SPDI) if i != message_id)
        async with e2e.session.post(
            f"{e2e.stack.adapter_url(SPDI)}/v1/inbox/{notice}/deleted",
            headers=e2e._headers(SPDI, ["inbox:ack"]),
        ) as r:
            assert r.status == 200, await r.text()
        await eventually("both deletions confirmed", confirmed(set(recipients)))
        await admin.flush()
    finally:
        await sub.unsubscribe()
    try:
        assert [subject for subject, _ in seen] == []
        stored: list[str] = []
        js = admin.jetstream(timeout=5.0)
        for info in await js.streams_info():
            stream = info.config.name
            assert stream is not None
            async for msg in _stored(js, stream):
                if names_it(msg.subject or "", msg.data or b"", msg.headers):
                    stored.append(f"{stream}#{msg.seq}")
        assert stored == []
        # The bucket does hold the consent's local record, with the reference sealed: the
        # check above looked at it.
        record = f"$KV.{kv_bucket(JOBCENTER)}.cst.{consent}"
        held = [msg async for msg in _stored(js, own_bucket) if msg.subject == record]
        assert held
        for msg in held:
            local = json.loads(msg.data)
            assert local["sealed_ref"]
            assert local.get("local_ref") is None
    finally:
        await admin.close()
    assert case_file.split("-")[0] not in caplog.text
    # The recipients' receipts for their notices are expected, not "for no message".
    assert "is for no message sent to its sender" not in caplog.text


async def _stored(js: Any, stream: str) -> AsyncIterator[Any]:
    """Every message a stream holds now, skipping the deleted ones without asking for each."""
    seq = 1
    while True:
        try:
            msg = await js.get_msg(stream, seq=seq, subject=">", next=True)
        except nats.js.errors.NotFoundError:
            return
        yield msg
        seq = msg.seq + 1
