"""A cancellation a library swallows still stops the loop around it (see bridge._cancel)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bridge._cancel import pause, stop_task


async def _swallowing_request() -> None:
    """What `asyncio.wait_for` on Python 3.11 does when the answer and the cancel coincide."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        return  # the answer "arrived": the cancellation is lost


async def _polling_loop(rounds: list[int]) -> None:
    while True:
        await _swallowing_request()
        rounds.append(1)
        await pause(0.01)


async def test_a_lost_cancellation_stops_the_loop_at_its_next_pause() -> None:
    rounds: list[int] = []
    task = asyncio.create_task(_polling_loop(rounds))
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=30)
    assert task in done
    assert task.cancelled()
    assert rounds == [1]  # the swallowed request returned once; the pause raised


async def test_a_task_group_with_such_a_loop_ends_when_its_task_is_cancelled() -> None:
    # Once aborting, a TaskGroup does not cancel its children again: without the pause's
    # check, the group (and the service stopping it) would wait forever.
    async def service() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(_polling_loop([]))
            group.create_task(asyncio.sleep(3600))

    task = asyncio.create_task(service())
    await asyncio.sleep(0.05)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=30)
    assert task in done
    assert task.cancelled()


async def test_a_stop_does_not_hang_on_a_task_that_will_not_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    released = False

    async def stubborn() -> None:
        while not released:  # no pause: a lost cancellation is never noticed
            await _swallowing_request()

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0.01)
    await stop_task(task, "test work", logging.getLogger("test"), 0.2)
    assert not task.done()
    assert "test work did not stop within 0.2s" in caplog.text
    released = True
    task.cancel()  # swallowed once more; the loop then ends on its own
    await asyncio.wait({task}, timeout=5)
    assert task.done()


async def test_a_stopped_task_that_had_failed_is_named_by_type_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def failing() -> None:
        raise ValueError("client data that must not be logged")

    task = asyncio.create_task(failing())
    await asyncio.wait({task})
    await stop_task(task, "test work", logging.getLogger("test"), 1.0)
    assert "test work had failed: ValueError" in caplog.text
    assert "client data" not in caplog.text
