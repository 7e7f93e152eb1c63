"""In-process streams for the xDS sessions: the tiny stream seam of STYLE item 2. Each drives one
session through its request iterator and send function (which gets each response serialised,
as a gRPC stream writes it), step by step, and checks every
response it carries against the protocol rules of :mod:`mesh_xds.testing`, as a conforming
server must follow them and as our server adds (nonces that are increasing integers, versions
always set). An AssertionError raised by a check ends the session's task with it, so
:meth:`close` (or awaiting :attr:`task`) raises it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from mesh.v1 import config_pb2
from mesh_xds.cache import SnapshotCache
from mesh_xds.delta import DeltaSession
from mesh_xds.session import Session
from mesh_xds.sotw import SotwSession
from mesh_xds.testing import DeltaRules, SotwRules


def service(name: str, *addresses: str) -> config_pb2.Service:
    return config_pb2.Service(
        name=name, endpoints=[config_pb2.Endpoint(address=a) for a in addresses]
    )


class _SessionStream:
    """What both streams share: the request queue the session reads, the responses it sent
    (``all``, and a queue for :meth:`next`), and the session's task."""

    session: Session

    def __init__(self, node_id: str) -> None:
        self.node = base_pb2.Node(id=node_id)
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self.all: list[Any] = []
        self.task: asyncio.Task[None] | None = None

    async def _iterate(self) -> AsyncIterator[Any]:
        while (request := await self._requests.get()) is not None:
            yield request

    async def _deliver(self, response: Any) -> None:
        self.all.append(response)
        await self.responses.put(response)

    def start(self) -> None:
        self.task = asyncio.create_task(self.session.run(self._iterate()))

    async def next(self, timeout: float = 2.0) -> Any:
        return await asyncio.wait_for(self.responses.get(), timeout)

    async def nothing(self, wait: float = 0.2) -> None:
        with contextlib.suppress(TimeoutError):
            response = await asyncio.wait_for(self.responses.get(), wait)
            raise AssertionError(f"unexpected response: {self._describe(response)}")

    @staticmethod
    def _describe(response: Any) -> str:
        return f"{response.type_url} {response.nonce}"

    async def close(self) -> None:
        await self._requests.put(None)
        if self.task is not None:
            await asyncio.wait_for(self.task, 2)


class FakeStream(_SessionStream):
    """Drives one SotwSession (state of the world). Every response is checked against the
    latest subscription of its type (the session handles requests in order) and, for
    full-state types, against the snapshot the session answered from."""

    def __init__(self, cache: SnapshotCache, node_id: str = "node-1", **session: Any) -> None:
        super().__init__(node_id)
        self.rules = SotwRules(
            in_order=True,
            increasing_nonces=True,
            existing=lambda type_url: self._snapshot().resources.get(type_url, {}),
        )
        self.session = SotwSession(cache, self._send, peer="fake", server_id="test", **session)

    def _snapshot(self) -> Any:
        snapshot = self.session.snapshot
        assert snapshot is not None, "a response without a snapshot"
        return snapshot

    async def _send(self, data: bytes) -> None:
        response = discovery_pb2.DiscoveryResponse.FromString(data)
        self.rules.check(response)
        await self._deliver(response)

    async def request(
        self,
        type_url: str,
        names: list[str] | None = None,
        *,
        version: str = "",
        nonce: str = "",
        error: str = "",
        with_node: bool = True,
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=names or [],
            version_info=version,
            response_nonce=nonce,
        )
        if with_node:
            request.node.CopyFrom(self.node)
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self.rules.requested(request)
        await self._requests.put(request)

    async def ack(self, response: discovery_pb2.DiscoveryResponse, names: list[str]) -> None:
        await self.request(
            response.type_url, names, version=response.version_info, nonce=response.nonce
        )


class FakeDeltaStream(_SessionStream):
    """Drives one DeltaSession and keeps what the client holds, per type: name -> version.
    The stream's first request names the node (unless told ``with_node=False``)."""

    def __init__(self, cache: SnapshotCache, node_id: str = "node-1", **session: Any) -> None:
        super().__init__(node_id)
        self.rules = DeltaRules(increasing_nonces=True, system_version=True)
        self.held: dict[str, dict[str, str]] = {}
        self._sent_node = False
        self.session = DeltaSession(cache, self._send, peer="fake", server_id="test", **session)

    async def _send(self, data: bytes) -> None:
        response = discovery_pb2.DeltaDiscoveryResponse.FromString(data)
        self.rules.check(response)
        held = self.held.setdefault(response.type_url, {})
        for resource in response.resources:
            held[resource.name] = resource.version
        for name in response.removed_resources:
            held.pop(name, None)
        await self._deliver(response)

    @staticmethod
    def _describe(response: Any) -> str:
        sent = [r.name for r in response.resources]
        return f"{response.type_url} {sent} removed {list(response.removed_resources)}"

    async def request(
        self,
        type_url: str,
        subscribe: list[str] | None = None,
        unsubscribe: list[str] | None = None,
        *,
        initial: dict[str, str] | None = None,
        nonce: str = "",
        error: str = "",
        with_node: bool = True,
    ) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=subscribe or [],
            resource_names_unsubscribe=unsubscribe or [],
            initial_resource_versions=initial or {},
            response_nonce=nonce,
        )
        if not self._sent_node:
            if with_node:
                request.node.CopyFrom(self.node)
            self._sent_node = True
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        for name in unsubscribe or []:
            self.held.get(type_url, {}).pop(name, None)
        self.rules.requested(request)
        await self._requests.put(request)

    async def ack(self, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        await self.request(response.type_url, nonce=response.nonce)
