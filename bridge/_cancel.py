"""Cancellation that a library lost, made to count at the next pause.

On Python 3.11, nats-py waits for its answers with `asyncio.wait_for`, which returns the answer
instead of raising when a cancellation arrives just as the answer does. The task's
`cancelling()` count stays up, but nothing raises: a loop around such a call runs on, and the
`TaskGroup` that cancelled it waits for it forever (once aborting, a group does not cancel its
children again, however often its own task is cancelled). Every loop that calls NATS therefore
pauses with `pause()` and checks with `raise_if_cancelling()` after a call whose answer it keeps.
"""

from __future__ import annotations

import asyncio
import logging

__all__ = ["pause", "raise_if_cancelling", "stop_task"]


def raise_if_cancelling() -> None:
    """Raise CancelledError if this task was asked to stop but a request swallowed it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def pause(seconds: float) -> None:
    """`asyncio.sleep`, but a cancellation a library swallowed earlier stops the loop here."""
    raise_if_cancelling()
    await asyncio.sleep(seconds)


async def stop_task(task: asyncio.Task[None], what: str, log: logging.Logger, wait: float) -> None:
    """Cancel `task` and wait for it, at most `wait` seconds; log how it had ended.

    A stop must not hang: if the task does not end in time (a loop that never pauses through
    `pause`), that is logged as an error and the caller goes on closing what it holds.
    """
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=wait)
    if not task.done():
        log.error("%s did not stop within %ss of being cancelled", what, wait)
    elif not task.cancelled() and (failure := task.exception()) is not None:
        # The type only: an exception's text may quote what it parsed.
        log.error("%s had failed: %s", what, type(failure).__name__)
