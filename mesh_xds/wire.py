"""ADS responses as the bytes a stream writes, serialised once and shared.

A push of one config change sends the same response to every stream with the same
subscription, except for its nonce, which is per stream. So the body (every field but the
nonce) is serialised once per (type, subscription, version), kept by the snapshot it came
from (:meth:`~mesh_xds.snapshot.Snapshot.encoded`), and each stream appends its own ``nonce``
field: protobuf parsers merge concatenated messages, and a singular field that occurs once
(the body has no nonce) simply takes the appended value. The ADS methods are registered with
a pass-through response serializer (:func:`ads_method_handlers`) so gRPC writes these bytes
as they are; requests are still parsed by gRPC into messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from mesh_xds.snapshot import Resource

ADS_SERVICE: Final = "envoy.service.discovery.v3.AggregatedDiscoveryService"
_WIRE_LENGTH_DELIMITED: Final = 2


def _nonce_tag(message: type[Any]) -> bytes:
    number: int = message.DESCRIPTOR.fields_by_name["nonce"].number
    return _varint(number << 3 | _WIRE_LENGTH_DELIMITED)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SOTW_NONCE: Final = _nonce_tag(discovery_pb2.DiscoveryResponse)
_DELTA_NONCE: Final = _nonce_tag(discovery_pb2.DeltaDiscoveryResponse)
assert _SOTW_NONCE == _DELTA_NONCE, "nonce is field 5 of both responses"


def with_nonce(body: bytes, nonce: str) -> bytes:
    """``body`` (a serialised response without a nonce) with its ``nonce`` field appended."""
    data = nonce.encode()
    return b"".join((body, _SOTW_NONCE, _varint(len(data)), data))


def sotw_body(type_url: str, version: str, resources: Iterable[Resource], server_id: str) -> bytes:
    """A ``DiscoveryResponse`` without its nonce, serialised."""
    response = discovery_pb2.DiscoveryResponse(
        version_info=version,
        type_url=type_url,
        resources=[resource.packed for resource in resources],
    )
    response.control_plane.identifier = server_id
    data: bytes = response.SerializeToString()
    return data


def delta_body(
    type_url: str,
    version: str,
    updates: Iterable[Resource],
    removed: Iterable[str],
    server_id: str,
) -> bytes:
    """A ``DeltaDiscoveryResponse`` without its nonce, serialised."""
    response = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info=version, type_url=type_url, removed_resources=removed
    )
    response.resources.extend(resource.delta for resource in updates)
    response.control_plane.identifier = server_id
    data: bytes = response.SerializeToString()
    return data


def ads_method_handlers(servicer: Any) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """The ADS methods of ``servicer``, whose streams write serialised responses (bytes):
    requests are parsed as usual, responses pass through unchanged."""
    return {
        "StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.StreamAggregatedResources,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=None,
        ),
        "DeltaAggregatedResources": grpc.stream_stream_rpc_method_handler(
            servicer.DeltaAggregatedResources,
            request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
            response_serializer=None,
        ),
    }


__all__ = [
    "ADS_SERVICE",
    "ads_method_handlers",
    "delta_body",
    "sotw_body",
    "with_nonce",
]
