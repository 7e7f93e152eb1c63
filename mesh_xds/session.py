"""What the two flavours of ADS stream share, apart from any transport.

A session reads requests from an async iterator and writes responses through a send
coroutine; the gRPC servicer wires it to a real stream and tests wire it to a fake one.
:class:`BaseSession` holds what both flavours need: the node (taken from the stream's first
request, which must name it), the one task that handles requests and snapshot changes in
order (so nothing here needs a lock), the per-type state that status and CSDS read
(:class:`TypeState`), ACK and NACK book-keeping, and the hooks
(:class:`~mesh_xds.callbacks.SessionCallbacks`). The protocol rules of each flavour live in
its sibling: :class:`mesh_xds.sotw.SotwSession` (state of the world) and
:class:`mesh_xds.delta.DeltaSession` (incremental).

Convergence: when a config change is pushed to a stream already subscribed to the type, the
ACK of that version sets ``TypeState.converged_in`` to the seconds from the change
(:attr:`~mesh_xds.snapshot.Snapshot.changed_at`) to the ACK, once per version. Responses to
requests (a node connecting or changing its subscription) are not counted, so a node that
connects late and is sent an old version does not count the time since that old change.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

import structlog
from envoy.config.core.v3 import base_pb2

from mesh_core.errors import NoConfigError, ProtocolError
from mesh_xds.callbacks import NO_CALLBACKS, SessionCallbacks
from mesh_xds.snapshot import Snapshot, SnapshotSource
from mesh_xds.types import ResourceName, TypeUrl, Version, short_name

log = structlog.get_logger(__name__)

WILDCARD: Final = "*"
_stream_ids = itertools.count(1)
_SHARED_LIMIT: Final = 4096
_shared: dict[Hashable, Hashable] = {}
NO_NAMES: Final[frozenset[ResourceName]] = frozenset()
H = TypeVar("H", bound=Hashable)


def _one_of(value: H) -> H:
    """One object for equal values, process-wide, on the event loop; forgotten when it grows
    past a bound, which only costs sharing."""
    found = _shared.get(value)
    if found is None:
        if len(_shared) >= _SHARED_LIMIT:
            _shared.clear()
        found = _shared[value] = value
    return found  # type: ignore[return-value]


def shared_names(names: frozenset[ResourceName]) -> frozenset[ResourceName]:
    """One object for equal sets of names, so that the many streams subscribed alike hold one
    set (and one copy of each name) between them."""
    return _one_of(names) if names else NO_NAMES


def shared_request(names: tuple[ResourceName, ...]) -> tuple[ResourceName, ...]:
    """One object for equal lists of names as requested (state of the world keeps the latest
    to tell an ACK that repeats them at once), shared like :func:`shared_names`."""
    return _one_of(names) if names else ()


class Request(Protocol):
    """What both flavours' requests carry."""

    type_url: str
    response_nonce: str

    def HasField(self, name: str) -> bool: ...

    @property
    def node(self) -> base_pb2.Node: ...

    @property
    def error_detail(self) -> Any: ...


RequestT = TypeVar("RequestT", bound=Request)
ResponseT = TypeVar("ResponseT")


@dataclass(slots=True)
class Nack:
    version: Version
    message: str
    at: float


@dataclass(slots=True)
class TypeState:
    """What one stream knows of one resource type, as status and CSDS read it. Owned by its
    session's task."""

    type_url: TypeUrl
    wildcard: bool = False
    names: frozenset[ResourceName] = NO_NAMES  # shared between streams (shared_names)
    nonce: int = 0  # of the last response sent; 0: none yet
    sent: dict[ResourceName, str] | None = None  # name -> digest last sent; None: nothing yet
    sent_version: Version = ""
    acked_version: Version = ""
    last_nack: Nack | None = None
    responses: int = 0
    change_at: float | None = None  # monotonic time of the change pushed, until ACKed
    converged_in: float | None = None  # set by the ACK of a pushed change: seconds since it


class BaseSession(Generic[RequestT, ResponseT]):
    """Serves one ADS stream; subclasses implement :meth:`_handle` (one request) and
    :meth:`_push_all` (a snapshot change), one at a time (see :meth:`run`), so nothing here
    needs a lock."""

    kind: str = ""
    """A suffix of :attr:`stream_id` naming the flavour (``-delta``)."""

    __slots__ = (
        "_busy",
        "_change_pending",
        "_failure",
        "_node_id",
        "_nonce",
        "_pusher",
        "_send",
        "_server_id",
        "_source",
        "_task",
        "callbacks",
        "connected_at",
        "node",
        "peer",
        "snapshot",
        "stream_id",
        "types",
    )

    def __init__(
        self,
        source: SnapshotSource,
        send: Callable[[bytes], Awaitable[None]],
        *,
        peer: str = "",
        server_id: str = "",
        callbacks: SessionCallbacks = NO_CALLBACKS,
    ) -> None:
        """``send`` writes one response, serialised (:mod:`mesh_xds.wire`)."""
        self._source = source
        self._send = send
        self._server_id = server_id
        self.callbacks = callbacks
        self._nonce = 0
        self._change_pending = False
        self._busy = False  # a request or a push is being handled (and may be sending)
        self._pusher: asyncio.Task[None] | None = None
        self._task: asyncio.Task[Any] | None = None
        self._failure: BaseException | None = None
        self.stream_id = f"{server_id or 'ads'}-{next(_stream_ids)}{self.kind}"
        self.peer = peer
        self.node: base_pb2.Node | None = None
        self._node_id = ""
        self.connected_at = time.time()
        self.types: dict[TypeUrl, TypeState] = {}
        self.snapshot: Snapshot | None = None

    @property
    def log(self) -> Any:
        """The module's logger bound to this stream (and its node, once known). Built when
        used: a stream logs rarely, and an idle one should not hold a logger."""
        if self.node is None:
            return log.bind(stream=self.stream_id, peer=self.peer)
        return log.bind(stream=self.stream_id, peer=self.peer, node=self._node_id)

    @property
    def node_id(self) -> str:
        return self._node_id

    async def run(self, requests: AsyncIterator[RequestT]) -> None:
        """Serves until the client half-closes the stream or an error ends it.

        Requests are handled on the caller's task, as they are read. A config change that
        comes while that task waits for the next request is pushed by a short-lived task of
        its own; one that comes while a request is being handled is pushed right after it.
        Either way one thing at a time: a request read during a push waits for the push to
        end, so responses go out in the order of the events behind them. A push that fails
        ends the stream with its error."""
        self._task = asyncio.current_task()
        unsubscribe = self._source.subscribe(self._snapshot_changed)
        try:
            async for request in requests:
                if self._pusher is not None:
                    await self._pusher
                self._busy = True
                try:
                    await self._handle(request)
                    self.callbacks.on_handled(self, request)
                    del request  # not kept while the stream waits for the next
                    while self._change_pending:
                        self._change_pending = False
                        await self._push_all()
                finally:
                    self._busy = False
        except asyncio.CancelledError:
            failure = self._failure
            if failure is None:
                raise
            if self._task is not None:
                self._task.uncancel()
            raise failure from None
        finally:
            unsubscribe()
            pusher, self._pusher, self._task = self._pusher, None, None
            if pusher is not None:
                pusher.cancel()

    def _snapshot_changed(self) -> None:
        if self._change_pending:
            return
        self._change_pending = True
        if not self._busy and self._task is not None:
            self._busy = True
            self._pusher = asyncio.get_running_loop().create_task(self._push_changes())

    async def _push_changes(self) -> None:
        """A push while the stream's task waits for a request; a failure ends the stream."""
        try:
            while self._change_pending:
                self._change_pending = False
                await self._push_all()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # handed to the stream's task, which raises it
            self._failure = error
            if self._task is not None:
                self._task.cancel()
        finally:
            self._busy = False
            self._pusher = None

    async def _handle(self, request: RequestT) -> None:
        raise NotImplementedError

    async def _push_all(self) -> None:
        raise NotImplementedError

    # -- what both flavours do ------------------------------------------------------------------

    def _know_node(self, request: RequestT) -> None:
        """Takes the node from the stream's first request and tells the hooks, which may
        refuse it (raising)."""
        if self.node is not None:
            return
        if not request.HasField("node") or not request.node.id:
            raise ProtocolError("the first request on a stream must carry node.id")
        node = base_pb2.Node()
        node.CopyFrom(request.node)  # not a view that would keep the whole request alive
        self.node = node
        self._node_id = node.id  # one string, however often it is asked for
        self.callbacks.on_node(self)
        log.info(
            "node connected",
            stream=self.stream_id,
            peer=self.peer,
            node=self._node_id,
            zone=node.locality.zone,
        )

    def _current(self) -> Snapshot | None:
        """The snapshot to serve from (kept in :attr:`snapshot`), or None while there is
        none yet; raises :class:`NoConfigError` when none will come for a while."""
        if self.node is None:
            return None
        if not self._source.loaded:
            reason = self._source.unavailable()
            if reason:
                raise NoConfigError(reason)
            return None
        self.snapshot = self._source.snapshot_for(self.node)
        return self.snapshot

    def _fresh(self, state: TypeState, request: RequestT) -> bool:
        """Whether ``request`` answers the latest response of its type: its nonce is the one
        last sent. A request with any other nonce is stale and its ACK or NACK is ignored."""
        if state.nonce and request.response_nonce == str(state.nonce):
            return True
        self.log.debug(
            "stale nonce ignored", type=short_name(state.type_url), nonce=request.response_nonce
        )
        return False

    def _nacked(self, state: TypeState, request: RequestT) -> None:
        state.last_nack = Nack(state.sent_version, request.error_detail.message, time.time())
        self.log.warning(
            "config rejected (NACK)",
            type=short_name(state.type_url),
            version=state.sent_version,
            error=request.error_detail.message,
        )
        state.change_at = None
        self.callbacks.on_nack(self, state)

    def _acked(self, state: TypeState, version: Version) -> None:
        # The string sent rather than the request's copy of it, which would live per stream.
        state.acked_version = state.sent_version if version == state.sent_version else version
        state.converged_in = None
        if state.change_at is not None and version == state.sent_version:
            state.converged_in = time.monotonic() - state.change_at
            state.change_at = None
        self.callbacks.on_ack(self, state)

    def _sending(self, state: TypeState, snapshot: Snapshot, *, pushed: bool) -> str:
        """Book-keeping of a response about to go out; returns its nonce. ``pushed``: sent
        because the config changed, not because the client asked."""
        self._nonce += 1
        state.nonce = self._nonce
        nonce = str(self._nonce)
        state.change_at = snapshot.changed_at if pushed else None
        state.responses += 1
        self.callbacks.on_send(self, state)
        return nonce


Session = BaseSession[Any, Any]
"""A session of either flavour, as hooks, registries and status see it."""
