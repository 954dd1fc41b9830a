"""The local systems around the measured stack, in the benchmark's own process.

- the Jobcenter's case system submits over HTTP (`POST /v1/messages`, with an Idempotency-Key,
  as a careful client does);
- the counselling service's system takes webhook deliveries (it checks each call's HMAC);
- the social-psychiatric service's system pulls (`GET /v1/inbox`, `GET /v1/inbox/{id}`,
  `POST /v1/inbox/{id}/ack`);
- and a watcher follows the sender adapter's message records (as the admin identity, on the KV
  bucket's subjects: metadata only) to see when each receipt has come back.

`Tracker` puts the times together per message: submitted, accepted (202), delivered at each
recipient's local system, receipted at the sender for all recipients. Events that arrive before
the 202 (a fast delivery) are kept until the submission names its message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
import msgspec
from aiohttp import BodyPartReader, web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ..errors import TransportError
from ..http.guard import GuardedAppRunner
from ..nats.subjects import kv_key_prefix
from ..up.sink import verify_webhook_signature
from ..wire import Handover, Measure, encode_body
from ..wire._vocab import MessageType
from ..wire.examples import BODIES

__all__ = [
    "PullClient",
    "ReceiptWatcher",
    "Submitter",
    "Track",
    "Tracker",
    "WebhookReceiver",
    "body_of_size",
]

_HTTP_TIMEOUT: Final = 60.0
_FILE_TIMEOUT: Final = 300.0  # between two reads of a file's answer: it is stored first
_FILE_READ: Final = 1024 * 1024
_PULL_IDLE: Final = 0.01  # seconds between two looks at an empty inbox
_FILL: Final = "\U0001d538"  # 4 bytes in UTF-8 and one character for the length limits


def body_of_size(size: int) -> bytes:
    """A valid handover body whose JSON encoding is exactly `size` bytes (600 B to 90 KiB).

    The example handover's free-text fields (notes, summary, then up to 19 more measures) are
    filled with ASCII and, where a field's length limit demands it, four-byte characters.
    """
    base = BODIES[MessageType.HANDOVER]
    assert isinstance(base, Handover)
    if not len(encode_body(base)) + 16 <= size <= 90 * 1024:
        raise ValueError(f"a body is {len(encode_body(base)) + 16} to {90 * 1024} bytes here")
    need = size - len(encode_body(base))
    for _ in range(8):
        data = encode_body(_filled(base, need))
        if len(data) == size:
            return data
        need += size - len(data)
    raise ValueError(f"cannot build a body of exactly {size} bytes")


def _filled(base: Handover, need: int) -> Handover:
    texts: list[str] = []
    for limit in (4000, 4000, *([1000] * 19)):
        if need <= 0:
            break
        wanted = min(need, 4 * limit)
        wide = max(0, -(-(wanted - limit) // 3))
        texts.append(_FILL * wide + "x" * (wanted - 4 * wide))
        need -= wanted
    notes, summary, *descriptions = [*texts, "", ""]
    return msgspec.structs.replace(
        base,
        notes=notes or None,
        summary=summary or base.summary,
        measures_taken=base.measures_taken
        + tuple(Measure(description=d) for d in descriptions if d),
    )


@dataclass
class Track:
    """When one message reached each point, in `time.perf_counter()` seconds."""

    recipients: tuple[str, ...] = ()
    submitted: float | None = None
    accepted: float | None = None
    delivered: dict[str, float] = field(default_factory=dict)
    receipted: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def delivered_all(self) -> float | None:
        """When the last recipient's local system had it."""
        if not self.recipients or any(r not in self.delivered for r in self.recipients):
            return None
        return max(self.delivered[r] for r in self.recipients)

    def check(self) -> None:
        if (
            self.accepted is not None
            and self.receipted is not None
            and self.delivered_all is not None
        ):
            self.done.set()


class Tracker:
    """Every message of the run by id; also counts deliveries a recipient got twice."""

    def __init__(self) -> None:
        self.tracks: dict[str, Track] = {}
        self.duplicates = 0
        self.completed = 0

    def __repr__(self) -> str:
        return f"Tracker(messages={len(self.tracks)}, completed={self.completed})"

    def _track(self, message_id: str) -> Track:
        track = self.tracks.get(message_id)
        if track is None:
            track = self.tracks[message_id] = Track()
        return track

    def accepted(
        self, message_id: str, recipients: tuple[str, ...], submitted: float, at: float
    ) -> Track:
        track = self._track(message_id)
        track.recipients, track.submitted, track.accepted = recipients, submitted, at
        self._check(track)
        return track

    def delivered(self, message_id: str, agency: str) -> None:
        track = self._track(message_id)
        if agency in track.delivered:
            self.duplicates += 1
            return
        track.delivered[agency] = time.perf_counter()
        self._check(track)

    def receipted(self, message_id: str) -> None:
        track = self._track(message_id)
        if track.receipted is None:
            track.receipted = time.perf_counter()
            self._check(track)

    def _check(self, track: Track) -> None:
        was = track.done.is_set()
        track.check()
        if track.done.is_set() and not was:
            self.completed += 1


class _Accepted(msgspec.Struct):
    message_id: str


class _Registered(msgspec.Struct):
    consent_id: str


class Submitter:
    """The Jobcenter's case system: one submission at a time per call, over its own session."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str) -> None:
        self._session = session
        self._base = url
        self._url = f"{url}/v1/messages"
        self._headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.refused = 0
        self.consents: list[str] = []
        self._next = itertools.count()

    @property
    def consent(self) -> str:
        """A registered consent, taking turns: messages are about many clients, so no one
        consent record (updated with every message sent under it) becomes a hot spot."""
        return self.consents[next(self._next) % len(self.consents)]

    async def register_consent(self, recipients: Sequence[str]) -> str:
        """Register one client's consent, as the case worker would before the first message."""
        valid_until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
        request = {
            "recipients": sorted(recipients),
            "purposes": ["integration-support"],
            "categories": ["identity", "contact", "addiction"],
            "types": ["handover"],
            "valid_until": valid_until.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "local_ref": "bench",
        }
        timeout = aiohttp.ClientTimeout(total=_HTTP_TIMEOUT)
        async with self._session.post(
            f"{self._base}/v1/consents",
            data=msgspec.json.encode(request),
            headers=self._headers,
            timeout=timeout,
        ) as response:
            data = await response.read()
            if response.status != 201:
                raise TransportError(
                    f"the sending adapter answered {response.status} to the consent",
                    reason="bench.consent_refused",
                )
        consent = msgspec.json.decode(data, type=_Registered).consent_id
        self.consents.append(consent)
        return consent

    async def submit_with_file(
        self, request: bytes, name: str, media_type: str, blocks: AsyncIterator[bytes]
    ) -> str:
        """Submit a message with one attachment, streamed from `blocks` (multipart)."""
        writer = aiohttp.MultipartWriter("form-data")
        message = writer.append(request, {"Content-Type": "application/json"})
        message.set_content_disposition("form-data", name="message")
        part = writer.append(
            aiohttp.payload.AsyncIterablePayload(blocks), {"Content-Type": media_type}
        )
        part.set_content_disposition("form-data", name="attachment", filename=name)
        headers = {"Authorization": self._headers["Authorization"]}
        timeout = aiohttp.ClientTimeout(sock_connect=_HTTP_TIMEOUT, sock_read=_FILE_TIMEOUT)
        async with self._session.post(
            self._url, data=writer, headers=headers, timeout=timeout
        ) as response:
            data = await response.read()
            if response.status != 202:
                self.refused += 1
                raise TransportError(
                    f"the sending adapter answered {response.status} to a file",
                    reason="bench.submit_refused",
                )
        return msgspec.json.decode(data, type=_Accepted).message_id

    async def submit(self, request: bytes) -> str:
        headers = {**self._headers, "Idempotency-Key": str(uuid.uuid4())}
        timeout = aiohttp.ClientTimeout(total=_HTTP_TIMEOUT)
        async with self._session.post(
            self._url, data=request, headers=headers, timeout=timeout
        ) as response:
            data = await response.read()
            if response.status != 202:
                self.refused += 1
                raise TransportError(
                    f"the sending adapter answered {response.status} to a submission",
                    reason="bench.submit_refused",
                )
        return msgspec.json.decode(data, type=_Accepted).message_id


def submit_request(body: bytes, recipients: Sequence[str], consent: str) -> bytes:
    """A handover request for `recipients` around an encoded body, under `consent`."""
    request: dict[str, Any] = {
        "type": "handover",
        "recipients": list(recipients),
        "consent": consent,
        "purpose": "integration-support",
        "categories": ["identity", "contact", "addiction"],
        "body": msgspec.Raw(body),
    }
    return msgspec.json.encode(request)


class WebhookReceiver:
    """The counselling service's system: takes signed webhook calls, or refuses them all."""

    def __init__(self, tracker: Tracker, secrets: dict[str, bytes]) -> None:
        self._tracker = tracker
        self._secrets = secrets
        self._runner: web.AppRunner | None = None
        self.refusing = False
        self.calls = 0
        self.taken = 0  # calls answered 204
        self.bad_signatures = 0
        self.bad_files = 0
        self.file_bytes = 0

    def __repr__(self) -> str:
        return f"WebhookReceiver(calls={self.calls}, refusing={self.refusing})"

    async def start(self, host: str, port: int) -> None:
        app = web.Application(client_max_size=2 * 1024 * 1024)
        app.router.add_post("/webhook/{agency}", self._webhook)
        # Guarded like every bridge HTTP server: a malformed request is not quoted or logged.
        self._runner = GuardedAppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _webhook(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.refusing:
            return web.Response(status=503)
        agency = request.match_info["agency"]
        if request.content_type == "multipart/form-data":
            return await self._with_files(request, agency)
        body = await request.read()
        secret = self._secrets.get(agency)
        if secret is None or not verify_webhook_signature(secret, request.headers, body):
            self.bad_signatures += 1
            return web.Response(status=401)
        self._tracker.delivered(msgspec.json.decode(body, type=_Accepted).message_id, agency)
        self.taken += 1
        return web.Response(status=204)

    async def _with_files(self, request: web.Request, agency: str) -> web.Response:
        """A message with attachments: the signed message part, then each file, hashed as it
        streams in and checked against the digest the message names."""
        reader = await request.multipart()
        part = await reader.next()
        secret = self._secrets.get(agency)
        if not isinstance(part, BodyPartReader) or secret is None:
            return web.Response(status=400)
        payload = bytes(await part.read())
        if not verify_webhook_signature(secret, request.headers, payload):
            self.bad_signatures += 1
            return web.Response(status=401)
        item = msgspec.json.decode(payload, type=_WithFiles)
        for expected in item.attachments:
            part = await reader.next()
            if not isinstance(part, BodyPartReader):
                return web.Response(status=400)
            digest = hashlib.sha256()
            while piece := await part.read_chunk(_FILE_READ):
                digest.update(piece)
            if digest.hexdigest() != expected.sha256:
                self.bad_files += 1
                return web.Response(status=400)
            self.file_bytes += expected.size
        self._tracker.delivered(item.message_id, agency)
        return web.Response(status=204)


class _File(msgspec.Struct):
    sha256: str
    size: int


class _WithFiles(msgspec.Struct):
    message_id: str
    attachments: list[_File]


class _InboxList(msgspec.Struct):
    items: list[_Accepted]


class PullClient:
    """The social-psychiatric service's system: list, read, acknowledge, while `active`."""

    def __init__(
        self, session: aiohttp.ClientSession, url: str, token: str, agency: str, tracker: Tracker
    ) -> None:
        self._session = session
        self._url = url
        self._headers = {"Authorization": f"Bearer {token}"}
        self._agency = agency
        self._tracker = tracker
        self.active = False

    def __repr__(self) -> str:
        return f"PullClient({self._agency}, active={self.active})"

    async def _call(self, method: str, path: str) -> bytes:
        timeout = aiohttp.ClientTimeout(total=_HTTP_TIMEOUT)
        async with self._session.request(
            method, self._url + path, headers=self._headers, timeout=timeout
        ) as response:
            data = await response.read()
            if response.status not in (200, 204):
                raise TransportError(
                    f"the pull adapter answered {response.status} to {method}",
                    reason="bench.pull_refused",
                )
            return data

    async def run(self) -> None:
        while True:
            if not self.active:
                await asyncio.sleep(_PULL_IDLE)
                continue
            listed = msgspec.json.decode(await self._call("GET", "/v1/inbox"), type=_InboxList)
            if not listed.items:
                await asyncio.sleep(_PULL_IDLE)
                continue
            for item in listed.items:
                await self._call("GET", f"/v1/inbox/{item.message_id}")
                self._tracker.delivered(item.message_id, self._agency)
                await self._call("POST", f"/v1/inbox/{item.message_id}/ack")


class _Event(msgspec.Struct):
    state: str
    recipient: str | None = None


class _Record(msgspec.Struct):
    message_id: str
    recipients: list[str]
    events: list[_Event] = []


class ReceiptWatcher:
    """Follows the sender's message records; a message is receipted when all recipients are."""

    def __init__(self, admin: NATS, sender: str, tracker: Tracker) -> None:
        self._admin = admin
        self._subject = f"{kv_key_prefix(sender)}msg.>"
        self._tracker = tracker
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._admin.subscribe(self._subject, cb=self._on_record)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _on_record(self, msg: Msg) -> None:
        try:
            record = msgspec.json.decode(msg.data, type=_Record)
        except msgspec.DecodeError:
            return  # a delete marker or a record of another shape: nothing to learn
        receipted = {e.recipient for e in record.events if e.state == "receipted"}
        if record.recipients and receipted.issuperset(record.recipients):
            self._tracker.receipted(record.message_id)
