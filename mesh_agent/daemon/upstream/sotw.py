"""One state-of-the-world ADS stream to a control server (``StreamAggregatedResources``).

Per type the client is interested in, a request naming what it wants and the version the
cache holds (so a server with the same content has nothing to resend); each response is
checked by the cache before it replaces anything, then ACKed with the response's nonce or
NACKed with the cache's reason while the last good config stays in force.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from mesh_agent.daemon.cache import ConfigCache
from mesh_agent.daemon.upstream.interest import Interest
from mesh_agent.daemon.upstream.stream import RequestQueue, Responded, push_rank
from mesh_xds.types import SERVICE_POLICY, TypeUrl

INVALID_ARGUMENT = 3


class SotwStream:
    """One state-of-the-world call. ``interest`` is the client's (read, never changed here)."""

    flavour = "sotw"

    def __init__(
        self,
        node: base_pb2.Node,
        cache: ConfigCache,
        interest: Mapping[TypeUrl, Interest],
        responded: Responded,
    ) -> None:
        self._node = node
        self._cache = cache
        self._interest = interest
        self._responded = responded
        self._queue: RequestQueue[discovery_pb2.DiscoveryRequest] = RequestQueue()
        self._nonces: dict[TypeUrl, str] = {}
        self._sent_node = False
        self._requested: set[TypeUrl] = set()
        self._sorted: dict[TypeUrl, tuple[frozenset[str], list[str]]] = {}
        for type_url in sorted(interest, key=push_rank):
            # An empty first LDS/CDS request would be a wildcard subscription.
            if interest[type_url] != frozenset():
                self._queue.put_nowait(self._request(type_url))
        if not self._requested:
            # Announce the node even when there is nothing to ask for yet: the control
            # server keeps a node's registrations alive while its stream lasts. An empty
            # request for our own policy type (the client's interest in it starts empty)
            # subscribes to nothing.
            self._queue.put_nowait(self._request(SERVICE_POLICY))

    def interest_changed(self, type_url: TypeUrl) -> None:
        if self._interest.get(type_url) != frozenset() or type_url in self._requested:
            self._queue.put_nowait(self._request(type_url))

    async def serve(
        self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, opened: Callable[[], None]
    ) -> None:
        call = stub.StreamAggregatedResources(self._queue.drain())
        opened()
        async for response in call:
            self._handle(response)

    def _names(self, type_url: TypeUrl) -> list[str]:
        """The names to request of ``type_url``, sorted once per interest (every ACK
        repeats them)."""
        names = self._interest.get(type_url)
        if names is None:
            return ["*"]
        known = self._sorted.get(type_url)
        if known is None or known[0] is not names:
            known = self._sorted[type_url] = (names, sorted(names))
        return known[1]

    def _request(self, type_url: TypeUrl) -> discovery_pb2.DiscoveryRequest:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            version_info=self._cache.version(type_url),
            resource_names=self._names(type_url),
            response_nonce=self._nonces.get(type_url, ""),
        )
        if not self._sent_node:
            request.node.CopyFrom(self._node)
            self._sent_node = True
        self._requested.add(type_url)
        return request

    def _handle(self, response: discovery_pb2.DiscoveryResponse) -> None:
        type_url = response.type_url
        self._nonces[type_url] = response.nonce
        interest = self._interest.get(type_url)
        error = self._cache.accept(
            type_url,
            response.version_info,
            response.resources,
            interest,
        )
        request = self._request(type_url)
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=error))
        self._responded(type_url, response.version_info, error)
        self._queue.put_nowait(request)


__all__ = ["SotwStream"]
