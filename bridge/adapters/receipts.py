"""Signed receipts: what a recipient's adapter sends back about each message it was given.

A receipt is an ordinary envelope of type `receipt` from the recipient to the original sender,
with `reply_to` naming the original message. Its message id is derived from the original id and
the recipient agency, so however often a receipt is sent again (a retry, a redelivery after a
crash) JetStream's duplicate window keeps one, and the sender folds one.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import uuid
from typing import Final

from nats.js.client import JetStreamContext

from ..crypto import Header, Keyring, Limits, seal
from ..federation.directory import Directory
from ..ids import check_agency_id, check_message_id
from ..nats.subjects import HDR_DISPOSITION, submit_subject
from ..nats.transport import PubAck, publish_durable
from ..wire import (
    ALLOWED_CATEGORIES,
    Disposition,
    MessageType,
    Purpose,
    Receipt,
    Rejected,
    encode_body,
)

__all__ = ["RECEIPT_LIFETIME_SECONDS", "receipt_categories", "receipt_message_id", "send_receipt"]

RECEIPT_LIFETIME_SECONDS: Final = 7 * 86400
_NAMESPACE: Final = b"bridge/receipt/v1"


def receipt_message_id(original_id: str, recipient: str) -> str:
    """The id of `recipient`'s receipt for `original_id`: deterministic, a valid UUIDv4 form.

    Envelope ids must be version 4 UUIDs, so this is a hash with the version and variant bits
    set (as UUIDv5 does, with 4 in place of 5) rather than `uuid.uuid5`.
    """
    digest = hashlib.sha256(
        b"\x00".join(
            (
                _NAMESPACE,
                check_message_id(original_id).encode(),
                check_agency_id(recipient).encode(),
            )
        )
    ).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def receipt_categories() -> list[str]:
    """The data categories a receipt's header declares: delivery metadata only.

    A receipt holds no personal data, so its header must not repeat the original's categories
    (an audit would then record health data passing where none did).
    """
    return sorted(ALLOWED_CATEGORIES[MessageType.RECEIPT])


async def send_receipt(
    original: Header,
    disposition: Disposition,
    *,
    keyring: Keyring,
    directory: Directory,
    js: JetStreamContext,
    now: int,
    limits: Limits,
    wait: float,
) -> PubAck:
    """Seal a receipt about `original` to its sender and publish it to our submit subject."""
    receipt_id = receipt_message_id(original.id, keyring.agency)
    body = Receipt(
        in_reply_to=original.id,
        received_at=datetime.datetime.fromtimestamp(now, datetime.UTC),
        disposition=disposition,
    )
    envelope = await asyncio.to_thread(
        seal,
        encode_body(body),
        message_type="receipt",
        sender=keyring,
        recipients=[original.sender],
        directory=directory,
        consent=original.consent,
        purpose=Purpose.DELIVERY_CONFIRMATION.value,
        categories=receipt_categories(),
        lifetime=RECEIPT_LIFETIME_SECONDS,
        reply_to=original.id,
        message_id=receipt_id,
        now=now,
        limits=limits,
    )
    # The broker cannot read the body; it records the outcome in the audit trail from this
    # header (metadata only: a state and a reason code).
    outcome = f"rejected {disposition.reason}" if isinstance(disposition, Rejected) else "delivered"
    return await publish_durable(
        js,
        submit_subject(keyring.agency),
        envelope,
        msg_id=receipt_id,
        headers={HDR_DISPOSITION: outcome},
        timeout=wait,
    )
