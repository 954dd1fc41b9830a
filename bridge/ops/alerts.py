"""Alert rules: evaluated against the ops view; each incident fires once and resolves once.

An incident is a rule and what it is about (an agency's inbox, a component, the federation):
while the condition holds it stays firing and is not posted again; when it clears, it is
posted as resolved and kept in the recent list. Posts go to the configured webhook as JSON
(signed like the adapters' webhooks when a secret is configured), from one queue, retried a few
times with growing pauses; a post that keeps failing is dropped and counted, never blocks
evaluation. Summaries name rules, agencies, counts and times: never content.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

import aiohttp
import msgspec

from ..http.signing import SIGNATURE_HEADER, sign
from .config import AlertRule, AlertsConfig

__all__ = ["Alert", "AlertBook", "Condition", "WebhookPoster"]

log = logging.getLogger(__name__)

_RECENT: Final = 200
_QUEUE: Final = 1000
_ATTEMPTS: Final = 3
_PAUSE: Final = 1.0


@dataclass(frozen=True, slots=True)
class Condition:
    """A rule's condition holding now for one subject (an agency, a component, `federation`)."""

    rule: AlertRule
    subject: str
    summary: str
    value: float


class Alert(msgspec.Struct, kw_only=True):
    id: str
    rule: str
    kind: str
    subject: str
    summary: str
    status: str  # "firing" or "resolved"
    started_at: datetime.datetime
    resolved_at: datetime.datetime | None = None
    value: float = 0.0


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


class AlertBook:
    """Firing incidents and recently resolved ones; `update` returns what changed."""

    def __init__(self) -> None:
        self.firing: dict[tuple[str, str], Alert] = {}
        self.recent: collections.deque[Alert] = collections.deque(maxlen=_RECENT)
        self.version = 0

    def __repr__(self) -> str:
        return f"AlertBook(firing={len(self.firing)}, recent={len(self.recent)})"

    def update(self, holding: Iterable[Condition], now: float) -> list[Alert]:
        changed: list[Alert] = []
        seen: set[tuple[str, str]] = set()
        for condition in holding:
            key = (condition.rule.name, condition.subject)
            seen.add(key)
            alert = self.firing.get(key)
            if alert is None:
                alert = Alert(
                    id=secrets.token_hex(8),
                    rule=condition.rule.name,
                    kind=condition.rule.kind,
                    subject=condition.subject,
                    summary=condition.summary,
                    status="firing",
                    started_at=_utc(now),
                    value=condition.value,
                )
                self.firing[key] = alert
                changed.append(alert)
            else:  # the same incident: keep it current, do not announce it again
                alert.summary, alert.value = condition.summary, condition.value
        for key in [k for k in self.firing if k not in seen]:
            alert = self.firing.pop(key)
            alert.status = "resolved"
            alert.resolved_at = _utc(now)
            self.recent.appendleft(alert)
            changed.append(alert)
        if changed:
            self.version += 1
        return changed

    def all(self) -> list[Alert]:
        firing = sorted(self.firing.values(), key=lambda a: a.started_at, reverse=True)
        return [*firing, *self.recent]


class WebhookPoster:
    """Posts alert changes to one URL from a bounded queue; never raises into its caller."""

    def __init__(
        self,
        config: AlertsConfig,
        secret: bytes | None,
        *,
        clock: Callable[[], float],
        on_attempt: Callable[[bool], None],
    ) -> None:
        self._url = config.webhook_url
        self._timeout = aiohttp.ClientTimeout(total=config.webhook_timeout_seconds)
        self._secret = secret
        self._clock = clock
        self._on_attempt = on_attempt
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=_QUEUE)
        self.dropped = 0

    def __repr__(self) -> str:
        return f"WebhookPoster(queued={self._queue.qsize()}, dropped={self.dropped})"

    def post(self, alert: Alert) -> None:
        if self._url is None:
            return
        body = msgspec.json.encode({"source": "bridge-ops", "alert": alert})
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            log.warning("alert webhook queue full: the oldest post was dropped")
        self._queue.put_nowait(body)

    async def run(self) -> None:
        if self._url is None:
            await asyncio.Event().wait()  # nothing to post to; stay until cancelled
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            while True:
                body = await self._queue.get()
                await self._deliver(session, body)

    async def _deliver(self, session: aiohttp.ClientSession, body: bytes) -> None:
        assert self._url is not None
        for attempt in range(1, _ATTEMPTS + 1):
            headers = {"Content-Type": "application/json"}
            if self._secret is not None:
                headers[SIGNATURE_HEADER] = sign([self._secret], int(self._clock()), body)
            try:
                async with session.post(
                    self._url, data=body, headers=headers, allow_redirects=False
                ) as response:
                    ok = 200 <= response.status < 300
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            self._on_attempt(ok)
            if ok:
                return
            if attempt < _ATTEMPTS:
                await asyncio.sleep(_PAUSE * 2 ** (attempt - 1))
        log.warning("alert webhook did not take a post after %d attempts; dropped", _ATTEMPTS)
