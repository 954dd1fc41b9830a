"""The broker's side of NATS: message id conventions, status events, acks and closing.

Every publish the broker makes is keyed by a `Nats-Msg-Id` derived from the submission's sender
and message id, so that doing it again (after a redelivery) stores nothing new within the
stream's duplicate window. The sender is part of every id: message ids are chosen by senders
(and a receipt's can be computed by anyone who knows the original's), so ids without it would
let one agency pre-empt another's inbox copy or status event by submitting its own envelope
under the same id first. Only the broker publishes to the inbox and status streams, and each id
names the one sender that could have caused it. Agency ids hold no `.`, so the joined ids are
unambiguous; they stay within the 256 characters `publish_durable` allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import Coroutine, Iterable
from typing import Any, Final, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from ..errors import BridgeError
from ..wire import Component, DeliveryState, MessageType, StatusEvent

__all__ = [
    "close_connection",
    "deliveries",
    "inbox_msg_id",
    "publish_all",
    "settle",
    "status_event",
    "status_msg_id",
]

log = logging.getLogger("bridge.broker")

_CLOSE_TIMEOUT: Final = 5.0
_T = TypeVar("_T")


def inbox_msg_id(sender: str, message_id: str, recipient: str) -> str:
    """`Nats-Msg-Id` of the copy of `sender`'s `message_id` in `recipient`'s inbox."""
    return f"{sender}.{message_id}.{recipient}"


def status_msg_id(
    sender: str, message_id: str, state: DeliveryState, recipient: str | None = None
) -> str:
    """`Nats-Msg-Id` of the broker's status event; one per sender, message, state, recipient."""
    return f"{sender}.{message_id}.{state.value}" + (f".{recipient}" if recipient else "")


def status_event(
    message_id: str,
    sender: str,
    state: DeliveryState,
    now: float,
    *,
    recipient: str | None = None,
    reason: str | None = None,
    message_type: str | None = None,
    policy: str | None = None,
    expires_at: int | None = None,
) -> StatusEvent:
    return StatusEvent(
        message_id=message_id,
        sender=sender,
        recipient=recipient,
        message_type=MessageType(message_type) if message_type else None,
        state=state,
        reason=reason,
        at=datetime.datetime.fromtimestamp(now, datetime.UTC),
        component=Component.BROKER,
        policy=policy,
        expires_at=(
            None
            if expires_at is None
            else datetime.datetime.fromtimestamp(expires_at, datetime.UTC)
        ),
    )


def deliveries(msg: Msg) -> int:
    """How often JetStream has delivered this message, this time included."""
    try:
        return int(msg.metadata.num_delivered)
    except (AttributeError, TypeError, ValueError, nats.errors.Error):
        return 1


async def publish_all(publishes: Iterable[Coroutine[Any, Any, _T]]) -> list[_T]:
    """Run publishes concurrently and return their results in order; if any fails, raise the
    first `BridgeError` as itself."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(publish) for publish in publishes]
    except BaseExceptionGroup as group:
        first = group.exceptions[0]
        if all(isinstance(e, BridgeError) for e in group.exceptions):
            raise first  # noqa: B904 - the group is kept as its context
        raise
    return [task.result() for task in tasks]


async def settle(ack: Coroutine[Any, Any, None]) -> None:
    """Send an ack, nak or term; if it is lost, the submission comes back after ack_wait."""
    try:
        await ack
    except (nats.errors.Error, OSError) as exc:
        log.warning("could not acknowledge a submission (it will be redelivered): %s", exc)


async def close_connection(nc: NATS, subs: Iterable[JetStreamContext.PullSubscription]) -> None:
    """Push out what is pending (acks above all), then close; bounded.

    Not `nc.drain()`: it waits for the pull subscription's queue to be consumed, which never
    happens to messages fetched but not handled; those return to the stream after ack_wait.
    """
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            for sub in subs:
                if not nc.is_closed:
                    await sub.unsubscribe()
            if nc.is_connected:
                await nc.flush(timeout=int(_CLOSE_TIMEOUT))
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        log.warning("could not flush before closing (%s)", type(exc).__name__)
    with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await nc.close()
