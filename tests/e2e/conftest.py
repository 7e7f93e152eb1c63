"""The e2e fixtures: ``procs`` (:class:`MeshProcesses`), which starts the mesh's own processes
(control servers, agents, demo backends and clients) on ports from ``:0`` and stops them at
teardown, and ``etcd`` (:class:`EtcdServer`), a real etcd on free loopback ports.

Waiting: ``tests.conftest.wait_for`` (sync) and ``tests.conftest.eventually`` (async). What
the tests share besides starting processes (meshctl, agent status, backend Configure, the PKI
helper...) is in :mod:`tests.e2e.helpers`; no test module imports another.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aetcd
import pytest

from mesh_core import tls
from tests.conftest import Proc, Processes, free_port, require_tool, wait_for


class MeshProcesses(Processes):
    """:class:`~tests.conftest.Processes` that also knows how to start the mesh's processes.
    Each ``start_*`` returns the process and the address it serves on."""

    def start_control(
        self,
        *extra: str,
        store: str = "memory:",
        name: str = "control",
        listen: str = "127.0.0.1:0",
        tls_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> tuple[Proc, str]:
        """``mesh-control serve`` on ``store`` (``memory:`` unless told), with the server
        certificate in ``tls_dir`` if given, and ``extra`` flags."""
        flags = tls.flags(tls_dir) if tls_dir is not None else []
        return self.start_ready(
            name, "control", "serve", "--listen", listen, "--store", store, *flags, *extra, env=env
        )

    def start_agent(
        self,
        control: str,
        node_id: str,
        *extra: str,
        tls_dir: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> tuple[Proc, str]:
        """``mesh-agent run`` as ``node_id`` (also the process's name) with its socket and state
        dir in the test's directory; returns it and its unix socket target (``unix:PATH``)."""
        ready = self.workdir / f"{node_id}.ready"
        ready.unlink(missing_ok=True)
        flags = tls.flags(tls_dir) if tls_dir is not None else []
        proc = self.python(
            node_id,
            "mesh_agent",
            "run",
            "--control",
            control,
            "--node-id",
            node_id,
            "--socket",
            str(self.workdir / f"{node_id}.sock"),
            "--state-dir",
            str(self.agent_state_dir(node_id)),
            "--ready-file",
            str(ready),
            *flags,
            *extra,
            env=env or {},
        )

        def address() -> str | None:
            if not proc.alive:
                raise AssertionError(f"{node_id} exited:\n{proc.errors()[-3000:]}")
            return ready.read_text().split()[0] if ready.exists() else None

        return proc, wait_for(address, 20, f"agent {node_id} to be ready")

    def agent_state_dir(self, node_id: str) -> Path:
        return self.workdir / f"{node_id}-state"

    def agent_addresses(self, node_id: str) -> list[str]:
        """What the agent's ready file says: its unix socket target, then its TCP listener's
        address when it has one (``--listen``)."""
        return (self.workdir / f"{node_id}.ready").read_text().split()

    def start_backend(
        self, name: str, *extra: str, proc_name: str | None = None
    ) -> tuple[Proc, str]:
        """A demo backend answering as ``name`` (``mesh_demo.backend``; ``--delay`` and the
        like in ``extra``); the process is ``proc_name``, by default ``name``."""
        return self.start_ready(proc_name or name, "mesh_demo.backend", "--name", name, *extra)

    def start_client(self, xds_server: str, service: str, node: str = "client-1") -> Proc:
        """A demo client calling ``xds:///SERVICE`` through grpcio's own xDS client every 50 ms
        (1 s deadline), one JSON line per call (see :func:`tests.e2e.helpers.records`)."""
        return self.python(
            node,
            "mesh_demo.client",
            "--service",
            service,
            "--xds-server",
            xds_server,
            "--node-id",
            node,
            "--interval",
            "0.05",
            "--timeout",
            "1",
            "--json",
        )

    def mesh_client(
        self, name: str, agent: str, service: str, *args: str, env: dict[str, str] | None = None
    ) -> Proc:
        """A demo client on ``mesh_channel()`` through ``agent`` (2 s deadline), one JSON
        line per call; ``args`` add ``--interval``, ``--count`` and the like."""
        return self.python(
            name,
            "mesh_demo.client",
            "--service",
            service,
            "--xds-server",
            agent,
            "--mesh",
            "--json",
            "--node-id",
            name,
            "--timeout",
            "2",
            *args,
            env=env or {},
        )

    def named(self, name: str) -> Proc:
        """The last process started as ``name``."""
        return next(p for p in reversed(self.procs) if p.name == name)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[MeshProcesses]:
    processes = MeshProcesses(tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()


# -- etcd ------------------------------------------------------------------------------------


class EtcdServer:
    """One etcd member on 127.0.0.1; :meth:`stop` and :meth:`start` keep its ports and data
    directory, so a restart is the same cluster with the same history."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.data_dir = workdir / "etcd-data"
        self.port = free_port()
        self.peer_port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.log_path = workdir / "etcd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._starts = 0

    def url(self, prefix: str = "") -> str:
        """The store URL for this etcd, e.g. ``etcd://127.0.0.1:PORT/test``."""
        return f"etcd://{self.endpoint}{prefix}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> None:
        """Starts etcd (again) and waits until it serves requests."""
        if self.running:
            return
        client = f"http://127.0.0.1:{self.port}"
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            self.binary,
            "--name",
            "t",
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"t={peer}",
        ]
        self._starts += 1
        with self.log_path.open("ab") as out:
            out.write(f"--- start {self._starts}\n".encode())
            out.flush()
            self._proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if not self.running:
                pytest.fail(f"etcd exited during start-up:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"etcd did not become ready in {timeout}s:\n{self._log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stops etcd (SIGTERM, then SIGKILL)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def pause(self) -> None:
        """Freezes etcd (SIGSTOP): connections stay open and calls get no answer, as with a
        member that hangs; :meth:`resume` (SIGCONT) lets it go on."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def client(self) -> aetcd.Client:
        """A fresh aetcd client for this etcd (use ``async with``)."""
        return aetcd.Client(host="127.0.0.1", port=self.port, timeout=5)

    async def compact(self, revision: int) -> None:
        """Compacts etcd's history up to ``revision`` (physically)."""
        async with self.client() as client:
            await client.compact(revision, physical=True)

    async def revision(self) -> int:
        """etcd's current revision."""
        async with self.client() as client:
            result = await client.get_prefix(b"/")
            revision: int = result.header.revision
            return revision

    def _healthy(self) -> bool:
        if not self.running:
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                pass
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.port}/health", timeout=1
            ) as response:
                return b'"health":"true"' in response.read()
        except (OSError, urllib.error.URLError):
            return False

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-3000:]
        return ""


@pytest.fixture
def etcd(tmp_path: Path, procs: MeshProcesses) -> Iterator[EtcdServer]:
    """A running etcd, killed at teardown, after the test's processes (they stop at once
    while etcd is there to tell; with etcd gone first, a control server's shutdown would wait
    on it). Locally a missing ``etcd`` binary skips the test; with CI=true it fails it
    (``require_tool``)."""
    server = EtcdServer(require_tool("etcd"), tmp_path)
    server.start()
    try:
        yield server
    finally:
        procs.stop_all()
        server.stop()


@pytest.fixture(scope="module")
def shared_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One running etcd for a whole test module, for tests that neither stop, pause nor
    compact it and keep their keys under a prefix of their own (see :func:`etcd_prefix`):
    it saves starting an etcd per test. A test that disturbs etcd takes ``etcd``."""
    server = EtcdServer(require_tool("etcd"), tmp_path_factory.mktemp("shared-etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def etcd_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of the test's own in :func:`shared_etcd`: ``/t-`` and the test's name."""
    return "/t-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in request.node.name)


class EtcdRelay:
    """A TCP relay to etcd (threads: for processes and event loops alike) that can cut every
    connection and refuse new ones: a network partition between one etcd client (a control
    server, a store) and etcd, while the test still reaches etcd directly."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._cut_off = False
        self._closed = False
        self.accepted = 0
        self._thread = threading.Thread(target=self._accept_loop, name="relay", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @staticmethod
    def _kill(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            if self._cut_off:
                self._kill(conn)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                upstream.settimeout(None)
            except OSError:
                self._kill(conn)
                continue
            with self._lock:
                self._sockets |= {conn, upstream}
                self.accepted += 1
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                self._kill(sock)
            with self._lock:
                self._sockets -= {src, dst}

    def cut(self) -> None:
        self._cut_off = True
        with self._lock:
            doomed = list(self._sockets)
        for sock in doomed:
            self._kill(sock)

    def restore(self) -> None:
        self._cut_off = False

    def close(self) -> None:
        self.cut()
        self._closed = True
        self._thread.join(5)
        self._listener.close()


@pytest.fixture
def etcd_relay(etcd: EtcdServer) -> Iterator[EtcdRelay]:
    """An :class:`EtcdRelay` to the ``etcd`` of the test."""
    relay = EtcdRelay(etcd.port)
    try:
        yield relay
    finally:
        relay.close()
