"""Endpoint addresses as the mesh writes them (``10.0.0.5:50051``, ``[::1]:50051``) and as xDS
holds them (``SocketAddress``), both ways."""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2


def split_address(address: str) -> tuple[str, int]:
    """``10.0.0.5:50051`` or ``[::1]:50051`` to host and port (validated beforehand)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def join_address(socket_address: address_pb2.SocketAddress) -> str:
    """The inverse of :func:`split_address`: ``host:port``, an IPv6 host in brackets."""
    host = socket_address.address
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{socket_address.port_value}"
