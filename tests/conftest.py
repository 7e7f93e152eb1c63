"""Shared fixtures: real processes on 127.0.0.1 with ports from :0, cleaned up after each test."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """The path of a tool the test needs. Locally a missing tool skips the test; in CI
    (``CI=true``) it fails it, since a skipped test there hides a missing install step."""
    path = shutil.which(name) or (
        str(Path(sys.executable).parent / name)
        if (Path(sys.executable).parent / name).exists()
        else None
    )
    if path is None:
        message = f"{name} is not installed"
        if IN_CI:
            pytest.fail(f"{message} (CI must install it)")
        pytest.skip(message)
    return path


def wait_for(
    predicate: Callable[[], object],
    timeout: float,
    what: str | Callable[[], str],
    every: float = 0.05,
):
    """Polls ``predicate`` until it returns something truthy, and returns that; fails the test
    naming ``what`` (a text, or a function that makes one when the time is up, to show the
    state then). For async tests, :func:`eventually`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {_described(what)}")
        time.sleep(every)


async def eventually(
    predicate: Callable[[], object],
    timeout: float,
    what: str | Callable[[], str],
    every: float = 0.02,
):
    """:func:`wait_for` on the event loop: polls ``predicate`` (a function, or a coroutine
    function) every ``every`` seconds without blocking the loop, until it returns something
    truthy, and returns that; fails the test naming ``what`` (a text, or a function that
    makes one when the time is up, to show the state then)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {_described(what)}")
        await asyncio.sleep(every)


def _described(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server that cannot take port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Proc:
    """A child process whose stdout and stderr go to files in the test's directory."""

    def __init__(self, name: str, args: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.args = args
        self.stdout_path = workdir / f"{name}.out"
        self.stderr_path = workdir / f"{name}.err"
        self._stdout = self.stdout_path.open("wb")
        self._stderr = self.stderr_path.open("wb")
        self.popen = subprocess.Popen(
            args, stdout=self._stdout, stderr=self._stderr, env=env, cwd=workdir
        )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def errors(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.output().splitlines()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        if self.alive:
            self.popen.send_signal(sig)
        return self.reap(timeout)

    def reap(self, timeout: float = 10) -> int:
        """Waits up to ``timeout`` for the process to exit (it was told to), then kills it
        with a warning: a process that does not stop when told is a bug to see, not seconds
        quietly lost in a teardown."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            warnings.warn(
                f"{self.name} did not exit within {timeout:g}s of being told to; killed "
                f"(its log: {self.stderr_path})",
                stacklevel=2,
            )
            self.popen.kill()
            self.popen.wait(5)
        self._stdout.close()
        self._stderr.close()
        return self.popen.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class Processes:
    """Starts processes for one test and stops every one of them at teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.env = dict(os.environ)
        self.env.pop("GRPC_XDS_BOOTSTRAP", None)
        self.env.pop("GRPC_XDS_BOOTSTRAP_CONFIG", None)
        self.env["PYTHONPATH"] = str(ROOT)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env["MESH_LOG_FORMAT"] = "json"

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, list(args), self.workdir, {**self.env, **(env or {})})
        self.procs.append(proc)
        return proc

    def python(self, name: str, module: str, *args: str, **kw: dict[str, str]) -> Proc:
        return self.start(name, sys.executable, "-m", module, *args, **kw)  # type: ignore[arg-type]

    def start_ready(
        self,
        name: str,
        module: str,
        *args: str,
        timeout: float = 20,
        env: dict[str, str] | None = None,
    ) -> tuple[Proc, str]:
        """Starts a server that takes ``--ready-file`` and returns it with its bound address."""
        ready = self.workdir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        proc = self.start(
            name, sys.executable, "-m", module, *args, "--ready-file", str(ready), env=env
        )

        def address() -> str | None:
            if not proc.alive:
                pytest.fail(f"{name} exited with {proc.popen.returncode}:\n{proc.errors()[-3000:]}")
            return ready.read_text().strip() if ready.exists() else None

        return proc, wait_for(address, timeout, f"{name} to be ready")

    def stop_all(self) -> None:
        """SIGTERM to every process still running, the last started first, then waits for
        each: a server does not wait out its drain for a client that is stopping too."""
        for proc in reversed(self.procs):
            if proc.alive:
                proc.popen.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            proc.reap()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()


@pytest.fixture
def fresh_bootstrap(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process's xDS bootstrap as if never configured, for the client library's
    ``configure_bootstrap``: its variables unset (restored afterwards), and what the library
    remembers of it forgotten before and after the test."""
    from mesh_agent.client import _channel

    for name in ("GRPC_XDS_BOOTSTRAP", "GRPC_XDS_BOOTSTRAP_CONFIG"):
        # setenv first, so that teardown restores each variable (delenv of an absent one
        # records nothing, and configure_bootstrap sets it).
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    _channel.forget_bootstrap()
    try:
        yield
    finally:
        _channel.forget_bootstrap()


def run_cli(module: str, *args: str, timeout: float = 30, env: dict[str, str] | None = None):
    """Runs a CLI module to completion; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
    )
