"""After a withdrawal: signed notices to recipients, and their signed deletion confirmations.

The issuing agency's adapter, once a consent is withdrawn, looks up which recipients already
received messages under it (its own timelines: delivered or receipted) and sends each one a
`consent-revoked` notice naming those messages. The recipient's adapter hands the notice to its
local system like any message and keeps a note of it (`rvk.<notice id>`); when the local system
confirms it deleted the data (`POST /v1/inbox/{id}/deleted`), the adapter sends a signed
`deletion-confirmed` back, which the issuing adapter folds into the consent's events.

Notice and confirmation ids are derived from what they are about, so sending again (a repeated
withdrawal, a retried confirmation) is deduplicated by JetStream and folded once.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import uuid
from collections.abc import Callable
from typing import Final

from nats.js.client import JetStreamContext

from ..consent import ConsentState
from ..crypto import Keyring, Limits, seal
from ..errors import BridgeError
from ..federation.directory import Directory
from ..nats.subjects import submit_subject
from ..nats.transport import publish_durable
from ..wire import (
    ALLOWED_CATEGORIES,
    ConsentRevoked,
    DeletionConfirmed,
    MessageType,
    Purpose,
    encode_body,
)
from .store import ConsentLocal, Event, RevocationNote, Store

__all__ = ["NOTICE_LIFETIME_SECONDS", "Revocations", "derived_id", "note_of"]

log = logging.getLogger(__name__)

NOTICE_LIFETIME_SECONDS: Final = 30 * 86400
_DELIVERED: Final = frozenset({"delivered", "receipted"})
_NOTICE: Final = b"bridge/consent-revoked/v1"


def derived_id(namespace: bytes, *parts: str) -> str:
    """A message id fixed by what the message is about (a UUIDv4 form; see receipts)."""
    digest = hashlib.sha256(b"\x00".join((namespace, *(p.encode() for p in parts)))).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _utc(seconds: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


class Revocations:
    """Sends notices (as the issuer) and deletion confirmations (as a recipient)."""

    def __init__(
        self,
        *,
        keyring: Keyring,
        directory: Callable[[], Directory],
        store: Store,
        js: JetStreamContext,
        limits: Limits,
        publish_timeout: float,
        clock: Callable[[], float],
    ) -> None:
        self._keyring = keyring
        self._directory = directory
        self._store = store
        self._js = js
        self._limits = limits
        self._timeout = publish_timeout
        self._clock = clock

    def __repr__(self) -> str:
        return f"Revocations(agency={self._keyring.agency!r})"

    async def _send(
        self,
        body: ConsentRevoked | DeletionConfirmed,
        recipient: str,
        consent: str,
        message_id: str,
        reply_to: str | None,
        now: int,
    ) -> None:
        kind = (
            MessageType.CONSENT_REVOKED
            if isinstance(body, ConsentRevoked)
            else (MessageType.DELETION_CONFIRMED)
        )
        envelope = await asyncio.to_thread(
            seal,
            encode_body(body),
            message_type=kind.value,
            sender=self._keyring,
            recipients=[recipient],
            directory=self._directory(),
            consent=consent,
            purpose=Purpose.DELIVERY_CONFIRMATION.value,
            categories=sorted(ALLOWED_CATEGORIES[kind]),
            lifetime=NOTICE_LIFETIME_SECONDS,
            reply_to=reply_to,
            message_id=message_id,
            now=now,
            limits=self._limits,
        )
        await publish_durable(
            self._js,
            submit_subject(self._keyring.agency),
            envelope,
            msg_id=message_id,
            timeout=self._timeout,
        )

    # -- as the issuing agency --------------------------------------------------------------

    async def received_under(self, local: ConsentLocal) -> dict[str, list[str]]:
        """Recipient -> the messages sent under the consent that reached its local system."""
        reached: dict[str, list[str]] = {}
        for message_id in local.messages:
            record = await self._store.get_message(message_id)
            if record is None:
                continue
            for event in record.events:
                if event.state in _DELIVERED and event.recipient:
                    ids = reached.setdefault(event.recipient, [])
                    if message_id not in ids:
                        ids.append(message_id)
        return reached

    async def notify(self, state: ConsentState, local: ConsentLocal | None) -> None:
        """Send every recipient that received messages under a withdrawn consent its notice."""
        if local is None or state.withdrawal is None:
            return
        consent = state.consent.body.id
        withdrawn_at = state.withdrawal.body.at
        now = int(self._clock())
        for recipient, messages in sorted((await self.received_under(local)).items()):
            notice_id = derived_id(_NOTICE, consent, recipient)
            await self._send_notice(consent, withdrawn_at, messages, recipient, notice_id, now)

    async def _send_notice(
        self,
        consent: str,
        withdrawn_at: int,
        messages: list[str],
        recipient: str,
        notice_id: str,
        now: int,
    ) -> None:
        """Seal and send one `consent-revoked` notice, and show it on the consent."""
        body = ConsentRevoked(
            consent=consent, withdrawn_at=_utc(withdrawn_at), messages=tuple(messages)
        )
        try:
            await self._send(body, recipient, consent, notice_id, None, now)
        except BridgeError as exc:
            if exc.reason.startswith(("transport.", "store.")):
                raise
            log.warning("no notice for %s could be sealed [%s]", recipient, exc.reason)
            return
        await self._store.update_consent(
            consent, now=now, events=[Event(state="notified", at=now, recipient=recipient)]
        )
        log.info("consent %s: notice %s sent to %s", consent, notice_id, recipient)

    async def received_after_withdrawal(
        self, consent: str, message_id: str, recipient: str
    ) -> None:
        """A receipt came in for a message under a consent withdrawn before it: notify anyway.

        The copy reached the recipient's local system at the moment of the withdrawal (too late
        to be purged, too early to be named by the withdrawal's notices), so it gets a notice
        of its own, with an id of its own: the withdrawal's notice id is taken by then.
        """
        local = await self._store.get_consent(consent)
        if local is None or message_id not in local.messages:
            return
        withdrawn = [e.at for e in local.events if e.state == "withdrawn"]
        if not withdrawn:
            return
        notice_id = derived_id(_NOTICE, consent, recipient, message_id)
        log.info("consent %s: a copy of %s was taken as it was withdrawn", consent, message_id)
        await self._send_notice(
            consent, min(withdrawn), [message_id], recipient, notice_id, int(self._clock())
        )

    async def is_notice_to(self, consent: str, recipient: str, notice_id: str) -> bool:
        """Whether `notice_id` is a notice this agency sends `recipient` about its `consent`.

        Notice ids are derived, so this needs no record of the sending: the withdrawal's notice
        for the recipient, or a late receipt's for one of the messages sent under the consent.
        """
        local = await self._store.get_consent(consent)
        if local is None:
            return False
        if notice_id == derived_id(_NOTICE, consent, recipient):
            return True
        return any(notice_id == derived_id(_NOTICE, consent, recipient, m) for m in local.messages)

    async def fold_confirmation(self, sender: str, body: DeletionConfirmed, now: int) -> None:
        """A recipient confirmed the deletion: show it on the consent.

        Only an answer to a notice this agency sends that very recipient counts: an agency that
        never received data under the consent cannot appear to have deleted it.
        """
        if not await self.is_notice_to(body.consent, sender, body.in_reply_to):
            log.warning(
                "deletion confirmation from %s answers no notice of ours; ignored [notice.unknown]",
                sender,
            )
            return
        at = int(body.deleted_at.timestamp())
        event = Event(state="deletion-confirmed", at=at, recipient=sender)
        if not await self._store.update_consent(body.consent, now=now, events=[event]):
            log.warning("deletion confirmation from %s for no consent of ours; ignored", sender)
            return
        log.info("consent %s: %s confirmed the deletion", body.consent, sender)

    # -- as a recipient ---------------------------------------------------------------------

    async def confirm(self, notice_id: str) -> str | None:
        """The local system deleted what notice `notice_id` named: send the confirmation.

        Returns the confirmation's message id, or None if no such notice was received here.
        """
        note = await self._store.get_revocation(notice_id)
        if note is None:
            return None
        now = int(self._clock())
        confirmation_id = derived_id(
            b"bridge/deletion-confirmed/v1", notice_id, self._keyring.agency
        )
        body = DeletionConfirmed(
            in_reply_to=notice_id,
            consent=note.consent,
            deleted_at=_utc(note.confirmed_at or now),
            messages=tuple(note.messages),
        )
        await self._send(body, note.issuer, note.consent, confirmation_id, notice_id, now)
        await self._store.confirm_revocation(notice_id, note, now)
        log.info("notice %s: deletion confirmed to %s", notice_id, note.issuer)
        return confirmation_id


def note_of(sender: str, notice_id: str, body: ConsentRevoked, now: int) -> RevocationNote:
    return RevocationNote(
        notice_id=notice_id,
        issuer=sender,
        consent=body.consent,
        messages=list(body.messages),
        received_at=now,
    )
