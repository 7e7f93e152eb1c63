"""mesh-control: store (+ endpoints registered by nodes) → publisher → snapshot cache → ADS,
with the admin API, the node API, CSDS, health and reflection on one gRPC port.

Lifecycle (uvicorn's shape): :meth:`ControlServer.start` opens the store, loads the first
snapshot and binds; :meth:`ControlServer.stop` marks health NOT_SERVING, stops accepting,
lets calls drain for ``grace`` seconds, then cancels streams and its tasks and closes the
store, each step bounded: a task or store that does not end is logged and left behind.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import socket
import uuid
from pathlib import Path
from typing import Final

import grpc
import structlog
from envoy.service.discovery.v3 import ads_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from control.admin import AdminServicer
from control.node_api import NodeServicer
from control.nodes import ConnectedNodes
from control.publisher import Publisher
from control.registry import DEFAULT_GRACE, Registrations
from control.resources import build_resources, zone_key
from control.security import Access
from control.shared_nodes import SharedNodes
from control.shared_traffic import SharedTraffic
from control.signing import SigningAuthority
from control.store import HistoryLimits, Store, open_store
from control.store.etcd import EtcdStore
from control.traffic import TrafficGraph
from control.web import DEFAULT_HOST, MeshView, PageAccess, WebPage
from mesh.v1 import admin_pb2, admin_pb2_grpc, node_pb2, node_pb2_grpc
from mesh_core.aio import awaiting, end_tasks
from mesh_core.limits import Limits, StreamCounter
from mesh_core.rpc_server import AioMeshServerInterceptor
from mesh_core.tls import TlsFiles, server_credentials
from mesh_xds.cache import SnapshotCache
from mesh_xds.callbacks import Callbacks
from mesh_xds.metrics import CONTROL, XdsMetrics
from mesh_xds.servicer import AdsServicer, CsdsServicer, add_ads_servicer

log = structlog.get_logger(__name__)

COLLECTOR_THRESHOLDS: Final = (50_000, 20, 100)
"""The garbage collector's thresholds in mesh-control (CPython's default: 700, 10, 10). A
config change pushed to thousands of streams keeps, per stream, a task and the coroutines
of its write alive for a moment; with the default thresholds they outlive many young
collections, reach the oldest generation and make it collect everything the server holds
about once a change, a cost that grows with the nodes connected. Rarer young collections
let them die first; cyclic garbage waits a little longer to be collected."""


def tune_collector() -> None:
    """Sets :data:`COLLECTOR_THRESHOLDS` and moves what start-up built (modules, descriptors,
    the server's own objects, all kept for the life of the process) out of the collector's
    sight (``gc.freeze``): a collection of the oldest generation then walks only what came
    later, chiefly the streams' sessions."""
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


# On stop, how long calls may drain (seconds), by default.
DRAIN_GRACE = 5.0
# On stop, how long the server's tasks get to end once cancelled, then the store to close
# (seconds each): a task should end at once, so this bounds only a bug's cost.
STOP_TIMEOUT = 2.0

STORE_HEALTH = "store"
SERVICE_NAMES = (
    ads_pb2.DESCRIPTOR.services_by_name["AggregatedDiscoveryService"].full_name,
    csds_pb2.DESCRIPTOR.services_by_name["ClientStatusDiscoveryService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["MeshAdminService"].full_name,
    node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
    health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
)


class ControlServer:
    def __init__(
        self,
        store: Store | str,
        listen: str = "127.0.0.1:0",
        *,
        debounce: float = 0.1,
        max_delay: float = 1.0,
        server_id: str | None = None,
        grace: float = DRAIN_GRACE,
        registration_grace: float = DEFAULT_GRACE,
        tls: TlsFiles | None = None,
        access: Access | None = None,
        limits: Limits | None = None,
        signing: SigningAuthority | None = None,
        history: HistoryLimits | None = None,
        http_port: int | None = None,
        http_host: str = DEFAULT_HOST,
    ) -> None:
        """``grace`` is how long calls may drain on stop; ``registration_grace`` how long a
        node's registrations outlive its last ADS stream (seconds). ``tls``: serve mTLS with
        these files (reloaded when they change); ``access``: who may do what (default: open
        without ``tls``, node and operator identities with it). ``limits``: what one call or
        node may take (default :class:`~control.limits.Limits`). ``signing``: the CA that
        signs service identities for nodes (NodeService/SignCertificate; needs ``tls``).
        ``history``: how much history and audit a store opened from a URL keeps.
        ``http_port``: serve the read-only web page there (:mod:`control.web`; None: no
        page, 0: a free port), on ``http_host``."""
        self.limits = limits or Limits()
        self.signing = signing
        self.streams = StreamCounter(self.limits.max_streams_per_node)
        self.tls = tls
        self.access = access or Access(mtls=tls is not None)
        self.store = open_store(store, history) if isinstance(store, str) else store
        self.listen = listen
        self.server_id = server_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        domain = (signing.trust_domain if signing is not None else None) or self.access.trust_domain
        build = functools.partial(build_resources, trust_domain=domain)
        self.cache = SnapshotCache(build, zone_key)
        self.registrations = Registrations(registration_grace)
        self.nodes = ConnectedNodes(self.registrations)
        # With a shared store, registrations and node status are shared through it too.
        self.shared = (
            SharedNodes(
                self.store, self.registrations, self.nodes, self.server_id, registration_grace
            )
            if isinstance(self.store, EtcdStore)
            else None
        )
        self.traffic = TrafficGraph()
        # With a shared store, each server's window of its agents' traffic is shared too.
        self.shared_traffic = (
            SharedTraffic(self.store, self.traffic, self.server_id)
            if isinstance(self.store, EtcdStore)
            else None
        )
        self.publisher = Publisher(
            self.store,
            self.cache,
            debounce=debounce,
            max_delay=max_delay,
            registrations=self.shared if self.shared is not None else self.registrations,
        )
        self.health = health.aio.HealthServicer()
        self.grace = grace
        self.address = ""
        self.http_port = http_port
        self.http_host = http_host
        self.page: WebPage | None = None
        self.page_url = ""
        """The web page's URL once serving (empty: no page)."""
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.left_running: list[asyncio.Task[None]] = []
        """After :meth:`stop`: what did not end in time, still running (empty when clean)."""

    async def start(self) -> str:
        """Opens the store, publishes the first snapshot and starts serving; returns the
        address bound (``--listen 127.0.0.1:0`` picks a free port)."""
        await self.store.start()
        self._tasks.append(asyncio.create_task(self._run_publisher(), name="publisher"))
        self._tasks.append(asyncio.create_task(self._watch_store(), name="store-health"))
        if self.shared is not None:
            self._tasks.append(asyncio.create_task(self.shared.run(), name="shared-nodes"))
        if self.shared_traffic is not None:
            self._tasks.append(
                asyncio.create_task(self.shared_traffic.run(), name="shared-traffic")
            )
        server = grpc.aio.server(
            # Times (and traces) every call, once telemetry is set up: rpc.server.call.duration.
            interceptors=[AioMeshServerInterceptor()],
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                *self.limits.server_options(),
            ],
        )
        add_ads_servicer(
            AdsServicer(
                self.cache,
                self.nodes.registry,
                self.server_id,
                Callbacks(self.nodes, XdsMetrics(CONTROL)),
                stream_callbacks=self.access.stream_callbacks,
                limits=self.limits,
                streams=self.streams,
            ),
            server,
        )
        csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(
            CsdsServicer(self.nodes.registry), server
        )
        admin = AdminServicer(
            self.store,
            self.cache,
            self.nodes,
            self.server_id,
            remote_nodes=self.shared.remote_statuses if self.shared is not None else None,
            access=self.access,
            limits=self.limits,
            traffic=self.traffic,
        )
        admin_pb2_grpc.add_MeshAdminServiceServicer_to_server(admin, server)
        node_pb2_grpc.add_NodeServiceServicer_to_server(
            NodeServicer(
                self.registrations,
                self.access,
                limits=self.limits,
                store=self.store,
                signing=self.signing,
                traffic=self.traffic,
            ),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection((*SERVICE_NAMES, reflection.SERVICE_NAME), server)
        host, _, _ = self.listen.rpartition(":")
        if self.tls is not None:
            port = server.add_secure_port(self.listen, server_credentials(self.tls))
        else:
            port = server.add_insecure_port(self.listen)
        if port == 0:
            raise OSError(f"cannot listen on {self.listen}")
        await server.start()
        self._server = server
        self.address = f"{host}:{port}"
        if self.http_port is not None:
            await self._start_page(admin)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in SERVICE_NAMES:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving",
            address=self.address,
            server_id=self.server_id,
            tls=self.tls is not None,
            access=self.access.describe(),
            limits=self.limits.describe(),
            signing=self.signing.describe() if self.signing is not None else "off",
        )
        if self.access.open:
            log.warning("admin writes are open to anyone: no mTLS and no operator token")
        return self.address

    async def _start_page(self, admin: AdminServicer) -> None:
        """Serves the web page on ``http_host:http_port``; OSError naming the flags when it
        cannot bind."""
        assert self.http_port is not None
        registered = self.shared if self.shared is not None else self.registrations
        view = MeshView(self.store, admin.status, registered.by_service, admin.traffic)
        page = WebPage(
            view, PageAccess(self.access, self.http_host), self.http_host, self.http_port
        )
        try:
            self.page_url = await page.start()
        except OSError as error:
            raise OSError(
                f"--http-host {self.http_host} --http-port {self.http_port}: cannot serve the "
                f"web page there: {error.strerror or error}"
            ) from error
        self.page = page

    async def _watch_store(self) -> None:
        """Health service ``store`` follows the store: NOT_SERVING while it reports a problem
        (etcd unreachable, a rejected hand edit); the last snapshot keeps being served."""
        serving: bool | None = None
        while True:
            healthy = not self.store.problems()
            if healthy != serving:
                serving = healthy
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if healthy
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                await self.health.set(STORE_HEALTH, status)
                if not healthy:
                    log.warning(
                        "store has problems; serving the last snapshot",
                        problems=[p.message for p in self.store.problems()],
                    )
            await asyncio.sleep(0.5)

    async def _run_publisher(self) -> None:
        try:
            await self.publisher.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("publisher failed; the last snapshot stays in force")
            await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)

    async def wait_until_published(self) -> None:
        while not self.cache.loaded:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stops within ``grace`` plus twice :data:`STOP_TIMEOUT`, whatever the store is
        doing: a task of the server, or the store's close, that does not end in time is logged
        with where it is stuck and left behind in :attr:`left_running` (the process should
        exit anyway: nothing ends them)."""
        await self.health.enter_graceful_shutdown()
        if self.page is not None:
            await self.page.stop()
        if self._server is not None:
            await self._server.stop(self.grace)
        self.registrations.close()
        self.left_running = await self._end_tasks()
        self.left_running += await self._close_store()
        if self.left_running:
            names = [task.get_name() for task in self.left_running]
            log.error("stopped, with tasks still running", tasks=names)
        else:
            log.info("stopped")

    async def _end_tasks(self) -> list[asyncio.Task[None]]:
        """Cancels the server's tasks and waits for them, at most STOP_TIMEOUT; the ones still
        running then."""
        stuck = await end_tasks(self._tasks, STOP_TIMEOUT)
        for task in self._tasks:
            if task in stuck:
                log.error(
                    "task did not end when cancelled; leaving it",
                    task=task.get_name(),
                    waiting_in=awaiting(task),
                    timeout=STOP_TIMEOUT,
                )
            elif not task.cancelled() and task.exception() is not None:
                log.error("task failed", task=task.get_name(), exc_info=task.exception())
        return stuck

    async def _close_store(self) -> list[asyncio.Task[None]]:
        """Closes the store, waiting at most STOP_TIMEOUT; [the close] when it did not end
        (it is cancelled then)."""
        closing = asyncio.create_task(self.store.close(), name="store-close")
        await asyncio.wait([closing], timeout=STOP_TIMEOUT)
        if closing.done():
            closing.result()
            return []
        log.error(
            "the store did not close in time; leaving it",
            store=repr(self.store),
            waiting_in=awaiting(closing),
            timeout=STOP_TIMEOUT,
        )
        closing.cancel()
        return [closing]

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def write_ready_file(path: Path, address: str) -> None:
    """Writes ``address`` to ``path`` atomically, so a reader never sees half a line."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(address + "\n")
    os.replace(tmp, path)
