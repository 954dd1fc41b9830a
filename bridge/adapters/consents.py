"""The adapter's consent API: register, show, find by local reference, withdraw.

A consent is registered by the agency that obtained it. The adapter checks the request (every
recipient in the key directory, validity in order and within the policy's limit), creates a
random id, signs a record that names no client, stores it in the consent registry on NATS, and
keeps the agency's local reference (its case file number, say) in its own KV bucket only.
Withdrawal adds a signed withdrawal beside the record; nothing is overwritten.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec

from ..consent import (
    MAX_CONSENT_VALIDITY_SECONDS,
    ConsentBody,
    ConsentState,
    Registry,
    WithdrawalBody,
    new_consent_id,
    sign_consent,
    sign_withdrawal,
    verify_consent,
)
from ..crypto import Keyring
from ..errors import BridgeError, ConsentInvalid, PolicyError, TransportError
from ..federation.directory import Directory
from ..http.problems import ApiProblem
from ..ids import check_consent_ref
from .api import ConsentEvent, ConsentList, ConsentRequest, ConsentView
from .store import ConsentLocal, Event, Store
from .submission import decode_request

__all__ = ["Consents", "consent_view"]

log = logging.getLogger(__name__)

_decoder: Final = msgspec.json.Decoder(ConsentRequest)
_MAX_CONSENT_REQUEST: Final = 16 * 1024
_RETRY_AFTER: Final = "5"
_QUOTA_RETRY_AFTER: Final = "60"

Withdrawn = Callable[[ConsentState, ConsentLocal | None], Awaitable[None]]


def _utc(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


def _invalid(detail: str, reason: str, field: str) -> ApiProblem:
    return ApiProblem(422, detail, reason=reason, field=field)


def _unavailable(exc: TransportError) -> ApiProblem:
    if exc.reason == "transport.stream_full":
        # This agency's own part of the registry is at its quota (docs/nats.md, Quotas);
        # withdrawals have room of their own, so this is a registration.
        return ApiProblem(
            429,
            "this agency's consent registry is at its quota; retry later or ask the operator",
            reason="quota.registry_full",
            headers={"Retry-After": _QUOTA_RETRY_AFTER},
        )
    return ApiProblem(
        503,
        "the consent registry cannot be reached right now; retry later",
        reason=exc.reason,
        headers={"Retry-After": _RETRY_AFTER},
    )


def consent_view(
    state: ConsentState, local: ConsentLocal | None, local_ref: str | None, now: int
) -> ConsentView:
    body = state.consent.body
    if state.withdrawal is not None:
        status = "withdrawn"
    elif now < body.valid_from:
        status = "not-yet-valid"
    elif now >= body.valid_until:
        status = "expired"
    else:
        status = "active"
    events = [
        ConsentEvent(state=e.state, at=_utc(e.at), recipient=e.recipient)  # type: ignore[arg-type]
        for e in (local.events if local else [])
        if e.state in ("withdrawn", "notified", "deletion-confirmed")
    ]
    return ConsentView(
        consent_id=body.id,
        issuer=body.issuer,
        recipients=list(body.recipients),
        purposes=list(body.purposes),
        categories=list(body.categories),
        types=list(body.types),
        valid_from=_utc(body.valid_from),
        valid_until=_utc(body.valid_until),
        issued_at=_utc(body.issued_at),
        state=status,  # type: ignore[arg-type]
        withdrawn_at=_utc(state.withdrawal.body.at) if state.withdrawal else None,
        local_ref=local_ref,
        events=sorted(events, key=lambda e: e.at),
    )


class Consents:
    """Consents of one agency, registered and withdrawn through its adapter."""

    def __init__(
        self,
        *,
        agency: str,
        keyring: Keyring,
        directory: Callable[[], Directory],
        store: Store,
        registry: Registry,
        clock: Callable[[], float],
        on_withdrawn: Withdrawn | None = None,
        max_validity: Callable[[], int] = lambda: MAX_CONSENT_VALIDITY_SECONDS,
    ) -> None:
        self._agency = agency
        self._keyring = keyring
        self._directory = directory
        self._store = store
        self._registry = registry
        self._clock = clock
        self._on_withdrawn = on_withdrawn
        self._max_validity = max_validity

    def __repr__(self) -> str:
        return f"Consents(agency={self._agency!r})"

    # -- register ---------------------------------------------------------------------------

    def _body(self, request: ConsentRequest, now: int) -> ConsentBody:
        directory = self._directory()
        for i, recipient in enumerate(request.recipients):
            field = f"$.recipients[{i}]"
            if recipient in request.recipients[:i]:
                raise _invalid("recipient repeated", "request.duplicate", field)
            if recipient == self._agency:
                raise _invalid("an agency cannot consent to itself", "recipient.self", field)
            if not directory.has_agency(recipient):
                raise _invalid("recipient is not in the key directory", "recipient.unknown", field)
        for name in ("purposes", "categories", "types"):
            values = getattr(request, name)
            for i, value in enumerate(values):
                if value in values[:i]:
                    raise _invalid(f"{name} repeats a code", "request.duplicate", f"$.{name}[{i}]")
        valid_from = int(request.valid_from.timestamp()) if request.valid_from else now
        valid_until = int(request.valid_until.timestamp())
        if valid_until <= valid_from:
            raise _invalid(
                "valid_until must be after valid_from", "consent.validity_order", "$.valid_until"
            )
        if valid_until <= now:
            raise _invalid("valid_until is in the past", "consent.validity_past", "$.valid_until")
        max_validity = self._max_validity()  # the routing policy's, when it changes too
        if valid_until - valid_from > max_validity:
            raise _invalid(
                f"a consent may be valid for at most {max_validity // 86400} days",
                "consent.validity_too_long",
                "$.valid_until",
            )
        return ConsentBody(
            id=new_consent_id(),
            issuer=self._agency,
            recipients=sorted(request.recipients),
            purposes=sorted(str(p) for p in request.purposes),
            categories=sorted(str(c) for c in request.categories),
            types=sorted(request.types),
            valid_from=valid_from,
            valid_until=valid_until,
            issued_at=now,
        )

    async def register(self, raw: bytes) -> ConsentView:
        request = decode_request(_decoder, raw, _MAX_CONSENT_REQUEST)
        now = int(self._clock())
        body = self._body(request, now)
        key = self._keyring.current_published("sign", now, self._directory())
        document = sign_consent(body, key)
        try:
            # Local record first: a record in the registry that this adapter cannot map back
            # to its client could never be found by local reference nor withdrawn by it.
            local = await self._store.create_consent(
                body.id, request.local_ref, body.valid_until, now
            )
            await self._registry.put(self._agency, body.id, "record", document)
        except TransportError as exc:
            problem = _unavailable(exc)
            log.warning("consent not registered [%s]", problem.reason)
            raise problem from exc
        # Stored: shown as verified here, not read back. A registry that takes writes but
        # cannot answer reads must not turn a stored consent into a 503, whose retry by the
        # local system would register the client's consent a second time.
        state = ConsentState(
            consent=verify_consent(document, self._directory(), self._agency), withdrawal=None
        )
        log.info("consent %s registered (%d recipients)", body.id, len(body.recipients))
        return consent_view(state, local, self._local_ref(local), now)

    def _local_ref(self, local: ConsentLocal | None) -> str | None:
        return None if local is None else self._store.local_ref_of(local)

    # -- read -------------------------------------------------------------------------------

    async def _own(self, consent_id: str) -> tuple[ConsentState, ConsentLocal | None]:
        try:
            check_consent_ref(consent_id)
        except BridgeError:
            raise ApiProblem(404, "no such consent", reason="consent.unknown") from None
        try:
            state = await self._registry.state(self._agency, consent_id, self._directory())
            local = await self._store.get_consent(consent_id)
        except TransportError as exc:
            raise _unavailable(exc) from exc
        except ConsentInvalid as exc:
            log.error("consent %s in the registry does not verify [%s]", consent_id, exc.reason)
            raise ApiProblem(500, "the stored consent does not verify", reason=exc.reason) from exc
        if state is None:
            raise ApiProblem(404, "no such consent", reason="consent.unknown")
        return state, local

    async def record(self, consent_id: str) -> ConsentBody:
        """The signed record of one of this agency's consents (for the release form)."""
        state, _ = await self._own(consent_id)
        return state.consent.body

    async def view(self, consent_id: str) -> ConsentView:
        state, local = await self._own(consent_id)
        return consent_view(state, local, self._local_ref(local), int(self._clock()))

    async def for_local_ref(self, local_ref: str) -> ConsentList:
        if not local_ref or len(local_ref) > 200:
            raise ApiProblem(
                422,
                "local_ref must be 1 to 200 characters",
                reason="request.invalid",
                field="local_ref",
            )
        try:
            ids = await self._store.consents_for_local_ref(local_ref)
        except TransportError as exc:
            raise _unavailable(exc) from exc
        items = []
        for consent_id in ids:
            try:
                items.append(await self.view(consent_id))
            except ApiProblem as problem:
                if problem.status != 404:
                    raise
        return ConsentList(items=items)

    # -- withdraw ---------------------------------------------------------------------------

    async def withdraw(self, consent_id: str) -> ConsentView:
        """Store a signed withdrawal (once; a repeat is answered with the current state)."""
        state, local = await self._own(consent_id)
        now = int(self._clock())
        if state.withdrawal is None:
            key = self._keyring.current_published("sign", now, self._directory())
            document = sign_withdrawal(
                WithdrawalBody(id=consent_id, issuer=self._agency, at=now), key
            )
            try:
                await self._registry.put(self._agency, consent_id, "withdrawal", document)
            except PolicyError:
                pass  # withdrawn meanwhile, by another instance of this adapter
            except TransportError as exc:
                raise _unavailable(exc) from exc
            try:
                state, local = await self._own(consent_id)
                await self._store.update_consent(
                    consent_id, events=[Event(state="withdrawn", at=now)], now=now
                )
            except TransportError as exc:
                raise _unavailable(exc) from exc
            log.info("consent %s withdrawn", consent_id)
        if self._on_withdrawn is not None:
            # Repeating a DELETE sends the notices again; their fixed ids make that harmless.
            try:
                await self._on_withdrawn(state, local)
            except TransportError as exc:
                raise _unavailable(exc) from exc
        state, local = await self._own(consent_id)
        return consent_view(state, local, self._local_ref(local), now)
