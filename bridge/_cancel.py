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

__all__ = ["pause", "raise_if_cancelling"]


def raise_if_cancelling() -> None:
    """Raise CancelledError if this task was asked to stop but a request swallowed it."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def pause(seconds: float) -> None:
    """`asyncio.sleep`, but a cancellation a library swallowed earlier stops the loop here."""
    raise_if_cancelling()
    await asyncio.sleep(seconds)
