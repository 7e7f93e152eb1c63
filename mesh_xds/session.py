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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Protocol, TypeVar

import structlog
from envoy.config.core.v3 import base_pb2

from mesh_core.errors import NoConfigError, ProtocolError
from mesh_xds.callbacks import NO_CALLBACKS, SessionCallbacks
from mesh_xds.snapshot import Snapshot, SnapshotSource
from mesh_xds.types import ResourceName, TypeUrl, Version, short_name

log = structlog.get_logger(__name__)

WILDCARD: Final = "*"
_CHANGED: Final = "changed"
_CLOSED: Final = "closed"
_stream_ids = itertools.count(1)


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
    names: set[ResourceName] = field(default_factory=set)
    nonce: str = ""
    sent: dict[ResourceName, str] | None = None  # name -> digest last sent; None: nothing yet
    sent_version: Version = ""
    acked_version: Version = ""
    last_nack: Nack | None = None
    responses: int = 0
    change_at: float | None = None  # monotonic time of the change pushed, until ACKed
    converged_in: float | None = None  # set by the ACK of a pushed change: seconds since it


class BaseSession(Generic[RequestT, ResponseT]):
    """Serves one ADS stream; subclasses implement :meth:`_handle` (one request) and
    :meth:`_push_all` (a snapshot change). Everything runs on one task."""

    kind: str = ""
    """A suffix of :attr:`stream_id` naming the flavour (``-delta``)."""

    def __init__(
        self,
        source: SnapshotSource,
        send: Callable[[ResponseT], Awaitable[None]],
        *,
        peer: str = "",
        server_id: str = "",
        callbacks: SessionCallbacks = NO_CALLBACKS,
    ) -> None:
        self._source = source
        self._send = send
        self._server_id = server_id
        self.callbacks = callbacks
        self._nonces = itertools.count(1)
        self._queue: asyncio.Queue[RequestT | str] = asyncio.Queue()
        self._change_pending = False
        self.stream_id = f"{server_id or 'ads'}-{next(_stream_ids)}{self.kind}"
        self.peer = peer
        self.node: base_pb2.Node | None = None
        self.connected_at = time.time()
        self.types: dict[TypeUrl, TypeState] = {}
        self.snapshot: Snapshot | None = None
        self.log = log.bind(stream=self.stream_id, peer=peer)

    @property
    def node_id(self) -> str:
        return self.node.id if self.node is not None else ""

    async def run(self, requests: AsyncIterator[RequestT]) -> None:
        """Serves until the client half-closes the stream or an error ends it."""
        unsubscribe = self._source.subscribe(self._snapshot_changed)
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                item = await self._queue.get()
                if item is _CLOSED:
                    break
                if item is _CHANGED:
                    self._change_pending = False
                    await self._push_all()
                else:
                    assert not isinstance(item, str)
                    await self._handle(item)
                    self.callbacks.on_handled(self, item)
        finally:
            unsubscribe()
            reader.cancel()
            # Surface a read error (a client's broken stream) to the caller.
            if reader.done() and not reader.cancelled():
                error = reader.exception()
                if error is not None:
                    raise error

    async def _read(self, requests: AsyncIterator[RequestT]) -> None:
        try:
            async for request in requests:
                self._queue.put_nowait(request)
        finally:
            self._queue.put_nowait(_CLOSED)

    def _snapshot_changed(self) -> None:
        if not self._change_pending:
            self._change_pending = True
            self._queue.put_nowait(_CHANGED)

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
        self.node = request.node
        self.log = self.log.bind(node=self.node.id)
        self.callbacks.on_node(self)
        self.log.info("node connected", zone=self.node.locality.zone)

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
        if request.response_nonce == state.nonce:
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
        state.acked_version = version
        state.converged_in = None
        if state.change_at is not None and version == state.sent_version:
            state.converged_in = time.monotonic() - state.change_at
            state.change_at = None
        self.callbacks.on_ack(self, state)

    def _sending(self, state: TypeState, snapshot: Snapshot, *, pushed: bool) -> str:
        """Book-keeping of a response about to go out; returns its nonce. ``pushed``: sent
        because the config changed, not because the client asked."""
        nonce = str(next(self._nonces))
        state.nonce = nonce
        state.change_at = snapshot.changed_at if pushed else None
        state.responses += 1
        self.callbacks.on_send(self, state)
        return nonce


Session = BaseSession[Any, Any]
"""A session of either flavour, as hooks, registries and status see it."""
