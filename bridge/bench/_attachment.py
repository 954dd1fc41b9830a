"""The attachment case of `bridge bench e2e`: one large file end to end, against the object store.

The Jobcenter's case system sends one handover with one attachment (100 MiB by default) as
`multipart/form-data`, streamed from a generator, to the counselling service (webhook): the
sender's adapter encrypts and stores it chunk by chunk, the broker routes the envelope, the
recipient's adapter reads and checks every chunk, then streams the file to the webhook, which
hashes it as it arrives. The time is from the first byte submitted to the last byte checked at
the local system.

Beside it, in the same run and on the same nats-server (same durability), raw nats-py puts the
same number of bytes into a JetStream object store and gets them back: the transport's own
cost of storing and fetching a file. The ratio is end-to-end throughput over that raw
throughput (the issue's target: at least 0.5). Every process's peak memory during the case is
kept, to show that no file is held whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import msgspec
import nats.errors
import nats.js.errors
from nats.js import api
from nats.js.client import JetStreamContext

from ..errors import TransportError
from ._procfs import Watched

__all__ = [
    "AttachmentCase",
    "file_blocks",
    "mib_per_s",
    "object_store_round_trip",
    "sample_memory",
]

_BLOCK: Final = 1024 * 1024
_BUCKET: Final = "bench-attachment"
_SAMPLE_EVERY: Final = 0.05


class AttachmentCase(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    size: int
    e2e_seconds: float  # first byte submitted to the last byte checked at the local system
    e2e_mib_per_s: float
    put_seconds: float  # raw nats-py object store put of as many bytes
    get_seconds: float  # and get
    raw_mib_per_s: float  # size / (put + get)
    ratio: float  # e2e / raw
    peak_rss_bytes: dict[str, int]  # every process, during the end-to-end transfer


def file_blocks(size: int) -> tuple[AsyncIterator[bytes], hashlib._Hash]:
    """`size` bytes of incompressible data, generated block by block, and their digest so far.

    One random block, each copy with its block number in front: cheap enough not to slow the
    sender, and no two blocks alike.
    """
    block = os.urandom(_BLOCK)
    digest = hashlib.sha256()

    async def blocks() -> AsyncIterator[bytes]:
        sent = 0
        number = 0
        while sent < size:
            piece = (number.to_bytes(8, "big") + block[8:])[: size - sent]
            digest.update(piece)
            sent += len(piece)
            number += 1
            yield piece

    return blocks(), digest


async def object_store_round_trip(js: JetStreamContext, size: int) -> tuple[float, float]:
    """Seconds to put `size` bytes into a file-backed object store, and to get them back."""
    data = b"".join([os.urandom(_BLOCK)] * (size // _BLOCK)) + os.urandom(size % _BLOCK)
    try:
        store = await js.create_object_store(
            _BUCKET, config=api.ObjectStoreConfig(storage=api.StorageType.FILE)
        )
        start = time.perf_counter()
        await store.put("file", data)
        put = time.perf_counter() - start
        start = time.perf_counter()
        sink = _Counter()
        # Into a sink: without `writeinto`, nats-py appends chunk by chunk to one bytes object,
        # which is quadratic in the size and would make the baseline absurdly slow.
        await store.get("file", writeinto=sink)
        get = time.perf_counter() - start
        if sink.count != size:
            raise TransportError("the object store gave back other bytes", reason="bench.raw")
        await js.delete_object_store(_BUCKET)
    except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
        raise TransportError(
            f"the object store round trip failed: {type(exc).__name__}", reason="bench.raw"
        ) from exc
    return put, get


class _Counter(io.BufferedIOBase):
    """Where the fetched file goes: counted, not kept."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.count += len(data)
        return len(data)


async def sample_memory(processes: Sequence[Watched]) -> None:
    """Sample every process's memory until cancelled."""
    while True:
        for process in processes:
            process.sample_memory()
        await asyncio.sleep(_SAMPLE_EVERY)


def mib_per_s(size: int, seconds: float) -> float:
    return size / (1024 * 1024) / seconds if seconds > 0 else float("nan")
