"""Uploads in parts: spooled on the sender adapter's disk, then sent by reference (real NATS, HTTP).

The message that names an upload is opened with the recipient's keys and its chunks read with the
recipient's own NATS identity, as in tests/test_attachments_send.py; the spool must be empty once
the envelope is stored, and keep an upload the message was refused with.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec
import pytest
from adapter_helpers import (
    JOBCENTER,
    SUCHT,
    agency_seed,
    eventually,
    fed,
    keyring,
    last_submitted,
    make_agency,
    referral_request,
    submitted,
)
from test_attachments_send import CHUNK, LIMITS, MARKER, Running, jobcenter

from bridge.adapters.chunks import ChunkStore
from bridge.adapters.service import Adapter
from bridge.crypto import open_envelope
from bridge.nats.identities import Identity

__all__ = ["jobcenter"]  # the fixture, shared with tests/test_attachments_send.py


async def call(
    running: Running,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    data: bytes | None = None,
    subject: str = "case-system",
) -> tuple[int, Any]:
    async with running.http.request(
        method,
        f"{running.adapter.url}{path}",
        json=json_body,
        data=data,
        headers=running.agency.auth(subject=subject),
    ) as r:
        return r.status, await r.json(content_type=None)


def spool_dir(running: Running) -> Path:
    return running.agency.config.upload_path()


async def create(running: Running, data: bytes, **extra: Any) -> str:
    declared = {"name": "Entlassbrief.pdf", "media_type": "application/pdf", "size": len(data)}
    status, body = await call(running, "POST", "/v1/uploads", json_body={**declared, **extra})
    assert status == 201, body
    assert (body["received"], body["size"], body["complete"]) == (0, len(data), False)
    return str(body["id"])


async def test_an_upload_in_parts_is_sent_by_reference_then_removed(jobcenter: Running) -> None:
    data = os.urandom(3 * CHUNK + 300)
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    upload = await create(jobcenter, data, digest=digest)
    spool = spool_dir(jobcenter)
    assert stat.S_IMODE(spool.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in spool.iterdir())

    status, body = await call(jobcenter, "PUT", f"/v1/uploads/{upload}?offset=0", data=data[:1000])
    assert (status, body["received"]) == (200, 1000)
    # a part at the wrong offset changes nothing and says where to go on
    status, problem = await call(jobcenter, "PUT", f"/v1/uploads/{upload}?offset=0", data=b"x")
    assert (status, problem["code"], problem["field"]) == (409, "upload.offset_mismatch", "offset")
    assert "1000" in problem["detail"]
    # a part beyond the declared size too
    status, problem = await call(
        jobcenter, "PUT", f"/v1/uploads/{upload}?offset=1000", data=data[1000:] + b"x"
    )
    assert (status, problem["code"]) == (413, "upload.too_large")
    status, body = await call(jobcenter, "GET", f"/v1/uploads/{upload}")
    assert (status, body["received"], body["complete"]) == (200, 1000, False)

    status, body = await call(
        jobcenter, "PUT", f"/v1/uploads/{upload}?offset=1000", data=data[1000:]
    )
    assert (status, body["received"], body["complete"]) == (200, len(data), True)

    request = {**referral_request(), "attachments": [{"upload": upload}]}
    status, body = await call(jobcenter, "POST", "/v1/messages", json_body=request)
    assert status == 202, body
    message_id = body["message_id"]
    msg = await last_submitted(jobcenter.admin, JOBCENTER)
    (attachment,) = open_envelope(msg.data, keyring(SUCHT), fed().directory).attachments
    assert (attachment.name, attachment.size) == ("Entlassbrief.pdf", len(data))
    client = await jobcenter.env.connect(Identity.for_agency(SUCHT))
    store = ChunkStore(client.js, SUCHT, timeout=5)
    reader, got = attachment.reader(), b""
    for j in range(attachment.chunks):
        chunk = await store.read(JOBCENTER, message_id, 0, j)
        assert chunk is not None
        got += reader.feed(chunk)
    assert reader.finish() == hashlib.sha256(data).digest()
    assert got == data
    assert list(spool.iterdir()) == []  # sent: the plaintext is gone
    status, problem = await call(jobcenter, "GET", f"/v1/uploads/{upload}")
    assert (status, problem["code"]) == (404, "upload.unknown")


async def test_a_part_broken_off_is_resumed_where_it_ended(jobcenter: Running) -> None:
    data = os.urandom(5000)
    upload = await create(jobcenter, data)
    url = urlsplit(jobcenter.adapter.url)
    _, writer = await asyncio.open_connection(url.hostname, url.port)
    token = jobcenter.agency.auth()["Authorization"]
    writer.write(
        (
            f"PUT /v1/uploads/{upload}?offset=0 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {token}\r\nContent-Length: {len(data)}\r\n\r\n"
        ).encode()
        + data[:3000]
    )
    await writer.drain()

    async def arrived() -> bool:
        _, body = await call(jobcenter, "GET", f"/v1/uploads/{upload}")
        return bool(body["received"] == 3000)

    await eventually(arrived, what="the first 3000 bytes spooled")
    writer.close()  # the connection breaks mid-part

    async def resumed() -> Any:
        status, body = await call(
            jobcenter, "PUT", f"/v1/uploads/{upload}?offset=3000", data=data[3000:]
        )
        return body if status == 200 else None  # 409 upload.busy until the broken part ended

    body = await eventually(resumed, what="the rest accepted")
    assert (body["received"], body["complete"]) == (len(data), True)
    assert (spool_dir(jobcenter) / f"{upload}.part").read_bytes() == data


async def test_an_upload_is_only_its_creators(jobcenter: Running) -> None:
    upload = await create(jobcenter, b"secret")
    for path in (f"/v1/uploads/{upload}", f"/v1/uploads/{'0' * 32}", f"/v1/uploads/{MARKER}"):
        status, problem = await call(jobcenter, "GET", path, subject="other-system")
        assert (status, problem["code"]) == (404, "upload.unknown")
        assert MARKER not in json.dumps(problem)
    status, problem = await call(
        jobcenter, "PUT", f"/v1/uploads/{upload}?offset=0", data=b"secret", subject="other-system"
    )
    assert (status, problem["code"]) == (404, "upload.unknown")
    request = {**referral_request(), "attachments": [{"upload": upload}]}
    status, problem = await call(
        jobcenter, "POST", "/v1/messages", json_body=request, subject="other-system"
    )
    assert (status, problem["field"]) == (422, "$.attachments[0].upload")
    status, body = await call(jobcenter, "GET", f"/v1/uploads/{upload}")
    assert (status, body["received"]) == (200, 0)


async def test_an_incomplete_upload_cannot_be_sent_and_stays(jobcenter: Running) -> None:
    upload = await create(jobcenter, b"0123456789")
    await call(jobcenter, "PUT", f"/v1/uploads/{upload}?offset=0", data=b"01234")
    request = {**referral_request(), "attachments": [{"upload": upload}]}
    status, problem = await call(jobcenter, "POST", "/v1/messages", json_body=request)
    assert (status, problem["code"], problem["field"]) == (
        409,
        "upload.incomplete",
        "$.attachments[0].upload",
    )
    assert await submitted(jobcenter.admin, JOBCENTER) == 0
    assert await jobcenter.chunks_stored() == 0
    # a declared digest that does not match: refused, nothing stored, the upload kept to retry
    other = await create(jobcenter, b"abc", digest=base64.b64encode(b"\x00" * 32).decode())
    await call(jobcenter, "PUT", f"/v1/uploads/{other}?offset=0", data=b"abc")
    request = {**referral_request(), "attachments": [{"upload": other}]}
    status, problem = await call(jobcenter, "POST", "/v1/messages", json_body=request)
    assert (status, problem["code"]) == (400, "attachment.digest_mismatch")
    assert await submitted(jobcenter.admin, JOBCENTER) == 0
    assert await jobcenter.chunks_stored() == 0
    status, body = await call(jobcenter, "GET", f"/v1/uploads/{other}")
    assert (status, body["complete"]) == (200, True)


@pytest.fixture
async def hasty(tmp_path: Path, nats_env: Any) -> AsyncIterator[Running]:
    """The Jobcenter's adapter, abandoning uploads after one second."""
    agency = make_agency(tmp_path, nats_env.url, agency_seed(nats_env, JOBCENTER), JOBCENTER)
    agency.config = msgspec.structs.replace(
        agency.config,
        attachment_chunk_bytes=CHUNK,
        limits=LIMITS,
        attachment_upload_limit_seconds=1,
    )
    admin = await nats_env.admin()
    async with Adapter(agency.config) as adapter, aiohttp.ClientSession() as http:
        yield Running(agency, adapter, http, admin, nats_env)


async def test_an_abandoned_upload_is_swept(hasty: Running) -> None:
    upload = await create(hasty, b"0123456789")
    await call(hasty, "PUT", f"/v1/uploads/{upload}?offset=0", data=b"01234")
    spool = spool_dir(hasty)
    assert (spool / f"{upload}.part").exists()

    async def gone() -> bool:
        return not any(spool.iterdir())

    await eventually(gone, what="the abandoned upload removed")
    status, problem = await call(hasty, "GET", f"/v1/uploads/{upload}")
    assert (status, problem["code"]) == (404, "upload.unknown")
