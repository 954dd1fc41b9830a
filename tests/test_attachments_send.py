"""Sending attachments: multipart through the sender's adapter into its chunk stream (real NATS).

Chunks are read back as admin (and as the recipient's own NATS identity) and opened with the
recipient's keys; no broker runs. Every refusal must leave nothing behind: no envelope, no chunk.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from adapter_helpers import (
    JOBCENTER,
    SPDI,
    SUCHT,
    Agency,
    agency_seed,
    eventually,
    fed,
    keyring,
    last_submitted,
    make_agency,
    referral_request,
    submitted,
)

from bridge.adapters.chunks import ChunkStore
from bridge.adapters.service import Adapter
from bridge.crypto import Limits, open_envelope
from bridge.ids import new_message_id
from bridge.nats.identities import Identity
from bridge.nats.retention import check_retention
from bridge.nats.subjects import HDR_TTL, attach_open_subject, attach_stream, attach_subject
from bridge.nats.transport import publish_durable

CHUNK = 1024
MARKER = "Zyxwvutsrq"
BIG = 256 * CHUNK
LIMITS = Limits(max_attachment_bytes=BIG, max_attachments_total=BIG + BIG // 2)


@dataclass
class Running:
    agency: Agency
    adapter: Adapter
    http: aiohttp.ClientSession
    admin: Any
    env: Any

    async def post(self, form: aiohttp.MultipartWriter | aiohttp.FormData) -> tuple[int, Any]:
        async with self.http.post(
            f"{self.adapter.url}/v1/messages", data=form, headers=self.agency.auth()
        ) as r:
            return r.status, await r.json(content_type=None)

    async def chunks_stored(self) -> int:
        info = await self.admin.js.stream_info(attach_stream(JOBCENTER))
        return int(info.state.messages)


@pytest.fixture
async def jobcenter(tmp_path: Path, nats_env: Any) -> AsyncIterator[Running]:
    agency = make_agency(tmp_path, nats_env.url, agency_seed(nats_env, JOBCENTER), JOBCENTER)
    agency.config = msgspec.structs.replace(
        agency.config, attachment_chunk_bytes=CHUNK, limits=LIMITS
    )
    admin = await nats_env.admin()
    async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
        yield Running(agency, adapter, http, admin, nats_env)


def form(
    request: dict[str, Any] | None = None,
    files: list[tuple[str, str, bytes]] = (),  # type: ignore[assignment]
    *,
    headers: dict[str, str] | None = None,
    size: int | None = None,
) -> aiohttp.MultipartWriter:
    writer = aiohttp.MultipartWriter("form-data")
    message = writer.append(
        json.dumps(request or referral_request()), {"Content-Type": "application/json"}
    )
    message.set_content_disposition("form-data", name="message")
    for name, media_type, data in files:
        part = writer.append(data, {"Content-Type": media_type, **(headers or {})})
        declared = {} if size is None else {"size": str(size)}
        part.set_content_disposition("form-data", name="attachment", filename=name, **declared)
    return writer


def digest_header(data: bytes) -> dict[str, str]:
    encoded = base64.b64encode(hashlib.sha256(data).digest()).decode()
    return {"Content-Digest": f"sha-256=:{encoded}:"}


async def test_a_multipart_message_stores_every_chunk_for_every_recipient(
    jobcenter: Running,
) -> None:
    report, scan = os.urandom(3 * CHUNK + 300), b""
    request = referral_request(recipients=[SUCHT, SPDI])
    files = [("Entlassbrief.pdf", "application/pdf", report), ("leer.txt", "text/plain", scan)]
    status, body = await jobcenter.post(form(request, files))
    assert status == 202, body
    message_id = body["message_id"]
    msg = await last_submitted(jobcenter.admin, JOBCENTER)
    assert await jobcenter.chunks_stored() == 2 * (4 + 1)
    for recipient in (SUCHT, SPDI):
        opened = open_envelope(msg.data, keyring(recipient), fed().directory)
        first, second = opened.attachments
        assert (first.name, first.media_type) == ("Entlassbrief.pdf", "application/pdf")
        assert first.size == len(report)
        assert (second.name, second.size) == ("leer.txt", 0)
        # the recipient reads its own copy with its own NATS identity
        client = await jobcenter.env.connect(Identity.for_agency(recipient))
        store = ChunkStore(client.js, recipient, timeout=5)
        for attachment, data in ((first, report), (second, scan)):
            reader = attachment.reader()
            got = b""
            for j in range(attachment.chunks):
                chunk = await store.read(JOBCENTER, message_id, attachment.index, j)
                assert chunk is not None
                got += reader.feed(chunk)
            assert reader.finish() == hashlib.sha256(data).digest()
            assert got == data
    stored = await jobcenter.admin.js.get_msg(
        attach_stream(JOBCENTER), subject=attach_subject(JOBCENTER, SUCHT, message_id, 0, 0)
    )
    assert int(stored.headers[HDR_TTL].removesuffix("s")) == 14 * 86400  # the message's lifetime


async def test_a_recipient_reads_only_its_own_copy(jobcenter: Running) -> None:
    status, body = await jobcenter.post(form(None, [("a.pdf", "application/pdf", b"x" * 10)]))
    assert status == 202, body
    spdi = await jobcenter.env.connect(Identity.for_agency(SPDI))
    with pytest.raises(Exception):  # noqa: B017,PT011 - denied: no answer, or a permission error
        await asyncio.wait_for(
            spdi.js.get_msg(
                attach_stream(JOBCENTER),
                subject=attach_subject(JOBCENTER, SUCHT, body["message_id"], 0, 0),
                direct=True,
            ),
            timeout=3,
        )
    # and even the recipient cannot remove or write what is in the sender's stream
    sucht = await jobcenter.env.connect(Identity.for_agency(SUCHT))
    with pytest.raises(Exception):  # noqa: B017,PT011
        await asyncio.wait_for(sucht.js.purge_stream(attach_stream(JOBCENTER)), timeout=3)
    with pytest.raises(Exception):  # noqa: B017,PT011
        await asyncio.wait_for(
            sucht.js.publish(attach_subject(JOBCENTER, SUCHT, body["message_id"], 0, 0), b"x"),
            timeout=3,
        )
    assert await jobcenter.chunks_stored() == 1


PDF = "application/pdf"


@pytest.mark.parametrize(
    ("files", "headers", "status", "code"),  # headers: the attachment parts' (or a size)
    [
        ([("a.pdf", "application/pdf", b"x" * (BIG + 1))], None, 413, "attachment.too_large"),
        (
            [("a.pdf", PDF, b"x" * BIG), ("b.pdf", PDF, b"y" * (BIG // 2 + 1))],
            None,
            413,
            "attachment.total_too_large",
        ),
        ([("a.pdf", PDF, b"x" * 3000)], digest_header(b"other"), 400, "attachment.digest_mismatch"),
        ([("a.pdf", "application/pdf", b"x" * 3000)], 2999, 400, "attachment.size_mismatch"),
        ([("..", "application/pdf", b"x")], None, 400, "attachment.name_invalid"),
        ([(f"{MARKER}.pdf", f"{MARKER} x", b"x")], None, 400, "attachment.media_type_invalid"),
        ([], None, 400, "attachment.missing"),
    ],
)
async def test_refused_attachments_leave_nothing_behind(
    jobcenter: Running,
    files: list[tuple[str, str, bytes]],
    headers: dict[str, str] | int | None,
    status: int,
    code: str,
) -> None:
    if isinstance(headers, int):
        got, problem = await jobcenter.post(form(None, files, size=headers))
    else:
        got, problem = await jobcenter.post(form(None, files, headers=headers))
    assert (got, problem["code"]) == (status, code)
    assert MARKER not in json.dumps(problem)
    assert await submitted(jobcenter.admin, JOBCENTER) == 0
    assert await jobcenter.chunks_stored() == 0


async def test_a_refused_message_stores_no_chunk(jobcenter: Running) -> None:
    request = referral_request(recipients=["unknown-agency"])
    status, _ = await jobcenter.post(form(request, [("a.pdf", "application/pdf", b"x" * 3000)]))
    assert status == 422
    assert await jobcenter.chunks_stored() == 0


async def test_an_upload_cut_off_leaves_nothing_behind(jobcenter: Running) -> None:
    # Large enough that the server reads whole windows before the cut (aiohttp's part reader
    # holds one window back to look for the boundary).
    writer = form(None, [("a.pdf", "application/pdf", os.urandom(BIG - CHUNK))])
    body = bytearray()

    class Sink:
        async def write(self, data: bytes) -> None:
            body.extend(data)

    await writer.write(Sink())  # type: ignore[arg-type]
    host, port = jobcenter.adapter.url.removeprefix("http://").split(":")
    _, stream = await asyncio.open_connection(host, int(port))
    head = (
        f"POST /v1/messages HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Bearer {jobcenter.agency.token()}\r\n"
        f"Content-Type: multipart/form-data; boundary={writer.boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    stream.write(head.encode() + bytes(body[: len(body) - 2 * CHUNK]))  # all but the end
    await stream.drain()

    async def some_stored() -> bool:
        return await jobcenter.chunks_stored() > 0

    await eventually(some_stored, what="the first chunks stored")
    stream.close()
    await stream.wait_closed()

    async def none_left() -> bool:
        return await jobcenter.chunks_stored() == 0

    await eventually(none_left, what="the cut-off upload's chunks removed")
    assert await submitted(jobcenter.admin, JOBCENTER) == 0


async def test_idempotency_keys_are_refused_with_attachments(jobcenter: Running) -> None:
    async with jobcenter.http.post(
        f"{jobcenter.adapter.url}/v1/messages",
        data=form(None, [("a.pdf", "application/pdf", b"x")]),
        headers={**jobcenter.agency.auth(), "Idempotency-Key": "k-1"},
    ) as r:
        assert r.status == 400
        assert (await r.json(content_type=None))["code"] == "idempotency.not_with_attachments"
    assert await jobcenter.chunks_stored() == 0


async def test_an_upload_abandoned_by_a_stopped_adapter_is_swept(
    tmp_path: Path, nats_env: Any
) -> None:
    agency = make_agency(tmp_path, nats_env.url, agency_seed(nats_env, JOBCENTER), JOBCENTER)
    agency.config = msgspec.structs.replace(
        agency.config, attachment_chunk_bytes=CHUNK, attachment_upload_limit_seconds=1
    )
    admin = await nats_env.admin()
    # What an adapter that stopped mid-upload leaves: its marker and some chunks.
    abandoned = new_message_id()
    marker = attach_open_subject(JOBCENTER, abandoned)
    await publish_durable(admin.js, marker, b"", msg_id=marker, ttl=86400)
    for j in range(3):
        subject = attach_subject(JOBCENTER, SUCHT, abandoned, 0, j)
        await publish_durable(admin.js, subject, b"c" * 40, msg_id=subject, ttl=86400)
    async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
        running = Running(agency, adapter, http, admin, nats_env)
        status, body = await running.post(form(None, [("a.pdf", "application/pdf", b"x" * 10)]))
        assert status == 202, body

        async def only_the_sent_message_left() -> bool:
            return await running.chunks_stored() == 1

        await eventually(only_the_sent_message_left, what="the abandoned upload swept")
        kept = await admin.js.get_msg(
            attach_stream(JOBCENTER),
            subject=attach_subject(JOBCENTER, SUCHT, body["message_id"], 0, 0),
        )
        assert kept.data


async def test_retention_check_covers_the_chunks(jobcenter: Running) -> None:
    status, body = await jobcenter.post(form(None, [("a.pdf", "application/pdf", b"x" * 3000)]))
    assert status == 202, body
    report = await check_retention(jobcenter.admin.js, now=time.time)
    stream = attach_stream(JOBCENTER)
    assert report.streams[stream] == 3  # every chunk read and judged against its TTL
    assert stream not in report.no_limit
    assert not [o for o in report.overdue if o.stream == stream]
    # Judged as overdue once past their TTL, like any message
    later = await check_retention(jobcenter.admin.js, now=lambda: time.time() + 15 * 86400)
    assert {o.seq for o in later.overdue if o.stream == stream and o.kind == "ttl"} != set()


async def test_a_media_type_the_policy_does_not_list_is_refused(jobcenter: Running) -> None:
    files = [("a.pdf", "application/pdf", b"x" * 3000), ("b.zip", "application/zip", b"y")]
    status, problem = await jobcenter.post(form(None, files))
    assert (status, problem["code"]) == (422, "policy.attachment_type_denied")
    assert "application/zip" not in json.dumps(problem)
    assert await submitted(jobcenter.admin, JOBCENTER) == 0
    assert await jobcenter.chunks_stored() == 0
