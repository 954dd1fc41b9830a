"""NATS connections and JetStream publishing with bridge's options, errors translated at the edge.

Every bridge process connects through `connect`: nkey authentication from a seed file, its
identity's own reply-inbox prefix (the server lets it subscribe nowhere else), reconnecting
forever once connected (with a growing, jittered pause: `backoff.Backoff`), and bounded waits
everywhere else. `publish_durable` is the one way
bridge publishes into a stream: always with a `Nats-Msg-Id` (JetStream drops duplicates inside
the stream's duplicate window, so a retry after a lost ack is safe), always with a deadline of
its own (a nats-py ack future can wait forever on some server errors), and with nats errors
turned into `TransportError`.

Pull consumers are bound, never created: `bind_pull` needs no JetStream API rights beyond
fetching, which is all an agency's identity has. `Fetcher` is the one fetch loop step every
consumer uses: a failed fetch waits its backoff instead of raising.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.client import Server
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from .._cancel import pause, raise_if_cancelling
from ..errors import ProtocolError, TransportError
from .backoff import Backoff
from .identities import public_key_of_seed_file
from .subjects import HDR_MSG_ID, HDR_TTL

__all__ = [
    "MAX_FETCH_BATCH",
    "MAX_HEADERS",
    "Fetcher",
    "PubAck",
    "bind_pull",
    "connect",
    "fetch",
    "hand_back",
    "publish_durable",
    "subject_taken",
    "take_queued",
]

log = logging.getLogger(__name__)

ErrorCallback = Callable[[Exception], Awaitable[None]]
Callback = Callable[[], Awaitable[None]]

MAX_FETCH_BATCH = 256
MAX_HEADERS = 32
_MAX_HEADER_VALUE = 1024
_MAX_MSG_ID = 256
_MAX_NAME = 128
_MAX_TTL = 10 * 365 * 24 * 3600
_STORE_FAILED = 10077  # JetStream's answer when a stream's limit refuses a message (discard new)
_RESERVED_HEADERS = frozenset(h.lower() for h in (HDR_MSG_ID, HDR_TTL, "Nats-Expected-Stream"))
_HEADER_NAME_RE = re.compile(r"^[!-9;-~]{1,64}$")  # printable ASCII without ':'
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_$-]+$")
_PRINTABLE_RE = re.compile(r"^[!-~]+$")
_URL_RE = re.compile(r"^(nats|tls|ws|wss)://[^\s/]+/?$")


@dataclass(frozen=True, slots=True)
class PubAck:
    """JetStream's acknowledgement: the message is stored as `seq` in `stream`.

    `duplicate` means a message with the same `Nats-Msg-Id` was already stored within the
    stream's duplicate window; this publish did not add a second copy.
    """

    stream: str
    seq: int
    duplicate: bool


def _check_subject(subject: str, *, wildcards: bool) -> str:
    tokens = subject.split(".") if isinstance(subject, str) else []
    for token in tokens:
        if wildcards and token in ("*", ">"):
            continue
        if not _TOKEN_RE.fullmatch(token):
            raise ProtocolError(f"malformed NATS subject {subject!r}", reason="transport.subject")
    if not tokens or (wildcards and ">" in tokens[:-1]):
        raise ProtocolError(f"malformed NATS subject {subject!r}", reason="transport.subject")
    return subject


def _check_urls(url: str | Sequence[str]) -> list[str]:
    urls = [url] if isinstance(url, str) else list(url)
    if not urls or len(urls) > 16:
        raise ProtocolError("give between 1 and 16 NATS server URLs", reason="transport.url")
    for one in urls:
        if not isinstance(one, str) or not _URL_RE.fullmatch(one):
            raise ProtocolError(
                f"not a NATS server URL: {one!r} (want nats://host:port)",
                reason="transport.url",
            )
    return urls


async def _log_error(exc: Exception) -> None:
    log.warning("nats: %s", exc)


async def connect(
    url: str | Sequence[str],
    seed_file: Path,
    inbox_prefix: str,
    name: str,
    *,
    first_connect_timeout: float = 15.0,
    connect_timeout: int = 5,
    reconnect_time_wait: int = 2,
    ping_interval: int = 20,
    max_outstanding_pings: int = 3,
    tls: ssl.SSLContext | None = None,
    error_cb: ErrorCallback | None = None,
    disconnected_cb: Callback | None = None,
    reconnected_cb: Callback | None = None,
    closed_cb: Callback | None = None,
    reconnect_backoff: Backoff | None = None,
) -> NATS:
    """Connect as the identity whose seed is in `seed_file`.

    Once connected the client reconnects forever (`max_reconnect_attempts=-1`): a bridge
    process outlives NATS restarts. Between reconnect attempts it waits `reconnect_backoff`
    (a fresh `Backoff` by default: 0.1 s doubling to 10 s, jittered, reset once reconnected),
    through nats-py's `reconnect_to_server_handler`, which also picks the server least often
    refused so a cluster's URLs take turns. `reconnect_time_wait` paces only the first
    connection's retries. The first connection is bounded by `first_connect_timeout`
    instead, so a wrong URL or seed fails start-up with a clear error rather than hanging.
    `inbox_prefix` must be the identity's own (`Identity.inbox_prefix`); with any other, the
    server refuses the reply subscriptions. `error_cb` receives asynchronous errors such as
    permission violations; by default they are logged. `closed_cb` is called once the client
    has closed for good (by `close()`, or because nats-py gave up). `tls` is the context for
    `tls://` URLs (without it, the system's trusted CAs are used).
    """
    urls = _check_urls(url)
    _check_subject(inbox_prefix, wildcards=False)
    if not isinstance(name, str) or not _PRINTABLE_RE.fullmatch(name) or len(name) > _MAX_NAME:
        raise ProtocolError(
            "connection name must be short printable ASCII", reason="transport.name"
        )
    if first_connect_timeout <= 0:
        raise ValueError("first_connect_timeout must be positive")
    seed_path = Path(seed_file)
    public_key_of_seed_file(seed_path)  # the file exists, is private and holds a user seed

    user_error_cb = error_cb or _log_error
    first_errors: list[Exception] = []  # the latest error while connecting for the first time
    refused = asyncio.Event()  # the server refused the credentials: retrying will not help
    connecting_first = True

    async def on_error(exc: Exception) -> None:
        if connecting_first and not refused.is_set():  # keep a refusal over what follows it
            first_errors[:] = [exc]
            if _is_auth_error(exc):
                refused.set()
        await user_error_cb(exc)

    backoff = reconnect_backoff or Backoff()

    async def on_reconnected() -> None:
        backoff.reset()
        if reconnected_cb is not None:
            await reconnected_cb()

    nc = NATS()
    connecting = asyncio.create_task(
        nc.connect(
            servers=urls,
            name=name,
            nkeys_seed=str(seed_path),
            inbox_prefix=inbox_prefix,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            connect_timeout=connect_timeout,
            reconnect_time_wait=reconnect_time_wait,
            ping_interval=ping_interval,
            max_outstanding_pings=max_outstanding_pings,
            error_cb=on_error,
            disconnected_cb=disconnected_cb,
            reconnected_cb=on_reconnected,
            closed_cb=closed_cb,
            tls=tls,
            reconnect_to_server_handler=_reconnect_pacer(backoff),
        )
    )
    watching = asyncio.create_task(refused.wait())
    try:
        await asyncio.wait(
            {connecting, watching},
            timeout=first_connect_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        watching.cancel()
        if not connecting.done():
            connecting.cancel()
            await asyncio.wait({connecting})  # let it unwind; never swallows our own cancel
    connecting_first = False
    failure = None if connecting.cancelled() else connecting.exception()
    if connecting.cancelled() or failure is not None:
        await _close_quietly(nc)
        last = first_errors[-1] if first_errors else failure
        where = f"{', '.join(urls)} as {name!r}"
        if last is not None and _is_auth_error(last):
            raise TransportError(
                f"{where}: authorization violation (wrong seed, or an identity the server "
                "does not know)",
                reason="transport.unauthorized",
            ) from failure
        detail = "no answer" if last is None else _describe(last)
        raise TransportError(
            f"cannot connect to {where} within {first_connect_timeout:g}s: {detail}",
            reason="transport.connect_failed",
        ) from failure
    return nc


def _reconnect_pacer(
    backoff: Backoff,
) -> Callable[[list[Server], dict[str, object]], tuple[Server | None, float]]:
    """nats-py's hook before each reconnect attempt: which server, and how long to wait first.

    Without it, nats-py waits a fixed `reconnect_time_wait` between attempts. nats-py counts
    each server's failed attempts since it last connected there (`reconnects`); the server
    with the fewest goes next, so with several URLs each gets its turn.
    """

    def pace(servers: list[Server], _info: dict[str, object]) -> tuple[Server | None, float]:
        server = min(servers, key=lambda s: s.reconnects) if servers else None
        return server, backoff.next()

    return pace


def _is_auth_error(exc: BaseException) -> bool:
    return isinstance(exc, nats.errors.AuthorizationError) or (
        "authorization violation" in str(exc).lower()
    )


async def _close_quietly(nc: NATS) -> None:
    try:
        async with asyncio.timeout(2.0):
            await nc.close()
    except (TimeoutError, nats.errors.Error, OSError):
        pass


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _build_headers(
    msg_id: str, headers: Mapping[str, str] | None, ttl: int | None
) -> dict[str, str]:
    if not isinstance(msg_id, str) or not _PRINTABLE_RE.fullmatch(msg_id):
        raise ProtocolError("msg_id must be printable ASCII", reason="transport.msg_id")
    if len(msg_id) > _MAX_MSG_ID:
        raise ProtocolError(f"msg_id longer than {_MAX_MSG_ID}", reason="transport.msg_id")
    out: dict[str, str] = {}
    for key, value in (headers or {}).items():
        if not _HEADER_NAME_RE.fullmatch(key):
            raise ProtocolError(f"malformed header name {key!r}", reason="transport.header")
        if key.lower() in _RESERVED_HEADERS:
            raise ProtocolError(
                f"header {key!r} is set by publish_durable's own arguments",
                reason="transport.header",
            )
        if (
            not isinstance(value, str)
            or len(value) > _MAX_HEADER_VALUE
            or "\r" in value
            or "\n" in value
        ):
            raise ProtocolError(f"malformed value for header {key!r}", reason="transport.header")
        out[key] = value
    if len(out) > MAX_HEADERS:
        raise ProtocolError(f"more than {MAX_HEADERS} headers", reason="transport.header")
    out[HDR_MSG_ID] = msg_id
    if ttl is not None:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= _MAX_TTL:
            raise ProtocolError(
                f"ttl must be whole seconds between 1 and {_MAX_TTL}", reason="transport.ttl"
            )
        out[HDR_TTL] = str(ttl)
    return out


async def publish_durable(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    msg_id: str,
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,  # noqa: ASYNC109 - also the request's own timeout inside nats-py
    ttl: int | None = None,
    expected_stream: str | None = None,
) -> PubAck:
    """Publish into a stream and wait (at most `timeout` seconds) until it is stored.

    `msg_id` becomes `Nats-Msg-Id`: republishing the same id within the duplicate window is
    acknowledged with `duplicate=True` and stored once. A stream at one of its limits (with
    `discard: new`: messages, bytes, or messages per subject) refuses the message with reason
    `transport.stream_full`. `ttl` (whole seconds) becomes
    `Nats-TTL`, which the stream must allow. `expected_stream` makes the server refuse the
    message if the subject is captured by another stream than the one named.

    A publish this identity may not make gets no answer from the server, so it surfaces as
    `TransportError` with reason `transport.ack_timeout` (the violation itself is reported to
    the connection's `error_cb`).
    """
    _check_subject(subject, wildcards=False)
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    hdrs = _build_headers(msg_id, headers, ttl)
    try:
        async with asyncio.timeout(timeout):
            ack = await js.publish(
                subject, payload, timeout=timeout, stream=expected_stream, headers=hdrs
            )
    except TimeoutError as exc:
        raise TransportError(
            f"no acknowledgement for a message to {subject} within {timeout:g}s "
            "(no stream reachable, or this identity may not publish there)",
            reason="transport.ack_timeout",
        ) from exc
    except nats.js.errors.NoStreamResponseError as exc:
        raise TransportError(f"no stream captures {subject}", reason="transport.no_stream") from exc
    except nats.js.errors.APIError as exc:
        if exc.err_code == _STORE_FAILED and "exceeded" in str(exc.description or ""):
            # A limit of the stream (its quota): messages, bytes, or messages per subject.
            raise TransportError(
                f"the stream for {subject} is at its limit ({exc.description})",
                reason="transport.stream_full",
            ) from exc
        raise TransportError(
            f"JetStream refused a message to {subject}: {exc.description} (code {exc.err_code})",
            reason="transport.publish_rejected",
        ) from exc
    except nats.errors.MaxPayloadError as exc:
        raise TransportError(
            f"message to {subject} exceeds the server's max_payload",
            reason="transport.payload_too_large",
        ) from exc
    except (
        nats.errors.ConnectionClosedError,
        nats.errors.ConnectionDrainingError,
        nats.errors.ConnectionReconnectingError,
    ) as exc:
        raise TransportError(
            f"not connected to NATS ({_describe(exc)})", reason="transport.not_connected"
        ) from exc
    except (nats.errors.Error, OSError) as exc:
        raise TransportError(
            f"publishing to {subject} failed: {_describe(exc)}", reason="transport.error"
        ) from exc
    return PubAck(stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate))


def subject_taken(exc: TransportError) -> bool:
    """Whether a publish was refused because its subject holds all the messages it may (a
    write-once subject that is taken), rather than because the whole stream is full."""
    cause = exc.__cause__
    return (
        isinstance(cause, nats.js.errors.APIError)
        and cause.err_code == _STORE_FAILED
        and "per subject" in str(cause.description or "")
    )


async def bind_pull(
    js: JetStreamContext,
    stream: str,
    consumer: str,
    *,
    pending_msgs_limit: int = 1024,
    pending_bytes_limit: int = 64 * 1024 * 1024,
) -> JetStreamContext.PullSubscription:
    """Bind to an existing durable pull consumer, without asking the server anything.

    Unlike `js.pull_subscribe`, this never looks up or creates the consumer, so it works with
    an identity that may only fetch from and acknowledge its own consumer.
    """
    _check_subject(stream, wildcards=False)
    _check_subject(consumer, wildcards=False)
    try:
        return await js.pull_subscribe_bind(
            consumer=consumer,
            stream=stream,
            pending_msgs_limit=pending_msgs_limit,
            pending_bytes_limit=pending_bytes_limit,
        )
    except (nats.errors.Error, OSError) as exc:
        raise TransportError(
            f"cannot bind to consumer {consumer} on {stream}: {_describe(exc)}",
            reason="transport.error",
        ) from exc


_FETCH_GRACE: Final = 5.0
"""Seconds a fetch may overrun its own timeout before it counts as hung (at least)."""


async def fetch(
    sub: JetStreamContext.PullSubscription,
    batch: int,
    timeout: float,  # noqa: ASYNC109 - sent to the server as the pull request's expiry
) -> list[Msg]:
    """Up to `batch` messages, waiting at most `timeout` seconds; `[]` if none arrived.

    A fetch this identity may not make also returns `[]` after `timeout` (the server does not
    answer it; the violation goes to the connection's `error_cb`).

    A cancellation nats-py lost (see `bridge._cancel`), or turned into `ConnectionClosedError`
    while the connection closes, is raised here; messages fetched meanwhile are not
    acknowledged, so JetStream hands them out again after ack_wait.
    """
    if isinstance(batch, bool) or not 1 <= batch <= MAX_FETCH_BATCH:
        raise ValueError(f"batch must be between 1 and {MAX_FETCH_BATCH}")
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    try:
        # nats-py bounds the fetch itself; this only ends one that hangs. It must be generous:
        # cancelled, nats-py drops the messages it has collected so far, and JetStream hands
        # them out again only after ack_wait, so on a busy event loop a tight backstop turns
        # scheduling delay into half a minute of latency.
        async with asyncio.timeout(timeout + max(_FETCH_GRACE, timeout)):
            msgs: list[Msg] = await sub.fetch(batch, timeout=timeout)
    except TimeoutError:
        msgs = []
    except nats.js.errors.APIError as exc:
        raise_if_cancelling()
        raise TransportError(
            f"fetch refused: {exc.description} (code {exc.err_code})",
            reason="transport.fetch_rejected",
        ) from exc
    except (nats.errors.Error, OSError) as exc:
        raise_if_cancelling()
        raise TransportError(f"fetch failed: {_describe(exc)}", reason="transport.error") from exc
    raise_if_cancelling()
    return msgs


class Fetcher:
    """Fetches from one pull subscription; a failed fetch waits its backoff and yields nothing.

    `await fetcher.fetch(batch)` returns the messages of one fetch (`[]` when none came within
    `wait` seconds, and `[]` after the pause that follows a failure), so the caller's loop
    checks its own stop condition between tries and never sees a transport error from fetching.
    `sleep` waits a pause; a caller with a stop event passes one that returns early on it.
    """

    def __init__(
        self,
        sub: JetStreamContext.PullSubscription,
        *,
        what: str,
        wait: float,
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = pause,
    ) -> None:
        if wait <= 0:
            raise ValueError("wait must be positive")
        self._sub = sub
        self._what = what
        self._wait = wait
        self.backoff = backoff or Backoff()
        self._sleep = sleep
        self.failed = 0  # fetches that failed, in all

    def __repr__(self) -> str:
        return f"Fetcher({self._what!r}, failed={self.failed}, {self.backoff!r})"

    async def fetch(self, batch: int) -> list[Msg]:
        try:
            msgs = await fetch(self._sub, batch, self._wait)
        except TransportError as exc:
            self.failed += 1
            delay = self.backoff.next()
            log.warning("%s: fetch failed, retrying in %.1fs [%s]", self._what, delay, exc.reason)
            await self._sleep(delay)
            return []
        self.backoff.reset()
        return msgs


async def hand_back(msgs: Sequence[Msg], *, timeout: float = 2.0) -> int:  # noqa: ASYNC109
    """Nak every message in `msgs` not yet acknowledged, naked or terminated; how many.

    For a process that stops while it holds fetched messages: JetStream hands each one out
    again at once, instead of after the consumer's ack_wait. A nak only joins the
    connection's outgoing buffer (the close that follows flushes it); `timeout` bounds the
    whole, so a stop never waits on it for long. Messages it could not hand back come back
    after ack_wait, as before.
    """
    handed = 0
    try:
        async with asyncio.timeout(timeout):
            for msg in msgs:
                if msg.is_acked or not msg.reply:
                    continue
                with contextlib.suppress(nats.errors.Error, OSError):
                    await msg.nak()
                    handed += 1
    except TimeoutError:
        log.warning("handed back %d of %d held messages before the time ran out", handed, len(msgs))
    if handed:
        log.info("handed back %d held message(s) for another consumer", handed)
    return handed


async def take_queued(sub: JetStreamContext.PullSubscription) -> list[Msg]:
    """Messages the server sent to `sub` that no fetch took, without asking for more.

    A fetch cancelled while the server was answering it leaves them in the subscription's
    queue, where nobody would ever look again. Status messages (a pull request's end) are
    dropped. Call it only once nothing fetches from `sub` any more.
    """
    taken: list[Msg] = []
    while sub.pending_msgs > 0:
        try:
            msg = await sub._sub.next_msg(timeout=0.1)
        except (nats.errors.Error, OSError):
            break
        raise_if_cancelling()
        if not JetStreamContext.is_status_msg(msg):
            taken.append(msg)
    return taken
