"""Heartbeats: each adapter and broker says "still here" on core NATS at a fixed interval.

Not stored in any stream: ops keeps the last time it heard each one and knows, after its own
restart, within one interval who is alive. The subject names the sender (NATS permissions let
an adapter beat only for its own agency); the payload repeats it with the time and interval, and
ops skips (and counts) a beat whose payload disagrees with its subject.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Annotated, Final, Literal

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from .._cancel import pause
from ..nats.subjects import heartbeat_subject
from ..wire import WireInvalid, decode_strict
from ..wire._types import AgencyId, UtcDateTime, WireStruct, normalise_utc

__all__ = [
    "HEARTBEAT_INTERVAL",
    "Heartbeat",
    "HeartbeatInvalid",
    "beat_forever",
    "decode_heartbeat",
]

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL: Final = 10.0
_MAX_BYTES: Final = 1024


class Heartbeat(WireStruct, frozen=True, kw_only=True):
    component: Literal["adapter", "broker"]
    name: AgencyId  # the agency of an adapter, the instance name of a broker
    at: UtcDateTime
    interval_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)]

    def __post_init__(self) -> None:
        normalise_utc(self, "at")


class HeartbeatInvalid(WireInvalid):
    reason = "heartbeat.invalid"


_decoder: Final = msgspec.json.Decoder(Heartbeat)
_encoder: Final = msgspec.json.Encoder()


def decode_heartbeat(data: bytes) -> Heartbeat:
    return decode_strict(
        _decoder,
        data,
        limit=_MAX_BYTES,
        error=HeartbeatInvalid,
        what="heartbeat",
        prefix="heartbeat",
    )


async def beat_forever(
    nc: NATS,
    component: Literal["adapter", "broker"],
    name: str,
    *,
    interval: float = HEARTBEAT_INTERVAL,
    clock: Callable[[], float],
) -> None:
    """Publish a heartbeat now and every `interval` seconds; a failed one is only logged."""
    subject = heartbeat_subject(component, name)
    while True:
        beat = Heartbeat(
            component=component,
            name=name,
            at=datetime.datetime.fromtimestamp(clock(), datetime.UTC),
            interval_seconds=interval,
        )
        try:
            await nc.publish(subject, _encoder.encode(beat))
        except (nats.errors.Error, OSError) as exc:
            log.warning("heartbeat not sent (%s)", type(exc).__name__)
        await pause(interval)
