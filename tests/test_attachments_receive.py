"""Receiving attachments: every chunk checked before delivery, then streamed (real NATS, HTTP).

The sender's side is played by the test as admin: it seals an envelope with attachments (the
library's recipe), publishes the chunks into the sender's attachment stream and the envelope
into the recipient's inbox, and can tamper with any chunk on the way. The last test runs both
adapters, with the test moving envelopes and receipts as the broker would.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from adapter_helpers import (
    CONSENT,
    JOBCENTER,
    SUCHT,
    agency_seed,
    eventually,
    fed,
    keyring,
    last_submitted,
    make_agency,
    put_in_inbox,
    referral_request,
    submitted,
)
from aiohttp import web
from test_adapter_inbound import SECRET, consumer_settled, open_receipt, pull_agency, webhook_agency

from bridge.adapters.service import Adapter
from bridge.crypto import AttachmentSealer, new_content_key, seal
from bridge.ids import new_message_id
from bridge.nats.subjects import attach_stream, attach_subject
from bridge.nats.transport import publish_durable
from bridge.wire import Delivered, MessageType, Rejected, encode_body
from bridge.wire.examples import BODIES

CHUNK = 1024
FILES = [("Entlassbrief.pdf", "application/pdf", 3 * CHUNK + 123), ("leer.txt", "text/plain", 0)]

Chunks = list[list[bytes]]  # per attachment, its encrypted chunks in order


@dataclass
class Sent:
    message_id: str
    files: list[bytes]
    digests: list[str]


async def send(
    admin: Any, *, tamper: Callable[[Chunks], Chunks] | None = None, recipient: str = SUCHT
) -> Sent:
    """Seal a referral with `FILES` as JOBCENTER, store its chunks, put it in the inbox."""
    content_key = new_content_key()
    message_id = new_message_id()
    files, entries, chunks = [], [], []
    for index, (name, media_type, size) in enumerate(FILES):
        data = os.urandom(size)
        sealer = AttachmentSealer(content_key, index, name=name, media_type=media_type, chunk=CHUNK)
        sealed = sealer.update(data)
        last, entry = sealer.finish()
        files.append(data)
        entries.append(entry)
        chunks.append([*sealed, last])
    if tamper is not None:
        chunks = tamper(chunks)
    for index, attachment_chunks in enumerate(chunks):
        for j, chunk in enumerate(attachment_chunks):
            subject = attach_subject(JOBCENTER, recipient, message_id, index, j)
            await publish_durable(admin.js, subject, chunk, msg_id=subject, ttl=86400)
    envelope = seal(
        encode_body(BODIES[MessageType.REFERRAL]),
        message_type="referral",
        sender=keyring(JOBCENTER),
        recipients=[recipient],
        directory=fed().directory,
        consent=CONSENT,
        purpose="counselling",
        categories=["identity", "contact", "addiction"],
        lifetime=86400,
        message_id=message_id,
        content_key=content_key,
        attachments=entries,
    )
    await put_in_inbox(admin, recipient, envelope, message_id)
    return Sent(message_id, files, [hashlib.sha256(f).hexdigest() for f in files])


def small_chunks(agency: Any) -> Any:
    agency.config = msgspec.structs.replace(agency.config, attachment_chunk_bytes=CHUNK)
    return agency


async def pulled(http: aiohttp.ClientSession, url: str, auth: dict[str, str]) -> list[Any]:
    async with http.get(f"{url}/v1/inbox", headers=auth) as r:
        return list((await r.json())["items"])


async def test_pull_serves_checked_attachments_whole_and_in_ranges(
    tmp_path: Path, nats_env: Any
) -> None:
    agency = small_chunks(pull_agency(tmp_path, nats_env))
    admin = await nats_env.admin()
    auth = agency.auth()
    async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
        sent = await send(admin)
        await eventually(lambda: pulled(http, adapter.url, auth), what="the item")
        async with http.get(f"{adapter.url}/v1/inbox/{sent.message_id}", headers=auth) as r:
            item = await r.json()
        listed = [(a["name"], a["media_type"], a["size"], a["sha256"]) for a in item["attachments"]]
        assert listed == [(*f, d) for f, d in zip(FILES, sent.digests, strict=True)]
        assert [a["index"] for a in item["attachments"]] == [0, 1]
        base = f"{adapter.url}/v1/inbox/{sent.message_id}/attachments"
        async with http.get(f"{base}/0", headers=auth) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/pdf"
            assert (
                r.headers["Content-Disposition"] == "attachment; filename*=UTF-8''Entlassbrief.pdf"
            )
            digest = base64.b64encode(bytes.fromhex(sent.digests[0])).decode()
            assert r.headers["Repr-Digest"] == f"sha-256=:{digest}:"
            assert await r.read() == sent.files[0]
        data = sent.files[0]
        for spec, (start, end) in {
            "bytes=100-2999": (100, 3000),
            "bytes=1024-2047": (1024, 2048),  # exactly one chunk
            "bytes=3000-": (3000, len(data)),
            "bytes=-50": (len(data) - 50, len(data)),
            "bytes=0-99999": (0, len(data)),
        }.items():
            async with http.get(f"{base}/0", headers={**auth, "Range": spec}) as r:
                assert r.status == 206, spec
                assert r.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(data)}"
                assert await r.read() == data[start:end], spec
        async with http.get(f"{base}/1", headers=auth) as r:
            assert (r.status, await r.read()) == (200, b"")
        for spec in ("bytes=5000-", "bytes=1-2,4-5", "lines=1-2", "bytes=9-3"):
            async with http.get(f"{base}/0", headers={**auth, "Range": spec}) as r:
                assert r.status == 416, spec
                assert (await r.json(content_type=None))["code"] == "attachment.range_invalid"
        for index in ("2", "-1", "x"):
            async with http.get(f"{base}/{index}", headers=auth) as r:
                assert r.status == 404
        async with http.get(f"{base}/0", headers=agency.auth("inbox:ack")) as r:
            assert r.status == 403
        async with http.post(f"{adapter.url}/v1/inbox/{sent.message_id}/ack", headers=auth) as r:
            assert r.status == 204
        await eventually(lambda: submitted(admin, SUCHT), what="the receipt")
    _, receipt = open_receipt(await last_submitted(admin, SUCHT))
    assert receipt.disposition == Delivered(attachments=sent.digests)


@dataclass
class MultipartReceiver:
    """A local system's webhook that takes multipart messages and checks each file's digest."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        reader = await request.multipart()
        message = await reader.next()
        assert isinstance(message, aiohttp.BodyPartReader)
        payload = await message.read()
        t, v1 = (p.partition("=")[2] for p in request.headers["Bridge-Signature"].split(","))
        expected = hmac.new(SECRET, f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
        files = []
        while (part := await reader.next()) is not None:
            assert isinstance(part, aiohttp.BodyPartReader)
            files.append(
                {
                    "name": part.filename,
                    "type": part.headers["Content-Type"],
                    "digest": part.headers["Content-Digest"],
                    "data": bytes(await part.read()),
                }
            )
        self.calls.append(
            {
                "valid": hmac.compare_digest(expected, v1),
                "payload": json.loads(payload),
                "files": files,
            }
        )
        return web.Response(status=204)


@pytest.fixture
async def multipart_receiver() -> AsyncIterator[MultipartReceiver]:
    recv = MultipartReceiver()
    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/hook", recv.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    recv.url = f"http://{host}:{port}/hook"
    yield recv
    await runner.cleanup()


async def test_webhook_streams_attachments_as_multipart_then_receipts_their_digests(
    tmp_path: Path, nats_env: Any, multipart_receiver: MultipartReceiver
) -> None:
    agency = small_chunks(webhook_agency(tmp_path, nats_env, multipart_receiver.url))
    admin = await nats_env.admin()
    async with Adapter(agency.config):
        sent = await send(admin)
        await eventually(lambda: submitted(admin, SUCHT), what="the receipt")
        await eventually(lambda: consumer_settled(admin), what="the inbox message to be acked")
    (call,) = multipart_receiver.calls
    assert call["valid"]
    assert [a["sha256"] for a in call["payload"]["attachments"]] == sent.digests
    assert [(f["name"], f["type"], f["data"]) for f in call["files"]] == [
        (name, media_type, data)
        for (name, media_type, _), data in zip(FILES, sent.files, strict=True)
    ]
    for f, digest in zip(call["files"], sent.digests, strict=True):
        assert f["digest"] == f"sha-256=:{base64.b64encode(bytes.fromhex(digest)).decode()}:"
    _, receipt = open_receipt(await last_submitted(admin, SUCHT))
    assert receipt.disposition == Delivered(attachments=sent.digests)


def _flip(chunks: Chunks) -> Chunks:
    altered = bytearray(chunks[0][1])
    altered[7] ^= 1
    return [[chunks[0][0], bytes(altered), *chunks[0][2:]], *chunks[1:]]


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (_flip, "attachment.decryption_failed"),
        (lambda c: [[c[0][1], c[0][0], *c[0][2:]], *c[1:]], "attachment.decryption_failed"),
        (lambda c: [c[0][:-1], *c[1:]], "attachment.chunk_missing"),
        (lambda c: [[*c[0], c[0][-1]], *c[1:]], "attachment.too_long"),
        # the empty file's chunk in the place of the first: a chunk of the wrong length
        (lambda c: [[c[1][0], *c[0][1:]], *c[1:]], "attachment.malformed"),
    ],
    ids=["altered", "reordered", "truncated", "longer", "swapped"],
)
async def test_a_flawed_attachment_is_never_delivered(
    tmp_path: Path, nats_env: Any, tamper: Callable[[Chunks], Chunks], reason: str
) -> None:
    agency = small_chunks(pull_agency(tmp_path, nats_env))
    admin = await nats_env.admin()
    async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
        await send(admin, tamper=tamper)
        await eventually(lambda: submitted(admin, SUCHT), what="the rejection receipt")
        await eventually(lambda: consumer_settled(admin), what="the message to be terminated")
        assert await pulled(http, adapter.url, agency.auth()) == []
    _, receipt = open_receipt(await last_submitted(admin, SUCHT))
    assert receipt.disposition == Rejected(reason=reason)


async def test_the_senders_adapter_removes_a_copy_once_receipted(
    tmp_path: Path, nats_env: Any
) -> None:
    sender = make_agency(tmp_path / "s", nats_env.url, agency_seed(nats_env, JOBCENTER), JOBCENTER)
    sender = small_chunks(sender)
    recipient = small_chunks(pull_agency(tmp_path / "r", nats_env))
    admin = await nats_env.admin()
    auth = recipient.auth()
    async with (
        Adapter(sender.config) as jobcenter,
        Adapter(recipient.config) as sucht,
        aiohttp.ClientSession() as http,
    ):
        writer = aiohttp.MultipartWriter("form-data")
        part = writer.append(json.dumps(referral_request()), {"Content-Type": "application/json"})
        part.set_content_disposition("form-data", name="message")
        data = os.urandom(5 * CHUNK)
        part = writer.append(data, {"Content-Type": "application/pdf"})
        part.set_content_disposition("form-data", name="attachment", filename="brief.pdf")
        async with http.post(
            f"{jobcenter.url}/v1/messages", data=writer, headers=sender.auth()
        ) as r:
            assert r.status == 202
            message_id = (await r.json())["message_id"]
        chunks = await admin.js.stream_info(attach_stream(JOBCENTER))
        assert chunks.state.messages == 5
        # the broker's part: the envelope into the recipient's inbox
        envelope = await last_submitted(admin, JOBCENTER)
        await put_in_inbox(admin, SUCHT, envelope.data, message_id)
        await eventually(lambda: pulled(http, sucht.url, auth), what="the item")
        async with http.get(f"{sucht.url}/v1/inbox/{message_id}/attachments/0", headers=auth) as r:
            assert await r.read() == data
        async with http.post(f"{sucht.url}/v1/inbox/{message_id}/ack", headers=auth) as r:
            assert r.status == 204
        await eventually(lambda: submitted(admin, SUCHT), what="the receipt")
        receipt = await last_submitted(admin, SUCHT)
        await put_in_inbox(admin, JOBCENTER, receipt.data, "receipt-1")

        async def removed() -> bool:
            info = await admin.js.stream_info(attach_stream(JOBCENTER))
            return info.state.messages == 0

        await eventually(removed, what="the receipted copy's chunks removed")
