"""A test ADS client on a real gRPC stream: subscribes, ACKs (or NACKs) what it gets, and
records every response, so tests can count pushes and check what a server recorded."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2


class AdsTestClient:
    def __init__(
        self,
        target: str,
        node_id: str,
        *,
        reject: Callable[[discovery_pb2.DiscoveryResponse], str | None] = lambda _: None,
    ) -> None:
        """``reject`` returns an error text to NACK a response with, or None to ACK it."""
        self.target = target
        self.node_id = node_id
        self.reject = reject
        self.responses: list[discovery_pb2.DiscoveryResponse] = []
        self.changed = asyncio.Condition()
        self._requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        self._names: dict[str, list[str]] = {}
        self._accepted: dict[str, str] = {}
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None
        self.error: grpc.RpcError | None = None

    async def __aenter__(self) -> AdsTestClient:
        self._channel = grpc.aio.insecure_channel(self.target)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        call = stub.StreamAggregatedResources(self._iterate())
        self._task = asyncio.create_task(self._receive(call))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._requests.put(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
                await self._task
        if self._channel is not None:
            await self._channel.close()

    async def _iterate(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (request := await self._requests.get()) is not None:
            yield request

    def subscribe(self, type_url: str, names: list[str] | None = None) -> None:
        self._names[type_url] = list(names or [])
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=self._names[type_url],
            version_info=self._accepted.get(type_url, ""),
        )
        request.node.id = self.node_id
        self._requests.put_nowait(request)

    async def _receive(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            async for response in call:
                request = discovery_pb2.DiscoveryRequest(
                    type_url=response.type_url,
                    resource_names=self._names.get(response.type_url, []),
                    response_nonce=response.nonce,
                )
                error = self.reject(response)
                if error is None:
                    self._accepted[response.type_url] = response.version_info
                else:
                    request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
                request.version_info = self._accepted.get(response.type_url, "")
                self._requests.put_nowait(request)
                async with self.changed:
                    self.responses.append(response)
                    self.changed.notify_all()
        except grpc.RpcError as error:
            self.error = error

    def of_type(self, type_url: str) -> list[discovery_pb2.DiscoveryResponse]:
        return [r for r in self.responses if r.type_url == type_url]

    async def wait_for(
        self, predicate: Callable[[AdsTestClient], bool], timeout: float = 10
    ) -> None:
        async def until() -> None:
            async with self.changed:
                await self.changed.wait_for(lambda: predicate(self))

        await asyncio.wait_for(until(), timeout)
