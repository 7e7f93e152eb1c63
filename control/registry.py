"""Endpoints registered by node agents, what their local clients reported and the agents'
own health: soft state owned by the agents, kept by mesh-control only while the node is
around.

Plain state with no grpc import (DESIGN.md, decision 5): :class:`Registrations` takes events
(a node's set of registrations, a stream connected or ended, a grace timer) and tells its
listeners when the registered endpoints changed. Transport code (the NodeService servicer,
the ADS servicer) only feeds it and reads it.

Liveness: a node's registrations are kept while the node has at least one ADS stream to this
server. When its last stream ends, a grace timer starts; a new stream of the node before it
fires cancels it, otherwise the node's registrations (and client and health reports) are
dropped. A node that registers without any stream gets the same grace to connect one. Nothing
survives a restart of the server: agents send their full set again when they reconnect. This
one timer is the grace on every store: with etcd, :class:`control.shared_nodes.SharedNodes`
follows it (:attr:`Registrations.liveness`) to end the node's shared record.

Identity: a request names its node and touches only that node's set, but nothing checks yet
that the caller *is* that node. That check comes with mTLS, where the node id will be taken
from (or matched against) the peer's certificate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from control.config import validate_service
from mesh.v1 import config_pb2, node_pb2
from mesh_core.errors import RegistrationError
from mesh_core.limits import MAX_NODE_ID_LENGTH
from mesh_core.signals import Signal

log = structlog.get_logger(__name__)

DEFAULT_GRACE = 30.0
MAX_REGISTRATIONS_PER_NODE = 10_000
MAX_CLIENTS_PER_NODE = 10_000
MAX_HEALTH_ENTRIES = 10_000

# validate_service's field paths for a one-endpoint service, in Registration terms.
_FIELD_OF = {
    "name": "service",
    "endpoints[0].address": "address",
    "endpoints[0].weight": "weight",
    "endpoints[0].zone": "zone",
    "endpoints[0].metadata": "metadata",
    "endpoints[0].labels": "labels",
}


def _check_node_id(node_id: str) -> list[str]:
    if not node_id:
        return ["node_id: required"]
    if len(node_id) > MAX_NODE_ID_LENGTH:
        return [f"node_id: at most {MAX_NODE_ID_LENGTH} characters, got {len(node_id)}"]
    return []


def registration_endpoint(node_id: str, registration: node_pb2.Registration) -> config_pb2.Endpoint:
    """The service endpoint a registration stands for, marked with the node that owns it."""
    return config_pb2.Endpoint(
        address=registration.address,
        zone=registration.zone,
        weight=registration.weight,
        metadata=dict(registration.metadata),
        labels=dict(registration.labels),
        node_id=node_id,
        draining=registration.draining,
    )


def validate_registrations(
    node_id: str, registrations: Sequence[node_pb2.Registration]
) -> list[str]:
    """Every problem of a SetRegistrations request, as ``field.path: message``; empty when
    valid. Services and addresses are checked with the operator config's own validators."""
    problems = _check_node_id(node_id)
    if len(registrations) > MAX_REGISTRATIONS_PER_NODE:
        problems.append(
            f"registrations: at most {MAX_REGISTRATIONS_PER_NODE} per node, "
            f"got {len(registrations)}"
        )
        return problems
    seen: dict[tuple[str, str], int] = {}
    for index, registration in enumerate(registrations):
        path = f"registrations[{index}]"
        service = config_pb2.Service(
            name=registration.service,
            endpoints=[registration_endpoint(node_id, registration)],
        )
        for problem in validate_service(service):
            field_path, _, message = problem.partition(": ")
            name = _FIELD_OF.get(field_path, field_path)
            problems.append(f"{path}.{name}: {message}")
        key = (registration.service, registration.address.lower())
        if key in seen:
            problems.append(
                f"{path}.address: {registration.address!r} is registered twice for service "
                f"{registration.service!r}, also registrations[{seen[key]}]"
            )
        else:
            seen.setdefault(key, index)
    return problems


def _sort_key(registration: node_pb2.Registration) -> tuple[str, str]:
    return registration.service, registration.address.lower()


def _serialized(
    messages: Iterable[node_pb2.Registration | node_pb2.LocalClientStatus],
) -> list[bytes]:
    return [m.SerializeToString(deterministic=True) for m in messages]


@dataclass(slots=True)
class _Node:
    registrations: list[node_pb2.Registration] = field(default_factory=list)
    clients: list[node_pb2.LocalClientStatus] = field(default_factory=list)
    health: node_pb2.NodeHealth | None = None
    streams: int = 0
    timer: asyncio.TimerHandle | None = None
    # The node has sent its set (possibly empty) since it last connected to this server.
    reported: bool = False

    @property
    def has_state(self) -> bool:
        """Whether the node sent anything that outlives its streams for the grace."""
        return bool(self.registrations or self.clients or self.health is not None)

    @property
    def empty(self) -> bool:
        return not self.has_state and self.streams == 0


class RegistrationSource(Protocol):
    """Where the publisher finds registered endpoints: this server's :class:`Registrations`,
    or every server's when they share a store (:class:`control.shared_nodes.SharedNodes`)."""

    def by_service(self) -> Mapping[str, list[config_pb2.Endpoint]]: ...

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]: ...


class Registrations:
    """Per node: its registrations, its local clients' status, its agent's health, and how
    many ADS streams it has to this server. Lives on the event loop of the control server; not
    thread-safe.

    ``grace`` is how long a node's state outlives its last stream (seconds). Listeners added
    with :meth:`subscribe` are plain callables run synchronously whenever the registered
    endpoints change; they must only schedule work (the publisher marks itself dirty).
    """

    def __init__(self, grace: float = DEFAULT_GRACE) -> None:
        if grace < 0:
            raise ValueError(f"registration grace must not be negative, got {grace}")
        self.grace = grace
        self._nodes: dict[str, _Node] = {}
        self.changed: Signal[[]] = Signal()
        """Emitted after every change of the registered endpoints."""
        self.liveness: Signal[[str]] = Signal()
        """Emitted with a node id when the node's last stream ends, when it connects again,
        and when its grace runs out (its state dropped)."""

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Calls ``callback`` after every change of the registered endpoints (the publisher's
        :class:`RegistrationSource` view of :attr:`changed`)."""
        return self.changed.connect(callback)

    # -- what nodes send -------------------------------------------------------------------

    def set(self, node_id: str, registrations: Sequence[node_pb2.Registration]) -> int:
        """Replaces the full set registered by ``node_id``; returns how many were accepted.
        Raises RegistrationError, changing nothing, when any registration is invalid."""
        problems = validate_registrations(node_id, registrations)
        if problems:
            raise RegistrationError(problems)
        new = sorted((self._copy(r) for r in registrations), key=_sort_key)
        node = self._nodes.get(node_id)
        old = node.registrations if node is not None else []
        if node is None:
            if not new:
                return 0
            node = self._nodes[node_id] = _Node()
        node.registrations = new
        node.reported = True
        self._arm_if_unconnected(node_id, node)
        if _serialized(old) != _serialized(new):
            log.info(
                "registrations set",
                node=node_id,
                registrations=len(new),
                services=sorted({r.service for r in new}),
            )
            self.changed.emit()
        self._forget_if_empty(node_id)
        return len(new)

    def report_clients(
        self,
        node_id: str,
        clients: Sequence[node_pb2.LocalClientStatus],
        health: node_pb2.NodeHealth | None = None,
    ) -> None:
        """Replaces what ``node_id`` reported of its local clients and of its agent's health
        (None: no health reported). Raises RegistrationError, changing nothing, for a
        missing node id or an oversized report."""
        problems = _check_node_id(node_id)
        if len(clients) > MAX_CLIENTS_PER_NODE:
            problems.append(f"clients: at most {MAX_CLIENTS_PER_NODE} per node, got {len(clients)}")
        if health is not None:
            for name, entries in (
                ("components", health.components),
                ("breakers", health.breakers),
            ):
                if len(entries) > MAX_HEALTH_ENTRIES:
                    problems.append(
                        f"health.{name}: at most {MAX_HEALTH_ENTRIES} per node, got {len(entries)}"
                    )
        if problems:
            raise RegistrationError(problems)
        node = self._nodes.get(node_id)
        if node is None:
            if not clients and health is None:
                return
            node = self._nodes[node_id] = _Node()
        copied = []
        for client in clients:
            copy = node_pb2.LocalClientStatus()
            copy.CopyFrom(client)
            copied.append(copy)
        node.clients = sorted(copied, key=lambda c: (c.client_id, c.type_url))
        self._set_health(node_id, node, health)
        self._arm_if_unconnected(node_id, node)
        nacks = [c.client_id for c in node.clients if c.nack_message]
        if nacks:
            log.info("local clients report NACKs", node=node_id, clients=sorted(set(nacks)))
        self._forget_if_empty(node_id)

    @staticmethod
    def _set_health(node_id: str, node: _Node, health: node_pb2.NodeHealth | None) -> None:
        before = node.health
        if health is None:
            node.health = None
            return
        node.health = node_pb2.NodeHealth()
        node.health.CopyFrom(health)
        if before is not None and before.status == health.status:
            opened_before = {(b.service, b.state) for b in before.breakers}
            if opened_before == {(b.service, b.state) for b in health.breakers}:
                return
        log.info(
            "node health reported",
            node=node_id,
            status=health.status,
            not_running={c.name: c.state for c in health.components if c.state != "running"},
            breakers={b.service: b.state for b in health.breakers},
        )

    # -- stream liveness -------------------------------------------------------------------

    def connected(self, node_id: str) -> None:
        """A new ADS stream of ``node_id`` named its node: keep the node's state."""
        node = self._nodes.setdefault(node_id, _Node())
        if node.streams == 0 and node.timer is None:
            node.reported = False  # a node new to this server: its set has yet to come
        node.streams += 1
        if node.timer is not None:
            node.timer.cancel()
            node.timer = None
            log.info("node reconnected within grace; registrations kept", node=node_id)
        if node.streams == 1:
            self.liveness.emit(node_id)

    def disconnected(self, node_id: str) -> None:
        """An ADS stream of ``node_id`` ended; after its last one the grace timer starts."""
        node = self._nodes.get(node_id)
        if node is None or node.streams == 0:
            log.warning("disconnect of a node not known connected; ignored", node=node_id)
            return
        node.streams -= 1
        if node.streams == 0:
            self._arm_if_unconnected(node_id, node)
            self._forget_if_empty(node_id)
            self.liveness.emit(node_id)

    def _arm_if_unconnected(self, node_id: str, node: _Node) -> None:
        if node.streams > 0 or node.timer is not None:
            return
        if not node.has_state:
            return
        loop = asyncio.get_running_loop()
        node.timer = loop.call_later(self.grace, self._expire, node_id)
        log.info(
            "node has no stream; registrations dropped after grace",
            node=node_id,
            grace=self.grace,
            registrations=len(node.registrations),
        )

    def _expire(self, node_id: str) -> None:
        node = self._nodes.get(node_id)
        if node is None:
            return
        node.timer = None
        if node.streams > 0:
            return
        dropped = len(node.registrations)
        del self._nodes[node_id]
        log.info("grace expired; node's registrations dropped", node=node_id, dropped=dropped)
        self.liveness.emit(node_id)
        if dropped:
            self.changed.emit()

    def _forget_if_empty(self, node_id: str) -> None:
        node = self._nodes.get(node_id)
        if node is not None and node.empty and node.timer is None:
            del self._nodes[node_id]

    def close(self) -> None:
        """Cancels every grace timer (server shutdown); the state is left as it is."""
        for node in self._nodes.values():
            if node.timer is not None:
                node.timer.cancel()
                node.timer = None

    # -- reading ---------------------------------------------------------------------------

    @staticmethod
    def _copy(registration: node_pb2.Registration) -> node_pb2.Registration:
        copy = node_pb2.Registration()
        copy.CopyFrom(registration)
        return copy

    def nodes(self) -> list[str]:
        """Node ids with registrations, client reports or a health report, sorted."""
        return sorted(n for n, node in self._nodes.items() if node.has_state)

    def registrations(self, node_id: str) -> list[node_pb2.Registration]:
        node = self._nodes.get(node_id)
        return list(node.registrations) if node is not None else []

    def local_clients(self, node_id: str) -> list[node_pb2.LocalClientStatus]:
        node = self._nodes.get(node_id)
        return list(node.clients) if node is not None else []

    def health(self, node_id: str) -> node_pb2.NodeHealth | None:
        """The health the node's agent last reported; None when it reported none."""
        node = self._nodes.get(node_id)
        if node is None or node.health is None:
            return None
        copy = node_pb2.NodeHealth()
        copy.CopyFrom(node.health)
        return copy

    def has_reported(self, node_id: str) -> bool:
        """Whether the node sent its registrations since it connected to this server."""
        node = self._nodes.get(node_id)
        return node is not None and node.reported

    def is_connected(self, node_id: str) -> bool:
        node = self._nodes.get(node_id)
        return node is not None and node.streams > 0

    def pending_drop(self, node_id: str) -> bool:
        """True while the node's grace timer runs."""
        node = self._nodes.get(node_id)
        return node is not None and node.timer is not None

    def by_service(self) -> dict[str, list[config_pb2.Endpoint]]:
        """Registered endpoints per service, each marked with its node; ordered by node id,
        then address, so equal state always gives equal config."""
        result: dict[str, list[config_pb2.Endpoint]] = {}
        for node_id in sorted(self._nodes):
            for registration in self._nodes[node_id].registrations:
                result.setdefault(registration.service, []).append(
                    registration_endpoint(node_id, registration)
                )
        return result


def merge_registered(
    services: Iterable[config_pb2.Service],
    registered: Mapping[str, Sequence[config_pb2.Endpoint]],
) -> list[config_pb2.Service]:
    """The services to serve: the operator's ``services`` with the ``registered`` endpoints
    added. An address the operator already lists (or an earlier node registered) keeps that
    entry; a service only nodes registered gets just their endpoints and no policy. The
    inputs are not modified."""
    merged: list[config_pb2.Service] = []
    seen_names: set[str] = set()
    for service in services:
        seen_names.add(service.name)
        extra = registered.get(service.name)
        if not extra:
            merged.append(service)
            continue
        copy = config_pb2.Service()
        copy.CopyFrom(service)
        _add_endpoints(copy, extra)
        merged.append(copy)
    for name in sorted(registered.keys() - seen_names):
        created = config_pb2.Service(name=name)
        _add_endpoints(created, registered[name])
        if created.endpoints:
            merged.append(created)
    return merged


def _add_endpoints(service: config_pb2.Service, endpoints: Iterable[config_pb2.Endpoint]) -> None:
    present = {e.address.lower() for e in service.endpoints}
    for endpoint in endpoints:
        key = endpoint.address.lower()
        if key in present:
            continue
        present.add(key)
        service.endpoints.append(endpoint)
