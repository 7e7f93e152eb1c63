"""An in-process ADS client for benchmarks (grpc.aio, on the caller's event loop), after
``tests/adsclient.py``: subscribes, ACKs every response, and records each response with
``time.time()`` taken as it arrives, before the ACK is queued."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

# Reconnect fast: a start-up benchmark connects while the server may not listen yet.
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 10),
    ("grpc.min_reconnect_backoff_ms", 10),
    ("grpc.max_reconnect_backoff_ms", 50),
]


@dataclass(frozen=True, slots=True)
class Received:
    t: float  # time.time() when the response came off the stream
    response: discovery_pb2.DiscoveryResponse


class AdsClient:
    def __init__(self, target: str, node_id: str) -> None:
        self.target = target
        self.node_id = node_id
        self.received: list[Received] = []
        self.changed = asyncio.Condition()
        self.error: BaseException | None = None
        self._requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        self._names: dict[str, list[str]] = {}
        self._accepted: dict[str, str] = {}
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AdsClient:
        self._channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self._channel)
        call = stub.StreamAggregatedResources(self._iterate(), wait_for_ready=True)
        self._task = asyncio.create_task(self._receive(call))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._requests.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
                await self._task
            self._task = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def _iterate(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (request := await self._requests.get()) is not None:
            yield request

    def subscribe(self, type_url: str, names: Sequence[str]) -> None:
        self._names[type_url] = list(names)
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=self._names[type_url],
            version_info=self._accepted.get(type_url, ""),
        )
        request.node.id = self.node_id
        self._requests.put_nowait(request)

    async def _receive(
        self,
        call: grpc.aio.StreamStreamCall[
            discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse
        ],
    ) -> None:
        try:
            async for response in call:
                record = Received(time.time(), response)
                self._accepted[response.type_url] = response.version_info
                ack = discovery_pb2.DiscoveryRequest(
                    type_url=response.type_url,
                    version_info=response.version_info,
                    resource_names=self._names.get(response.type_url, []),
                    response_nonce=response.nonce,
                )
                ack.node.id = self.node_id
                self._requests.put_nowait(ack)
                async with self.changed:
                    self.received.append(record)
                    self.changed.notify_all()
        except grpc.RpcError as error:
            self.error = error
            async with self.changed:
                self.changed.notify_all()

    def of_type(self, type_url: str) -> list[Received]:
        return [r for r in self.received if r.response.type_url == type_url]

    async def wait_for(self, predicate: Callable[[AdsClient], bool], timeout: float) -> None:
        """Waits until ``predicate(self)``; raises TimeoutError, or the stream's error."""

        async def until() -> None:
            async with self.changed:
                await self.changed.wait_for(lambda: predicate(self) or self.error is not None)
            if self.error is not None and not predicate(self):
                raise self.error

        await asyncio.wait_for(until(), timeout)
