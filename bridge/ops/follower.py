"""Reading NATS for ops: the status and report streams by direct get, heartbeats, backlogs.

Each agency's status stream (the broker's events to it on `bridge.status.<agency>.<id>`) and
report stream (its adapter's reports on `bridge.report.<agency>.<id>`) are read from their first
sequence on with stateless direct gets, each with a sequence of its own, so a restarted ops
rebuilds everything the streams still hold, and then followed: a plain subscription on the same
subjects only wakes the reader, which fetches by sequence, so nothing is missed while
disconnected and nothing is folded twice by accident (folding is idempotent and order-free
anyway, so which stream is read first does not matter). Every event is checked against the
subject it came on: NATS permissions make the subject's agency token unforgeable, so a report
must come from the party it speaks for.
Malformed events and events from unknown sources are counted and skipped, never fatal.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from .._cancel import pause, raise_if_cancelling
from ..nats.backoff import Backoff
from ..nats.subjects import (
    BROKER_CONSUMER,
    heartbeat_subjects_all,
    inbox_consumer,
    inbox_stream,
    report_stream,
    report_subjects_all,
    status_stream,
    status_subjects_all,
    submit_stream,
)
from ..telemetry.heartbeat import HeartbeatInvalid, decode_heartbeat
from ..wire import Component, StatusEvent, StatusEventInvalid, decode_status_event
from .metrics import OpsMetrics
from .tracker import Transition
from .views import Backlog, Beat, OpsState

__all__ = ["Follower"]

log = logging.getLogger(__name__)

_WAKE_EVERY: Final = 2.0  # read the stream at least this often even without a wake-up
_STREAM_FILTER: Final = ">"  # every subject of the stream
# Who may report which state about a message: the sender or the recipient named in the event.
_REPORTED_BY: Final = {
    "accepted": "sender",
    "receipted": "sender",
    "delivered": "recipient",
    "rejected": "recipient",
    "routed": "recipient",  # a redelivery, with `attempt`
}


class Follower:
    def __init__(
        self,
        *,
        nc: NATS,
        js: JetStreamContext,
        state: OpsState,
        metrics: OpsMetrics,
        clock: Callable[[], float],
        backlog_every: float,
        on_transition: Callable[[Transition], None],
    ) -> None:
        self._nc = nc
        self._js = js
        self._state = state
        self._metrics = metrics
        self._clock = clock
        self._backlog_every = backlog_every
        self._on_transition = on_transition
        self._wake = asyncio.Event()
        # The next sequence to read of each agency's status and report streams.
        self.next_seq = dict.fromkeys(
            (
                f(agency)
                for agency in sorted(state.agencies)
                for f in (status_stream, report_stream)
            ),
            1,
        )

    def __repr__(self) -> str:
        return f"Follower(next_seq={self.next_seq}, rebuilt={self._state.rebuilt})"

    # -- subscriptions ------------------------------------------------------------------------

    async def subscribe(self) -> None:
        async def wake(msg: Msg) -> None:
            self._wake.set()

        async def beat(msg: Msg) -> None:
            self.heartbeat(msg.subject, msg.data)

        for subject in (status_subjects_all(), report_subjects_all()):
            await self._nc.subscribe(subject, cb=wake, pending_msgs_limit=1024)
        await self._nc.subscribe(heartbeat_subjects_all(), cb=beat, pending_msgs_limit=4096)

    def heartbeat(self, subject: str, data: bytes) -> None:
        tokens = subject.split(".")
        try:
            beat = decode_heartbeat(data)
        except HeartbeatInvalid:
            self._metrics.skipped.labels("malformed").inc()
            return
        if tokens[2:] != [beat.component, beat.name] or (
            beat.component == "adapter" and beat.name not in self._state.agencies
        ):
            self._metrics.skipped.labels("unknown_source").inc()
            return
        book = self._state.adapters if beat.component == "adapter" else self._state.brokers
        # The time it arrived, not the time it claims: clocks of other hosts may be off.
        book[beat.name] = Beat(last_seen=self._clock(), interval=beat.interval_seconds)
        self._metrics.events.labels("heartbeat").inc()

    # -- the status and report streams --------------------------------------------------------

    async def follow(self) -> None:
        backoff = Backoff()  # while NATS is away: growing pauses, not one read a second
        while True:
            raise_if_cancelling()
            self._wake.clear()
            try:
                for stream in self.next_seq:
                    await self._drain(stream)
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                log.warning("status streams not readable right now (%s)", type(exc).__name__)
                await pause(backoff.next())
                continue
            backoff.reset()
            if not self._state.rebuilt:
                self._state.rebuilt = True
                log.info(
                    "ops state rebuilt from the status and report streams: %d messages, "
                    "%d events read",
                    len(self._state.tracker),
                    sum(self.next_seq.values()) - len(self.next_seq),
                )
            try:
                async with asyncio.timeout(_WAKE_EVERY):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _drain(self, stream: str) -> None:
        while True:
            try:
                raw = await self._js.get_msg(
                    stream,
                    seq=self.next_seq[stream],
                    subject=_STREAM_FILTER,
                    next=True,
                    direct=True,
                )
            except nats.js.errors.NotFoundError:
                return
            except nats.errors.NoRespondersError:
                return  # an agency's stream not provisioned (yet): nothing to read
            raise_if_cancelling()
            if raw.seq is None or raw.seq < self.next_seq[stream]:
                raise nats.errors.Error("direct get answered out of order")
            self.next_seq[stream] = raw.seq + 1
            self.fold(raw.subject or "", raw.data or b"")

    def fold(self, subject: str, data: bytes) -> None:
        """Check one event against its subject and fold it; count and skip it otherwise."""
        tokens = subject.split(".")
        if len(tokens) != 4 or tokens[0] != "bridge" or tokens[1] not in ("status", "report"):
            self._metrics.skipped.labels("unknown_source").inc()
            return
        try:
            event = decode_status_event(data)
        except StatusEventInvalid:
            self._metrics.skipped.labels("malformed").inc()
            return
        kind, source = tokens[1], tokens[2]
        if event.message_id != tokens[3] or not self._trusted(kind, source, event):
            self._metrics.skipped.labels("unknown_source").inc()
            log.info("skipped an event about %s from an unknown source", event.message_id)
            return
        self._metrics.events.labels(kind).inc()
        if event.attempt is not None:
            self._metrics.redeliveries.inc()
        for transition in self._state.tracker.apply(event):
            self._on_transition(transition)

    def _trusted(self, kind: str, source: str, event: StatusEvent) -> bool:
        agencies = self._state.agencies
        if event.sender not in agencies or (
            event.recipient is not None and event.recipient not in agencies
        ):
            return False
        if kind == "status":
            # Only the broker publishes here, keyed by the sender, or by the recipient for what
            # the recipient's adapter must hear (`expiring`, `withdrawn`).
            return source in (event.sender, event.recipient)
        role = _REPORTED_BY.get(event.state.value)
        if event.component is not Component.ADAPTER or role is None:
            return False
        if event.attempt is not None and event.state.value != "routed":
            return False
        speaks_for = event.sender if role == "sender" else event.recipient
        return source == speaks_for

    # -- backlogs -----------------------------------------------------------------------------

    async def poll_backlogs(self) -> None:
        while True:
            for agency in self._state.agencies:
                backlog = await self._backlog(inbox_stream(agency), inbox_consumer(agency))
                if backlog is None:
                    self._state.inboxes.pop(agency, None)
                else:
                    self._state.inboxes[agency] = backlog
            self._state.submissions = await self._submissions()
            await pause(self._backlog_every)

    async def _submissions(self) -> Backlog | None:
        """The broker's backlog over every agency's submit stream."""
        total: Backlog | None = None
        for agency in self._state.agencies:
            one = await self._backlog(submit_stream(agency), BROKER_CONSUMER)
            if one is None:
                continue
            if total is None:
                total = one
            else:
                total.pending += one.pending
                total.ack_pending += one.ack_pending
                total.redelivered += one.redelivered
        return total

    async def _backlog(self, stream: str, consumer: str) -> Backlog | None:
        try:
            async with asyncio.timeout(5.0):
                info = await self._js.consumer_info(stream, consumer)
        except nats.js.errors.NotFoundError:
            return None
        except (TimeoutError, nats.errors.Error, OSError) as exc:
            log.warning("backlog of %s/%s not read (%s)", stream, consumer, type(exc).__name__)
            return None
        return Backlog(
            pending=int(info.num_pending or 0),
            ack_pending=int(info.num_ack_pending or 0),
            redelivered=int(info.num_redelivered or 0),
            read_at=datetime.datetime.fromtimestamp(self._clock(), datetime.UTC),
        )
