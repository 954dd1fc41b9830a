"""The adapter as one object: loads its files, connects, serves HTTP and runs its loops.

    adapter = Adapter(config)
    url = await adapter.start()     # http://127.0.0.1:<port>, serving; loops running
    ...
    await adapter.stop()

or `async with Adapter(config) as adapter: ...`. Start-up fails with a `BridgeError` (a
`ConfigError` for files, a `TransportError` for NATS) before anything is served. Background
work (inbound delivery, status folding, directory reloads, pull keep-alive) runs in one
TaskGroup owned by the adapter and is cancelled and awaited by `stop()`.

Each part handles and retries the failures it expects (NATS away, a store write refused). An
unexpected failure ends all of them: it is logged as critical, `ready()` turns false and
`wait()` raises, so that `bridge adapter` exits non-zero and its supervisor restarts it. An
adapter never keeps serving HTTP with its background work dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Final

import aiohttp
import nats.errors
from aiohttp import web
from nats.aio.client import Client as NATS

from .._cancel import stop_task
from ..config import AdapterConfig, nats_tls_context
from ..consent import Registry
from ..crypto import Keyring
from ..errors import ConfigError, TransportError, reasons_of
from ..federation.directory import Directory, load_anchor
from ..federation.holder import DirectoryHolder
from ..http.auth import TokenVerifier
from ..http.guard import GuardedAppRunner
from ..nats.subjects import (
    agency_inbox_prefix,
    inbox_consumer,
    inbox_stream,
    status_consumer,
    status_stream,
)
from ..nats.transport import bind_pull, connect
from ..policy import SYSTEM_DEFAULT_LIMITS, Policy, PolicyHolder, PolicySerialState
from ..telemetry import HEARTBEAT_INTERVAL, HealthServer, beat_forever
from .chunks import ChunkStore
from .consents import Consents
from .disclosures import Disclosures
from .http import ApiContext, build_app
from .inbound import Inbound
from .localref import LocalRefKey
from .metrics import AdapterMetrics
from .openapi import openapi_document
from .outbound import Outbound
from .pull import PullInbox
from .pullwait import PullWait
from .reports import Reporter
from .revocation import Revocations
from .spool import Spool
from .status import StatusFolder
from .store import Store
from .webhook import WebhookSink, load_webhook_secrets

__all__ = ["Adapter"]

log = logging.getLogger(__name__)

_DEFAULT_KEEPALIVE: Final = 10.0
_STOP_WAIT: Final = 10.0  # seconds for the background work to end once cancelled


class Adapter:
    """One agency's adapter. Not restartable: make a new one after `stop()`."""

    def __init__(
        self,
        config: AdapterConfig,
        *,
        clock: Callable[[], float] = time.time,
        environ: Mapping[str, str] | None = None,
        fetch_timeout: float = 5.0,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self.config = config
        self.metrics = AdapterMetrics(config.agency)
        self._heartbeat_interval = heartbeat_interval
        self._metrics_server: HealthServer | None = None
        self._clock = clock
        self._environ = os.environ if environ is None else environ
        self._fetch_timeout = fetch_timeout
        self._directory: DirectoryHolder | None = None
        self._policy: PolicyHolder | None = None
        self._nc: NATS | None = None
        self._nc_closed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._url: str | None = None
        self.inbox: PullInbox | None = None
        self.inbound: Inbound | None = None
        self.status: StatusFolder | None = None
        self.spool: Spool | None = None

    def __repr__(self) -> str:
        return f"Adapter(agency={self.config.agency!r}, url={self._url!r}, ready={self.ready()})"

    async def __aenter__(self) -> Adapter:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the adapter is not started")
        return self._url

    def ready(self) -> bool:
        return (
            self._directory is not None
            and self._nc is not None
            and self._nc.is_connected
            and self._task is not None
            and not self._task.done()
        )

    async def wait(self) -> None:
        """Wait while the background work runs; raise what ended it.

        It never ends on its own except by failing, so a caller running the adapter as a
        service treats any return or exception here as fatal.
        """
        if self._task is None:
            raise RuntimeError("the adapter is not started")
        await asyncio.shield(self._task)
        raise TransportError("the adapter's background work ended", reason="adapter.stopped")

    def _connection(self) -> NATS:
        if self._nc is None:
            raise RuntimeError("the adapter is not started")
        return self._nc

    def directory(self) -> Directory:
        if self._directory is None:
            raise RuntimeError("the adapter is not started")
        return self._directory.current

    def policy(self) -> Policy:
        """The routing policy this adapter checks submissions against (the broker's decides)."""
        if self._policy is None:
            raise RuntimeError("the adapter is not started")
        return self._policy.current

    # -- start ------------------------------------------------------------------------------

    def _passphrase(self) -> bytes | None:
        name = self.config.passphrase_env
        if name is None:
            return None
        value = self._environ.get(name)
        if value is None:
            raise ConfigError(
                f"the key passphrase variable {name} is not set", reason="config.missing"
            )
        return value.encode()

    async def start(self) -> str:
        """Load, connect, bind and serve; return the base URL of the HTTP API."""
        if self._task is not None:
            raise RuntimeError("an adapter starts once")
        c = self.config
        key_file = c.path(c.auth.public_key_file) if c.auth.public_key_file else None
        verifier = TokenVerifier(c.auth, key_file)
        keyring = await asyncio.to_thread(Keyring.load, c.path(c.keys_dir), self._passphrase())
        if keyring.agency != c.agency:
            raise ConfigError(
                f"the keys in {c.keys_dir} belong to another agency", reason="config.invalid"
            )
        secret = None
        if c.delivery.mode == "webhook":
            secret = load_webhook_secrets(c.delivery, c.path)
        local_refs = await asyncio.to_thread(
            LocalRefKey.load_or_create, c.path(c.local_ref_key_file)
        )
        self._directory = await asyncio.to_thread(
            DirectoryHolder.open,
            c.path(c.directory.file),
            c.path(c.directory.anchor),
            c.path(c.directory.serial_state),
            clock=self._clock,
        )
        self._policy = PolicyHolder(
            c.path(c.policy.file),
            load_anchor(c.path(c.directory.anchor)),
            PolicySerialState(c.path(c.policy.serial_state)),
            federation=lambda: self.directory().body.federation,
            max_lifetime=c.limits.max_lifetime,
        )
        longest = self._policy.current.rules.longest("max_lifetime")
        if c.default_lifetime_seconds > longest:
            # Every message sent with the default would be refused: a setting that can never
            # hold is a mistake to name now, not on each request.
            raise ConfigError(
                f"default_lifetime_seconds ({c.default_lifetime_seconds}s) is longer than any "
                f"message type may live under the policy ({longest}s)",
                reason="retention.too_long",
            )
        try:
            await self._start(verifier, keyring, secret, local_refs)
        except BaseException:
            await self._close()
            raise
        log.info("adapter %s serving on %s (%s delivery)", c.agency, self._url, c.delivery.mode)
        return self.url

    async def _start(
        self,
        verifier: TokenVerifier,
        keyring: Keyring,
        secret: tuple[bytes, ...] | None,
        local_refs: LocalRefKey,
    ) -> None:
        c = self.config
        timeout = float(c.nats.request_timeout_seconds)
        self._nc = await connect(
            c.nats.url,
            c.path(c.nats.seed_file),
            agency_inbox_prefix(c.agency),
            f"bridge-adapter-{c.agency}",
            connect_timeout=c.nats.connect_timeout_seconds,
            tls=nats_tls_context(c.nats, c.path),
            closed_cb=self._on_closed,
        )
        js = self._nc.jetstream(timeout=timeout)
        # Behind a leaf node the outbox and the bucket are the leaf's own; inbox, status and
        # the consent registry are the hub's, asked for under its JetStream domain.
        behind_leaf = c.nats.hub_domain is not None
        hub = self._nc.jetstream(timeout=timeout, domain=c.nats.hub_domain) if behind_leaf else js
        store = await Store.open(
            js,
            c.agency,
            timeout,
            status_keep=lambda: self.policy().retention.status,
            local_ref_key=local_refs,
        )
        registry = Registry(hub, timeout=timeout)
        if not c.consent.enforce:
            log.warning(
                "adapter %s: consent enforcement is OFF ([consent] enforce = false)", c.agency
            )
        inbox_sub = await bind_pull(hub, inbox_stream(c.agency), inbox_consumer(c.agency))
        status_sub = await bind_pull(hub, status_stream(c.agency), status_consumer(c.agency))
        keepalive = await self._keepalive_interval(hub, timeout)
        revocations = Revocations(
            keyring=keyring,
            directory=self.directory,
            store=store,
            js=js,
            limits=c.limits,
            publish_timeout=timeout,
            clock=self._clock,
        )
        reporter = Reporter(
            agency=c.agency,
            js=js,
            metrics=self.metrics,
            clock=self._clock,
            publish_timeout=timeout,
        )
        # Attachment chunks stay at the hub: behind a leaf they need the line.
        self.chunks = ChunkStore(
            hub, c.agency, timeout=timeout, chunk_size=c.attachment_chunk_bytes
        )
        self.spool = Spool(c.upload_path(), c.limits, self._clock)
        await asyncio.to_thread(self.spool.open)
        self.inbound = Inbound(
            revocations=revocations,
            keyring=keyring,
            directory=self.directory,
            store=store,
            js=js,
            sub=inbox_sub,
            limits=c.limits,
            publish_timeout=timeout,
            clock=self._clock,
            fetch_timeout=self._fetch_timeout,
            reporter=reporter,
            keepalive_interval=keepalive,
            marks_posts=secret is not None,
            chunks=self.chunks,
        )
        self.status = StatusFolder(
            agency=c.agency,
            store=store,
            sub=status_sub,
            clock=self._clock,
            fetch_timeout=self._fetch_timeout,
        )
        sink: WebhookSink | PullInbox
        if secret is not None:
            self._session = aiohttp.ClientSession()
            sink = WebhookSink(
                c.delivery,
                secret,
                self._session,
                self.inbound.complete,
                keepalive_interval=keepalive,
                clock=self._clock,
                confirm_deletion=revocations.confirm,
                first_post=self.inbound.first_post,
                metrics=self.metrics,
                chunks=self.chunks,
            )
        else:
            wait = PullWait(
                store=store,
                limit=self._pull_wait,
                expire=self.inbound.expire_pull,
                clock=self._clock,
            )
            sink = self.inbox = PullInbox(
                c.delivery.pull_max_pending,
                self.inbound.complete,
                keepalive_interval=keepalive,
                wait=wait,
                clock=self._clock,
            )
            self.status.drop_held = self.inbox.drop
        self.status.discard_chunks = self.chunks.discard
        outbound = Outbound(
            agency=c.agency,
            keyring=keyring,
            directory=self.directory,
            policy=self.policy,
            store=store,
            js=js,
            limits=c.limits,
            default_lifetime=c.default_lifetime_seconds,
            idempotency_ttl=c.idempotency_ttl_seconds,
            max_bytes=c.http.max_body_bytes,
            publish_timeout=timeout,
            clock=self._clock,
            registry=registry if c.consent.enforce else None,
            reporter=reporter,
            chunks=self.chunks,
            registry_optional=behind_leaf,
            spool=self.spool,
        )
        if self.inbox is not None:
            inbox = self.inbox
            self.metrics.inbox_pending.set_function(lambda: inbox.statistics()["pending"])
        consents = Consents(
            agency=c.agency,
            keyring=keyring,
            directory=self.directory,
            store=store,
            registry=registry,
            clock=self._clock,
            on_withdrawn=revocations.notify,
            max_validity=lambda: self.policy().max_consent_validity,
        )
        app = build_app(
            ApiContext(
                verifier=verifier,
                outbound=outbound,
                store=store,
                inbox=self.inbox,
                ready=self.ready,
                max_body_bytes=c.http.max_body_bytes,
                openapi=_encode_openapi(c.agency),
                clock=self._clock,
                consents=consents,
                revocations=revocations,
                directory=self.directory,
                chunks=self.chunks,
                spool=self.spool,
                disclosures=Disclosures(
                    agency=c.agency,
                    nc=self._connection,
                    consents=consents,
                    clock=self._clock,
                    timeout=max(timeout, 30.0),  # the broker reads the whole trail
                ),
                metrics=None if c.http.metrics_port is not None else self.metrics.registry,
            )
        )
        self._task = asyncio.create_task(self._background(sink), name=f"adapter-{c.agency}")
        self._runner = GuardedAppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, c.http.host, c.http.port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {c.http.host}:{c.http.port}: {exc.strerror}",
                reason="config.listen",
            ) from exc
        host, port = self._runner.addresses[0][:2]
        self._url = f"http://{_url_host(host)}:{port}"
        if c.http.metrics_port is not None:
            self._metrics_server = HealthServer(
                c.http.metrics_host or c.http.host,
                c.http.metrics_port,
                ready=self.ready,
                registry=self.metrics.registry,
            )
            await self._metrics_server.start()
        self.metrics.up.labels(c.agency).set_function(lambda: 1.0 if self.ready() else 0.0)

    async def _keepalive_interval(self, js: object, wait: float) -> float:
        """A third of the inbox consumer's ack wait, so a held message is never redelivered."""
        try:
            async with asyncio.timeout(wait):
                info = await js.consumer_info(  # type: ignore[attr-defined]
                    inbox_stream(self.config.agency), inbox_consumer(self.config.agency)
                )
            ack_wait = float(info.config.ack_wait or 30.0)
        except (TimeoutError, nats.errors.Error, OSError):
            return _DEFAULT_KEEPALIVE
        return max(0.5, min(_DEFAULT_KEEPALIVE, ack_wait / 3))

    def _pull_wait(self, message_type: str) -> int:
        """The type's `pull_wait` in the policy in force (a type it does not list: the system
        notices' default; such a message was never routed by a broker enforcing it)."""
        limits = self.policy().type_limits(message_type) or SYSTEM_DEFAULT_LIMITS
        return limits.pull_wait

    async def _background(self, sink: WebhookSink | PullInbox) -> None:
        assert self.inbound is not None
        assert self.status is not None
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.inbound.run(sink, sink.capacity), name="inbound")
                group.create_task(self.status.run(), name="status")
                assert self.chunks is not None
                group.create_task(
                    self.chunks.sweep_forever(
                        self.config.attachment_upload_limit_seconds, self._clock
                    ),
                    name="abandoned-uploads",
                )
                assert self.spool is not None
                group.create_task(
                    self.spool.sweep_forever(self.config.attachment_upload_limit_seconds),
                    name="abandoned-spooled-uploads",
                )
                assert self._directory is not None
                group.create_task(
                    self._directory.watch(self.config.directory.reload_seconds), name="directory"
                )
                assert self._policy is not None
                group.create_task(
                    self._policy.watch(self.config.directory.reload_seconds), name="policy"
                )
                group.create_task(self._watch_connection(), name="connection")
                assert self._nc is not None
                group.create_task(
                    beat_forever(
                        self._nc,
                        "adapter",
                        self.config.agency,
                        interval=self._heartbeat_interval,
                        clock=self._clock,
                    ),
                    name="heartbeat",
                )
                if isinstance(sink, PullInbox):
                    group.create_task(sink.keep_alive(), name="pull-keepalive")
                else:
                    group.create_task(sink.run(), name="webhook-records")
        except* Exception as failed:
            # Type names and reason codes only: an exception's text may quote what it parsed.
            log.critical(
                "adapter %s: background work failed (%s); the adapter must be restarted",
                self.config.agency,
                reasons_of(failed),
            )
            raise

    async def _on_closed(self) -> None:
        self._nc_closed.set()

    async def _watch_connection(self) -> None:
        """Fail once the NATS client has given up for good (it reconnects forever otherwise):
        fetch loops would retry on a closed connection for ever, alive but idle."""
        await self._nc_closed.wait()
        raise TransportError("the NATS connection is closed for good", reason="transport.closed")

    # -- stop -------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Stop serving, cancel the loops, close NATS. Held pull items are dropped (and
        redelivered by NATS later): nothing decrypted outlives the process."""
        await self._close()
        log.info("adapter %s stopped", self.config.agency)

    async def _close(self) -> None:
        try:
            if self._metrics_server is not None:
                await self._metrics_server.stop()
                self._metrics_server = None
            if self._runner is not None:
                await self._runner.cleanup()
                self._runner = None
            await self._stop_background()
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None
            if self._nc is not None:
                with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
                    async with asyncio.timeout(5.0):
                        await self._nc.close()
            self.inbox = None

    async def _stop_background(self) -> None:
        if self._task is not None:
            await stop_task(self._task, "adapter background work", log, _STOP_WAIT)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _encode_openapi(agency: str) -> bytes:
    import msgspec

    return msgspec.json.encode(openapi_document(agency))
