"""A fast backlog for `bench e2e`'s memory measurement: envelopes stored as the broker routes them.

Through HTTP, 100,000 waiting messages take about half an hour to fill on the development
machine: the sending adapter seals each, and the broker checks and routes it with some 24
durable writes. What the memory measurement needs is the state a recipient that is offline for
days leaves behind, not the path that built it: the envelopes in its inbox stream and the
broker's pending note on each (`BRIDGE_PENDING`, which the broker's expiry watch reads). So
`fill_inbox` seals real envelopes with the sending agency's own keys (in worker processes, one
per core) and stores each exactly as the broker's routing stores a copy, as the broker's NATS
identity: into the recipient's inbox with the broker's message id, consent and sender headers
and a TTL, then its pending note. Two durable writes per message instead of about 24, and no
HTTP: 100,000 fill in a few minutes.
"""

from __future__ import annotations

import asyncio
import collections
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Final

from ..broker import inbox_msg_id

# NOTE: the broker's own note keeper, so that the notes are the ones the broker writes.
from ..broker._expiry import ExpiryWatch
from ..config import load_adapter_config, load_broker_config
from ..crypto import Keyring, seal
from ..federation.directory import Directory, load_anchor
from ..ids import new_message_id
from ..nats.identities import Identity
from ..nats.subjects import HDR_CONSENT, HDR_SENDER, inbox_subject
from ..nats.transport import connect, publish_durable
from ..up.layout import StateLayout
from ._timing import Progress

__all__ = ["fill_inbox"]

_CHUNK: Final = 200  # envelopes one worker seals per task
_IN_FLIGHT: Final = 256  # copies being stored at once
_LIFETIME: Final = 7 * 86400  # a message that can wait a week
_TIMEOUT: Final = 30.0

# Set in each sealing worker by `_load_sender`.
_sealer: tuple[Keyring, Directory] | None = None


def _load_sender(keys_dir: str, directory_file: str, anchor_file: str) -> None:
    global _sealer
    directory = Directory.load_file(Path(directory_file), load_anchor(Path(anchor_file)))
    _sealer = (Keyring.load(Path(keys_dir)), directory)


def _seal_chunk(
    count: int, body: bytes, recipient: str, consents: Sequence[str], now: int
) -> list[tuple[str, str, bytes]]:
    """`count` envelopes as the sending adapter seals them: (message id, consent, bytes)."""
    assert _sealer is not None
    keyring, directory = _sealer
    out = []
    for i in range(count):
        message_id = new_message_id()
        consent = consents[i % len(consents)]
        envelope = seal(
            body,
            message_type="handover",
            sender=keyring,
            recipients=[recipient],
            directory=directory,
            consent=consent,
            purpose="integration-support",
            categories=["identity", "contact", "addiction"],
            lifetime=_LIFETIME,
            message_id=message_id,
            now=now,
        )
        out.append((message_id, consent, envelope))
    return out


async def fill_inbox(
    layout: StateLayout,
    nats_url: str,
    broker_seed: Path,
    *,
    sender: str,
    recipient: str,
    consents: tuple[str, ...],
    body: bytes,
    count: int,
    progress: Progress,
) -> None:
    """Store `count` sealed envelopes from `sender` in `recipient`'s inbox, as routed."""
    adapter = load_adapter_config(layout.adapter_config(sender))
    expiry = load_broker_config(layout.broker_config).expiry
    workers = max(1, min(4, os.cpu_count() or 1))
    now = int(time.time())
    nc = await connect(
        nats_url, broker_seed, Identity.broker().inbox_prefix, "bridge-bench-backlog"
    )
    try:
        js = nc.jetstream(timeout=_TIMEOUT)
        watch = ExpiryWatch(
            js,
            _no_audit,
            check_seconds=float(expiry.check_seconds),
            warn_fraction=expiry.warn_fraction,
            timeout=_TIMEOUT,
            clock=time.time,
        )
        slots = asyncio.Semaphore(_IN_FLIGHT)

        async def store(message_id: str, consent: str, envelope: bytes) -> None:
            try:
                ack = await publish_durable(
                    js,
                    inbox_subject(recipient),
                    envelope,
                    msg_id=inbox_msg_id(sender, message_id, recipient),
                    headers={HDR_CONSENT: consent, HDR_SENDER: sender},
                    ttl=_LIFETIME,
                    timeout=_TIMEOUT,
                )
                note = watch.note(
                    message_id=message_id,
                    sender=sender,
                    recipient=recipient,
                    message_type="handover",
                    consent=consent,
                    seq=ack.seq,
                    now=int(time.time()),
                    ttl=_LIFETIME,
                )
                await watch.put(note)
            finally:
                slots.release()

        pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_load_sender,
            initargs=(
                str(adapter.path(adapter.keys_dir)),
                str(adapter.path(adapter.directory.file)),
                str(adapter.path(adapter.directory.anchor)),
            ),
        )
        loop = asyncio.get_running_loop()
        sizes = collections.deque(min(_CHUNK, count - start) for start in range(0, count, _CHUNK))
        done, step = 0, max(_CHUNK, count // 10 // _CHUNK * _CHUNK)

        def next_chunk() -> asyncio.Future[list[tuple[str, str, bytes]]]:
            n = sizes.popleft()
            return loop.run_in_executor(pool, _seal_chunk, n, body, recipient, consents, now)

        try:
            async with asyncio.TaskGroup() as tg:
                # Sealing runs ahead of storing by at most two chunks per worker.
                sealing = collections.deque(
                    next_chunk() for _ in range(min(2 * workers, len(sizes)))
                )
                while sealing:
                    chunk = await sealing.popleft()
                    if sizes:
                        sealing.append(next_chunk())
                    for item in chunk:
                        await slots.acquire()
                        tg.create_task(store(*item))
                    done += len(chunk)
                    if done % step == 0 or done == count:
                        progress(f"memory: {done:,} of {count:,} stored in the inbox")
        finally:
            pool.shutdown(cancel_futures=True)
    finally:
        await nc.close()


async def _no_audit(_items: object) -> None:
    """`fill_inbox` only writes notes; the expiry watch records nothing while doing so."""
