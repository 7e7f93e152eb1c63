"""asyncio helpers for tasks that must end when they are told to: a wait for an event with a
time limit that does not lose a cancellation.

Why not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives in the
same loop step as the thing awaited completes (CPython gh-86296, fixed in 3.12, where
``wait_for`` is built on ``asyncio.timeout``): it returns the result, the task goes on with
``cancelling()`` still set, and nobody cancels it again. A loop that waits for a wake-up with
a time limit and is cancelled right after being woken then runs on for ever, and whoever
awaits it on shutdown hangs. ``asyncio.timeout`` has no such window.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Waits until ``event`` is set, at most ``timeout`` seconds; whether it is set. A
    cancellation always propagates, even one that arrives as the event is set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True
