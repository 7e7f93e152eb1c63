"""The agent's unix socket: its mode, owner and group as the operator asks, set before any
client can connect, and clear errors when they cannot be."""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI, ROOT, Processes, require_tool, wait_for
from tests.e2e.agentutil import agent_status, start_agent

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


def failed_start(procs: Processes, name: str, *args: str) -> tuple[int, str]:
    proc = procs.python(name, "mesh_agent", "run", "--control", NO_CONTROL, *args)
    code = proc.popen.wait(30)
    return code, proc.errors()


def test_socket_is_0660_by_default_in_a_new_0755_directory(procs: Processes) -> None:
    path = procs.workdir / "run" / "mesh" / "agent.sock"
    _, target = start_agent(procs, NO_CONTROL, "node-1", "--socket", str(path))
    assert socket_of(target) == path
    info = path.lstat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert (info.st_uid, info.st_gid) == (os.getuid(), os.getgid())
    for directory in (path.parent, path.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o755, directory
    assert agent_status(target).node_id == "node-1"


def test_socket_mode_flag(procs: Processes) -> None:
    _, target = start_agent(procs, NO_CONTROL, "node-1", "--socket-mode", "0600")
    assert stat.S_IMODE(socket_of(target).stat().st_mode) == 0o600
    assert agent_status(target).node_id == "node-1"


def test_socket_group_and_owner(procs: Processes) -> None:
    name, gid = other_group()
    _, target = start_agent(
        procs, NO_CONTROL, "node-1", "--socket-group", name, "--socket-mode", "640"
    )
    info = socket_of(target).stat()
    assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (gid, 0o640)
    assert info.st_uid == os.getuid()

    _, target = start_agent(procs, NO_CONTROL, "node-2", "--socket-owner", "65534")
    info = socket_of(target).stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (65534, os.getgid(), 0o660)


def test_socket_settings_from_the_config_file(procs: Processes) -> None:
    name, gid = other_group()
    config = procs.workdir / "agent.yaml"
    # Unquoted, YAML would read 0640 as octal and 640 as decimal: both mean 0640 here.
    config.write_text(f"socket_mode: 0640\nsocket_group: {name}\n")
    _, target = start_agent(procs, NO_CONTROL, "node-1", "--config", str(config))
    info = socket_of(target).stat()
    assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (gid, 0o640)

    config.write_text("socket_mode: 600\n")
    _, target = start_agent(procs, NO_CONTROL, "node-2", "--config", str(config))
    assert stat.S_IMODE(socket_of(target).stat().st_mode) == 0o600


def test_unknown_group_user_or_bad_mode_fail_before_binding(procs: Processes) -> None:
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


def test_the_socket_never_has_wider_permissions_than_asked(procs: Processes) -> None:
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
