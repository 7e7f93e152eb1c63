"""The agent's unix socket: its mode, owner and group as the operator asks, set before any
client can connect, and clear errors when they cannot be."""

from __future__ import annotations

import grp
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI, ROOT, Proc, require_tool, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import agent_status

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

# No control server is needed: the agent serves locally while it retries the upstream.
NO_CONTROL = "127.0.0.1:1"


def require_root() -> None:
    """Locally a non-root run skips the test; in CI (root) it must run."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("needs root to chown and drop privileges (CI runs as root)")
        pytest.skip("needs root to chown and drop privileges")


def socket_of(target: str) -> Path:
    return Path(target.removeprefix("unix:"))


def other_group() -> tuple[str, int]:
    """A group on this machine other than the test's own: its name (or id) and gid."""
    for name in ("daemon", "nogroup", "users"):
        try:
            gid = grp.getgrnam(name).gr_gid
        except KeyError:
            continue
        if gid != os.getgid():
            return name, gid
    return "54321", 54321


def failed_start(procs: MeshProcesses, name: str, *args: str) -> tuple[int, str]:
    proc = procs.python(name, "mesh_agent", "run", "--control", NO_CONTROL, *args)
    code = proc.popen.wait(30)
    return code, proc.errors()


def test_socket_is_0660_by_default_in_a_new_0755_directory(procs: MeshProcesses) -> None:
    path = procs.workdir / "run" / "mesh" / "agent.sock"
    _, target = procs.start_agent(NO_CONTROL, "node-1", "--socket", str(path))
    assert socket_of(target) == path
    info = path.lstat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert (info.st_uid, info.st_gid) == (os.getuid(), os.getgid())
    for directory in (path.parent, path.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755, directory
    assert agent_status(target).node_id == "node-1"


def test_socket_mode_flag(procs: MeshProcesses) -> None:
    _, target = procs.start_agent(NO_CONTROL, "node-1", "--socket-mode", "0600")
    assert stat.S_IMODE(socket_of(target).stat().st_mode) == 0o600
    assert agent_status(target).node_id == "node-1"


def test_socket_group_and_owner(procs: MeshProcesses) -> None:
    name, gid = other_group()
    _, target = procs.start_agent(
        NO_CONTROL, "node-1", "--socket-group", name, "--socket-mode", "640"
    )
    info = socket_of(target).stat()
    assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (gid, 0o640)
    assert info.st_uid == os.getuid()

    _, target = procs.start_agent(NO_CONTROL, "node-2", "--socket-owner", "65534")
    info = socket_of(target).stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (65534, os.getgid(), 0o660)


def test_socket_settings_from_the_config_file(procs: MeshProcesses) -> None:
    name, gid = other_group()
    config = procs.workdir / "agent.yaml"
    # Unquoted, YAML would read 0640 as octal and 640 as decimal: both mean 0640 here.
    config.write_text(f"socket_mode: 0640\nsocket_group: {name}\n")
    _, target = procs.start_agent(NO_CONTROL, "node-1", "--config", str(config))
    info = socket_of(target).stat()
    assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (gid, 0o640)

    config.write_text("socket_mode: 600\n")
    _, target = procs.start_agent(NO_CONTROL, "node-2", "--config", str(config))
    assert stat.S_IMODE(socket_of(target).stat().st_mode) == 0o600


def test_unknown_group_user_or_bad_mode_fail_before_binding(procs: MeshProcesses) -> None:
    path = procs.workdir / "agent.sock"
    cases = [
        (("--socket-group", "no-such-group-x"), "--socket-group: unknown group 'no-such-group-x'"),
        (("--socket-owner", "no-such-user-x"), "--socket-owner: unknown user 'no-such-user-x'"),
        (("--socket-mode", "0999"), "--socket-mode: '0999' is not an octal file mode"),
        (("--socket-mode", "1777"), "--socket-mode: '1777' is not a file mode"),
    ]
    for index, (args, message) in enumerate(cases):
        code, errors = failed_start(
            procs, f"bad-{index}", "--socket", str(path), "--state-dir", f"state-{index}", *args
        )
        assert code == 2, errors
        assert f"mesh-agent: {message}" in errors
        assert not path.exists()
    config = procs.workdir / "agent.yaml"
    config.write_text("socket_group: no-such-group-y\n")
    code, errors = failed_start(procs, "bad-config", "--socket", str(path), "--config", str(config))
    assert code == 2
    assert f"mesh-agent: {config}: socket_group: unknown group 'no-such-group-y'" in errors
    assert not path.exists()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can write to."""
    directory = Path(tempfile.mkdtemp(prefix="agent-socket-"))
    directory.chmod(0o777)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_an_agent_that_cannot_chown_its_socket_exits_naming_the_flag(shared_dir: Path) -> None:
    require_root()
    setpriv = require_tool("setpriv")
    path = shared_dir / "agent.sock"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MESH_LOG_FORMAT": "json"}
    unprivileged = [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    result = subprocess.run(
        [
            *unprivileged,
            *(sys.executable, "-m", "mesh_agent", "run", "--control", NO_CONTROL),
            *("--node-id", "n1", "--socket", str(path), "--state-dir", str(shared_dir / "state")),
            *("--socket-group", "0"),
        ],
        capture_output=True,
        text=True,
        timeout=40,
        env=env,
        cwd=shared_dir,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"mesh-agent: cannot give group 0 (--socket-group) to the agent socket {path}: "
        "Operation not permitted"
    )
    assert not path.exists()


def test_the_socket_never_has_wider_permissions_than_asked(procs: MeshProcesses) -> None:
    """The socket file is watched from the moment it appears: its mode is never wider than
    the one asked for, and the group bits come only after the owner's."""
    path = procs.workdir / "watched" / "agent.sock"
    path.parent.mkdir()
    seen: list[int] = []
    proc = procs.python(
        "node-1",
        "mesh_agent",
        "run",
        "--control",
        NO_CONTROL,
        "--node-id",
        "node-1",
        "--socket",
        str(path),
        "--state-dir",
        str(procs.workdir / "state"),
        "--socket-mode",
        "0640",
    )

    def settled() -> bool:
        assert proc.alive, proc.errors()[-3000:]
        try:
            seen.append(stat.S_IMODE(path.lstat().st_mode))
        except FileNotFoundError:
            return False
        return seen[-1] == 0o640

    wait_for(settled, 20, "the socket to get mode 0640", every=0.0005)
    assert all(mode & ~0o640 == 0 for mode in seen), [oct(m) for m in seen]


# -- one agent per socket -------------------------------------------------------------------


def agent_on(procs: MeshProcesses, name: str, path: Path) -> Proc:
    """Starts agent ``name`` on the socket ``path`` (without waiting for it)."""
    ready = procs.workdir / f"{name}.ready"
    ready.unlink(missing_ok=True)
    return procs.python(
        name,
        "mesh_agent",
        "run",
        "--control",
        NO_CONTROL,
        "--node-id",
        name,
        "--socket",
        str(path),
        "--state-dir",
        str(procs.workdir / f"{name}-state"),
        "--ready-file",
        str(ready),
    )


def exited(proc: Proc, timeout: float = 30) -> int:
    wait_for(lambda: not proc.alive, timeout, f"{proc.name} to exit")
    return proc.popen.returncode


def last_line(proc: Proc) -> str:
    return proc.errors().strip().splitlines()[-1]


def test_a_second_agent_on_a_live_socket_refuses_and_leaves_it_alone(procs: MeshProcesses) -> None:
    path = procs.workdir / "run" / "agent.sock"
    first, target = procs.start_agent(NO_CONTROL, "node-1", "--socket", str(path))
    inode = path.lstat().st_ino
    lock = path.with_name("agent.sock.lock")
    assert lock.read_text().strip() == str(first.popen.pid)

    second = agent_on(procs, "node-2", path)
    assert exited(second) == 2, second.errors()[-3000:]
    assert last_line(second) == (
        f"mesh-agent: the agent socket {path} is in use: another mesh-agent (pid "
        f"{first.popen.pid}) holds its lock {lock}; stop that agent first, or give this one "
        "another --socket"
    )
    # The first agent serves on, on the same socket file, after the second one is gone.
    assert path.lstat().st_ino == inode
    assert agent_status(target).node_id == "node-1"
    assert lock.read_text().strip() == str(first.popen.pid)
    assert not (procs.workdir / "node-2.ready").exists()

    # A graceful stop removes the socket and the lock file.
    assert first.stop() == 0
    assert not path.exists() and not lock.exists()


def test_a_live_socket_of_another_kind_of_process_is_refused(procs: MeshProcesses) -> None:
    """A listener that takes no lock (an older agent, any other program) is found by
    connecting to it; its pid comes from the socket's peer credentials."""
    path = procs.workdir / "agent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        inode = path.lstat().st_ino
        agent = agent_on(procs, "node-1", path)
        assert exited(agent) == 2, agent.errors()[-3000:]
        assert last_line(agent) == (
            f"mesh-agent: the agent socket {path} is in use: a process (pid {os.getpid()}) "
            "serves on it; stop it first, or give the agent another --socket"
        )
        assert path.lstat().st_ino == inode
    # Something at the path that is not a socket is not removed either.
    path.unlink()
    path.write_text("not a socket\n")
    agent = agent_on(procs, "node-2", path)
    assert exited(agent) == 2
    assert last_line(agent) == (
        f"mesh-agent: {path} exists and is not a socket; remove it, or give the agent "
        "another --socket"
    )
    assert path.read_text() == "not a socket\n"


def test_a_stale_socket_is_replaced(procs: MeshProcesses) -> None:
    path = procs.workdir / "agent.sock"
    first, _ = procs.start_agent(NO_CONTROL, "node-1", "--socket", str(path))
    first.kill()  # leaves its socket and its lock file behind, with nothing listening
    assert stat.S_ISSOCK(path.lstat().st_mode)
    second, target = procs.start_agent(NO_CONTROL, "node-2", "--socket", str(path))
    assert agent_status(target).node_id == "node-2"
    assert path.with_name("agent.sock.lock").read_text().strip() == str(second.popen.pid)

    # A socket file nobody ever listened on, without a lock file.
    other = procs.workdir / "other.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unused:
        unused.bind(str(other))
    _, target = procs.start_agent(NO_CONTROL, "node-3", "--socket", str(other))
    assert agent_status(target).node_id == "node-3"


def test_an_agent_removes_only_its_own_socket(procs: MeshProcesses) -> None:
    path = procs.workdir / "agent.sock"
    agent, _ = procs.start_agent(NO_CONTROL, "node-1", "--socket", str(path))
    # Someone replaces the agent's socket behind its back: the agent's stop must leave the
    # new one alone.
    path.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen()
        inode = path.lstat().st_ino
        assert agent.stop() == 0
        assert path.lstat().st_ino == inode


def test_two_agents_starting_at_once_on_one_socket(procs: MeshProcesses) -> None:
    for race in range(2):
        path = procs.workdir / f"race-{race}.sock"
        agents = [agent_on(procs, f"r{race}-{side}", path) for side in "ab"]
        wait_for(
            lambda agents=agents: (
                any((procs.workdir / f"{a.name}.ready").exists() for a in agents)
                and not all(a.alive for a in agents)
            ),
            40,
            "one agent to serve and the other to give up",
        )
        winners = [a for a in agents if a.alive]
        losers = [a for a in agents if not a.alive]
        assert len(winners) == 1 and len(losers) == 1, [a.errors()[-2000:] for a in agents]
        assert losers[0].popen.returncode == 2
        assert last_line(losers[0]).startswith(
            f"mesh-agent: the agent socket {path} is in use: another mesh-agent"
        )
        assert agent_status(f"unix:{path}").node_id == winners[0].name
        assert winners[0].stop() == 0
