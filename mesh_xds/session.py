"""The state-of-the-world ADS protocol for one stream, apart from any transport.

:class:`AdsSession` reads ``DiscoveryRequest`` messages from an async iterator and writes
``DiscoveryResponse`` messages through a send coroutine; the gRPC servicer wires it to a
real stream and tests wire it to a fake one. It keeps, per type URL, the subscription, the
last nonce, what was sent and what the client ACKed or NACKed, following
``xds_protocol.rst``:

- ``version_info`` in a request is the last version the client accepted; a request with
  ``error_detail`` set is a NACK, recorded with its text. A NACKed version is never resent:
  a response goes out only when what the client is subscribed to changes.
- A request whose ``response_nonce`` is not the latest sent for its type is stale and ignored.
- LDS, CDS and our policy type are full state (a response carries every subscribed resource)
  and take wildcard subscriptions: the name ``*``, or (LDS and CDS only) a first request
  with no names.
  For RDS and EDS only new or changed resources trigger a response.
- Names requested before they exist are remembered and pushed when they appear.
- A first request that carries the version the client already holds (a reconnect) gets no
  response until something changes.

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
from typing import Final

import structlog
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from mesh_xds.snapshot import Resource, Snapshot, SnapshotSource, version_of
from mesh_xds.types import (
    ALL_TYPES,
    FULL_STATE,
    LEGACY_WILDCARD,
    PUSH_ORDER,
    ResourceName,
    TypeUrl,
    Version,
    short_name,
)

log = structlog.get_logger(__name__)

WILDCARD: Final = "*"
Send = Callable[[discovery_pb2.DiscoveryResponse], Awaitable[None]]
_CHANGED: Final = "changed"
_CLOSED: Final = "closed"


class ProtocolError(Exception):
    """The client broke the protocol; the stream ends with INVALID_ARGUMENT."""


class NodeRefused(Exception):
    """The caller may not speak for the node its stream names; the stream ends with
    PERMISSION_DENIED."""


class SourceUnavailable(Exception):
    """There is no config to serve and there will be none for a while (the snapshot source
    says why); the stream ends with UNAVAILABLE, so the client fails its calls with this
    reason (and may try another server) instead of waiting for resources that cannot come."""


@dataclass(slots=True)
class Nack:
    version: Version
    message: str
    at: float


@dataclass(slots=True)
class TypeState:
    """What one stream knows of one resource type. Owned by its session's task."""

    type_url: TypeUrl
    wildcard: bool = False
    names: set[ResourceName] = field(default_factory=set)
    named_before: bool = False
    nonce: str = ""
    sent: dict[ResourceName, str] | None = None  # name -> digest last sent; None: nothing yet
    sent_version: Version = ""
    acked_version: Version = ""
    last_nack: Nack | None = None
    responses: int = 0
    change_at: float | None = None  # monotonic time of the change pushed, until ACKed
    converged_in: float | None = None  # set by the ACK of a pushed change: seconds since it

    def subscribe(self, names: list[str]) -> None:
        requested = set(names)
        if WILDCARD in requested:
            self.wildcard = True
            requested.discard(WILDCARD)
        else:
            # Legacy wildcard: only before the client has ever named a resource.
            self.wildcard = (
                not requested and not self.named_before and self.type_url in LEGACY_WILDCARD
            )
        if names:
            self.named_before = True
        self.names = requested

    def select(self, snapshot: Snapshot) -> dict[ResourceName, Resource]:
        available = snapshot.resources.get(self.type_url, {})
        if self.wildcard:
            return dict(available)
        return {name: available[name] for name in sorted(self.names) if name in available}


_stream_ids = itertools.count(1)

Selection = tuple[dict[ResourceName, Resource], dict[ResourceName, str], Version]
# What a subscription selects from a snapshot, shared by every stream with the same one: a
# push to many nodes computes each selection, its digests and version once, not per node.
# Keyed by the snapshot's content id, so equal content shares an entry; never mutated.
_selections: dict[tuple[str, TypeUrl, bool, frozenset[ResourceName]], Selection] = {}
_SELECTIONS_LIMIT = 4096


def _selection(snapshot: Snapshot, state: TypeState) -> Selection:
    names = frozenset() if state.wildcard else frozenset(state.names)
    key = (snapshot.id, state.type_url, state.wildcard, names)
    found = _selections.get(key) if snapshot.id else None
    if found is None:
        selected = state.select(snapshot)
        digests = {name: resource.digest for name, resource in selected.items()}
        found = (selected, digests, version_of(digests))
        if snapshot.id:
            if len(_selections) >= _SELECTIONS_LIMIT:
                _selections.clear()
            _selections[key] = found
    return found


class AdsSession:
    """Serves one ADS stream. Everything runs on one task: requests and snapshot changes are
    queued and handled in order, so no state here needs a lock."""

    def __init__(
        self,
        cache: SnapshotSource,
        send: Send,
        *,
        peer: str = "",
        server_id: str = "",
        on_event: Callable[[str, AdsSession, TypeState], None] | None = None,
        on_node: Callable[[AdsSession], None] | None = None,
        authorize: Callable[[str], str | None] | None = None,
        on_handled: Callable[[discovery_pb2.DiscoveryRequest], None] | None = None,
    ) -> None:
        """``on_event`` is told of every ack, nack and send; ``on_node`` is called once, when
        the first request has named the node (``self.node`` is set). ``authorize`` is asked
        first, with the node id: a reason to refuse it ends the stream (:class:`NodeRefused`).
        ``on_handled`` is called with each request once it has been handled (answered, if it
        called for an answer)."""
        self._cache = cache
        self._send = send
        self._server_id = server_id
        self._on_event = on_event or (lambda *_: None)
        self._on_node = on_node or (lambda _: None)
        self._on_handled = on_handled or (lambda _: None)
        self._authorize = authorize
        self._nonces = itertools.count(1)
        self._queue: asyncio.Queue[discovery_pb2.DiscoveryRequest | str] = asyncio.Queue()
        self._change_pending = False
        self.stream_id = f"{server_id or 'ads'}-{next(_stream_ids)}"
        self.peer = peer
        self.node: base_pb2.Node | None = None
        self.connected_at = time.time()
        self.types: dict[TypeUrl, TypeState] = {}
        self.snapshot: Snapshot | None = None
        self.log = log.bind(stream=self.stream_id, peer=peer)

    @property
    def node_id(self) -> str:
        return self.node.id if self.node is not None else ""

    async def run(self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest]) -> None:
        """Serves until the client half-closes the stream or an error ends it."""
        unsubscribe = self._cache.subscribe(self._snapshot_changed)
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
                    await self._handle(item)
                    self._on_handled(item)
        finally:
            unsubscribe()
            reader.cancel()
            # Surface a read error (a client's broken stream) to the caller.
            if reader.done() and not reader.cancelled():
                error = reader.exception()
                if error is not None:
                    raise error

    async def _read(self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest]) -> None:
        try:
            async for request in requests:
                self._queue.put_nowait(request)
        finally:
            self._queue.put_nowait(_CLOSED)

    def _snapshot_changed(self) -> None:
        if not self._change_pending:
            self._change_pending = True
            self._queue.put_nowait(_CHANGED)

    def _know_node(self, request: discovery_pb2.DiscoveryRequest) -> None:
        """Takes the node from the stream's first request (SotW or delta): checks it, asks
        ``authorize`` and calls ``on_node``."""
        if self.node is not None:
            return
        if not request.HasField("node") or not request.node.id:
            raise ProtocolError("the first request on a stream must carry node.id")
        if self._authorize is not None:
            refusal = self._authorize(request.node.id)
            if refusal is not None:
                raise NodeRefused(refusal)
        self.node = request.node
        self.log = self.log.bind(node=self.node.id)
        self.log.info("node connected", zone=self.node.locality.zone)
        self._on_node(self)

    async def _handle(self, request: discovery_pb2.DiscoveryRequest) -> None:
        self._know_node(request)
        type_url = request.type_url
        if type_url not in ALL_TYPES:
            self.log.warning("unknown type requested; ignored", type_url=type_url)
            return
        state = self.types.get(type_url)
        if state is None:
            state = self.types[type_url] = TypeState(type_url)
        if request.response_nonce:
            if request.response_nonce != state.nonce:
                self.log.debug(
                    "stale nonce ignored", type=short_name(type_url), nonce=request.response_nonce
                )
                return
            if request.HasField("error_detail"):
                state.last_nack = Nack(
                    state.sent_version, request.error_detail.message, time.time()
                )
                self.log.warning(
                    "config rejected (NACK)",
                    type=short_name(type_url),
                    version=state.sent_version,
                    error=request.error_detail.message,
                )
                state.change_at = None
                self._on_event("nack", self, state)
            else:
                state.acked_version = request.version_info
                state.converged_in = None
                if state.change_at is not None and request.version_info == state.sent_version:
                    state.converged_in = time.monotonic() - state.change_at
                    state.change_at = None
                self._on_event("ack", self, state)
        before = (state.wildcard, set(state.names))
        state.subscribe(list(request.resource_names))
        if (state.wildcard, state.names) != before:
            self._on_event("subscribe", self, state)
        resume = request.version_info if not request.response_nonce else ""
        await self._respond(state, resume_version=resume)

    async def _push_all(self) -> None:
        for type_url in PUSH_ORDER:
            state = self.types.get(type_url)
            if state is not None:
                await self._respond(state, pushed=True)

    def _current(self) -> Snapshot | None:
        """The snapshot to serve from (kept in :attr:`snapshot`), or None while there is
        none yet; raises :class:`SourceUnavailable` when none will come for a while."""
        if self.node is None:
            return None
        if not self._cache.loaded:
            reason = self._cache.unavailable()
            if reason:
                raise SourceUnavailable(reason)
            return None
        self.snapshot = self._cache.snapshot_for(self.node)
        return self.snapshot

    async def _respond(
        self, state: TypeState, resume_version: Version = "", *, pushed: bool = False
    ) -> None:
        """Sends what ``state`` is missing, if anything. ``pushed``: because the config
        changed, not because the client asked."""
        snapshot = self._current()
        if snapshot is None:
            return
        if not state.wildcard and not state.names:
            # Unsubscribed from everything of this type: nothing to send until it asks again.
            state.sent = {} if state.sent is not None else None
            return
        selected, digests, version = _selection(snapshot, state)
        if state.sent is None and resume_version and resume_version == version:
            # Reconnect: the client already holds exactly this.
            state.sent, state.sent_version, state.acked_version = digests, version, version
            self.log.debug("resumed without resend", type=short_name(state.type_url))
            return
        if state.type_url in FULL_STATE:
            if state.sent is not None and (digests is state.sent or digests == state.sent):
                return
        else:
            previous = state.sent or {}
            if not any(previous.get(name) != digest for name, digest in digests.items()):
                return
        nonce = str(next(self._nonces))
        response = discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=state.type_url,
            nonce=nonce,
            resources=[resource.packed for resource in selected.values()],
        )
        response.control_plane.identifier = self._server_id
        state.nonce, state.sent, state.sent_version = nonce, digests, version
        state.change_at = snapshot.changed_at if pushed else None
        state.responses += 1
        self._on_event("send", self, state)
        await self._send(response)
