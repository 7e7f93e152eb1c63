"""The limits of :mod:`mesh_core.limits` applied to ADS streams: each request's node id, type
URL and names, and each node's number of concurrent streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable
from typing import TYPE_CHECKING, Any

from envoy.service.discovery.v3 import discovery_pb2

from mesh_core.errors import TooManyStreams
from mesh_core.limits import Limits, StreamCounter, too_long, too_many
from mesh_xds.callbacks import SessionCallbacks

if TYPE_CHECKING:
    from mesh_xds.session import BaseSession


class AdsStreamGuard(SessionCallbacks):
    """Checks the requests of one ADS stream against the limits (:meth:`requests`,
    :meth:`delta_requests`) and, as the stream's hook, holds its place among its node's streams
    once the node is known (:meth:`on_node`). The owner calls :meth:`release` when the stream
    ends."""

    __slots__ = ("_held", "_limits", "_streams", "node_id")  # one per stream

    def __init__(self, limits: Limits, streams: StreamCounter | None = None) -> None:
        self._limits = limits
        self._streams = streams
        self._held: str | None = None
        self.node_id = ""  # as the first request naming a node named it (cut short if long)

    async def requests(
        self, source: AsyncIterator[discovery_pb2.DiscoveryRequest]
    ) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        """``source``, each request checked first; raises :class:`LimitExceeded`."""
        async for request in source:
            self.check(request)
            yield request

    async def delta_requests(
        self, source: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
        """``source``, each request checked first (:meth:`check_delta`)."""
        async for request in source:
            self.check_delta(request)
            yield request

    def check_delta(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        """The checks of :meth:`check` on a delta request: the node id, the type URL, and
        each of its lists of names (subscribed, unsubscribed, initially held)."""
        subscribe = request.resource_names_subscribe
        unsubscribe = request.resource_names_unsubscribe
        initial = request.initial_resource_versions
        if not (subscribe or unsubscribe or initial or request.HasField("node")):
            # An ACK or a NACK, most requests: only the type URL to check.
            if len(request.type_url) > self._limits.max_name_length > 0:
                self.check_parts("", request.type_url, ())
            return
        self.check_parts(
            request.node.id if request.HasField("node") else "",
            request.type_url,
            (subscribe, unsubscribe, initial.keys()),
        )

    def check(self, request: discovery_pb2.DiscoveryRequest) -> None:
        """Raises :class:`LimitExceeded` for a request over a limit."""
        node_id: str = request.node.id if request.HasField("node") else ""
        self.check_parts(node_id, request.type_url, (request.resource_names,))

    def check_parts(
        self, node_id: str, type_url: str, name_lists: Iterable[Collection[str]]
    ) -> None:
        """The checks of :meth:`check` on a request's parts; each list of names (a delta
        request has three) is held to the limits on its own."""
        limits = self._limits
        if node_id and not self.node_id:
            self.node_id = node_id[: limits.max_node_id_length or None]
        most, name_max = limits.max_names_per_request, limits.max_name_length
        if (
            len(node_id) <= (limits.max_node_id_length or len(node_id))
            and len(type_url) <= (name_max or len(type_url))
            and all(
                len(names) <= (most or len(names))
                and (not name_max or max(map(len, names), default=0) <= name_max)
                for names in name_lists
            )
        ):
            return  # within every limit: most requests, checked without building errors
        errors = [
            too_long("node.id", node_id, limits.max_node_id_length, "max_node_id_length"),
            too_long("type_url", type_url, limits.max_name_length, "max_name_length"),
        ]
        for names in name_lists:
            errors.append(
                too_many(
                    "resource names",
                    len(names),
                    limits.max_names_per_request,
                    "max_names_per_request",
                )
            )
            longest = max(names, key=len, default="")
            errors.append(
                too_long("resource name", longest, limits.max_name_length, "max_name_length")
            )
        error = next((e for e in errors if e is not None), None)
        if error is not None:
            raise error

    def take_place(self, node_id: str) -> None:
        """Counts the stream for ``node_id``; raises :class:`TooManyStreams` when the node
        already has its number of streams."""
        if self._streams is None or self._held is not None:
            return
        if not self._streams.acquire(node_id):
            limit = self._streams.limit
            raise TooManyStreams(
                "max_streams_per_node",
                f"node {node_id} already has {limit} streams to this server; "
                f"the limit is {limit} per node id",
            )
        self._held = node_id

    def on_node(self, session: BaseSession[Any, Any]) -> None:
        self.take_place(session.node_id)

    def release(self) -> None:
        if self._held is not None and self._streams is not None:
            self._streams.release(self._held)
        self._held = None
