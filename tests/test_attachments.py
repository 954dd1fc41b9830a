"""Attachments in the envelope: chunked encryption, the header's list, limits, stored vectors."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from envelope_helpers import (
    RECIPIENTS,
    T0,
    Federation,
    build,
    decode_header,
    encode_header,
    federation,
    resign,
    split,
)

from bridge.crypto import (
    Attachment,
    AttachmentSealer,
    Limits,
    OpenedAttachment,
    check_name,
    new_content_key,
    open_envelope,
    seal,
    verify,
)
from bridge.errors import AttachmentInvalid, AttachmentTooLarge, MalformedEnvelope

VECTORS = Path(__file__).parent / "assets" / "vectors"
CHUNK = 1024


@pytest.fixture(scope="module")
def fed() -> Federation:
    return federation(T0)


def sealed(
    content_key: bytes, index: int, data: bytes, *, pieces: int = 3, chunk: int = CHUNK
) -> tuple[list[bytes], Attachment]:
    sealer = AttachmentSealer(
        content_key, index, name="bericht.pdf", media_type="application/pdf", chunk=chunk
    )
    step = max(1, len(data) // pieces)
    chunks = [c for at in range(0, len(data), step) for c in sealer.update(data[at : at + step])]
    last, entry = sealer.finish()
    return [*chunks, last], entry


def read(attachment: OpenedAttachment, chunks: list[bytes]) -> bytes:
    reader = attachment.reader()
    out = b"".join(reader.feed(c) for c in chunks)
    assert reader.finish() == hashlib.sha256(out).digest()
    return out


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17])
def test_attachments_round_trip_through_seal_and_open(fed: Federation, size: int) -> None:
    content_key = new_content_key()
    data = os.urandom(size)
    chunks, entry = sealed(content_key, 0, data)
    assert len(chunks) == entry.chunks == max(1, -(-size // CHUNK))
    assert sum(map(len, chunks)) == entry.stored_size
    envelope = seal(
        b"{}",
        message_type="referral",
        sender=fed.keyring("jobcenter-unna"),
        recipients=list(RECIPIENTS),
        directory=fed.directory,
        consent="c-" + "a" * 32,
        purpose="addiction-counselling",
        categories=["health"],
        lifetime=3600,
        now=T0,
        content_key=content_key,
        attachments=[entry],
    )
    assert verify(envelope, fed.directory, now=T0).header.attachments == [entry]
    for agency in RECIPIENTS:
        opened = open_envelope(envelope, fed.keyring(agency), fed.directory, now=T0)
        (attachment,) = opened.attachments
        assert (attachment.name, attachment.media_type, attachment.size) == (
            "bericht.pdf", "application/pdf", size,
        )  # fmt: skip
        assert attachment.digest == hashlib.sha256(data).digest()
        assert read(attachment, chunks) == data
        # each chunk opens alone in its place (range requests), nowhere else
        for j, chunk in enumerate(chunks):
            assert attachment.open_chunk(j, chunk) == data[j * CHUNK : (j + 1) * CHUNK]


def test_a_message_without_attachments_keeps_its_header(fed: Federation) -> None:
    header = decode_header(split(build(fed)).header)
    assert "attachments" not in header


def test_chunks_do_not_open_out_of_place(fed: Federation) -> None:
    content_key = new_content_key()
    data = os.urandom(4 * CHUNK)
    chunks, entry = sealed(content_key, 0, data)
    other_chunks, other_entry = sealed(content_key, 1, data)
    foreign_chunks, _ = sealed(new_content_key(), 0, data)
    attachment = OpenedAttachment.open(content_key, 0, entry)

    def reason(sequence: list[bytes]) -> str:
        with pytest.raises(AttachmentInvalid) as caught:
            read(attachment, sequence)
        return caught.value.reason

    assert reason(chunks[:-1]) == "attachment.truncated"
    assert reason([chunks[1], chunks[0], *chunks[2:]]) == "attachment.decryption_failed"
    assert reason([chunks[0], *chunks[:-1]]) == "attachment.decryption_failed"
    assert reason([*chunks, chunks[-1]]) == "attachment.too_long"
    assert reason([other_chunks[0], *chunks[1:]]) == "attachment.decryption_failed"
    assert reason([foreign_chunks[0], *chunks[1:]]) == "attachment.decryption_failed"
    altered = bytearray(chunks[2])
    altered[5] ^= 0x80
    assert reason([*chunks[:2], bytes(altered), chunks[3]]) == "attachment.decryption_failed"
    assert reason([*chunks[:3], chunks[3][:-1]]) == "attachment.malformed"
    # the same bytes, an attachment whose key comes from another index, do not describe themselves
    with pytest.raises(AttachmentInvalid):
        OpenedAttachment.open(content_key, 0, other_entry)


def _with_attachments(fed: Federation, entries: list[Any]) -> bytes:
    ok = build(fed)
    fields = decode_header(split(ok).header)
    fields["attachments"] = entries
    parts = split(ok).replace(header=encode_header(fields))
    return resign(parts, fed.key("jobcenter-unna/sign"))


def _entry(size: int, chunk: int = CHUNK, media_type: str = "application/pdf") -> dict[str, Any]:
    return {"type": media_type, "size": size, "chunk": chunk, "meta": bytes(60)}


def test_verify_enforces_the_attachment_limits(fed: Federation) -> None:
    limits = Limits(max_attachments=2, max_attachment_bytes=10_000, max_attachments_total=15_000)
    verify(_with_attachments(fed, [_entry(10_000)]), fed.directory, now=T0, limits=limits)
    cases = {
        "attachment.too_many": [_entry(1), _entry(1), _entry(1)],
        "attachment.too_large": [_entry(10_001)],
        "attachment.total_too_large": [_entry(10_000), _entry(5_001)],
    }
    for reason, entries in cases.items():
        with pytest.raises(AttachmentTooLarge) as caught:
            verify(_with_attachments(fed, entries), fed.directory, now=T0, limits=limits)
        assert caught.value.reason == reason


@pytest.mark.parametrize(
    "entries",
    [
        [],  # an empty list is not omitted: not canonical
        [_entry(5, chunk=1000)],  # not a power of two
        [_entry(5, chunk=512)],  # too small
        [_entry(5, chunk=2 * 1024 * 1024)],  # too large
        [_entry(-1)],
        [_entry(5, media_type="Application/PDF")],
        [_entry(5, media_type="application/pdf; charset=x")],
        [{**_entry(5), "meta": bytes(48)}],  # no room for a name
        [{"size": 5, "type": "application/pdf", "chunk": CHUNK, "meta": bytes(60)}],  # order
    ],
)
def test_malformed_attachment_entries_are_refused(fed: Federation, entries: list[Any]) -> None:
    with pytest.raises(MalformedEnvelope):
        verify(_with_attachments(fed, entries), fed.directory, now=T0)


@pytest.mark.parametrize(
    "name", ["", ".", "..", "a/b", "a\\b", "a\nb", "a\x00b", "x" * 256, "ä" * 128]
)
def test_names_that_are_no_file_names_are_refused(name: str) -> None:
    with pytest.raises(AttachmentInvalid) as caught:
        check_name(name)
    assert caught.value.reason == "attachment.name_invalid"
    assert name not in str(caught.value) or not name


def test_stored_attachment_vectors(fed: Federation) -> None:
    expected = json.loads((VECTORS / "attachments.json").read_text())
    data = (VECTORS / expected["file"]).read_bytes()
    assert split(data).header.hex() == expected["header_hex"]
    for agency in RECIPIENTS:
        opened = open_envelope(data, fed.keyring(agency), fed.directory, now=expected["verify_at"])
        assert len(opened.attachments) == len(expected["attachments"])
        for attachment, want in zip(opened.attachments, expected["attachments"], strict=True):
            assert (attachment.name, attachment.media_type, attachment.digest.hex()) == (
                want["name"], want["type"], want["sha256"],
            )  # fmt: skip
            chunks = [bytes.fromhex(c["ciphertext_hex"]) for c in want["chunks"]]
            assert read(attachment, chunks).hex() == want["plaintext_hex"]
    content_key = bytes.fromhex(expected["content_key"])
    header_entries = verify(data, fed.directory, now=expected["verify_at"]).header.attachments
    for negative in expected["negative"]:
        entry = header_entries[negative["attachment"]]
        if "meta_hex" in negative:
            entry = Attachment(
                entry.type, entry.size, entry.chunk, bytes.fromhex(negative["meta_hex"])
            )
        attachment = OpenedAttachment.open(content_key, negative["attachment"], entry)
        with pytest.raises(AttachmentInvalid) as caught:
            read(attachment, [bytes.fromhex(c) for c in negative["chunks_hex"]])
        assert caught.value.reason == negative["reason"], negative["name"]


def test_a_header_with_every_field_is_a_map16(fed: Federation) -> None:
    content_key = new_content_key()
    _, entry = sealed(content_key, 0, b"x")
    data = build(
        fed,
        recipients=[RECIPIENTS[0]],
        message_type="feedback",
        reply_to="0b9e6d14-8c2a-4f57-b3e1-9d6a2c7f5e08",
        content_key=content_key,
        attachments=[entry],
    )
    header = split(data).header
    assert header[:3] == b"\xde\x00\x10"
    assert list(decode_header(header))[-2:] == ["reply_to", "attachments"]
    opened = open_envelope(data, fed.keyring(RECIPIENTS[0]), fed.directory, now=T0)
    assert opened.attachments[0].size == 1
