"""One incremental (delta xDS) ADS stream to a control server (``DeltaAggregatedResources``).

Only changed resources travel. On a new stream the agent names the resource versions it
holds (``initial_resource_versions``), so a server with the same content sends nothing; each
response is checked by the cache before it changes anything, then ACKed or NACKed with the
cache's reason while the last good config stays in force.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from mesh_agent.daemon.cache import ConfigCache
from mesh_agent.daemon.upstream.interest import Interest
from mesh_agent.daemon.upstream.sotw import INVALID_ARGUMENT
from mesh_agent.daemon.upstream.stream import RequestQueue, Responded, push_rank
from mesh_xds.types import SERVICE_POLICY, ResourceName, TypeUrl

HeldVersions = dict[TypeUrl, dict[ResourceName, str]]
"""The version of every resource the cache holds, per type, as the delta server named it."""


class DeltaStream:
    """One delta call. ``interest`` is the client's (read, never changed here); ``held`` is
    the client's record of the resource versions the cache holds, kept across calls, which
    this call updates with every response the cache accepts."""

    flavour = "delta"

    def __init__(
        self,
        node: base_pb2.Node,
        cache: ConfigCache,
        interest: Mapping[TypeUrl, Interest],
        responded: Responded,
        held: HeldVersions,
    ) -> None:
        self._node = node
        self._cache = cache
        self._interest = interest
        self._responded = responded
        self._held = held
        self._queue: RequestQueue[discovery_pb2.DeltaDiscoveryRequest] = RequestQueue()
        self._subscribed: dict[TypeUrl, Interest] = {}
        self._sent_node = False
        for type_url in sorted(interest, key=push_rank):
            if interest[type_url] != frozenset():
                self.interest_changed(type_url)
        if not self._sent_node:
            # Announce the node even with nothing to ask for (see the SotW stream).
            announce = discovery_pb2.DeltaDiscoveryRequest(type_url=SERVICE_POLICY)
            announce.node.CopyFrom(node)
            self._sent_node = True
            self._subscribed[SERVICE_POLICY] = frozenset()
            self._queue.put_nowait(announce)

    def interest_changed(self, type_url: TypeUrl) -> None:
        request = self._change(type_url)
        if request is not None:
            self._queue.put_nowait(request)

    async def serve(
        self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, opened: Callable[[], None]
    ) -> None:
        call = stub.DeltaAggregatedResources(self._queue.drain())
        opened()
        async for response in call:
            self._handle(response)

    def _change(self, type_url: TypeUrl) -> discovery_pb2.DeltaDiscoveryRequest | None:
        """The request that moves the call's subscription of ``type_url`` to the client's
        interest, or None when nothing changes."""
        wanted = self._interest.get(type_url)
        had = self._subscribed.get(type_url, frozenset())
        if type_url in self._subscribed and wanted == had:
            return None
        request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url)
        if wanted is None:
            if had is not None:
                request.resource_names_subscribe.append("*")
                request.resource_names_unsubscribe.extend(sorted(had))
        elif had is None:
            request.resource_names_unsubscribe.append("*")
            request.resource_names_subscribe.extend(sorted(wanted))
        else:
            request.resource_names_subscribe.extend(sorted(wanted - had))
            request.resource_names_unsubscribe.extend(sorted(had - wanted))
        first = type_url not in self._subscribed
        self._subscribed[type_url] = wanted
        if first:
            held = self._held.get(type_url)
            if held:
                request.initial_resource_versions.update(held)
        elif not request.resource_names_subscribe and not request.resource_names_unsubscribe:
            return None
        if not self._sent_node:
            request.node.CopyFrom(self._node)
            self._sent_node = True
        return request

    def _handle(self, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        type_url = response.type_url
        versions = dict(self._held.get(type_url, {}))
        updated = [r for r in response.resources if r.HasField("resource")]
        for resource in updated:
            versions[resource.name] = resource.version
        for name in response.removed_resources:
            versions.pop(name, None)
        version = response.system_version_info or _digest(versions)
        error = self._cache.accept_delta(
            type_url, version, [r.resource for r in updated], list(response.removed_resources)
        )
        ack = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=response.nonce)
        if error is None:
            self._held[type_url] = versions
        else:
            ack.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=error))
        self._responded(type_url, version, error)
        self._queue.put_nowait(ack)


def _digest(versions: Mapping[ResourceName, str]) -> str:
    """A version for a type's whole delta state: a digest of its resources' versions."""
    body = "\n".join(f"{name}={version}" for name, version in sorted(versions.items()))
    return hashlib.sha256(body.encode()).hexdigest()[:16]


__all__ = ["DeltaStream", "HeldVersions"]
