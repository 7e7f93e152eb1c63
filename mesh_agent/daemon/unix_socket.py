"""The agent's unix socket ``PATH``: one agent per socket, created with the mode, owner and
group asked for before anyone can connect, and only ever removed by the agent that made it.

* **One agent per socket.** Before it touches anything at ``PATH`` an agent takes an advisory
  lock (``flock``) on ``PATH.lock`` beside it, holds it for its life and writes its pid
  there; a second agent on the same path refuses to start, naming the first one's pid. Two
  agents starting at the same moment cannot both get the lock. A process that serves on
  ``PATH`` without taking the lock (an older agent, any other program) is found by
  connecting to it, and refused too, naming its pid from the socket's peer credentials.
  A socket with nothing behind it (left by an agent that was killed) is replaced.
* **Created whole.** grpcio binds a socket beside it, ``PATH.new``, with only the owner's
  bits of the mode (umask set around the bind only); it is given its owner and group, then
  its full mode, and only then renamed onto ``PATH`` (replacing a stale socket atomically),
  before the server accepts anyone.
* **Only its own removed.** grpcio unlinks the path it bound when its server stops, whatever
  socket is there by then; it bound ``PATH.new``, renamed away since, so it removes nothing.
  The agent removes ``PATH`` itself when it stops, and only while it is still the socket
  it bound (the same device and inode).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import structlog

from mesh_core.errors import SocketInUseError, SocketSetupError

if TYPE_CHECKING:
    from mesh_agent.daemon.settings import AgentSettings

log = structlog.get_logger(__name__)

# The longest path a unix socket address holds on Linux (sun_path, 108 bytes with its NUL).
MAX_SOCKET_PATH = 107
STAGING_SUFFIX = ".new"
LOCK_SUFFIX = ".lock"
# How long to wait for a process serving on an existing socket to accept a probe.
PROBE_TIMEOUT = 1.0

# A socket file as (st_dev, st_ino).
SocketId = tuple[int, int]


def lock_path(path: Path) -> Path:
    """The lock file of the agent socket ``path``: ``PATH.lock``, beside it."""
    return path.with_name(path.name + LOCK_SUFFIX)


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isascii() and text.isdigit() else None


class SocketLock:
    """The agent's hold on its socket path: an exclusive ``flock`` on ``PATH.lock`` holding
    the agent's pid, kept until :meth:`release`.

    The lock file is removed on release while still locked, so an agent that opened the old
    file just before may lock a file that is no longer at the path: :meth:`acquire` checks
    that what it locked is still the file at the path, and tries again if not.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, socket_path: Path) -> SocketLock:
        """Locks ``socket_path``'s lock file; raises :class:`SocketInUseError`, naming the
        holder's pid, when another agent holds it."""
        path = lock_path(socket_path)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            try:
                fd = os.open(path, flags, 0o644)
            except OSError as error:
                raise SocketSetupError(
                    f"cannot open the agent socket's lock file {path}: {error.strerror or error}"
                ) from error
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"another mesh-agent (pid {holder})" if holder else "another mesh-agent"
                raise SocketInUseError(
                    f"the agent socket {socket_path} is in use: {who} holds its lock {path}; "
                    "stop that agent first, or give this one another --socket"
                ) from None
            except OSError as error:
                os.close(fd)
                raise SocketSetupError(
                    f"cannot lock the agent socket's lock file {path}: {error.strerror or error}"
                ) from error
            if _same_file(path, os.fstat(fd)):
                break
            os.close(fd)  # removed or replaced by an agent stopping meanwhile: again
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Removes the lock file (while still holding it) and lets go of the lock."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(self.path, os.fstat(fd)):
                self.path.unlink()
        except OSError as error:
            log.warning(
                "cannot remove the socket's lock file", path=str(self.path), error=str(error)
            )
        finally:
            os.close(fd)


def _same_file(path: Path, info: os.stat_result) -> bool:
    try:
        current = os.lstat(path)
    except FileNotFoundError:
        return False
    return (current.st_dev, current.st_ino) == (info.st_dev, info.st_ino)


def _peer_pid(connected: socket.socket) -> int | None:
    """The pid of the process serving on the other end of a unix socket (Linux)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    try:
        credentials = connected.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return None
    pid: int = struct.unpack("3i", credentials)[0]
    return pid or None


def check_socket_path(path: Path) -> None:
    """Refuses a ``path`` at which something other than a stale socket is: a process serving
    on it (:class:`SocketInUseError`, with its pid where the socket tells it) or a file that is
    not a socket. A stale socket, one nothing listens on, is left to be replaced."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise SocketSetupError(
            f"{path} exists and is not a socket; remove it, or give the agent another --socket"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(PROBE_TIMEOUT)
        try:
            probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return  # nothing behind it
        except (TimeoutError, BlockingIOError):
            pid = None  # listening, but its backlog is full: busy, not stale
        except OSError as error:
            raise SocketSetupError(
                f"cannot tell whether a process serves on the agent socket {path} "
                f"({error.strerror or error}); remove it if it is stale, or give the agent "
                "another --socket"
            ) from error
        else:
            pid = _peer_pid(probe)
    who = f"a process (pid {pid})" if pid else "a process"
    raise SocketInUseError(
        f"the agent socket {path} is in use: {who} serves on it; stop it first, or give the "
        "agent another --socket"
    )


def make_socket_dir(directory: Path) -> None:
    """Creates ``directory`` and its missing parents with mode 0755; existing ones are kept."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            continue
        os.chmod(path, 0o755)


def _ids(owner: int | None, group: int | None) -> str:
    parts = [f"owner {owner} (--socket-owner)"] if owner is not None else []
    parts += [f"group {group} (--socket-group)"] if group is not None else []
    return " and ".join(parts)


def bind_unix_socket(server: grpc.aio.Server, path: Path, settings: AgentSettings) -> SocketId:
    """Binds ``server`` to the unix socket ``path`` (see the module's docstring); returns the
    socket's id, for :func:`remove_own_socket`. Call it holding the path's
    :class:`SocketLock`."""
    check_socket_path(path)
    staging = path.with_name(path.name + STAGING_SUFFIX)
    if len(os.fsencode(staging)) > MAX_SOCKET_PATH:
        raise SocketSetupError(
            f"the agent socket path {path} is too long: at most "
            f"{MAX_SOCKET_PATH - len(STAGING_SUFFIX)} bytes"
        )
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(os.lstat(staging).st_mode):
            raise SocketSetupError(
                f"{staging} exists and is not a socket; remove it, or give the agent another "
                "--socket"
            )
        os.unlink(staging)  # left by an agent that was killed while starting
    mode = settings.socket_mode
    previous = os.umask(0o777 & ~(mode & 0o700))
    try:
        server.add_insecure_port(f"unix:{staging}")
    finally:
        os.umask(previous)
    owner, group = settings.socket_owner, settings.socket_group
    action = "inspect"
    try:
        info = os.lstat(staging)
        if not stat.S_ISSOCK(info.st_mode):
            raise SocketSetupError(f"{staging} was replaced by something that is not a socket")
        if owner is not None or group is not None:
            action = f"give {_ids(owner, group)} to"
            os.chown(
                staging,
                -1 if owner is None else owner,
                -1 if group is None else group,
                follow_symlinks=False,
            )
        action = f"set mode {mode:04o} (--socket-mode) on"
        os.chmod(staging, mode)
        action = "move into place"
        os.rename(staging, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            staging.unlink()
        if isinstance(error, SocketSetupError):
            raise
        raise SocketSetupError(
            f"cannot {action} the agent socket {path}: {error.strerror or error}"
        ) from error
    return info.st_dev, info.st_ino


def remove_own_socket(path: Path, own: SocketId) -> None:
    """Removes the socket at ``path`` if it is still the one the agent bound (``own``)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if (info.st_dev, info.st_ino) != own:
        log.warning("the agent socket was replaced by another file; leaving it", path=str(path))
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


__all__ = [
    "SocketInUseError",
    "SocketLock",
    "SocketSetupError",
    "bind_unix_socket",
    "check_socket_path",
    "lock_path",
    "make_socket_dir",
    "remove_own_socket",
]
