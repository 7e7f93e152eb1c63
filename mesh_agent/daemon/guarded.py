"""A :class:`~mesh_core.signals.Signal` for the agent's plain state objects (breakers, the
health table): an observer that raises is logged and the others are still called, so a bug in
one observer cannot leave the object that announced a change half-way through it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec

import structlog

from mesh_core.signals import Signal

P = ParamSpec("P")
log = structlog.get_logger(__name__)


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


__all__ = ["GuardedSignal"]
