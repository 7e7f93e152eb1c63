"""One way to announce a change: a :class:`Signal` holds callbacks and calls them in order.

Plain state objects (the snapshot cache, the agent's config cache, health table and
breakers, registrations) own signals; transport code connects to them. Callbacks run
synchronously, in the order they were connected, from inside the call that changed the
state: they must only take note or schedule work (set an event, queue a task), not do it.
A signal is owned by its object's event loop (or thread) and is not itself thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, ParamSpec

P = ParamSpec("P")


class Signal(Generic[P]):
    """Callbacks taking the arguments ``P``, called by :meth:`emit`."""

    __slots__ = ("_callbacks",)

    def __init__(self) -> None:
        self._callbacks: list[Callable[P, None]] = []

    def connect(self, callback: Callable[P, None]) -> Callable[[], None]:
        """Calls ``callback`` at every :meth:`emit` from now on; returns the function that
        disconnects it (safe to call more than once)."""
        self._callbacks.append(callback)

        def disconnect() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return disconnect

    def emit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Calls every connected callback with these arguments. One connected or
        disconnected meanwhile is (respectively) not called this time, or still called."""
        for callback in list(self._callbacks):
            callback(*args, **kwargs)

    def __len__(self) -> int:
        return len(self._callbacks)
