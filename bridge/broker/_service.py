"""The broker process: fetch submissions, decide, route or reject, and only then acknowledge.

Exactly-once routing rests on three things. A submission is acknowledged only after every inbox
copy, every status event and every audit record it leads to is stored (JetStream acked each
publish). Every such
publish carries a `Nats-Msg-Id` derived from the message id, so a redelivered submission (its
broker crashed, a publish failed, two brokers raced) republishes the same ids and the streams
drop the copies within their duplicate window. And the decision depends only on the bytes, the
directory, the policy, the consent registry and the time, so a second look reaches the same
verdict unless the consent was withdrawn in between (then the message is rightly rejected).

Each submission is handled on its own; whatever goes wrong with one is settled for that one
(rejected, retried later or terminated), so a poison message never blocks the rest of a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Final, TypeVar

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from ..audit import AuditEvent, AuditWriter, load_audit_key
from ..audit.notice import KEY_DESTROYED, open_notice
from ..config import BrokerConfig, nats_tls_context
from ..consent import Registry, policy_rule
from ..crypto import Header, verify
from ..errors import BridgeError, ConfigError, PolicyError, ProtocolError, TransportError
from ..federation.directory import Directory, load_anchor
from ..federation.holder import DirectoryHolder
from ..nats.backoff import Backoff
from ..nats.identities import Identity
from ..nats.retention import check_stream_ages
from ..nats.subjects import (
    AUDIT_STREAM,
    BROKER_CONSUMER,
    HDR_CONSENT,
    HDR_NOTICE,
    HDR_SENDER,
    PENDING_STREAM,
    REGISTRATION_CONSUMER,
    WITHDRAWAL_CONSUMER,
    attach_stream,
    consent_stream,
    consent_streams,
    disclosure_subjects_all,
    inbox_stream,
    inbox_subject,
    report_stream,
    status_stream,
    status_subject,
    submit_stream,
)
from ..nats.transport import (
    Fetcher,
    bind_pull,
    connect,
    hand_back,
    publish_durable,
    take_queued,
)
from ..policy import Policy, PolicyHolder, PolicySerialState, store_limits
from ..telemetry import HEARTBEAT_INTERVAL, HealthServer, beat_forever
from ..wire import PULL_EXPIRED_REASON, DeliveryState, MessageType, encode_status_event
from ._audit import (
    consent_registered_events,
    consent_withdrawn_events,
    directory_events,
    key_destroyed_events,
    policy_events,
    pull_expired,
    rejection_events,
    routing_events,
    withdrawn_events,
)
from ._budget import RejectionBudget
from ._consent import check_consent
from ._disclosure import DisclosureDesk
from ._expiry import ExpiryWatch
from ._metrics import BrokerMetrics
from ._nats import (
    close_connection,
    deliveries,
    inbox_msg_id,
    publish_all,
    settle,
    status_event,
    status_msg_id,
)
from ._routing import Submission, Verdict, decide, parse_submission
from ._stats import BrokerStatistics, Counters
from ._withdrawals import Purged, WithdrawalHandler

__all__ = ["Broker"]

log = logging.getLogger("bridge.broker")
_T = TypeVar("_T")

_FETCH_WAIT: Final = 5.0  # seconds a pull request lingers on the server when nothing is waiting
_RETRY_MAX: Final = 300.0  # largest redelivery delay after a failed publish
_OVER_BUDGET_LOG_EVERY: Final = 300.0  # a sender over its rejection budget, logged so often
_NEWER_DIRECTORY: Final = frozenset({"key.unknown", "envelope.unknown_recipient"})
_INTERNAL_ATTEMPTS: Final = 3  # deliveries of a submission that keeps hitting a bug before term
_BACKLOG_EVERY: Final = 10.0  # seconds between looks at the submit consumers' backlogs


class Broker:
    """One broker instance. Several may run against the same NATS; they share the work.

    `run()` connects and serves until `stop()` is called (or raises `TransportError` if the
    connection is closed for good). As an async context manager it runs in the background
    between `__aenter__` (returns once it is consuming) and `__aexit__` (stops it and waits).
    The directory and the policy are loaded in the constructor, so a bad one fails before
    anything connects.
    """

    def __init__(
        self,
        config: BrokerConfig,
        *,
        clock: Callable[[], float] = time.time,
        name: str = "bridge-broker",
        fetch_wait: float = _FETCH_WAIT,
        retry_delay: float = 2.0,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        if fetch_wait <= 0 or retry_delay <= 0:
            raise ValueError("fetch_wait and retry_delay must be positive")
        self._config = config
        self._clock = clock
        self._name = name
        self._fetch_wait = fetch_wait
        self._retry_delay = retry_delay
        self._directory = DirectoryHolder.open(
            config.path(config.directory.file),
            config.path(config.directory.anchor),
            config.path(config.directory.serial_state),
            clock=clock,
        )
        self._audit_key = load_audit_key(config.path(config.audit.key_file))
        self._audit: AuditWriter | None = None
        self._expiry: ExpiryWatch | None = None
        self._audited_serial = 0
        self._audited_policy = ""
        self._retention_policy = ""  # the policy version the streams' age limits were checked for
        self._policy = PolicyHolder(
            config.path(config.policy.file),
            load_anchor(config.path(config.directory.anchor)),
            PolicySerialState(config.path(config.policy.serial_state)),
            federation=lambda: self._directory.current.body.federation,
            max_lifetime=config.limits.max_lifetime,
        )
        self._counters = Counters()
        self._budget = RejectionBudget(
            config.quota.rejections_per_minute, config.quota.rejection_burst
        )
        self._over_budget_logged: dict[str, float] = {}  # sender -> when it was last logged
        self._heartbeat_interval = heartbeat_interval
        self.metrics = BrokerMetrics()
        self._nc: NATS | None = None
        self._health: HealthServer | None = None
        if config.http is not None:
            self._health = HealthServer(
                config.http.host, config.http.port, ready=self.ready, registry=self.metrics.registry
            )
        self._stop = asyncio.Event()
        self._started = asyncio.Event()
        self._in_batch = 0  # batches being handled, over all submit streams
        self._ran = False
        self._task: asyncio.Task[None] | None = None
        self._registry: Registry | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the broker to stop: it finishes the batch in hand (bounded), then disconnects.

        Safe to call from a signal handler and more than once.
        """
        self._stop.set()

    @property
    def started(self) -> bool:
        return self._started.is_set()

    @property
    def health_url(self) -> str | None:
        """Where `/healthz`, `/readyz` and `/metrics` are served (with `[http]` configured)."""
        return None if self._health is None else self._health.url

    def ready(self) -> bool:
        """Consuming: connected, bound to the submit consumers, not stopping."""
        return (
            self._started.is_set()
            and not self._stop.is_set()
            and self._nc is not None
            and self._nc.is_connected
            and self._directory.usable() is not None
        )

    async def run(self) -> None:
        if self._ran:
            raise RuntimeError("a Broker runs once; create a new one to run again")
        self._ran = True
        if self._health is not None:
            await self._health.start()
        try:
            await self._run()
        finally:
            self.metrics.up.set(0)
            if self._health is not None:
                await self._health.stop()

    async def _run(self) -> None:
        nats_config = self._config.nats
        nc = self._nc = await connect(
            nats_config.url,
            self._config.path(nats_config.seed_file),
            Identity.broker().inbox_prefix,
            self._name,
            connect_timeout=nats_config.connect_timeout_seconds,
            tls=nats_tls_context(nats_config, self._config.path),
        )
        subs: list[JetStreamContext.PullSubscription] = []
        try:
            js = nc.jetstream(timeout=nats_config.request_timeout_seconds)
            policy = self._policy.current
            await self._check_retention(js, policy)
            self._retention_policy = policy.hash
            self._audit = AuditWriter(
                js,
                self._audit_key,
                every=self._config.audit.checkpoint_every,
                interval=self._config.audit.checkpoint_seconds,
                timeout=self._config.publish_timeout_seconds,
                clock=self._clock,
            )
            self._registry = Registry(js, timeout=self._config.publish_timeout_seconds)
            if not self._config.consent.enforce:
                log.warning(
                    "broker %s: consent enforcement is OFF ([consent] enforce = false)", self._name
                )
            self._expiry = ExpiryWatch(
                js,
                self._record,
                check_seconds=self._config.expiry.check_seconds,
                warn_fraction=self._config.expiry.warn_fraction,
                timeout=self._config.publish_timeout_seconds,
                clock=self._clock,
            )
            await self._serve(nc, js, subs)
            for sub in subs:  # what arrived for a fetch the stop cut short
                await hand_back(await take_queued(sub))
            await self._last_checkpoint()
        finally:
            await close_connection(nc, subs)
            log.info("broker %s stopped", self._name)

    async def _check_retention(self, js: JetStreamContext, policy: Policy) -> None:
        """Refuse to run on streams that keep data longer than the policy allows (or for ever).

        Refused at start-up; after a reload that shortens a limit only logged as an error (the
        streams need provisioning again), and `bridge retention check` names them until then.
        """
        # A stream that does not exist (yet) is not refused here: the broker holds what needs
        # it until it is there, and provisioning creates it with the policy's age limit.
        await check_stream_ages(
            js,
            store_limits(policy.rules),
            [
                PENDING_STREAM,
                *(status_stream(a.id) for a in self._directory.current.agencies()),
                AUDIT_STREAM,
                *(submit_stream(a.id) for a in self._directory.current.agencies()),
                *(attach_stream(a.id) for a in self._directory.current.agencies()),
                *(inbox_stream(a.id) for a in self._directory.current.agencies()),
                *(s for a in self._directory.current.agencies() for s in consent_streams(a.id)),
                *(report_stream(a.id) for a in self._directory.current.agencies()),
            ],
            wait=self._config.nats.request_timeout_seconds,
        )

    async def _serve(
        self, nc: NATS, js: JetStreamContext, subs: list[JetStreamContext.PullSubscription]
    ) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                consumers: dict[str, asyncio.Task[None]] = {}
                reload = self._config.directory.reload_seconds
                watchers = (
                    tg.create_task(self._directory.watch(reload)),
                    tg.create_task(self._policy.watch(reload)),
                )
                assert self._audit is not None
                signer = tg.create_task(self._audit.run_checkpoints())
                assert self._expiry is not None
                expiry = tg.create_task(self._expiry.run())
                disclosure = await self._open_disclosure_desk(nc, js)
                beating = tg.create_task(
                    beat_forever(
                        nc,
                        "broker",
                        self._name,
                        interval=self._heartbeat_interval,
                        clock=self._clock,
                    )
                )
                backlog = tg.create_task(self._watch_backlog(js))
                # One consumer per sender's submit stream and per issuer's registry streams,
                # for every agency in the directory; agencies a reloaded directory adds are
                # picked up at the next look.
                registry: list[asyncio.Task[None]] = []
                while not self._stop.is_set():
                    for agency in self._directory.current.agencies():
                        if agency.id not in consumers:
                            sub = await bind_pull(
                                js,
                                submit_stream(agency.id),
                                BROKER_CONSUMER,
                                pending_msgs_limit=4 * self._config.batch_size,
                            )
                            subs.append(sub)
                            registry += [
                                tg.create_task(
                                    self._withdrawals(js, subs, agency.id),
                                    name=f"withdrawals {agency.id}",
                                ),
                                tg.create_task(
                                    self._registrations(js, subs, agency.id),
                                    name=f"registrations {agency.id}",
                                ),
                            ]
                            consumers[agency.id] = tg.create_task(
                                self._consume(nc, js, sub), name=f"consume {agency.id}"
                            )
                    if not self._started.is_set():
                        self._started.set()
                        self.metrics.up.set(1)
                        log.info(
                            "broker %s consuming %d submit streams, directory serial %d, "
                            "policy serial %d (%s)",
                            self._name,
                            len(consumers),
                            self._directory.current.serial,
                            self._policy.current.serial,
                            self._policy.current.hash,
                        )
                    await self._sleep(self._config.directory.reload_seconds)
                for watcher in watchers:
                    watcher.cancel()
                signer.cancel()
                expiry.cancel()
                for task in registry:
                    task.cancel()
                await disclosure.unsubscribe()
                beating.cancel()
                backlog.cancel()
                if self._in_batch:  # let them settle what they can; the rest is redelivered
                    await asyncio.wait(
                        consumers.values(), timeout=self._config.publish_timeout_seconds + 2
                    )
                for consumer in consumers.values():
                    consumer.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1 and isinstance(group.exceptions[0], BridgeError):
                raise group.exceptions[0]  # noqa: B904 - the group is kept as its context
            raise

    async def _withdrawals(
        self, js: JetStreamContext, subs: list[JetStreamContext.PullSubscription], issuer: str
    ) -> None:
        """Consume an issuer's withdrawals and purge what they stop (`_withdrawals.py`)."""
        assert self._registry is not None
        sub = await bind_pull(js, consent_stream(issuer, "withdrawal"), WITHDRAWAL_CONSUMER)
        subs.append(sub)

        async def report(purged: Purged) -> None:
            now = int(self._clock())
            withdrawn = DeliveryState.WITHDRAWN
            await self._publish_status(
                js,
                Submission(sender=purged.sender, message_id=purged.message_id),
                withdrawn,
                now,
                recipient=purged.recipient,
                reason="consent.withdrawn",
            )
            # And to the recipient, whose adapter may hold the copy, fetched but not yet taken
            # by its local system: it drops it (docs/consent.md).
            event = status_event(
                purged.message_id,
                purged.sender,
                withdrawn,
                now,
                recipient=purged.recipient,
                reason="consent.withdrawn",
            )
            await publish_durable(
                js,
                status_subject(purged.recipient, purged.message_id),
                encode_status_event(event),
                msg_id=status_msg_id(purged.sender, purged.message_id, withdrawn, purged.recipient)
                + ".r",
                timeout=self._config.publish_timeout_seconds,
            )
            if self._expiry is not None:  # nothing left to expire or warn about
                await self._expiry.close(purged.sender, purged.message_id, purged.recipient)
            await self._record(withdrawn_events(purged, int(self._clock())))
            self._counters.withdrawn += 1
            log.info(
                "withdrawn id=%s sender=%s recipient=%s",
                purged.message_id,
                purged.sender,
                purged.recipient,
            )

        handler = WithdrawalHandler(
            js,
            self._registry,
            lambda: self._directory.current,
            report,
            timeout=self._config.publish_timeout_seconds,
        )
        fetcher = self._fetcher(sub, f"withdrawals of {issuer}")
        while not self._stop.is_set():
            for msg in await fetcher.fetch(16):
                try:
                    await handler.handle(msg)
                except TransportError as exc:
                    log.warning("withdrawal held for a retry [%s]", exc.reason)
                    await settle(msg.nak(delay=self._retry_delay))
                    continue
                except BridgeError as exc:
                    log.warning("withdrawal dropped [%s]", exc.reason)
                    await settle(msg.term())
                    continue
                try:
                    await self._record(consent_withdrawn_events(msg.subject, int(self._clock())))
                except TransportError as exc:
                    log.warning("withdrawal held for a retry [%s]", exc.reason)
                    await settle(msg.nak(delay=self._retry_delay))
                    continue
                await settle(msg.ack())

    async def _registrations(
        self, js: JetStreamContext, subs: list[JetStreamContext.PullSubscription], issuer: str
    ) -> None:
        """Record each consent an issuer registered in the audit trail, once verified."""
        sub = await bind_pull(js, consent_stream(issuer, "record"), REGISTRATION_CONSUMER)
        subs.append(sub)
        fetcher = self._fetcher(sub, f"registrations of {issuer}")
        while not self._stop.is_set():
            for msg in await fetcher.fetch(16):
                try:
                    items = consent_registered_events(
                        msg.subject, msg.data, self._directory.current
                    )
                except BridgeError as exc:
                    log.warning("consent record not audited [%s]", exc.reason)
                    await settle(msg.term())
                    continue
                try:
                    await self._record(items)
                except TransportError as exc:
                    log.warning("consent record held for a retry [%s]", exc.reason)
                    await settle(msg.nak(delay=self._retry_delay))
                    continue
                await settle(msg.ack())

    async def _open_disclosure_desk(self, nc: NATS, js: JetStreamContext) -> Any:
        """Answer agencies' disclosure queries from the audit trail (`_disclosure.py`)."""
        assert self._registry is not None
        desk = DisclosureDesk(
            js, self._registry, lambda: self._directory.current, self._audit_key.public_record()
        )
        return await nc.subscribe(disclosure_subjects_all(), queue="broker", cb=desk.handle)

    async def _last_checkpoint(self) -> None:
        """Sign what this broker appended, so a clean stop leaves nothing unsigned."""
        if self._audit is None:
            return
        try:
            async with asyncio.timeout(self._config.publish_timeout_seconds):
                await self._audit.checkpoint()
        except (TimeoutError, TransportError) as exc:
            log.warning("no final audit checkpoint (%s)", type(exc).__name__)

    async def __aenter__(self) -> Broker:
        self._task = asyncio.create_task(self.run(), name=f"broker {self._name}")
        waiter = asyncio.create_task(self._started.wait())
        try:
            await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            raise
        finally:
            waiter.cancel()
        if self._task.done():
            self._task.result()  # raises what stopped it
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._task is not None:
            await self._task

    def statistics(self) -> BrokerStatistics:
        c = self._counters
        return BrokerStatistics(
            routed=c.routed,
            rejected=dict(c.rejected),
            redelivered=c.redelivered,
            deferred=c.deferred,
            terminated=c.terminated,
            internal_errors=c.internal_errors,
            directory_serial=self._directory.current.serial,
            policy_serial=self._policy.current.serial,
            policy_hash=self._policy.current.hash,
            withdrawn=c.withdrawn,
            over_budget=c.over_budget,
        )

    def __repr__(self) -> str:
        state = "stopping" if self._stop.is_set() else "running" if self.started else "new"
        return (
            f"Broker({self._name!r}, {state}, serial={self._directory.current.serial}, "
            f"policy={self._policy.current.serial})"
        )

    # -- the fetch loop -----------------------------------------------------------------------

    async def _consume(
        self, nc: NATS, js: JetStreamContext, sub: JetStreamContext.PullSubscription
    ) -> None:
        fetcher = self._fetcher(sub, "submissions")
        audit_backoff = Backoff()
        while not self._stop.is_set():
            if nc.is_closed:
                raise TransportError("the NATS connection is closed", reason="transport.closed")
            directory = self._directory.usable()
            if directory is None:
                await self._sleep(self._config.directory.reload_seconds)
                continue
            try:
                await self._audit_versions(js, directory)
            except TransportError as exc:
                pause = audit_backoff.next()
                log.warning("audit trail unavailable, waiting %.1fs [%s]", pause, exc.reason)
                await self._sleep(pause)
                continue
            audit_backoff.reset()
            msgs = await fetcher.fetch(self._config.batch_size)
            if not msgs:
                continue
            self._in_batch += 1
            try:
                async with asyncio.TaskGroup() as tg:
                    for msg in msgs:
                        tg.create_task(self._handle(js, msg, directory))
            except asyncio.CancelledError:
                # Stopped before the batch was settled: hand back what is left, so that another
                # broker routes it now rather than after the consumer's ack_wait.
                await hand_back(msgs)
                raise
            finally:
                self._in_batch -= 1

    def _fetcher(self, sub: JetStreamContext.PullSubscription, what: str) -> Fetcher:
        """A fetch step whose pauses after a failure end early when the broker stops."""
        return Fetcher(sub, what=what, wait=self._fetch_wait, sleep=self._sleep)

    async def _audit_versions(self, js: JetStreamContext, directory: Directory) -> None:
        """Record in the audit trail the directory and policy versions routing will use."""
        if directory.serial != self._audited_serial:
            await self._record(directory_events(directory.serial, int(self._clock())))
            self._audited_serial = directory.serial
        policy = self._policy.current
        if policy.hash != self._audited_policy:
            await self._record(policy_events(policy.hash, int(self._clock())))
            self._audited_policy = policy.hash
        if policy.hash != self._retention_policy:
            # Set before any await: one consumer loop checks a new version, not each of them.
            self._retention_policy = policy.hash
            await self._retention_after_reload(js, policy)

    async def _retention_after_reload(self, js: JetStreamContext, policy: Policy) -> None:
        """A new policy may shorten a limit the streams still keep: say so loudly, and keep
        routing (refusing would stop every agency's traffic for an operator's next step)."""
        try:
            await self._check_retention(js, policy)
        except ConfigError as exc:
            log.error("the store keeps longer than the new policy allows: %s", exc)
        except TransportError as exc:
            log.warning("cannot check the streams' age limits after a reload [%s]", exc.reason)

    async def _watch_backlog(self, js: JetStreamContext) -> None:
        """Keep the submission backlog gauges current; a failed look is only logged.

        Ends when the broker stops, not only when cancelled: on Python 3.11 a cancellation can
        get lost inside nats-py's request (`asyncio.wait_for`), and the broker would hang.
        """
        while not self._stop.is_set():
            waiting = redelivered = 0
            try:
                for agency in self._directory.current.agencies():
                    async with asyncio.timeout(self._config.publish_timeout_seconds):
                        info = await js.consumer_info(submit_stream(agency.id), BROKER_CONSUMER)
                    waiting += int(info.num_pending or 0) + int(info.num_ack_pending or 0)
                    redelivered += int(info.num_redelivered or 0)
                self.metrics.submission_backlog.set(waiting)
                self.metrics.submission_redelivered.set(redelivered)
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                log.warning("submission backlog not read (%s)", type(exc).__name__)
            await self._sleep(_BACKLOG_EVERY)

    async def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, or less if the broker is asked to stop."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    # -- one submission -----------------------------------------------------------------------

    async def _handle(self, js: JetStreamContext, msg: Msg, directory: Directory) -> None:
        """Settle one submission; never raises (except cancellation)."""
        delivery = deliveries(msg)
        if delivery > 1:
            self._counters.redelivered += 1
            self.metrics.redeliveries.inc()
        try:
            submission = parse_submission(msg.subject, msg.headers)
        except ProtocolError as exc:
            self._counters.terminated += 1
            log.warning(
                "terminated unreportable submission on %.120r: %s [%s]",
                msg.subject,
                exc,
                exc.reason,
            )
            await settle(msg.term())
            return
        if wait := self._budget.wait(submission.sender):
            await self._hold_over_budget(msg, submission.sender, wait)
            return
        try:
            await self._process(js, msg, submission, directory)
        except TransportError as exc:
            self._counters.deferred += 1
            self.metrics.deferred.inc()
            delay = min(self._retry_delay * 2 ** (delivery - 1), _RETRY_MAX)
            log.warning(
                "deferred id=%s sender=%s: %s [%s]; retry in %.1fs",
                submission.message_id,
                submission.sender,
                exc,
                exc.reason,
                delay,
            )
            await settle(msg.nak(delay=delay))
        except Exception:
            self._counters.internal_errors += 1
            log.exception(
                "internal error on id=%s sender=%s (delivery %d)",
                submission.message_id,
                submission.sender,
                delivery,
            )
            if delivery < _INTERNAL_ATTEMPTS:
                await settle(msg.nak(delay=self._retry_delay))
            else:
                await self._give_up(js, msg, submission)

    async def _hold_over_budget(self, msg: Msg, sender: str, wait: float) -> None:
        """The sender has caused as many rejections as it may for now: its submission waits in
        its own stream (docs/broker.md, "Quotas")."""
        self._counters.over_budget += 1
        self.metrics.over_budget.labels(sender).inc()
        now = time.monotonic()
        last = self._over_budget_logged.get(sender, -_OVER_BUDGET_LOG_EVERY)
        if now - last >= _OVER_BUDGET_LOG_EVERY:
            self._over_budget_logged[sender] = now
            log.warning(
                "sender=%s has caused its rejections for now; its submissions wait "
                "[quota.sender_rejections]",
                sender,
            )
        await settle(msg.nak(delay=min(wait, _RETRY_MAX)))

    async def _process(
        self, js: JetStreamContext, msg: Msg, submission: Submission, directory: Directory
    ) -> None:
        now = int(self._clock())
        if msg.headers and HDR_NOTICE in msg.headers:
            await self._notice(msg, submission, directory, now)
            return
        header: Header | None = None
        policy = self._policy.current
        try:
            try:
                envelope = verify(msg.data, directory, now=now, limits=self._config.limits)
            except BridgeError as exc:
                # A sender may already use a key or name an agency that a newer directory
                # added, while ours waits for its next scheduled look: look once more now.
                if exc.reason not in _NEWER_DIRECTORY or not self._directory.reload_if_changed():
                    raise
                directory = self._directory.current
                envelope = verify(msg.data, directory, now=now, limits=self._config.limits)
            header = envelope.header
            try:
                verdict = decide(envelope, submission, directory, policy, now)
            except PolicyError as exc:
                # The sender's adapter may already enforce a newer policy than ours: look once
                # more now, so a flow it just allowed is not refused on a stale version.
                if not exc.reason.startswith("policy.") or not self._policy.reload_if_changed():
                    raise
                policy = self._policy.current
                verdict = decide(envelope, submission, directory, policy, now)
            if self._config.consent.enforce:
                assert self._registry is not None
                rule = policy_rule(policy, directory)
                await check_consent(
                    header,
                    self._registry,
                    directory,
                    now,
                    rule=rule,
                    max_validity=policy.max_consent_validity,
                )
        except TransportError:
            raise  # the registry cannot be read: held and retried, never rejected for it
        except BridgeError as exc:  # crypto, protocol or policy: the envelope's own fault
            self._budget.spend(submission.sender)
            await self._reject(js, msg, submission, exc.reason, header, policy)
            return
        await self._route(js, msg, submission, verdict, policy, now)

    async def _notice(
        self, msg: Msg, submission: Submission, directory: Directory, now: int
    ) -> None:
        """A signed notice for the audit trail (docs/audit.md): record it, or drop it."""
        kind = (msg.headers or {}).get(HDR_NOTICE)
        try:
            if kind != KEY_DESTROYED:
                raise ProtocolError("unknown notice kind", reason="notice.unknown")
            notice = open_notice(msg.data, directory, submission.sender)
        except ProtocolError as exc:
            log.warning(
                "notice id=%s sender=%s dropped [%s]",
                submission.message_id,
                submission.sender,
                exc.reason,
            )
            await settle(msg.term())
            return
        await self._record(key_destroyed_events(notice, now))
        await settle(msg.ack())
        log.info("recorded key-destroyed sender=%s kid=%s", submission.sender, notice.kid)

    async def _route(
        self,
        js: JetStreamContext,
        msg: Msg,
        submission: Submission,
        verdict: Verdict,
        policy: Policy,
        now: int,
    ) -> None:
        timeout = self._config.publish_timeout_seconds
        message_id = submission.message_id
        header = verdict.header
        acks = await publish_all(
            self._quota_named(
                recipient,
                publish_durable(
                    js,
                    inbox_subject(recipient),
                    msg.data,
                    msg_id=inbox_msg_id(submission.sender, message_id, recipient),
                    headers=_copy_headers(header.type, header.consent, submission.sender),
                    ttl=verdict.ttl,
                    timeout=timeout,
                    # Never into a stream that is not the recipient's own (the shared inbox of
                    # earlier versions, until provisioning retires it): held until it is.
                    expected_stream=inbox_stream(recipient),
                ),
            )
            for recipient in verdict.recipients
        )
        routed = DeliveryState.ROUTED
        # Undelivered, the message ends at its own expiry or when the inbox TTL removes it.
        expires_at = min(header.exp, now + verdict.ttl)
        at = max(float(now), self._clock())  # to the sub-second, for the latency of each step
        assert self._expiry is not None
        watch = self._expiry
        notes = [
            watch.note(
                message_id=message_id,
                sender=submission.sender,
                recipient=recipient,
                message_type=header.type,
                consent=header.consent,
                seq=ack.seq,
                now=now,
                ttl=verdict.ttl,
            )
            for recipient, ack in zip(verdict.recipients, acks, strict=True)
        ]
        closes: list[Coroutine[Any, Any, None]] = []
        if header.type == "receipt" and header.reply_to is not None:
            # The recipient answered the message this receipt is about: nothing to expire.
            for original_sender in verdict.recipients:
                closes.append(watch.close(original_sender, header.reply_to, submission.sender))
                if pull_expired(msg.headers):
                    # It waited in the recipient's pull inbox past its limit and was removed:
                    # the sender's non-delivery notice, as for a copy the inbox's TTL removed.
                    closes.append(
                        self._publish_expired(
                            js, original_sender, header.reply_to, submission.sender, now
                        )
                    )
        # Once the copies are stored, everything else the submission leads to is independent
        # (each write idempotent by its Nats-Msg-Id): in flight together, one wait, not four.
        await publish_all(
            [
                *(
                    self._publish_status(
                        js,
                        submission,
                        routed,
                        at,
                        recipient=r,
                        message_type=verdict.header.type,
                        policy=policy.hash,
                        expires_at=expires_at,
                    )
                    for r in verdict.recipients
                ),
                *(watch.put(note) for note in notes),
                *closes,
                self._record(routing_events(verdict, msg.headers, now, policy.hash)),
            ]
        )
        await settle(msg.ack())
        self._counters.routed += 1
        for recipient in verdict.recipients:
            self.metrics.messages.labels("routed", header.type, submission.sender, recipient).inc()
        self.metrics.route_latency.observe(max(0.0, self._clock() - header.iat))
        log.info(
            "routed id=%s sender=%s recipients=%s type=%s ttl=%d rule=%s policy=%s",
            message_id,
            submission.sender,
            ",".join(verdict.recipients),
            verdict.header.type,
            verdict.ttl,
            ",".join(dict.fromkeys(f.rule.name for f in verdict.flows)),
            policy.hash,
        )

    async def _quota_named(self, recipient: str, publish: Awaitable[_T]) -> _T:
        """Name a full inbox as the quota it is; the submission waits and is retried.

        Each recipient's inbox is a stream of its own whose limits are its quota (messages and
        bytes, from all senders together), so a full one means that recipient's quota is
        reached. The copies already stored for other recipients are stored again under the same
        ids when the submission comes back, which their streams acknowledge as duplicates (even
        when full).
        """
        try:
            return await publish
        except TransportError as exc:
            if exc.reason != "transport.stream_full":
                raise
            which = "bytes" if "bytes" in str(exc) else "messages"
            self.metrics.recipient_full.labels(recipient, which).inc()
            raise TransportError(
                f"the inbox of {recipient} is at its quota of {which}; the submission waits",
                reason="quota.recipient_full",
            ) from exc

    async def _reject(
        self,
        js: JetStreamContext,
        msg: Msg,
        submission: Submission,
        reason: str,
        header: Header | None,
        policy: Policy,
    ) -> None:
        now = int(self._clock())
        await self._publish_status(
            js,
            submission,
            DeliveryState.REJECTED,
            now,
            reason=reason,
            message_type=header.type if header else None,
            policy=policy.hash,
        )
        await self._record(rejection_events(submission, header, reason, now, policy.hash))
        await settle(msg.ack())  # handled for good: the sender has been told
        self._counters.rejected[reason] += 1
        self.metrics.rejections.labels(reason).inc()
        for recipient in [r.agency for r in header.recipients] if header else ["-"]:
            self.metrics.messages.labels(
                "rejected", header.type if header else "-", submission.sender, recipient
            ).inc()
        log.warning(
            "rejected id=%s sender=%s recipients=%s type=%s reason=%s policy=%s",
            submission.message_id,
            submission.sender,
            ",".join(r.agency for r in header.recipients) if header else "-",
            header.type if header else "-",
            reason,
            policy.hash,
        )

    async def _give_up(self, js: JetStreamContext, msg: Msg, submission: Submission) -> None:
        """Reject a submission that keeps failing on our side, so it stops coming back."""
        try:
            await self._reject(
                js, msg, submission, "broker.internal_error", None, self._policy.current
            )
        except Exception:
            log.exception("terminated id=%s unreported", submission.message_id)
            await settle(msg.term())

    async def _record(self, items: list[tuple[str, AuditEvent]]) -> None:
        """Append to the audit trail; a `TransportError` defers the submission like any publish."""
        assert self._audit is not None
        await self._audit.append(items)

    async def _publish_expired(
        self, js: JetStreamContext, sender: str, message_id: str, recipient: str, now: int
    ) -> None:
        event = status_event(
            message_id,
            sender,
            DeliveryState.EXPIRED,
            now,
            recipient=recipient,
            reason=PULL_EXPIRED_REASON,
        )
        await publish_durable(
            js,
            status_subject(sender, message_id),
            encode_status_event(event),
            msg_id=status_msg_id(sender, message_id, DeliveryState.EXPIRED, recipient),
            timeout=self._config.publish_timeout_seconds,
        )
        log.warning(
            "expired id=%s sender=%s recipient=%s unread in the pull inbox [%s]",
            message_id,
            sender,
            recipient,
            PULL_EXPIRED_REASON,
        )

    async def _publish_status(
        self,
        js: JetStreamContext,
        submission: Submission,
        state: DeliveryState,
        now: float,
        *,
        recipient: str | None = None,
        reason: str | None = None,
        message_type: str | None = None,
        policy: str | None = None,
        expires_at: int | None = None,
    ) -> None:
        event = status_event(
            submission.message_id,
            submission.sender,
            state,
            now,
            recipient=recipient,
            reason=reason,
            message_type=message_type,
            policy=policy,
            expires_at=expires_at,
        )
        await publish_durable(
            js,
            status_subject(submission.sender, submission.message_id),
            encode_status_event(event),
            msg_id=status_msg_id(submission.sender, submission.message_id, state, recipient),
            timeout=self._config.publish_timeout_seconds,
        )


_FOR_REFERENCE: Final = frozenset(
    {
        MessageType.RECEIPT.value,
        MessageType.CONSENT_REVOKED.value,
        MessageType.DELETION_CONFIRMED.value,
    }
)
"""Types whose header names a consent for reference only: a withdrawal does not remove them
(a `consent-revoked` notice routed before the purge is the very message that must arrive)."""


def _copy_headers(message_type: str, consent: str, sender: str) -> dict[str, str]:
    """The inbox copy's headers: the sender, and the consent a withdrawal removes it under."""
    if message_type in _FOR_REFERENCE:
        return {HDR_SENDER: sender}
    return {HDR_CONSENT: consent, HDR_SENDER: sender}
