"""Tasks that end when told to (mesh_core.aio): a cancellation that arrives as the awaited
event is set is not lost (asyncio.wait_for on Python 3.11 loses it), and a bounded stop names
where a task that did not end is stuck."""

from __future__ import annotations

import asyncio

import pytest

from mesh_core.aio import awaiting, end_tasks, wait_event

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


async def stubborn(started: asyncio.Event, release: asyncio.Event) -> None:
    """A task that does not end when cancelled (what a lost cancellation looks like), until
    ``release`` is set."""
    started.set()
    while not release.is_set():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            continue


async def test_end_tasks_returns_the_ones_still_running_and_where_they_are() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    quits = asyncio.create_task(asyncio.sleep(10))
    stays = asyncio.create_task(stubborn(started, release), name="stubborn")
    await started.wait()
    loop = asyncio.get_running_loop()
    begun = loop.time()
    assert await end_tasks([quits, stays], 0.2) == [stays]
    assert loop.time() - begun < 2
    assert quits.cancelled()
    stack = awaiting(stays)
    assert stack[0].endswith(" stubborn") and "test_aio.py:" in stack[0], stack
    assert any(line.endswith(" sleep") for line in stack[1:]), stack
    release.set()
    assert await end_tasks([stays], 1) == []
