"""The state-of-the-world ADS protocol for one stream (``StreamAggregatedResources``).

:class:`SotwSession` keeps, per type URL, the subscription, the last nonce, what was sent and
what the client ACKed or NACKed, following ``xds_protocol.rst``:

- ``version_info`` in a request is the last version the client accepted; a request with
  ``error_detail`` set is a NACK, recorded with its text. A NACKed version is never resent:
  a response goes out only when what the client is subscribed to changes.
- A request whose ``response_nonce`` is not the latest sent for its type is stale and ignored.
- LDS, CDS and our policy type are full state (a response carries every subscribed resource)
  and take wildcard subscriptions: the name ``*``, or (LDS and CDS only) a first request
  with no names. For RDS and EDS only new or changed resources trigger a response, and it
  carries only those (a client keeps the others: for these types absence is not deletion);
  a name unsubscribed and subscribed again is sent again.
- Names requested before they exist are remembered and pushed when they appear.
- A first request that carries the version the client already holds (a reconnect) gets no
  response until something changes.

What a subscription selects of a snapshot (and its version) is computed once per snapshot and
shared by every stream with that subscription (:meth:`~mesh_xds.snapshot.Snapshot.selection`).
"""

from __future__ import annotations

from dataclasses import dataclass

from envoy.service.discovery.v3 import discovery_pb2

from mesh_xds.session import WILDCARD, BaseSession, TypeState
from mesh_xds.snapshot import Resource, Snapshot
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


@dataclass(slots=True)
class SotwTypeState(TypeState):
    """A state-of-the-world stream's view of one type; ``named_before`` says whether the
    client has ever named a resource of it (after that, no names means none)."""

    named_before: bool = False
    frozen_names: frozenset[ResourceName] = frozenset()  # ``names``, made once per subscription
    requested: list[ResourceName] | None = None  # the names of the latest request, as sent
    sent_from: tuple[Snapshot, frozenset[ResourceName]] | None = None
    """The snapshot and subscription ``sent`` was last checked against: what the client holds
    of the subscription is ``sent`` as of this snapshot (for RDS and EDS)."""

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
        if requested != self.frozen_names:
            self.frozen_names = frozenset(requested)


class SotwSession(BaseSession[discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse]):
    """Serves one state-of-the-world ADS stream."""

    def _state(self, type_url: TypeUrl) -> SotwTypeState:
        state = self.types.get(type_url)
        if state is None:
            state = self.types[type_url] = SotwTypeState(type_url)
        assert isinstance(state, SotwTypeState)
        return state

    async def _handle(self, request: discovery_pb2.DiscoveryRequest) -> None:
        self._know_node(request)
        type_url = request.type_url
        if type_url not in ALL_TYPES:
            self.log.warning("unknown type requested; ignored", type_url=type_url)
            return
        state = self._state(type_url)
        if request.response_nonce:
            if not self._fresh(state, request):
                return
            if request.HasField("error_detail"):
                self._nacked(state, request)
            else:
                self._acked(state, request.version_info)
        names = list(request.resource_names)
        if names != state.requested:  # an ACK repeats the names: nothing to work out again
            state.requested = names
            before = (state.wildcard, set(state.names))
            state.subscribe(names)
            if (state.wildcard, state.names) != before:
                self.callbacks.on_subscribe(self, state)
                _forget_unsubscribed(state)
        resume = request.version_info if not request.response_nonce else ""
        await self._respond(state, resume_version=resume)

    async def _push_all(self) -> None:
        for type_url in PUSH_ORDER:
            state = self.types.get(type_url)
            if isinstance(state, SotwTypeState):
                await self._respond(state, pushed=True)

    async def _respond(
        self, state: SotwTypeState, resume_version: Version = "", *, pushed: bool = False
    ) -> None:
        """Sends what ``state`` is missing, if anything. ``pushed``: because the config
        changed, not because the client asked."""
        snapshot = self._current()
        if snapshot is None:
            return
        if not state.wildcard and not state.names:
            # Unsubscribed from everything of this type: nothing to send until it asks again.
            state.sent = {} if state.sent is not None else None
            state.sent_from = None
            return
        selected, digests, version = snapshot.selection(
            state.type_url, state.wildcard, state.frozen_names
        )
        basis, state.sent_from = state.sent_from, (snapshot, state.frozen_names)
        if state.sent is None and resume_version and resume_version == version:
            # Reconnect: the client already holds exactly this.
            state.sent, state.sent_version, state.acked_version = digests, version, version
            self.log.debug("resumed without resend", type=short_name(state.type_url))
            return
        if digests is state.sent:
            return
        if state.type_url in FULL_STATE:
            if state.sent is not None and digests == state.sent:
                return
            sending = list(selected.values())
        else:
            sending = _changed(state, basis, snapshot, selected, digests)
            if not sending:
                return
        state.sent, state.sent_version = digests, version
        nonce = self._sending(state, snapshot, pushed=pushed)
        response = discovery_pb2.DiscoveryResponse(
            version_info=version,
            type_url=state.type_url,
            nonce=nonce,
            resources=[resource.packed for resource in sending],
        )
        response.control_plane.identifier = self._server_id
        await self._send(response)


def _changed(
    state: SotwTypeState,
    basis: tuple[Snapshot, frozenset[ResourceName]] | None,
    snapshot: Snapshot,
    selected: dict[ResourceName, Resource],
    digests: dict[ResourceName, str],
) -> list[Resource]:
    """For RDS and EDS, which need not be sent whole: the selected resources the client was
    not sent as they are now (all of them in a first response). Found from what changed
    since ``basis``, the snapshot and subscription ``state.sent`` was last brought up to
    date with, when the subscription is the same since."""
    sent = state.sent
    if sent is None:
        return list(selected.values())
    if basis is not None and basis[1] is state.frozen_names:
        names = snapshot.changed_since(basis[0], state.type_url)
        return [selected[n] for n in names if n in selected and sent.get(n) != digests[n]]
    return [selected[name] for name, digest in digests.items() if sent.get(name) != digest]


def _forget_unsubscribed(state: SotwTypeState) -> None:
    """After a subscription shrank: the client drops what it unsubscribed, so a name it
    subscribes to again must be sent again, changed or not (RDS and EDS are sent by change)."""
    if state.sent is None or state.wildcard or state.type_url in FULL_STATE:
        return
    if any(name not in state.names for name in state.sent):
        state.sent = {n: d for n, d in state.sent.items() if n in state.names}
