"""Attachments end to end: a handover with files from the Jobcenter's system to the counselling
service's webhook (the demo sink) and the social-psychiatric service's pull inbox, through real
adapters, the broker and nats-server (the stack of tests/test_stack.py)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_e2e import (
    COUNSELLING,
    E2E,
    JOBCENTER,
    SPDI,
    eventually,
    start_broker_and_adapters,
    start_stack,
)

from bridge.bench._attachment import file_blocks
from bridge.nats.identities import Credentials, Identity
from bridge.nats.subjects import attach_stream
from bridge.nats.transport import connect
from bridge.wire import MessageType, encode_body
from bridge.wire.examples import BODIES

CATEGORIES = ("identity", "contact", "addiction")
PURPOSE = "integration-support"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[E2E]:
    env = await start_stack(tmp_path, E2E, then=start_broker_and_adapters)
    try:
        yield env
    finally:
        await env.stop()


async def send_with_files(
    stack: E2E, recipients: list[str], files: list[tuple[str, str, bytes]]
) -> tuple[int, Any]:
    consent = await stack.register_consent(JOBCENTER, recipients, PURPOSE, CATEGORIES, "handover")
    request = {
        "type": "handover",
        "recipients": recipients,
        "consent": consent,
        "purpose": PURPOSE,
        "categories": list(CATEGORIES),
        "body": json.loads(encode_body(BODIES[MessageType.HANDOVER])),
    }
    writer = aiohttp.MultipartWriter("form-data")
    part = writer.append(json.dumps(request), {"Content-Type": "application/json"})
    part.set_content_disposition("form-data", name="message")
    for name, media_type, data in files:
        part = writer.append(data, {"Content-Type": media_type})
        part.set_content_disposition("form-data", name="attachment", filename=name)
    async with stack.session.post(
        f"{stack.stack.adapter_url(JOBCENTER)}/v1/messages",
        data=writer,
        headers=stack._headers(JOBCENTER, ["messages:send"]),
    ) as response:
        return response.status, await response.json(content_type=None)


async def test_a_handover_with_files_reaches_webhook_and_pull_then_its_chunks_go(
    stack: E2E,
) -> None:
    report, scan = os.urandom(600 * 1024), os.urandom(5000)  # three chunks; one
    files = [
        ("Entlassbrief.pdf", "application/pdf", report),
        ("Einwilligung.png", "image/png", scan),
    ]
    status, answer = await send_with_files(stack, [COUNSELLING, SPDI], files)
    assert status == 202, answer
    message_id = answer["message_id"]
    digests = [hashlib.sha256(report).hexdigest(), hashlib.sha256(scan).hexdigest()]

    pushed = await stack.wait_pushed(message_id)  # the sink checked each file against its digest
    assert [a["sha256"] for a in pushed["attachments"]] == digests
    assert [a["name"] for a in pushed["attachments"]] == ["Entlassbrief.pdf", "Einwilligung.png"]

    async def listed() -> bool | None:
        return True if message_id in await stack.inbox(SPDI) else None

    await eventually(f"{message_id} in the pull inbox", listed)
    url = f"{stack.stack.adapter_url(SPDI)}/v1/inbox/{message_id}"
    read = stack._headers(SPDI, ["inbox:read"])
    for index, data in enumerate((report, scan)):
        async with stack.session.get(f"{url}/attachments/{index}", headers=read) as r:
            assert r.status == 200
            assert await r.read() == data
    async with stack.session.post(f"{url}/ack", headers=stack._headers(SPDI, ["inbox:ack"])) as r:
        assert r.status == 204

    await stack.wait_states(JOBCENTER, message_id, {COUNSELLING: "receipted", SPDI: "receipted"})

    async def chunks_gone() -> bool:
        return await chunks_stored(stack) == 0

    await eventually("the receipted copies' chunks removed", chunks_gone)


async def chunks_stored(stack: E2E) -> int:
    """How many chunks the Jobcenter's attachment stream holds (asked as admin)."""
    layout = stack.stack.layout
    admin = await connect(
        stack.server.url,
        Credentials(layout.nats.creds_dir).seed_file(Identity.admin()),
        Identity.admin().inbox_prefix,
        "test-attachments-e2e",
    )
    try:
        info = await admin.jetstream().stream_info(attach_stream(JOBCENTER))
        return int(info.state.messages)
    finally:
        await admin.close()


async def test_a_file_type_the_policy_does_not_allow_is_refused(stack: E2E) -> None:
    status, problem = await send_with_files(
        stack, [COUNSELLING], [("a.zip", "application/zip", b"PK")]
    )
    assert (status, problem["code"]) == (422, "policy.attachment_type_denied")
    assert await chunks_stored(stack) == 0


async def test_a_file_uploaded_in_parts_reaches_the_recipients_webhook(stack: E2E) -> None:
    data = os.urandom(300 * 1024)  # two chunks
    url = stack.stack.adapter_url(JOBCENTER)
    send = stack._headers(JOBCENTER, ["messages:send"])
    declared = {"name": "Arztbrief.pdf", "media_type": "application/pdf", "size": len(data)}
    async with stack.session.post(f"{url}/v1/uploads", json=declared, headers=send) as r:
        assert r.status == 201
        upload = (await r.json())["id"]
    for offset in (0, 100_000):
        part = data[offset : offset + 100_000] if offset == 0 else data[offset:]
        async with stack.session.put(
            f"{url}/v1/uploads/{upload}?offset={offset}", data=part, headers=send
        ) as r:
            assert r.status == 200
            assert (await r.json())["received"] == offset + len(part)
    consent = await stack.register_consent(
        JOBCENTER, [COUNSELLING], PURPOSE, CATEGORIES, "handover"
    )
    request = {
        "type": "handover",
        "recipients": [COUNSELLING],
        "consent": consent,
        "purpose": PURPOSE,
        "categories": list(CATEGORIES),
        "body": json.loads(encode_body(BODIES[MessageType.HANDOVER])),
        "attachments": [{"upload": upload}],
    }
    async with stack.session.post(f"{url}/v1/messages", json=request, headers=send) as r:
        assert r.status == 202
        message_id = (await r.json())["message_id"]
    pushed = await stack.wait_pushed(message_id)  # the sink checked the file against its digest
    assert [a["sha256"] for a in pushed["attachments"]] == [hashlib.sha256(data).hexdigest()]
    assert [a["name"] for a in pushed["attachments"]] == ["Arztbrief.pdf"]


_MIB = 1024 * 1024
_BIG = 100 * _MIB


def _reset_peak_rss() -> int:
    """Set this process's peak resident memory back to what it holds now; return that."""
    Path("/proc/self/clear_refs").write_text("5")
    return _peak_rss()


def _peak_rss() -> int:
    """This process's peak resident memory (VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


async def test_a_100_mib_file_round_trips_by_webhook_and_pull_in_bounded_memory(
    stack: E2E,
) -> None:
    # Every bridge part of this stack (the sending adapter, the broker, both receiving adapters,
    # the local systems' sink and the client streaming the file) runs in this process; its peak
    # memory is reset here (Linux's clear_refs) and read after the round trip.
    before = _reset_peak_rss()
    blocks, digest = file_blocks(_BIG)
    consent = await stack.register_consent(
        JOBCENTER, [COUNSELLING, SPDI], PURPOSE, CATEGORIES, "handover"
    )
    request = {
        "type": "handover",
        "recipients": [COUNSELLING, SPDI],
        "consent": consent,
        "purpose": PURPOSE,
        "categories": list(CATEGORIES),
        "body": json.loads(encode_body(BODIES[MessageType.HANDOVER])),
    }
    writer = aiohttp.MultipartWriter("form-data")
    part = writer.append(json.dumps(request), {"Content-Type": "application/json"})
    part.set_content_disposition("form-data", name="message")
    part = writer.append(
        aiohttp.payload.AsyncIterablePayload(blocks), {"Content-Type": "application/pdf"}
    )
    part.set_content_disposition("form-data", name="attachment", filename="Akte.pdf")
    slow = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
    async with aiohttp.ClientSession(timeout=slow) as session:
        async with session.post(
            f"{stack.stack.adapter_url(JOBCENTER)}/v1/messages",
            data=writer,
            headers=stack._headers(JOBCENTER, ["messages:send"]),
        ) as response:
            answer = await response.json(content_type=None)
            assert response.status == 202, answer
        message_id = answer["message_id"]
        sha256 = digest.hexdigest()

        # By webhook: the sink hashed the file as it streamed in and checked it.
        async def found() -> Any:
            hits = stack.pushed(message_id)
            return hits[0] if hits else None

        pushed = await eventually(f"{message_id} pushed to the sink", found, deadline=300)
        assert [(a["sha256"], a["size"]) for a in pushed["attachments"]] == [(sha256, _BIG)]

        # By pull: streamed and hashed here, never read whole.
        async def listed() -> bool | None:
            return True if message_id in await stack.inbox(SPDI) else None

        await eventually(f"{message_id} in the pull inbox", listed, deadline=300)
        url = f"{stack.stack.adapter_url(SPDI)}/v1/inbox/{message_id}"
        pulled, size = hashlib.sha256(), 0
        async with session.get(
            f"{url}/attachments/0", headers=stack._headers(SPDI, ["inbox:read"])
        ) as r:
            assert r.status == 200
            async for piece in r.content.iter_chunked(_MIB):
                pulled.update(piece)
                size += len(piece)
        assert (pulled.hexdigest(), size) == (sha256, _BIG)
        async with session.post(f"{url}/ack", headers=stack._headers(SPDI, ["inbox:ack"])) as r:
            assert r.status == 204

    await stack.wait_states(JOBCENTER, message_id, {COUNSELLING: "receipted", SPDI: "receipted"})
    grown = _peak_rss() - before
    # Far below the file's size: what is held at once is a few chunks per step, not the file.
    assert grown < _BIG // 3, f"peak memory grew by {grown // _MIB} MiB for a 100 MiB file"
