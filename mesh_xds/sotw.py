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
shared by every stream with that subscription (:meth:`~mesh_xds.snapshot.Snapshot.selection`),
and so is the response, serialised once without its nonce (:mod:`mesh_xds.wire`): per
subscription for a whole selection (LDS, CDS, policies; a first RDS or EDS response), per
version and names sent for an RDS or EDS response by change, whose content depends on what the
stream held. What changed for a stream is found from the snapshot it was last brought up to
date with (:meth:`~mesh_xds.snapshot.Snapshot.changed_since`, shared too), so a push costs each
stream in proportion to the change, and an ACK that repeats its request's names costs no
subscription work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from envoy.service.discovery.v3 import discovery_pb2

from mesh_xds.session import WILDCARD, BaseSession, TypeState, shared_names, shared_request
from mesh_xds.snapshot import Resource, Snapshot
from mesh_xds.types import (
    FULL_STATE,
    KNOWN_TYPES,
    LEGACY_WILDCARD,
    PUSH_ORDER,
    ResourceName,
    TypeUrl,
    Version,
    short_name,
)
from mesh_xds.wire import sotw_body, with_nonce


@dataclass(slots=True)
class SotwTypeState(TypeState):
    """A state-of-the-world stream's view of one type; ``named_before`` says whether the
    client has ever named a resource of it (after that, no names means none)."""

    named_before: bool = False
    requested: tuple[ResourceName, ...] | None = None  # the latest request's names (shared)
    synced: Snapshot | None = None
    """The snapshot ``sent`` was last brought up to date with, for this subscription (None
    once it changes): what the client holds of it is ``sent`` as of this snapshot."""

    def subscribe(self, names: Sequence[str]) -> bool:
        """Takes the names of a request; True when the subscription changed."""
        requested = frozenset(names)
        if WILDCARD in requested:
            wildcard = True
            requested = requested - {WILDCARD}
        else:
            # Legacy wildcard: only before the client has ever named a resource.
            wildcard = not requested and not self.named_before and self.type_url in LEGACY_WILDCARD
        if names:
            self.named_before = True
        if wildcard == self.wildcard and requested == self.names:
            return False
        self.wildcard = wildcard
        self.names = shared_names(requested)
        self.synced = None
        return True


class SotwSession(BaseSession[discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse]):
    """Serves one state-of-the-world ADS stream."""

    __slots__ = ()

    def _state(self, type_url: TypeUrl) -> SotwTypeState:
        state = self.types.get(type_url)
        if state is None:
            state = self.types[type_url] = SotwTypeState(type_url)
        assert isinstance(state, SotwTypeState)
        return state

    async def _handle(self, request: discovery_pb2.DiscoveryRequest) -> None:
        self._know_node(request)
        type_url = KNOWN_TYPES.get(request.type_url)  # the module's string, not a copy per stream
        if type_url is None:
            self.log.warning("unknown type requested; ignored", type_url=request.type_url)
            return
        state = self._state(type_url)
        if request.response_nonce:
            if not self._fresh(state, request):
                return
            if request.HasField("error_detail"):
                self._nacked(state, request)
            else:
                self._acked(state, request.version_info)
        names = tuple(request.resource_names)
        if names != state.requested:  # an ACK repeats the names: nothing to work out again
            state.requested = shared_request(names)
            if state.subscribe(names):
                self.callbacks.on_subscribe(self, state)
                _forget_unsubscribed(state)
        resume = request.version_info if not request.response_nonce else ""
        await self._respond(state, self._current(), resume_version=resume)

    async def _push_all(self) -> None:
        snapshot = self._current()
        if snapshot is None:
            return
        for type_url in PUSH_ORDER:
            state = self.types.get(type_url)
            if isinstance(state, SotwTypeState):
                await self._respond(state, snapshot, pushed=True)

    async def _respond(
        self,
        state: SotwTypeState,
        snapshot: Snapshot | None,
        resume_version: Version = "",
        *,
        pushed: bool = False,
    ) -> None:
        """Sends what ``state`` is missing of ``snapshot``, if anything. ``pushed``: because
        the config changed, not because the client asked."""
        if snapshot is None:
            return
        synced, state.synced = state.synced, snapshot
        if (
            synced is not None
            and state.sent is not None
            and (synced is snapshot or not snapshot.changed_since(synced, state.type_url))
        ):
            # Up to date with a snapshot whose resources of this type are these, for the
            # same subscription: nothing to send (an ACK; a push of another type's change).
            return
        if not state.wildcard and not state.names:
            # Unsubscribed from everything of this type: nothing to send until it asks again.
            state.sent = {} if state.sent is not None else None
            return
        names = frozenset() if state.wildcard else state.names
        selected, digests, version = snapshot.selection(state.type_url, state.wildcard, names)
        if state.sent is None and resume_version and resume_version == version:
            # Reconnect: the client already holds exactly this.
            state.sent, state.sent_version, state.acked_version = digests, version, version
            self.log.debug("resumed without resend", type=short_name(state.type_url))
            return
        if digests is state.sent:
            return  # the very selection last sent (the agent's snapshots carry it over)
        key: tuple[object, ...]
        sending: Iterable[Resource]
        if state.type_url in FULL_STATE or state.sent is None:
            # The whole selection: full state, or a first RDS or EDS response (none while
            # nothing subscribed exists). The same for every stream with this subscription.
            if state.sent is not None and digests == state.sent:
                return
            if not selected and state.type_url not in FULL_STATE:
                return
            sending = selected.values()
            key = ("sotw", state.type_url, state.wildcard, names, self._server_id)
        else:
            # RDS and EDS: only what this client was not sent as it is now. The body is keyed
            # by exactly what it holds (its version and the names sent), so it is shared by
            # every stream that is sent the same, and by no other.
            changed = _changed(state, synced, snapshot, selected, digests)
            if not changed:
                return
            sending = changed
            key = (
                "sotw-changed",
                state.type_url,
                version,
                tuple(resource.name for resource in changed),
                self._server_id,
            )
        state.sent, state.sent_version = digests, version
        nonce = self._sending(state, snapshot, pushed=pushed)
        body = snapshot.encoded(
            key, lambda: sotw_body(state.type_url, version, sending, self._server_id)
        )
        await self._send(with_nonce(body, nonce))


def _changed(
    state: SotwTypeState,
    synced: Snapshot | None,
    snapshot: Snapshot,
    selected: dict[ResourceName, Resource],
    digests: dict[ResourceName, str],
) -> list[Resource]:
    """For RDS and EDS, which need not be sent whole: the selected resources the client was
    not sent as they are now. Found from what changed since ``synced``, the snapshot
    ``state.sent`` was last brought up to date with for this subscription; by comparing the
    whole selection when the subscription changed since (``synced`` is None)."""
    sent = state.sent
    assert sent is not None
    if synced is not None:
        names = snapshot.changed_since(synced, state.type_url)
        return [selected[n] for n in names if n in selected and sent.get(n) != digests[n]]
    return [selected[name] for name, digest in digests.items() if sent.get(name) != digest]


def _forget_unsubscribed(state: SotwTypeState) -> None:
    """After a subscription shrank: the client drops what it unsubscribed, so a name it
    subscribes to again must be sent again, changed or not (RDS and EDS are sent by change)."""
    if state.sent is None or state.wildcard or state.type_url in FULL_STATE:
        return
    if any(name not in state.names for name in state.sent):
        state.sent = {n: d for n, d in state.sent.items() if n in state.names}
