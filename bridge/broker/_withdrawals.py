"""Withdrawals: take what is not yet delivered under a withdrawn consent out of every inbox.

The broker consumes `broker-withdrawals` (every `bridge.consent.*.*.withdrawal` in the registry).
For each verified withdrawal it walks the inboxes of the consent's recipients, deletes every
copy whose `Bridge-Consent` header names the consent, and tells each copy's sender with a status
event `withdrawn` (reason `consent.withdrawn`) for that recipient. Only then is the withdrawal
acknowledged: a broker that dies half-way does it again, and deleting and reporting twice is
harmless (a deleted copy is not found again; the status event's `Nats-Msg-Id` is fixed).

What a recipient's adapter already fetched but its local system has not yet taken is deleted
from the stream too, and the recipient hears of it on its status subject so that its adapter
drops the held copy (docs/consent.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from ..consent import Registry
from ..errors import BridgeError, TransportError
from ..federation.directory import Directory
from ..ids import check_agency_id, check_consent_ref, check_message_id
from ..nats.subjects import HDR_CONSENT, HDR_MSG_ID, HDR_SENDER, inbox_stream, inbox_subject

__all__ = ["Purged", "WithdrawalHandler", "purge_inbox"]

log = logging.getLogger("bridge.broker")

_MAX_SCAN: Final = 100_000  # inbox copies looked at per recipient and withdrawal


@dataclass(frozen=True, slots=True)
class Purged:
    """One inbox copy removed: whose message, which one, from whose inbox, under which consent."""

    sender: str
    message_id: str
    recipient: str
    consent: str = ""


async def purge_inbox(
    js: JetStreamContext, recipient: str, consent_id: str, wait: float
) -> list[Purged]:
    """Delete every copy in `recipient`'s inbox that names `consent_id`; return them."""
    stream, subject = inbox_stream(recipient), inbox_subject(recipient)
    purged: list[Purged] = []
    seq = 1
    for _ in range(_MAX_SCAN):
        try:
            async with asyncio.timeout(wait):
                msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return purged
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise TransportError(
                f"cannot read {recipient}'s inbox ({type(exc).__name__})",
                reason="broker.inbox_unavailable",
            ) from exc
        assert msg.seq is not None
        seq = msg.seq + 1
        headers = msg.headers or {}
        if headers.get(HDR_CONSENT) != consent_id:
            continue
        try:
            async with asyncio.timeout(wait):
                await js.delete_msg(stream, msg.seq)
        except nats.js.errors.NotFoundError:
            continue  # taken meanwhile: delivered, not withdrawn
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            raise TransportError(
                f"cannot remove a copy in the inbox of {recipient} ({type(exc).__name__})",
                reason="broker.inbox_unavailable",
            ) from exc
        try:
            sender = check_agency_id(headers.get(HDR_SENDER))
            # The copy's id is `<sender>.<message id>.<recipient>` (`inbox_msg_id`).
            message_id = check_message_id(str(headers.get(HDR_MSG_ID, "")).split(".")[1])
        except (BridgeError, IndexError):
            log.warning("withdrawal: removed an inbox copy without sender or id headers")
            continue
        purged.append(Purged(sender, message_id, recipient, consent_id))
    log.error("withdrawal: %s's inbox holds more than %d copies; rest left", recipient, _MAX_SCAN)
    return purged


Report = Callable[[Purged], Awaitable[None]]


class WithdrawalHandler:
    """Handles one withdrawal message of the registry's `broker-withdrawals` consumer."""

    def __init__(
        self,
        js: JetStreamContext,
        registry: Registry,
        directory: Callable[[], Directory],
        report: Report,
        *,
        timeout: float,
    ) -> None:
        self._js = js
        self._registry = registry
        self._directory = directory
        self._report = report
        self._timeout = timeout
        self.withdrawals = 0
        self.purged = 0

    def __repr__(self) -> str:
        return f"WithdrawalHandler(withdrawals={self.withdrawals}, purged={self.purged})"

    async def handle(self, msg: Msg) -> None:
        """Purge and report; raises `TransportError` (retry later) or `BridgeError` (drop)."""
        tokens = msg.subject.split(".")
        if len(tokens) != 5 or tokens[4] != "withdrawal":
            raise BridgeError("not a withdrawal subject", reason="consent.invalid")
        issuer, consent_id = check_agency_id(tokens[2]), check_consent_ref(tokens[3])
        state = await self._registry.state(issuer, consent_id, self._directory())
        if state is None or not state.withdrawn:
            raise BridgeError("a withdrawal without its record", reason="consent.invalid")
        recipients = state.consent.body.recipients
        directory = self._directory()
        for recipient in recipients:
            if not directory.has_agency(recipient):
                # The broker routes nothing to an agency outside its directory, and it may read
                # only the inbox streams of the agencies in it.
                log.info("withdrawal of %s: a recipient is not in the directory", consent_id)
                continue
            for purged in await purge_inbox(self._js, recipient, consent_id, self._timeout):
                await self._report(purged)
                self.purged += 1
        self.withdrawals += 1
        log.info(
            "withdrawal of %s by %s handled for %d recipients", consent_id, issuer, len(recipients)
        )
