"""asyncio helpers for tasks that must end when they are told to: a wait for an event with a
time limit that does not lose a cancellation, and a bounded stop of tasks that names where a
task that did not end is stuck.

Why not ``asyncio.wait_for``: on Python 3.11 it swallows a cancellation that arrives in the
same loop step as the thing awaited completes (CPython gh-86296, fixed in 3.12, where
``wait_for`` is built on ``asyncio.timeout``): it returns the result, the task goes on with
``cancelling()`` still set, and nobody cancels it again. A loop that waits for a wake-up with
a time limit and is cancelled right after being woken then runs on for ever, and whoever
awaits it on shutdown hangs. ``asyncio.timeout`` has no such window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import FrameType
from typing import Any

# How deep :func:`awaiting` follows a chain of awaits (a guard, chains are short).
_MAX_DEPTH = 64


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Waits until ``event`` is set, at most ``timeout`` seconds (None: no limit); whether it
    is set. A cancellation always propagates, even one that arrives as the event is set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


def awaiting(task: asyncio.Task[Any]) -> list[str]:
    """Where ``task`` is suspended: its coroutine, then what each one awaits, outermost
    first, as ``file:line function`` (a compiled frame, such as grpc's, without its line),
    ending with the object awaited last. For a log line: ``Task.get_stack`` shows only the
    outermost coroutine of a suspended task."""
    stack: list[str] = []
    current: Any = task.get_coro()
    while current is not None and len(stack) < _MAX_DEPTH:
        frame = getattr(current, "cr_frame", None) or getattr(current, "gi_frame", None)
        if frame is None:
            stack.append(repr(current))
            break
        stack.append(_where(frame))
        current = getattr(current, "cr_await", None) or getattr(current, "gi_yieldfrom", None)
    return stack


def _where(frame: FrameType) -> str:
    code = frame.f_code
    line = f":{frame.f_lineno}" if frame.f_lineno is not None else ""
    return f"{code.co_filename}{line} {code.co_name}"


async def end_tasks(tasks: Iterable[asyncio.Task[Any]], timeout: float) -> list[asyncio.Task[Any]]:
    """Cancels ``tasks`` and waits up to ``timeout`` seconds for them to end; the ones that
    did not (the caller decides what to do about them: they are still running)."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return []
    _, still = await asyncio.wait(pending, timeout=timeout)
    return [task for task in pending if task in still]
