"""What the upstream's two stream flavours (:mod:`~mesh_agent.daemon.upstream.sotw`,
:mod:`~mesh_agent.daemon.upstream.delta`) share: the shape the
:class:`~mesh_agent.daemon.upstream.client.UpstreamClient` drives, what each tells it of the
responses it handled, and the queue its requests go out through.

A stream lives as long as one ADS call; it reads the client's interest (owned by the client)
and keeps only the protocol state of its call (nonces, what it has subscribed to)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from envoy.service.discovery.v3 import ads_pb2_grpc

from mesh_xds.types import PUSH_ORDER, TypeUrl, Version

R = TypeVar("R")


@dataclass(slots=True)
class TypeStats:
    """What the agent received of one resource type, for its status and CSDS."""

    responses: int = 0
    last_nack: str = ""
    rejected: bool = False  # the latest response was NACKed


Responded = Callable[[TypeUrl, Version, "str | None"], None]
"""Told of every response a stream handled: its type, its version and, when the cache refused
it (and the stream NACKed it), why."""


class UpstreamStream(Protocol):
    """One ADS call to a control server, of one flavour."""

    @property
    def flavour(self) -> str:
        """``sotw`` or ``delta``."""
        ...

    def interest_changed(self, type_url: TypeUrl) -> None:
        """The client's interest in ``type_url`` changed: send what moves the call's
        subscription there (nothing if it already is)."""
        ...

    async def serve(
        self, stub: ads_pb2_grpc.AggregatedDiscoveryServiceStub, opened: Callable[[], None]
    ) -> None:
        """Makes the call on ``stub`` with the requests queued so far, calls ``opened()``
        once it is under way, and handles its responses until it ends."""
        ...


class RequestQueue(asyncio.Queue[R]):
    """The requests of one call, in the order they were made; :meth:`drain` is the call's
    request iterator."""

    async def drain(self) -> AsyncIterator[R]:
        while True:
            yield await self.get()


def push_rank(type_url: TypeUrl) -> int:
    """Where ``type_url`` comes in the order requests are made (listeners first)."""
    return PUSH_ORDER.index(type_url) if type_url in PUSH_ORDER else len(PUSH_ORDER)


__all__ = ["RequestQueue", "Responded", "TypeStats", "UpstreamStream", "push_rank"]
