"""Reports for operations: the steps only an adapter sees, published to the status stream.

The broker reports routed and rejected; what happens before and after it only the adapters
know: the sender's adapter accepted a message and later got its receipt back; the recipient's
adapter delivered it to the local system, refused it, or was given it again (a redelivery).
Each goes to `bridge.report.<this agency>.<message-id>` as a `StatusEvent` from the adapter;
NATS lets an agency publish only under its own id, so ops knows who reported.

Reports are best effort: a failed one is logged and counted, never fails the step itself (the
message, its receipt and the sender's timeline do not depend on it). Each carries a
`Nats-Msg-Id` derived from what it reports, so a retried step stores one report.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Final

from nats.js.client import JetStreamContext

from ..errors import BridgeError
from ..nats.subjects import report_subject
from ..nats.transport import publish_durable
from ..wire import Component, DeliveryState, MessageType, StatusEvent, encode_status_event
from .metrics import AdapterMetrics

__all__ = ["Reporter"]

log = logging.getLogger(__name__)

_MAX_WAIT: Final = 5.0


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


class Reporter:
    def __init__(
        self,
        *,
        agency: str,
        js: JetStreamContext,
        metrics: AdapterMetrics,
        clock: Callable[[], float],
        publish_timeout: float,
    ) -> None:
        self._agency = agency
        self._js = js
        self._metrics = metrics
        self._clock = clock
        self._timeout = min(_MAX_WAIT, publish_timeout)

    def __repr__(self) -> str:
        return f"Reporter(agency={self._agency!r})"

    async def accepted(
        self,
        message_id: str,
        message_type: str,
        recipients: Sequence[str],
        expires_at: int,
        at: float,
    ) -> None:
        """We (the sender) accepted `message_id` at `at` (before submitting it: the broker may
        route it before this report is made); one report per recipient."""
        for recipient in recipients:
            await self._report(
                message_id,
                sender=self._agency,
                recipient=recipient,
                message_type=message_type,
                state=DeliveryState.ACCEPTED,
                at=at,
                expires_at=expires_at,
            )

    async def delivered(self, message_id: str, sender: str, message_type: str) -> None:
        """We (a recipient) handed `message_id` to the local system."""
        await self._report(
            message_id,
            sender=sender,
            recipient=self._agency,
            message_type=message_type,
            state=DeliveryState.DELIVERED,
            at=self._clock(),
        )

    async def refused(self, message_id: str, sender: str, message_type: str, reason: str) -> None:
        """We (a recipient) could not open or accept `message_id`; it is not delivered."""
        await self._report(
            message_id,
            sender=sender,
            recipient=self._agency,
            message_type=message_type,
            state=DeliveryState.REJECTED,
            at=self._clock(),
            reason=reason,
        )

    async def redelivered(
        self, message_id: str, sender: str, message_type: str, attempt: int
    ) -> None:
        """`message_id` came to us (a recipient) again: still waiting, delivery `attempt`."""
        self._metrics.redeliveries.inc()
        await self._report(
            message_id,
            sender=sender,
            recipient=self._agency,
            message_type=message_type,
            state=DeliveryState.ROUTED,
            at=self._clock(),
            attempt=attempt,
        )

    async def receipted(self, message_id: str, recipient: str, message_type: str) -> None:
        """`recipient`'s signed receipt for our `message_id` came back."""
        await self._report(
            message_id,
            sender=self._agency,
            recipient=recipient,
            message_type=message_type,
            state=DeliveryState.RECEIPTED,
            at=self._clock(),
        )

    async def _report(
        self,
        message_id: str,
        *,
        sender: str,
        recipient: str,
        message_type: str,
        state: DeliveryState,
        at: float,
        reason: str | None = None,
        expires_at: int | None = None,
        attempt: int | None = None,
    ) -> None:
        if attempt is None:  # a redelivery is counted by `redeliveries`, not as a step
            self._metrics.messages.labels(state.value, message_type, sender, recipient).inc()
        try:
            event = StatusEvent(
                message_id=message_id,
                sender=sender,
                recipient=recipient,
                message_type=MessageType(message_type),
                state=state,
                reason=reason,
                at=_utc(at),
                component=Component.ADAPTER,
                expires_at=None if expires_at is None else _utc(expires_at),
                attempt=attempt,
            )
            key = f"{self._agency}\x00{message_id}\x00{state.value}\x00{recipient}\x00{attempt}"
            await publish_durable(
                self._js,
                report_subject(self._agency, message_id),
                encode_status_event(event),
                msg_id="report." + hashlib.sha256(key.encode()).hexdigest()[:40],
                timeout=self._timeout,
            )
        except (BridgeError, ValueError) as exc:
            self._metrics.reports_failed.inc()
            reason_code = exc.reason if isinstance(exc, BridgeError) else "report.invalid"
            log.warning(
                "report %s of message %s not published [%s]", state.value, message_id, reason_code
            )
