"""Child processes for benchmarks: started with ports from ``:0``, quiet logs, and always
stopped (SIGTERM, then SIGKILL) by :class:`Processes` when its ``with`` block ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("GRPC_XDS_BOOTSTRAP", None)
    env.pop("GRPC_XDS_BOOTSTRAP_CONFIG", None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env["MESH_LOG_FORMAT"] = "json"
    env["MESH_LOG_LEVEL"] = "warning"
    return env


class BenchError(RuntimeError):
    pass


class Proc:
    """A child whose stderr goes to ``workdir/NAME.err``; stdout to a file or to a pipe;
    stdin from a pipe if ``pipe_stdin`` (for children driven line by line)."""

    def __init__(
        self, name: str, args: list[str], workdir: Path, pipe_stdout: bool, pipe_stdin: bool = False
    ) -> None:
        self.name = name
        self.stderr_path = workdir / f"{name}.err"
        self._stderr = self.stderr_path.open("wb")
        self._stdout = None if pipe_stdout else (workdir / f"{name}.out").open("wb")
        self.popen = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if pipe_stdin else None,
            stdout=subprocess.PIPE if pipe_stdout else self._stdout,
            stderr=self._stderr,
            env=child_env(),
            cwd=workdir,
            text=pipe_stdout or pipe_stdin,
            bufsize=1 if pipe_stdout or pipe_stdin else -1,
        )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def errors(self, tail: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.stdin is not None:
            with contextlib.suppress(OSError):
                self.popen.stdin.close()
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        for handle in (self._stdout, self._stderr):
            if handle is not None:
                handle.close()


class Processes:
    """Starts children and stops every one of them, newest first, on exit."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def python(
        self,
        name: str,
        module: str,
        *args: str,
        pipe_stdout: bool = False,
        pipe_stdin: bool = False,
    ) -> Proc:
        return self.command(
            name,
            [sys.executable, "-m", module, *args],
            pipe_stdout=pipe_stdout,
            pipe_stdin=pipe_stdin,
        )

    def command(
        self, name: str, args: list[str], pipe_stdout: bool = False, pipe_stdin: bool = False
    ) -> Proc:
        """Any executable (``args[0]``), stopped like the others."""
        proc = Proc(name, args, self.workdir, pipe_stdout=pipe_stdout, pipe_stdin=pipe_stdin)
        self.procs.append(proc)
        return proc

    def start_ready(self, name: str, module: str, *args: str, timeout: float = 30) -> str:
        """Starts a server taking ``--ready-file``; returns the address it wrote there."""
        ready = self.workdir / f"{name}.ready"
        ready.unlink(missing_ok=True)
        proc = self.python(name, module, *args, "--ready-file", str(ready))
        deadline = time.monotonic() + timeout
        while True:
            if ready.exists() and (address := ready.read_text().strip()):
                return address
            if not proc.alive:
                raise BenchError(f"{name} exited with {proc.popen.returncode}:\n{proc.errors()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{name} not ready after {timeout}s:\n{proc.errors()}")
            time.sleep(0.02)

    def stop(self, proc: Proc) -> None:
        proc.stop()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        while self.procs:
            self.procs.pop().stop()


async def start_ready(
    procs: Processes, name: str, module: str, *args: str, timeout: float
) -> tuple[Proc, str]:
    """Starts a server taking ``--ready-file``; returns it and the first address written."""
    ready = procs.workdir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    proc = procs.python(name, module, *args, "--ready-file", str(ready))
    deadline = time.monotonic() + timeout
    while True:
        if ready.exists() and (text := ready.read_text().strip()):
            return proc, text.split()[0]
        if not proc.alive:
            raise BenchError(f"{name} exited with {proc.popen.returncode}:\n{proc.errors()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{name} not ready after {timeout}s:\n{proc.errors()}")
        await asyncio.sleep(0.01)
