"""Tasks that end when told to (mesh_core.aio): a cancellation that arrives as the awaited
event is set is not lost (asyncio.wait_for on Python 3.11 loses it)."""

from __future__ import annotations

import asyncio

import pytest

from mesh_core.aio import wait_event

pytestmark = pytest.mark.timeout(10)


async def wake_loop(wake: asyncio.Event, rounds: list[int]) -> None:
    """The shape of a sync loop: work, then wait for a wake-up or the interval."""
    while True:
        wake.clear()
        rounds.append(len(rounds))
        await wait_event(wake, 0.05)


async def test_a_cancellation_arriving_with_the_wake_up_ends_the_loop() -> None:
    wake, rounds = asyncio.Event(), []
    task = asyncio.create_task(wake_loop(wake, rounds))
    await asyncio.sleep(0.02)
    wake.set()  # in the same loop step as the cancellation, as on a server's stop
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1)
    assert done and task.cancelled(), f"still running after {len(rounds)} rounds"


async def test_wait_event_says_whether_the_event_came() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_event(event, 5) is True
