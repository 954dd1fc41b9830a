"""What inbound delivery passes around: an opened message waiting for the local system.

An `Incoming` holds the decrypted item in memory only, with the NATS message it came in, which
stays unacknowledged (kept alive with `in_progress()`) until the local system took the item.
Webhook and pull delivery are both `Sink`s: given an `Incoming`, they either hand it over and
call the completion callback, or leave the NATS message to be redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import nats.errors
from nats.aio.msg import Msg

from .._cancel import pause
from ..crypto import Header, OpenedAttachment
from .api import InboxItem

__all__ = ["Complete", "Incoming", "Sink", "kept_alive", "touch"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, repr=False)
class Incoming:
    """An opened message (personal data: never log it) and the NATS message that carried it."""

    item: InboxItem
    header: Header
    msg: Msg
    # Whether recording it as about to be posted found it new (webhook, marked while its batch
    # was opened); None: not marked yet, the sink marks it itself.
    first_post: bool | None = None
    attachments: tuple[OpenedAttachment, ...] = ()  # every chunk checked; keys to read them

    @property
    def message_id(self) -> str:
        return self.item.message_id

    def with_msg(self, msg: Msg) -> Incoming:
        return Incoming(
            self.item, self.header, msg, first_post=self.first_post, attachments=self.attachments
        )

    def __repr__(self) -> str:
        return f"Incoming(id={self.message_id}, type={self.item.type}, sender={self.item.sender})"


Complete = Callable[[Incoming], Awaitable[None]]
"""Called once the local system took an item: records it, sends the receipt, acks NATS."""


class Sink(Protocol):
    async def offer(self, incoming: Incoming) -> None:
        """Hand `incoming` over (or hold it for pulling); never raises for a failed handover."""


async def touch(msg: Msg) -> None:
    """Tell JetStream the message is still being worked on; failures are only logged."""
    try:
        await msg.in_progress()
    except (nats.errors.Error, OSError) as exc:
        log.warning("cannot extend the ack deadline of an inbound message: %s", type(exc).__name__)


async def _beat(msg: Msg, interval: float) -> None:
    # The message was fetched moments ago, so its ack wait has just begun: the first touch
    # is due after one interval (a third of the ack wait), not now. Saves a NATS round trip
    # for nearly every message, which is handed over long before that.
    while True:
        await pause(interval)
        await touch(msg)


@contextlib.asynccontextmanager
async def kept_alive(msg: Msg, interval: float) -> AsyncIterator[None]:
    """Keep `msg` from being redelivered while the body of the `async with` runs."""
    async with asyncio.TaskGroup() as group:
        beat = group.create_task(_beat(msg, interval))
        try:
            yield
        finally:
            beat.cancel()
