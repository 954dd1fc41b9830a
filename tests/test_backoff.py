"""Reconnects and fetch retries wait growing, capped, jittered pauses, and start over after a
success: the policy itself, a fetch loop against a consumer that disappears and comes back, and
a client whose nats-server stops and starts again."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from typing import Any

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from bridge.nats.backoff import BACKOFF_INITIAL, BACKOFF_MAXIMUM, Backoff
from bridge.nats.identities import Identity
from bridge.nats.transport import Fetcher, bind_pull, connect


class RecordingBackoff(Backoff):
    """A real `Backoff` that also keeps every pause it handed out."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pauses: list[float] = []

    def next(self) -> float:
        pause = super().next()
        self.pauses.append(pause)
        return pause


async def until(what: str, check: Callable[[], bool], within: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {within:g}s: {what}")
        await asyncio.sleep(0.02)


def test_pauses_double_up_to_the_cap_and_start_over_after_a_reset() -> None:
    backoff = Backoff(jitter=0.0)
    pauses = [backoff.next() for _ in range(12)]
    assert pauses[0] == BACKOFF_INITIAL
    assert all(b == min(2 * a, BACKOFF_MAXIMUM) for a, b in itertools.pairwise(pauses))
    assert pauses[-3:] == [BACKOFF_MAXIMUM] * 3
    assert backoff.failures == 12
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next() == BACKOFF_INITIAL


def test_jitter_takes_up_to_half_of_each_pause_and_varies() -> None:
    backoff = Backoff(1.0, 8.0, rng=random.Random(7))
    ceilings = [1.0, 2.0, 4.0, 8.0] + [8.0] * 40
    pauses = [backoff.next() for _ in ceilings]
    assert all(c / 2 <= p <= c for p, c in zip(pauses, ceilings, strict=True))
    assert len({round(p, 6) for p in pauses[4:]}) > 30  # at the cap, not all the same


def test_a_failure_count_far_beyond_the_cap_stays_at_the_cap() -> None:
    backoff = Backoff(jitter=0.0)
    for _ in range(5000):
        pause = backoff.next()
    assert pause == BACKOFF_MAXIMUM


@pytest.mark.parametrize(
    ("initial", "maximum", "jitter"), [(0.0, 1.0, 0.5), (2.0, 1.0, 0.5), (0.1, 1.0, 1.0)]
)
def test_a_nonsensical_policy_is_refused(initial: float, maximum: float, jitter: float) -> None:
    with pytest.raises(ValueError, match=r"want|jitter"):
        Backoff(initial, maximum, jitter=jitter)


async def test_a_fetcher_backs_off_while_fetches_fail_and_starts_over_after_one_succeeds(
    nats_env: Any,
) -> None:
    admin = await nats_env.admin()
    consumer = ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT)
    await admin.js.add_stream(StreamConfig(name="BACKOFF", subjects=["backoff.x"]))
    await admin.js.add_consumer("BACKOFF", consumer)
    sub = await bind_pull(admin.js, "BACKOFF", "c")
    await admin.js.delete_consumer("BACKOFF", "c")  # every fetch is now refused

    backoff = RecordingBackoff(0.01, 0.08, jitter=0.0)
    slept: list[float] = []

    async def sleep(pause: float) -> None:
        slept.append(pause)
        if len(slept) == 6:  # the consumer comes back during the sixth pause
            await admin.js.add_consumer("BACKOFF", consumer)
            await admin.js.publish("backoff.x", b"waiting")

    fetcher = Fetcher(sub, what="test", wait=0.5, backoff=backoff, sleep=sleep)
    got = []
    while not got:
        got = await fetcher.fetch(4)
    assert [m.data for m in got] == [b"waiting"]
    assert slept == backoff.pauses == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08]
    assert fetcher.failed == 6
    assert backoff.failures == 0  # the success started it over
    await got[0].ack()


async def test_a_client_reconnects_with_growing_pauses_and_starts_over_once_back(
    nats_env: Any,
) -> None:
    identity = Identity.admin()
    backoff = RecordingBackoff(0.02, 0.16)
    reconnected = asyncio.Event()

    async def on_reconnected() -> None:
        reconnected.set()

    nc = await connect(
        nats_env.url,
        nats_env.seed_file(identity),
        identity.inbox_prefix,
        "test-backoff",
        connect_timeout=1,
        reconnect_backoff=backoff,
        reconnected_cb=on_reconnected,
        error_cb=lambda exc: asyncio.sleep(0),
    )
    try:
        await nats_env.server.stop()
        await until("eight refused reconnects", lambda: backoff.failures >= 8)
        ceilings = [min(0.16, 0.02 * 2**n) for n in range(len(backoff.pauses))]
        assert all(c / 2 <= p <= c for p, c in zip(backoff.pauses, ceilings, strict=True))
        assert max(backoff.pauses) > 0.08  # it grew past the first pauses
        await nats_env.server.start()
        await asyncio.wait_for(reconnected.wait(), 60)
        assert nc.is_connected
        assert backoff.failures == 0
        await nc.flush(timeout=5)
    finally:
        await nc.close()
