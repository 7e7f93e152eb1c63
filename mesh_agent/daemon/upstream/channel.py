"""The connection the upstream stream runs on: the channel's options, and the wait for it to
connect, which fails fast with grpc's own reason (refused, a failed handshake, a name that
does not resolve) instead of waiting out the call."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from mesh_core.errors import UnavailableError
from mesh_core.tls import TlsFiles, aio_channel

CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
CONNECT_TIMEOUT = 3.0


def open_channel(server: str, tls: TlsFiles | None) -> grpc.aio.Channel:
    """A channel to the control server ``server`` (mTLS with ``tls``, its files read now)."""
    return aio_channel(server, tls, CHANNEL_OPTIONS)


async def wait_ready(channel: grpc.aio.Channel) -> None:
    """Waits until ``channel`` is connected; raises :class:`UnavailableError` with grpc's
    reason as soon as the connection attempt fails (refused, a failed handshake), or after
    ``CONNECT_TIMEOUT`` without an answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CONNECT_TIMEOUT
    state = channel.get_state(try_to_connect=True)
    while state is not grpc.ChannelConnectivity.READY:
        if state is grpc.ChannelConnectivity.TRANSIENT_FAILURE:
            raise UnavailableError(await _connect_error(channel))
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise UnavailableError(await _connect_error(channel))
        try:
            async with asyncio.timeout(remaining):
                await channel.wait_for_state_change(state)
        except TimeoutError:
            continue
        state = channel.get_state(try_to_connect=True)


async def _connect_error(channel: grpc.aio.Channel) -> str:
    """Why ``channel`` cannot connect, as grpc reports it to a call that does not wait for the
    connection (the channel's own state carries no reason)."""
    probe: Any = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda _: b"",
        response_deserializer=lambda _: None,
    )
    try:
        await probe(None, timeout=1.0, wait_for_ready=False)
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
            return error.details() or error.code().name
    return f"no connection within {CONNECT_TIMEOUT:g}s"


__all__ = ["CHANNEL_OPTIONS", "CONNECT_TIMEOUT", "open_channel", "wait_ready"]
