"""A real etcd for tests: the ``etcd`` fixture starts one on free loopback ports in the test's
tmp dir and kills it at teardown. Import the fixture into a test module to use it::

    from tests.etcd_fixture import etcd  # noqa: F401

Locally a missing ``etcd`` binary skips the test; with CI=true it fails it (``require_tool``).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aetcd
import pytest

from tests.conftest import require_tool


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A running etcd, killed at teardown."""
    server = EtcdServer(require_tool("etcd"), tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()
