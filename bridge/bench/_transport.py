"""The transport limit: raw nats-py moving a message along bridge's path, and nothing else.

Per message with N recipients, exactly the durable operations a message and its receipts need:

    sender     publish the envelope to its submit subject                 1 write
    "broker"   fetch it, publish a copy to each recipient's inbox, ack    N writes, 1 ack
    recipient  fetch its copy, publish a receipt to its submit subject,   N writes, N acks
               ack
    "broker"   fetch each receipt, publish it to the sender's inbox, ack  N writes, N acks
    sender     fetch each receipt, ack                                    N acks

on bridge's own streams, consumers and NATS identities (provisioned by `bridge.nats.provision`
into a server of its own with bridge's durability settings), with every publish acknowledged
and carrying a `Nats-Msg-Id`, the inbox copies a TTL, the payloads real envelopes of the run's
sizes. No crypto, no records, no status events, no HTTP: what is left is the transport's own
cost, which bounds what bridge can reach on this machine.

All stages run in this process, as fast as they can, with `window` messages in flight end to
end. The rate it reaches is reported, and so is the CPU time nats-server and this process
spent per message; `cores / CPU per message` is the limit the transport puts on the cores
that are there.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from ..errors import TransportError
from ..nats.identities import Credentials, Identity
from ..nats.provision import provision
from ..nats.server import NatsServer, ServerLayout, ServerSettings, configure
from ..nats.subjects import (
    BROKER_CONSUMER,
    inbox_consumer,
    inbox_stream,
    inbox_subject,
    submit_stream,
    submit_subject,
)
from ..nats.transport import bind_pull, connect, fetch, publish_durable
from ._procfs import Watched

__all__ = ["TransportRun", "TransportServer", "stream_sequences"]

_TIMEOUT: Final = 10.0
_FETCH_WAIT: Final = 0.5
_BATCH: Final = 64
_TTL: Final = 14 * 86400  # what the broker attaches for a referral or handover
_HDR_MSG_ID: Final = "Nats-Msg-Id"


async def stream_sequences(js: JetStreamContext) -> dict[str, int]:
    """The last sequence of every stream: the difference between two readings is the number
    of messages stored meanwhile (deleted ones included), i.e. the durable writes."""
    try:
        async with asyncio.timeout(_TIMEOUT):
            infos = await js.streams_info()
    except (TimeoutError, nats.errors.Error, OSError) as exc:
        raise TransportError("cannot read stream info", reason="bench.stream_info") from exc
    return {str(info.config.name): int(info.state.last_seq) for info in infos}


@dataclass(frozen=True)
class TransportRun:
    """What one measurement of the pipeline gave."""

    messages: int
    seconds: float
    cpu_seconds: dict[str, float]  # by process: nats-server, this process
    writes: dict[str, int]  # by stream

    @property
    def msgs_per_second(self) -> float:
        return self.messages / self.seconds


class TransportServer:
    """A provisioned nats-server of its own, and one connection per identity of the path."""

    def __init__(self, root: Path, sender: str, recipients: Sequence[str]) -> None:
        self._root = root
        self._sender = sender
        self._agencies = [sender, *recipients]
        self._stack = contextlib.AsyncExitStack()
        self._js: dict[str, JetStreamContext] = {}
        self._subs: dict[str, JetStreamContext.PullSubscription] = {}
        self._admin_js: JetStreamContext | None = None
        self._ids = itertools.count()
        self._waiting: dict[str, tuple[asyncio.Event, int]] = {}
        self._running = False
        self.processes: list[Watched] = []

    def __repr__(self) -> str:
        return f"TransportServer({self._root}, agencies={self._agencies})"

    async def start(self, pid_of_self: int) -> None:
        layout = ServerLayout(self._root)
        settings = configure(layout, ServerSettings(sync_always=True), self._agencies)
        server = NatsServer.from_layout(layout)
        await server.start()
        self._stack.push_async_callback(server.stop)
        credentials = Credentials(layout.creds_dir)

        async def connected(identity: Identity) -> NATS:
            nc = await connect(
                settings.url,
                credentials.seed_file(identity),
                identity.inbox_prefix,
                f"bridge-bench-transport-{identity.name}",
            )
            self._stack.push_async_callback(_close, nc)
            return nc

        admin = await connected(Identity.admin())
        self._admin_js = admin.jetstream(timeout=_TIMEOUT)
        await provision(self._admin_js, self._agencies)
        broker = (await connected(Identity.broker())).jetstream(timeout=_TIMEOUT)
        self._js["broker"] = broker
        for agency in self._agencies:  # the broker reads every agency's submit stream
            self._subs[f"broker {agency}"] = await bind_pull(
                broker, submit_stream(agency), BROKER_CONSUMER
            )
        for agency in self._agencies:
            js = (await connected(Identity.for_agency(agency))).jetstream(timeout=_TIMEOUT)
            self._js[agency] = js
            self._subs[agency] = await bind_pull(js, inbox_stream(agency), inbox_consumer(agency))
        assert server.pid is not None
        self.processes = [Watched("nats-server", server.pid), Watched("bench", pid_of_self)]

    async def stop(self) -> None:
        await self._stack.aclose()

    async def measure(
        self,
        envelope: bytes,
        receipt: bytes,
        recipients: Sequence[str],
        *,
        seconds: float,
        window: int,
    ) -> TransportRun:
        """Run the path for about `seconds` with `window` messages in flight; then drain it."""
        assert self._admin_js is not None
        before = await stream_sequences(self._admin_js)
        for process in self.processes:
            process.mark_cpu()
        start = time.perf_counter()
        deadline = start + seconds
        done = 0

        async def sender() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await self._one(envelope, recipients)
                done += 1

        # The stages stop at their next empty-handed fetch, not by cancellation: a cancelled
        # fetch would leave its pull request on the server for the next measurement.
        self._running = True
        async with asyncio.TaskGroup() as tg:
            for agency in (self._sender, *recipients):
                tg.create_task(self._broker(agency, receipt_from=recipients))
            tg.create_task(self._sender_inbox())
            for r in recipients:
                tg.create_task(self._recipient(r, receipt))
            try:
                async with asyncio.TaskGroup() as senders:
                    for _ in range(window):
                        senders.create_task(sender())
            finally:
                self._running = False
        elapsed = time.perf_counter() - start
        cpu = {p.name: p.cpu_since_mark() for p in self.processes}
        after = await stream_sequences(self._admin_js)
        writes = {name: after[name] - before.get(name, 0) for name in after}
        return TransportRun(messages=done, seconds=elapsed, cpu_seconds=cpu, writes=writes)

    async def _one(self, envelope: bytes, recipients: Sequence[str]) -> None:
        message_id = f"t-{next(self._ids)}"
        event = asyncio.Event()
        self._waiting[message_id] = (event, len(recipients))
        await publish_durable(
            self._js[self._sender],
            submit_subject(self._sender),
            envelope,
            msg_id=message_id,
            timeout=_TIMEOUT,
        )
        try:
            async with asyncio.timeout(60.0):
                await event.wait()
        except TimeoutError as exc:
            raise TransportError(
                "a message did not come round the transport path", reason="bench.lost"
            ) from exc

    async def _pulled(self, who: str) -> list[Msg]:
        return await fetch(self._subs[who], _BATCH, _FETCH_WAIT)

    async def _broker(self, submitter: str, receipt_from: Sequence[str]) -> None:
        js = self._js["broker"]
        senders = {submit_subject(r): r for r in receipt_from}

        async def route(msg: Msg) -> None:
            msg_id = (msg.headers or {})[_HDR_MSG_ID]
            # A receipt goes on to the sender, a message to its recipients.
            receipt = msg.subject in senders
            targets = [self._sender] if receipt else self._waiting_recipients(msg_id)
            await asyncio.gather(
                *(
                    publish_durable(
                        js,
                        inbox_subject(target),
                        msg.data,
                        msg_id=f"{msg_id}.{target}",
                        ttl=_TTL,
                        timeout=_TIMEOUT,
                    )
                    for target in targets
                )
            )
            await msg.ack()

        while self._running:
            msgs = await self._pulled(f"broker {submitter}")
            await asyncio.gather(*(route(msg) for msg in msgs))

    def _waiting_recipients(self, msg_id: str) -> list[str]:
        _, count = self._waiting[msg_id]
        return self._agencies[1 : 1 + count]

    async def _recipient(self, agency: str, receipt: bytes) -> None:
        js = self._js[agency]

        async def answer(msg: Msg) -> None:
            copy_id = (msg.headers or {})[_HDR_MSG_ID]
            await publish_durable(
                js, submit_subject(agency), receipt, msg_id=f"r.{copy_id}", timeout=_TIMEOUT
            )
            await msg.ack()

        while self._running:
            msgs = await self._pulled(agency)
            await asyncio.gather(*(answer(msg) for msg in msgs))

    async def _sender_inbox(self) -> None:
        while self._running:
            for msg in await self._pulled(self._sender):
                # r.<message id>.<recipient>.<sender>
                message_id = (msg.headers or {})[_HDR_MSG_ID].split(".")[1]
                await msg.ack()
                event, left = self._waiting[message_id]
                if left <= 1:
                    del self._waiting[message_id]
                    event.set()
                else:
                    self._waiting[message_id] = (event, left - 1)


async def _close(nc: NATS) -> None:
    with contextlib.suppress(TimeoutError, nats.errors.Error, OSError):
        async with asyncio.timeout(5.0):
            await nc.close()
