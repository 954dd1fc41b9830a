"""`bridge demo`: send one referral through the running embedded stack and narrate its journey.

The Jobcenter's local system refers a (fictional) client to addiction counselling and to the
social-psychiatric service in one message. The demo then watches, through the same HTTP APIs a
real local system would use, each step: accepted, routed to each recipient, pushed by webhook to
the counselling service's system (the demo sink), pulled and acknowledged by the
social-psychiatric service's system, and finally delivered and receipted on the sender's
timeline. Every wait is bounded and says what to check when a step does not happen.
"""

from __future__ import annotations

import asyncio
import datetime
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TextIO, TypeVar

import aiohttp
import msgspec

from .errors import TransportError
from .up.democonsent import (
    DEMO_CASE_FILE,
    DEMO_CONSENT_CATEGORIES,
    consent_request,
    ensure_demo_consent,
)
from .up.state import Stack
from .wire import (
    Address,
    ClientContact,
    ClientIdentity,
    Concern,
    ContactChannel,
    ContactPerson,
    Gender,
    Purpose,
    Referral,
    Service,
    Urgency,
)

__all__ = ["DemoFailed", "demo_referral", "run_demo"]

SENDER: Final = "jobcenter-unna"
WEBHOOK_RECIPIENT: Final = "suchtberatung-unna"
PULL_RECIPIENT: Final = "spdi-unna"
RECIPIENTS: Final = (WEBHOOK_RECIPIENT, PULL_RECIPIENT)
_CATEGORIES: Final = DEMO_CONSENT_CATEGORIES
_POLL: Final = 0.2
_HTTP_TIMEOUT: Final = 10.0
_T = TypeVar("_T")
_Say = Callable[[str], None]


class DemoFailed(TransportError):
    """A step of the demo did not happen in time, or an API answered unexpectedly."""

    reason = "demo.failed"


def demo_referral() -> Referral:
    """A referral of an entirely fictional client (placeholder names, drama phone numbers)."""
    return Referral(
        client=ClientIdentity(
            family_name="Beispielmann",
            given_names="Jonas",
            date_of_birth=datetime.date(1989, 5, 17),
            gender=Gender.MALE,
        ),
        client_contact=ClientContact(
            address=Address(
                street="Musterweg", house_number="12", postal_code="59423", city="Unna"
            ),
            phone="0171 39 20 417",
            preferred_channel=ContactChannel.PHONE,
            preferred_time="nachmittags",
        ),
        requested_service=Service.ADDICTION_COUNSELLING,
        concerns=(Concern.ALCOHOL, Concern.MENTAL_HEALTH),
        reason=(
            "Herr Beispielmann berichtet von täglichem Alkoholkonsum und anhaltender "
            "Niedergeschlagenheit und wünscht Beratung."
        ),
        urgency=Urgency.SOON,
        contact_person=ContactPerson(
            name="Petra Probe",
            phone="02303 2538 000",
            email="petra.probe@jobcenter-unna.example",
            unit="Team 4, Fallmanagement",
        ),
        notes="Schweigepflichtentbindung für beide Stellen liegt vor (fiktives Demo-Beispiel).",
    )


@dataclass(frozen=True, slots=True)
class _Api:
    """One HTTP API (an adapter's, or the demo sink's) and the bearer token it wants."""

    session: aiohttp.ClientSession
    base: str
    token: str
    label: str  # who answers, for messages: "the adapter of spdi-unna"
    hint: str

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **(extra or {})}

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> tuple[int, Any]:
        url = f"{self.base}{path}"
        timeout = aiohttp.ClientTimeout(total=_HTTP_TIMEOUT)
        try:
            async with self.session.request(
                method, url, data=body, headers=self._headers(headers), timeout=timeout
            ) as response:
                data = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DemoFailed(
                f"cannot reach {self.label} at {self.base} ({type(exc).__name__}); {self.hint}"
            ) from exc
        decoded: Any = msgspec.json.decode(data) if data else None
        if status not in ok:
            detail = decoded.get("detail") if isinstance(decoded, dict) else None
            code = decoded.get("code") if isinstance(decoded, dict) else None
            raise DemoFailed(
                f"{method} {path} at {self.label} answered {status}"
                + (f": {detail} [{code}]" if detail else "")
            )
        return status, decoded


async def _until(
    what: str, check: Callable[[], Awaitable[_T | None]], patience: float, hint: str
) -> _T:
    """Poll `check` until it returns something, or fail after `patience` seconds naming the step."""
    deadline = time.monotonic() + patience
    while True:
        found = await check()
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            raise DemoFailed(f"{what} did not happen within {patience:g}s; {hint}")
        await asyncio.sleep(_POLL)


def _states(status: Mapping[str, Any], agency: str) -> set[str]:
    return {
        e["state"]
        for e in status.get("events", [])
        if e.get("recipient") in (agency, None) and isinstance(e.get("state"), str)
    }


def _when(status: Mapping[str, Any], agency: str | None, state: str) -> str:
    for event in status.get("events", []):
        if event.get("state") == state and event.get("recipient") in (agency, None):
            return str(event.get("at", "?"))
    return "?"


class _Journey:
    """The demo's steps, each one bounded; plays the local systems of all three agencies."""

    def __init__(self, stack: Stack, session: aiohttp.ClientSession, say: _Say, patience: float):
        self._say = say
        self._stack = stack
        self._session = session
        self._patience = patience
        self._hint = (
            f"is `bridge up --state {stack.layout.root}` running? "
            f"Its logs are in {stack.layout.log_dir}"
        )
        self._sender = _Api(
            session,
            stack.adapter_url(SENDER),
            stack.token(
                SENDER, ["messages:send", "messages:read", "consents:read", "consents:write"], 600
            ),
            f"the adapter of {SENDER}",
            self._hint,
        )
        self._puller = _Api(
            session,
            stack.adapter_url(PULL_RECIPIENT),
            stack.token(PULL_RECIPIENT, ["inbox:read", "inbox:ack"], 600),
            f"the adapter of {PULL_RECIPIENT}",
            self._hint,
        )
        self._sink = _Api(
            session, stack.sink_url, stack.sink_access_token(), "the demo sink", self._hint
        )
        self.message_id = ""
        self.consent_id = ""

    async def _until(self, what: str, check: Callable[[], Awaitable[_T | None]]) -> _T:
        return await _until(what, check, self._patience, self._hint)

    async def _status(self) -> Any:
        _, status = await self._sender.call("GET", f"/v1/messages/{self.message_id}")
        for recipient in status.get("recipients", []):
            if recipient.get("state") in ("rejected", "expired"):
                raise DemoFailed(
                    f"the referral was {recipient['state']} for {recipient.get('agency')} "
                    f"[{recipient.get('reason') or 'no reason given'}]"
                )
        return status

    async def consent(self, *, fresh: bool) -> None:
        """The client's signed release form, registered at the Jobcenter's adapter: the one
        `bridge up` registered, or (`fresh`, for a withdrawal) a new one."""
        if not fresh:
            try:
                self.consent_id, new = await ensure_demo_consent(self._stack, self._session)
            except DemoFailed:
                raise
            except TransportError as exc:
                raise DemoFailed(f"{exc}; {self._hint}") from exc
            self._say(
                f"0. consent     {self.consent_id} at {SENDER}'s adapter "
                + ("(registered now" if new else "(registered by `bridge up`")
                + f"; case file {DEMO_CASE_FILE} stays in the adapter; "
                f"form: /v1/consents/{self.consent_id}/form)"
            )
            return
        local_ref = f"DEMO-{secrets.token_hex(3).upper()}"
        request = consent_request(datetime.datetime.now(datetime.UTC), local_ref)
        _, view = await self._sender.call(
            "POST",
            "/v1/consents",
            body=msgspec.json.encode(request),
            headers={"Content-Type": "application/json"},
            ok=(201,),
        )
        self.consent_id = str(view["consent_id"])
        self._say(
            f"0. consent     registered at {SENDER}'s adapter: {self.consent_id} "
            f"(case file {local_ref} stays in the adapter; "
            f"form: /v1/consents/{self.consent_id}/form)"
        )

    def referral_request(self, referral: Referral, recipients: tuple[str, ...]) -> bytes:
        """`POST /v1/messages` of a referral under the demo's consent."""
        request = {
            "type": "referral",
            "recipients": list(recipients),
            "consent": self.consent_id,
            "purpose": Purpose.INTEGRATION_SUPPORT.value,
            "categories": list(_CATEGORIES),
            "body": referral,
        }
        return msgspec.json.encode(request)

    async def submit(self) -> None:
        referral = demo_referral()
        consent = self.consent_id
        client = referral.client
        self._say(f"Referral from {SENDER} to {WEBHOOK_RECIPIENT} and {PULL_RECIPIENT}")
        self._say(
            f"  client (fictional): {client.given_names} {client.family_name}, consent {consent}"
        )
        _, accepted = await self._sender.call(
            "POST",
            "/v1/messages",
            body=self.referral_request(referral, RECIPIENTS),
            headers={"Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())},
            ok=(202,),
        )
        self.message_id = str(accepted["message_id"])
        self._say(
            f"1. accepted    {SENDER}'s adapter sealed and submitted it: message {self.message_id}"
        )

    async def routed(self, agency: str) -> None:
        async def check() -> Any:
            current = await self._status()
            return current if _states(current, agency) - {"accepted"} else None

        current = await self._until(f"routing to {agency}", check)
        self._say(
            f"2. routed      broker checked it and put it in {agency}'s inbox "
            f"({_when(current, agency, 'routed')})"
        )

    async def pushed(self) -> None:
        async def check() -> Any:
            _, listing = await self._sink.call("GET", f"/deliveries?agency={WEBHOOK_RECIPIENT}")
            hits = [
                d["delivery"]
                for d in listing.get("deliveries", [])
                if d.get("delivery", {}).get("message_id") == self.message_id
            ]
            return hits[0] if hits else None

        item = await self._until(f"webhook delivery to {WEBHOOK_RECIPIENT}", check)
        client = item.get("body", {}).get("client", {})
        self._say(
            f"3. delivered   by webhook to {WEBHOOK_RECIPIENT}'s local system (demo sink): "
            f"{item.get('type')} from {item.get('sender')}, client "
            f"{client.get('given_names')} {client.get('family_name')}, signature verified"
        )

    async def pulled(self) -> None:
        async def check() -> bool | None:
            _, listing = await self._puller.call("GET", "/v1/inbox")
            ids = [i.get("message_id") for i in listing.get("items", [])]
            return True if self.message_id in ids else None

        await self._until(f"the referral in {PULL_RECIPIENT}'s inbox", check)
        path = f"/v1/inbox/{self.message_id}"
        _, opened = await self._puller.call("GET", path)
        service = opened.get("body", {}).get("requested_service")
        await self._puller.call("POST", f"{path}/ack", ok=(200, 204))
        self._say(
            f"4. pulled      from {PULL_RECIPIENT}'s inbox by its local system "
            f"(requested service {service}) and acknowledged"
        )

    async def receipted(self) -> None:
        async def check() -> Any:
            current = await self._status()
            done = all("receipted" in _states(current, a) for a in RECIPIENTS)
            return current if done else None

        final = await self._until("receipts from both recipients", check)
        self._say(f"5. timeline    of {self.message_id} as {SENDER} sees it:")
        for event in final.get("events", []):
            who = event.get("recipient") or "(all)"
            reason = f"  [{event['reason']}]" if event.get("reason") else ""
            at, state = event.get("at", "?"), event.get("state", "?")
            self._say(f"     {at:<32} {state:<10} {who}{reason}")
        for recipient in final.get("recipients", []):
            self._say(f"   {recipient.get('agency'):<20} {recipient.get('state')}")


class _Withdrawal:
    """`bridge demo --withdraw`: the client withdraws the consent; watch what follows.

    The times shown are how long after the `DELETE` the demo saw each effect; it looks every
    0.2 s, so each is an upper bound.
    """

    def __init__(self, journey: _Journey) -> None:
        self._j = journey
        self._waiting = ""  # a second referral, left waiting in the pull inbox
        self._since = 0.0  # when the withdrawal was sent (monotonic)

    def _after(self) -> str:
        return f"seen {time.monotonic() - self._since:.2f} s after the withdrawal"

    async def _pull_inbox(self) -> list[Any]:
        _, listing = await self._j._puller.call("GET", "/v1/inbox")
        return list(listing.get("items", []))

    async def waiting(self) -> None:
        j = self._j
        _, accepted = await j._sender.call(
            "POST",
            "/v1/messages",
            body=j.referral_request(demo_referral(), (PULL_RECIPIENT,)),
            headers={"Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())},
            ok=(202,),
        )
        self._waiting = str(accepted["message_id"])

        async def listed() -> bool | None:
            ids = [i.get("message_id") for i in await self._pull_inbox()]
            return True if self._waiting in ids else None

        await j._until(f"the second referral in {PULL_RECIPIENT}'s inbox", listed)
        j._say(
            f"6. waiting     a second referral under it ({self._waiting}) waits in "
            f"{PULL_RECIPIENT}'s inbox; its local system has not taken it"
        )

    async def withdraw(self) -> None:
        j = self._j
        self._since = time.monotonic()
        _, view = await j._sender.call("DELETE", f"/v1/consents/{j.consent_id}")
        j._say(
            f"7. withdrawn   the client withdrew consent {j.consent_id}: {SENDER}'s adapter "
            f"stored a signed withdrawal ({view.get('withdrawn_at')}); nothing is overwritten"
        )

    async def refused(self) -> None:
        j = self._j
        _, problem = await j._sender.call(
            "POST",
            "/v1/messages",
            body=j.referral_request(demo_referral(), RECIPIENTS),
            headers={"Content-Type": "application/json"},
            ok=(422,),
        )
        j._say(
            f"8. refused     a new referral under it: 422 [{problem.get('code')}] at the "
            "adapter; the broker would refuse it the same way"
        )

    async def removed(self) -> None:
        j = self._j

        async def gone() -> bool | None:
            if self._waiting in [i.get("message_id") for i in await self._pull_inbox()]:
                return None
            _, status = await j._sender.call("GET", f"/v1/messages/{self._waiting}")
            return True if "withdrawn" in _states(status, PULL_RECIPIENT) else None

        await j._until(f"the waiting referral removed from {PULL_RECIPIENT}'s inbox", gone)
        j._say(
            f"9. removed     the waiting referral left {PULL_RECIPIENT}'s inbox undelivered; "
            f"{SENDER}'s timeline shows it withdrawn [consent.withdrawn] ({self._after()})"
        )

    async def notices(self) -> tuple[str, str]:
        j = self._j

        async def pushed() -> Any:
            _, listing = await j._sink.call("GET", f"/deliveries?agency={WEBHOOK_RECIPIENT}")
            hits = [
                d["delivery"]
                for d in listing.get("deliveries", [])
                if d.get("delivery", {}).get("type") == "consent-revoked"
                and d["delivery"].get("body", {}).get("consent") == j.consent_id
            ]
            return hits[0] if hits else None

        async def pulled() -> Any:
            _, listing = await j._puller.call("GET", "/v1/inbox")
            for item in listing.get("items", []):
                if item.get("type") == "consent-revoked":
                    _, opened = await j._puller.call("GET", f"/v1/inbox/{item['message_id']}")
                    if opened.get("body", {}).get("consent") == j.consent_id:
                        return opened
            return None

        webhook = await j._until(f"the notice to {WEBHOOK_RECIPIENT}", pushed)
        j._say(
            f"10. notified   {WEBHOOK_RECIPIENT}'s local system got a signed consent-revoked "
            f"notice naming {', '.join(webhook['body']['messages'])} ({self._after()})"
        )
        pull = await j._until(f"the notice in {PULL_RECIPIENT}'s inbox", pulled)
        j._say(
            f"10. notified   {PULL_RECIPIENT}'s local system got a signed consent-revoked "
            f"notice naming {', '.join(pull['body']['messages'])} ({self._after()})"
        )
        return str(webhook["message_id"]), str(pull["message_id"])

    async def deleted(self, webhook_notice: str, pull_notice: str) -> None:
        j = self._j
        j._say(
            f"11. deleted    {WEBHOOK_RECIPIENT}'s local system (the demo sink) answered the "
            'notice\'s webhook call with {"deleted": true}; its adapter sent a signed deletion '
            "confirmation back"
        )
        await j._puller.call("POST", f"/v1/inbox/{pull_notice}/deleted")
        j._say(
            f"11. deleted    {PULL_RECIPIENT}'s local system deleted the data and confirmed with "
            "POST /v1/inbox/{id}/deleted; its adapter sent a signed deletion confirmation back"
        )

    async def confirmed(self) -> None:
        j = self._j

        async def check() -> Any:
            _, view = await j._sender.call("GET", f"/v1/consents/{j.consent_id}")
            done = {
                e.get("recipient")
                for e in view.get("events", [])
                if e.get("state") == "deletion-confirmed"
            }
            return view if done >= set(RECIPIENTS) else None

        view = await j._until("both deletion confirmations at the Jobcenter", check)
        j._say(f"12. consent    {j.consent_id} as {SENDER} sees it: {view.get('state')}")
        for event in view.get("events", []):
            who = event.get("recipient") or "(all)"
            j._say(f"     {event.get('at', '?'):<32} {event.get('state', '?'):<18} {who}")


async def run_demo(
    stack: Stack, out: TextIO, *, patience: float = 30.0, withdraw: bool = False
) -> str:
    """Run the demo against a running stack; return the message id. Raises `DemoFailed`.

    With `withdraw`, a second referral is left waiting in the pull inbox, the client withdraws
    the consent, and the demo shows, step by step, the refusal of new messages, the waiting
    referral removed undelivered, the notices, the local deletions and their confirmations.
    """

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    async with aiohttp.ClientSession() as session:
        journey = _Journey(stack, session, say, patience)
        await journey.consent(fresh=withdraw)
        await journey.submit()
        for agency in RECIPIENTS:
            await journey.routed(agency)
        await journey.pushed()
        await journey.pulled()
        await journey.receipted()
        if withdraw:
            steps = _Withdrawal(journey)
            await steps.waiting()
            await steps.withdraw()
            await steps.refused()
            await steps.removed()
            notices = await steps.notices()
            await steps.deleted(*notices)
            await steps.confirmed()
    if withdraw:
        say(f"Done: consent withdrawn, deletion confirmed by {' and '.join(RECIPIENTS)}.")
        return journey.message_id
    say(f"Done: delivered and receipted for {' and '.join(RECIPIENTS)}.")
    return journey.message_id
