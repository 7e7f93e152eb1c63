"""What a server learns from its ADS sessions, as one typed object of hooks.

:class:`SessionCallbacks` does nothing in every hook; subclass it and override the ones you
need (metrics, a node's liveness for its registrations, the agent's interest in upstream
config). :class:`Callbacks` runs several in order. Hooks run on the session's task,
synchronously: they must only take note or schedule work. A hook that raises a
:class:`~mesh_core.errors.MeshError` from :meth:`SessionCallbacks.on_node` refuses the
stream (the servicer ends it with that error's status).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mesh_xds.session import Request, Session, TypeState


class SessionCallbacks:
    """Hooks of an ADS session; each does nothing unless overridden."""

    __slots__ = ()  # hooks made per stream may declare slots and hold no __dict__

    def on_open(self, session: Session) -> None:
        """A stream started (its node is not known yet)."""

    def on_node(self, session: Session) -> None:
        """The stream's first request named its node (``session.node`` is set). Raising
        refuses the stream."""

    def on_subscribe(self, session: Session, state: TypeState) -> None:
        """The client's subscription to ``state.type_url`` changed."""

    def on_send(self, session: Session, state: TypeState) -> None:
        """A response of ``state.type_url`` is about to be sent."""

    def on_ack(self, session: Session, state: TypeState) -> None:
        """The client accepted the latest response of ``state.type_url``."""

    def on_nack(self, session: Session, state: TypeState) -> None:
        """The client rejected it; ``state.last_nack`` holds its reason."""

    def on_handled(self, session: Session, request: Request) -> None:
        """A request of the client has been handled (answered, if it called for an
        answer)."""

    def on_close(self, session: Session) -> None:
        """The stream ended, for whatever reason."""


class Callbacks(SessionCallbacks):
    """Several :class:`SessionCallbacks`, each hook run on all of them in order."""

    __slots__ = ("_all",)

    def __init__(self, *callbacks: SessionCallbacks) -> None:
        self._all = tuple(callbacks)

    def on_open(self, session: Session) -> None:
        for callbacks in self._all:
            callbacks.on_open(session)

    def on_node(self, session: Session) -> None:
        for callbacks in self._all:
            callbacks.on_node(session)

    def on_subscribe(self, session: Session, state: TypeState) -> None:
        for callbacks in self._all:
            callbacks.on_subscribe(session, state)

    def on_send(self, session: Session, state: TypeState) -> None:
        for callbacks in self._all:
            callbacks.on_send(session, state)

    def on_ack(self, session: Session, state: TypeState) -> None:
        for callbacks in self._all:
            callbacks.on_ack(session, state)

    def on_nack(self, session: Session, state: TypeState) -> None:
        for callbacks in self._all:
            callbacks.on_nack(session, state)

    def on_handled(self, session: Session, request: Request) -> None:
        for callbacks in self._all:
            callbacks.on_handled(session, request)

    def on_close(self, session: Session) -> None:
        for callbacks in self._all:
            callbacks.on_close(session)


NO_CALLBACKS = SessionCallbacks()
