"""One way to announce a change: a :class:`Signal` holds callbacks and calls them in order.

Plain state objects (the snapshot cache, the agent's config cache, health table and
breakers, registrations) own signals; transport code connects to them. Callbacks run
synchronously, in the order they were connected, from inside the call that changed the
state: they must only take note or schedule work (set an event, queue a task), not do it.
A signal is owned by its object's event loop (or thread) and is not itself thread-safe.
A :class:`GuardedSignal` logs a callback's exception and still calls the others, for state
objects that must not be left half-way through a change by a bug in one observer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, ParamSpec

import structlog

P = ParamSpec("P")
log = structlog.get_logger(__name__)


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


class GuardedSignal(Signal[P]):
    """A :class:`Signal` whose callbacks' exceptions are logged (as ``event``, with
    ``fields``) instead of raised."""

    __slots__ = ("_event", "_fields")

    def __init__(self, event: str, **fields: Any) -> None:
        super().__init__()
        self._event = event
        self._fields = fields

    def connect(self, callback: Callable[P, None]) -> Callable[[], None]:
        def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
            try:
                callback(*args, **kwargs)
            except Exception:
                log.exception(self._event, **self._fields)

        return super().connect(guarded)
