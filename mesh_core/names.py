"""Resource names shared by the control server, the agent and the client library.

``mesh_channel("orders")`` dials ``xds:///mesh-client/orders``: an alias Listener the control
server serves beside ``orders``, with the service's routes inline and no route timeout
(``max_stream_duration``), because grpcio (1.85) starts a route timeout 1-2 s early
(grpc/grpc#40633). The client library applies the service's timeout to each call itself. A
plain ``xds:///orders`` channel still gets the timeout as xDS defines it.

A subset of a service is served as a Cluster and a ClusterLoadAssignment named
``orders/v2`` (:func:`subset_cluster_name`).

Service names cannot hold a ``/`` (they are DNS names), so an alias or a subset's name never
clashes with a service's.
"""

from __future__ import annotations

from typing import Final

CLIENT_LISTENER_PREFIX: Final = "mesh-client/"


def client_listener_name(service: str) -> str:
    """The Listener the client library's channels to ``service`` ask for."""
    return CLIENT_LISTENER_PREFIX + service


def service_of_listener(name: str) -> str:
    """The service a Listener serves: ``orders`` for ``mesh-client/orders`` and for
    ``orders``."""
    return name.removeprefix(CLIENT_LISTENER_PREFIX)


def subset_cluster_name(service: str, subset: str) -> str:
    """The Cluster (and ClusterLoadAssignment) of ``subset`` of ``service``: ``orders/v2``."""
    return f"{service}/{subset}"


def service_of_cluster(name: str) -> str:
    """The service a Cluster or ClusterLoadAssignment belongs to: ``orders`` for ``orders``
    and for its subsets' ``orders/v2``."""
    return name.partition("/")[0]


SERVER_LISTENER_PREFIX: Final = "mesh-server/"
SERVER_LISTENER_TEMPLATE: Final = SERVER_LISTENER_PREFIX + "%s"
"""The ``server_listener_resource_name_template`` of the bootstrap the client library writes:
an xDS-enabled server (``mesh_server``) listening on ``IP:PORT`` asks for the Listener
``mesh-server/IP:PORT``, which the node's agent builds from the service the process declared
on that address (it is never asked of the control server)."""


def server_listener_name(listening_address: str) -> str:
    """The Listener an xDS-enabled server of the mesh listening on ``listening_address``
    (``IP:PORT``, IPv6 in brackets, as grpc writes it) asks for."""
    return SERVER_LISTENER_PREFIX + listening_address


def is_server_listener(name: str) -> bool:
    """Whether ``name`` is a server Listener's (:func:`server_listener_name`)."""
    return name.startswith(SERVER_LISTENER_PREFIX)
