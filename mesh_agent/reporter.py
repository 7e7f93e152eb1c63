"""Tells the control server what only the agent knows: the endpoints this node registered,
and what its local processes accepted or rejected.

Both are full sets, re-sent after every (re)connect and on every change, to the control
server the upstream ADS stream is connected to (its liveness is what keeps the
registrations). Registrations made through the agent API persist in the state dir.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path

import grpc
import structlog
from google.protobuf import json_format

from control.backoff import Backoff
from control.xds.server import NodeRegistry
from mesh.v1 import node_pb2, node_pb2_grpc

from .cache import atomic_write

log = structlog.get_logger(__name__)
RECONNECT_BACKOFF = Backoff(base=0.2, cap=5.0)
REGISTRATIONS_FILE = "registrations.json"


def registration_key(registration: node_pb2.Registration) -> tuple[str, str]:
    return registration.service, registration.address


class Reporter:
    """Event-loop owned. ``changed()`` schedules a send; ``run()`` sends."""

    def __init__(
        self,
        node_id: str,
        local: NodeRegistry,
        state_dir: Path | None,
        static: Iterable[node_pb2.Registration] = (),
        backoff: Backoff = RECONNECT_BACKOFF,
    ) -> None:
        self.node_id = node_id
        self.local = local
        self.state_dir = state_dir
        self.backoff = backoff
        self.registrations: dict[tuple[str, str], node_pb2.Registration] = {
            registration_key(r): r for r in static
        }
        self._static = set(self.registrations)
        self.server = ""
        self._dirty = asyncio.Event()
        self._load()

    # -- registrations -----------------------------------------------------------------------

    def register(self, registration: node_pb2.Registration) -> None:
        self.registrations[registration_key(registration)] = registration
        self._save()
        self.changed()

    def set_draining(self, service: str, address: str) -> bool:
        registration = self.registrations.get((service, address))
        if registration is None:
            return False
        registration.draining = True
        self._save()
        self.changed()
        return True

    def remove(self, service: str, address: str) -> bool:
        removed = self.registrations.pop((service, address), None) is not None
        if removed:
            self._save()
            self.changed()
        return removed

    def _path(self) -> Path | None:
        return self.state_dir / REGISTRATIONS_FILE if self.state_dir else None

    def _save(self) -> None:
        path = self._path()
        if path is None:
            return
        dynamic = [
            json_format.MessageToDict(r, preserving_proto_field_name=True)
            for key, r in sorted(self.registrations.items())
            if key not in self._static
        ]
        atomic_write(path, json.dumps({"format": 1, "registrations": dynamic}).encode())

    def _load(self) -> None:
        path = self._path()
        if path is None or not path.exists():
            return
        try:
            document = json.loads(path.read_text())
            for body in document["registrations"]:
                registration = json_format.ParseDict(body, node_pb2.Registration())
                self.registrations.setdefault(registration_key(registration), registration)
        except (OSError, ValueError, KeyError, TypeError, json_format.ParseError) as error:
            log.warning(
                "registrations file rejected; starting without it", path=str(path), error=str(error)
            )

    # -- local client status -------------------------------------------------------------------

    def client_statuses(self) -> list[node_pb2.LocalClientStatus]:
        statuses: list[node_pb2.LocalClientStatus] = []
        for session in self.local.sessions():
            for state in session.types.values():
                status = node_pb2.LocalClientStatus(
                    client_id=session.node_id,
                    type_url=state.type_url,
                    version_acked=state.acked_version,
                )
                if state.last_nack is not None:
                    status.nack_version = state.last_nack.version
                    status.nack_message = state.last_nack.message
                    status.nack_time.FromNanoseconds(int(state.last_nack.at * 1e9))
                statuses.append(status)
        return statuses

    # -- sending -----------------------------------------------------------------------------

    def changed(self) -> None:
        self._dirty.set()

    def connected(self, server: str) -> None:
        self.server = server
        self.changed()

    def disconnected(self) -> None:
        self.server = ""

    async def run(self) -> None:
        delays = self.backoff.delays()
        while True:
            await self._dirty.wait()
            await asyncio.sleep(0.05)  # coalesce a burst of changes
            self._dirty.clear()
            server = self.server
            if not server:
                continue  # sent on the next connect
            try:
                await self._send(server)
                delays = self.backoff.delays()
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "report to control server failed",
                    server=server,
                    code=error.code().name,
                    details=error.details(),
                )
                await asyncio.sleep(next(delays))
                self._dirty.set()

    async def _send(self, server: str) -> None:
        async with grpc.aio.insecure_channel(server) as channel:
            stub = node_pb2_grpc.NodeServiceStub(channel)
            await stub.SetRegistrations(
                node_pb2.SetRegistrationsRequest(
                    node_id=self.node_id,
                    registrations=[r for _, r in sorted(self.registrations.items())],
                ),
                timeout=5,
            )
            await stub.ReportClientStatus(
                node_pb2.ReportClientStatusRequest(
                    node_id=self.node_id, clients=self.client_statuses()
                ),
                timeout=5,
            )
