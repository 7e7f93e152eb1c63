"""The ADS client the benchmarks run in process: ``mesh_xds.testing.AdsClient`` (the one the
tests use, which checks every response against the protocol's rules), ACKing every response
and recording it with the ``time.time()`` of its arrival (``received``), set up to reconnect
fast: a start-up benchmark connects while the server may not listen yet."""

from __future__ import annotations

from typing import Final

from mesh_xds.testing import AdsClient

CHANNEL_OPTIONS: Final = (
    ("grpc.initial_reconnect_backoff_ms", 10),
    ("grpc.min_reconnect_backoff_ms", 10),
    ("grpc.max_reconnect_backoff_ms", 50),
)


def ads_client(target: str, node_id: str) -> AdsClient:
    """A client for ``target`` whose stream waits for the server to listen."""
    return AdsClient(target, node_id, channel_options=CHANNEL_OPTIONS, wait_for_ready=True)
