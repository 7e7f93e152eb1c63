"""The delta (incremental) ADS protocol for one stream, apart from any transport.

:class:`DeltaSession` reads ``DeltaDiscoveryRequest`` messages and writes
``DeltaDiscoveryResponse`` messages. Node handling, the reading loop, ACK and NACK
book-keeping, the hooks and the per-type status view are :class:`~mesh_xds.session.BaseSession`'s,
shared with its sibling :class:`~mesh_xds.sotw.SotwSession`; the rules here are the delta
section of ``xds_protocol.rst``:

- Each resource has its own version: the content digest its snapshot holds.
  ``system_version_info`` is the snapshot id, for information only.
- ``resource_names_subscribe`` and ``resource_names_unsubscribe`` change the subscription, in
  every request (ACKs and NACKs included, and requests whose nonce is stale).
- Wildcard (LDS, CDS and our policy type) is the name ``*``; for LDS and CDS also a first
  request of the type that subscribes to nothing (legacy). It lasts until ``*`` is
  unsubscribed; names subscribed beside it are kept as well.
- ``initial_resource_versions`` (first request of a type): a resource the client holds at its
  current version is not resent; one it holds that no longer exists is named in
  ``removed_resources``.
- A response carries only resources whose version differs from the one the client holds, and
  in ``removed_resources`` the names it holds that are gone. A name in
  ``resource_names_subscribe`` is sent even if unchanged (the client drops what it
  unsubscribes). Unsubscribed names are forgotten, not reported as removed.
- A request whose ``response_nonce`` is the latest sent for its type ACKs that response, or
  NACKs it when ``error_detail`` is set; any other nonce is stale and its ACK or NACK is
  ignored. After a NACK the client is taken to hold what it was sent, so a rejected resource is
  sent again only when it changes.
- Names subscribed before they exist are remembered and sent when they appear.
- Config changes are pushed type by type in ``PUSH_ORDER``. A push costs each stream work in
  proportion to the resources that changed: the difference between two snapshots is computed
  once and shared by every stream (:meth:`~mesh_xds.snapshot.Snapshot.changed_since`), and each
  resource's ``Resource`` message is built once (:attr:`~mesh_xds.snapshot.Resource.delta`)
  and shared; so is each response, serialised once without its nonce for every stream that
  is sent the same resources and removals (:mod:`mesh_xds.wire`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from mesh_xds.session import NO_NAMES, WILDCARD, BaseSession, TypeState, shared_names
from mesh_xds.snapshot import Resource, Snapshot
from mesh_xds.types import KNOWN_TYPES, LEGACY_WILDCARD, PUSH_ORDER, ResourceName, TypeUrl
from mesh_xds.wire import delta_body, with_nonce


@dataclass(slots=True)
class DeltaTypeState(TypeState):
    """What one delta stream knows of one resource type. ``held`` (also ``sent``, for status
    and CSDS) maps each name the client holds, as far as the server knows, to its version;
    ``names`` are the names subscribed explicitly."""

    held: dict[ResourceName, str] = field(default_factory=dict)
    resend: AbstractSet[ResourceName] = NO_NAMES  # subscribed again: sent even if unchanged
    synced: Snapshot | None = None  # the snapshot ``held`` was last brought up to date with
    started: bool = False

    def __post_init__(self) -> None:
        self.sent = self.held

    def wants(self, name: ResourceName) -> bool:
        return self.wildcard or name in self.names

    def update(self, request: discovery_pb2.DeltaDiscoveryRequest) -> bool:
        """Applies a request's subscription changes; True when the subscription changed or
        the client announced what it holds (the first request of the type)."""
        first = not self.started
        self.started = True
        subscribe = request.resource_names_subscribe
        unsubscribe = request.resource_names_unsubscribe
        if not first and not subscribe and not unsubscribe:
            return False  # an ACK or a NACK, nothing more: most requests
        before = (self.wildcard, len(self.names))
        names, resend = set(self.names), set(self.resend)
        if first and not subscribe and self.type_url in LEGACY_WILDCARD:
            self.wildcard = True
        for name in subscribe:
            if name == WILDCARD:
                self.wildcard = True
            else:
                names.add(name)
                resend.add(name)
        dropped: Iterable[ResourceName] = ()
        for name in unsubscribe:
            if name == WILDCARD:
                self.wildcard = False
                dropped = list(self.held)
            else:
                names.discard(name)
        wildcard = self.wildcard
        if unsubscribe:
            for name in [*dropped, *unsubscribe]:
                if not wildcard and name not in names:
                    self.held.pop(name, None)
                    resend.discard(name)
        if first:
            for name, version in request.initial_resource_versions.items():
                if wildcard or name in names:
                    self.held[name] = version
                    resend.discard(name)
        self.names = shared_names(frozenset(names))
        self.resend = frozenset(resend) if resend else NO_NAMES
        return first or (self.wildcard, len(self.names)) != before or bool(subscribe)

    def changes(
        self, names: Iterable[ResourceName], available: Mapping[ResourceName, Resource]
    ) -> tuple[list[Resource], list[ResourceName]]:
        """Of ``names``, the resources to send and the names to report removed."""
        updates: list[Resource] = []
        removed: list[ResourceName] = []
        for name in sorted(names):
            if not self.wants(name):
                continue
            resource = available.get(name)
            if resource is None:
                if name in self.held:
                    removed.append(name)
            elif name in self.resend or self.held.get(name) != resource.digest:
                updates.append(resource)
        return updates, removed

    def candidates(self, snapshot: Snapshot) -> set[ResourceName]:
        """Every name that may need sending or removing: the whole subscription."""
        names = set(self.names) | self.held.keys()
        if self.wildcard:
            names |= snapshot.resources.get(self.type_url, {}).keys()
        return names


class DeltaSession(
    BaseSession[discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse]
):
    """Serves one delta ADS stream. To status, CSDS and metrics ``types`` holds a
    :class:`DeltaTypeState` per type, with ``sent_version`` and ``acked_version`` the
    ``system_version_info`` of the last response sent and of the last one ACKed."""

    __slots__ = ()
    kind = "-delta"

    def _state(self, type_url: TypeUrl) -> DeltaTypeState:
        state = self.types.get(type_url)
        if state is None:
            state = self.types[type_url] = DeltaTypeState(type_url)
        assert isinstance(state, DeltaTypeState)
        return state

    async def _handle(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        self._know_node(request)
        type_url = KNOWN_TYPES.get(request.type_url)  # the module's string, not a copy per stream
        if type_url is None:
            self.log.warning("unknown type requested; ignored", type_url=request.type_url)
            return
        state = self._state(type_url)
        if request.response_nonce and self._fresh(state, request):
            if request.HasField("error_detail"):
                # The client is taken to hold what it was sent: a rejected resource is sent
                # again only when it changes.
                self._nacked(state, request)
            else:
                self._acked(state, state.sent_version)
        before = (state.wildcard, state.names)
        first = not state.started
        if state.update(request):
            if (state.wildcard, state.names) != before:
                self.callbacks.on_subscribe(self, state)
            full = first or (state.wildcard and not before[0])
            await self._respond_delta(state, self._current(), full=full)

    async def _push_all(self) -> None:
        snapshot = self._current()
        if snapshot is None:
            return
        for type_url in PUSH_ORDER:
            state = self.types.get(type_url)
            if isinstance(state, DeltaTypeState) and state.started:
                await self._respond_delta(state, snapshot, pushed=True)

    async def _respond_delta(
        self,
        state: DeltaTypeState,
        snapshot: Snapshot | None,
        *,
        full: bool = False,
        pushed: bool = False,
    ) -> None:
        """Sends what changed for ``state`` since it was last brought up to date with a
        snapshot, up to ``snapshot``; ``full``: compares its whole subscription instead.
        ``pushed``: because the config changed."""
        if snapshot is None:
            return
        available = snapshot.resources.get(state.type_url, {})
        if full or state.synced is None:
            names: Iterable[ResourceName] = state.candidates(snapshot)
        else:
            names = snapshot.changed_since(state.synced, state.type_url)
            if not names and not state.resend:
                state.synced = snapshot
                return  # nothing of this type changed: most types of most pushes
            names = names | state.resend
        updates, removed = state.changes(names, available)
        state.synced = snapshot
        state.resend = NO_NAMES
        version = snapshot.id or str(snapshot.revision)
        if not updates and not removed:
            if not state.nonce and state.held:
                # A reconnect whose initial versions are all current: the client holds this
                # version already, and status should say so rather than "waiting".
                state.sent_version = state.acked_version = version
            return
        for resource in updates:
            state.held[resource.name] = resource.digest
        for name in removed:
            state.held.pop(name, None)
        state.sent_version = version
        nonce = self._sending(state, snapshot, pushed=pushed)
        key = (
            "delta",
            state.type_url,
            tuple(resource.name for resource in updates),
            tuple(removed),
            self._server_id,
        )
        body = snapshot.encoded(
            key, lambda: delta_body(state.type_url, version, updates, removed, self._server_id)
        )
        await self._send(with_nonce(body, nonce))
