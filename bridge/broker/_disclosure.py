"""The broker answers disclosure queries from the audit trail (`bridge.audit.disclosure`).

An agency asks on `bridge.disclosure.<agency>`; the subject's last token is who asks (NATS lets
only that agency's identity publish there). The broker answers only when that agency issued
every consent named (looked up in the consent registry), reads the whole trail with the chain
and checkpoint check running, and replies with the events about those consents. Several brokers
share the subject as a queue group; each answer is computed afresh from the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import msgspec
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from ..audit import AuditBroken, AuditRecord, ChainVerifier
from ..audit.disclosure import DisclosureAnswer, DisclosureQuery, select_events
from ..audit.reader import stream_records
from ..consent import Registry
from ..crypto import PublicKeyRecord
from ..errors import BridgeError
from ..federation.directory import Directory
from ..ids import check_agency_id
from ..nats.subjects import AUDIT_STREAM

__all__ = ["DisclosureDesk"]

log = logging.getLogger("bridge.broker")

_MAX_QUERY_BYTES: Final = 8 * 1024
_decoder: Final = msgspec.json.Decoder(DisclosureQuery)


class DisclosureDesk:
    def __init__(
        self,
        js: JetStreamContext,
        registry: Registry,
        directory: Callable[[], Directory],
        public: PublicKeyRecord,
    ) -> None:
        self._js = js
        self._registry = registry
        self._directory = directory
        self._public = public
        self.answered = 0

    def __repr__(self) -> str:
        return f"DisclosureDesk(answered={self.answered})"

    async def handle(self, msg: Msg) -> None:
        """Answer one query; never raises (but for cancellation)."""
        try:
            answer = await self._answer(msg)
        except BridgeError as exc:
            log.warning("disclosure query not answered [%s]", exc.reason)
            answer = DisclosureAnswer(error=exc.reason)
        except Exception:
            log.exception("disclosure query failed")
            answer = DisclosureAnswer(error="broker.internal_error")
        if msg.reply:
            try:
                await msg.respond(msgspec.json.encode(answer))
            except Exception as exc:
                log.warning("disclosure answer not sent (%s)", type(exc).__name__)

    async def _answer(self, msg: Msg) -> DisclosureAnswer:
        agency = check_agency_id(msg.subject.rsplit(".", 1)[-1])
        if len(msg.data) > _MAX_QUERY_BYTES:
            return DisclosureAnswer(error="disclosure.malformed")
        try:
            query = _decoder.decode(msg.data)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return DisclosureAnswer(error="disclosure.malformed")
        wanted = set(query.consents)
        for consent_id in sorted(wanted):
            state = await self._registry.state(agency, consent_id, self._directory())
            if state is None:  # not this agency's consent (or no consent at all)
                return DisclosureAnswer(error="consent.unknown")
        verifier = ChainVerifier(self._public, AUDIT_STREAM)
        records: list[AuditRecord] = []
        verified = True
        try:
            async for seq, data in stream_records(self._js):
                records.append(verifier.add(seq, data))
        except AuditBroken as exc:
            log.error("disclosure: the audit trail does not verify at record %d", exc.seq)
            verified = False
        events, truncated = select_events(records, wanted)
        report = verifier.report()
        self.answered += 1
        log.info("disclosure answered for %s: %d events", agency, len(events))
        return DisclosureAnswer(
            events=events,
            first=report.first,
            last=report.last,
            signed_upto=report.signed_upto,
            verified=verified,
            truncated=truncated,
        )
