"""The agent's unix socket: created with the mode, owner and group asked for before anyone can
connect, and clear errors when it cannot be."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from control.errors import MeshError

if TYPE_CHECKING:
    from .agent import AgentSettings


class SocketSetupError(MeshError, OSError):
    """The unix socket cannot be given the owner, group or mode asked for; the agent exits."""


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


def bind_unix_socket(server: grpc.aio.Server, path: Path, settings: AgentSettings) -> None:
    """Binds ``server`` to the unix socket ``path``. The socket is created with no more than
    the owner's bits of ``settings.socket_mode`` (umask set around the bind only), then given
    its owner and group, then its full mode, all before the server accepts anyone."""
    mode = settings.socket_mode
    previous = os.umask(0o777 & ~(mode & 0o700))
    try:
        server.add_insecure_port(f"unix:{path}")
    finally:
        os.umask(previous)
    owner, group = settings.socket_owner, settings.socket_group
    action = "inspect"
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise SocketSetupError(f"{path} was replaced by something that is not a socket")
        if owner is not None or group is not None:
            action = f"give {_ids(owner, group)} to"
            os.chown(
                path,
                -1 if owner is None else owner,
                -1 if group is None else group,
                follow_symlinks=False,
            )
        action = f"set mode {mode:04o} (--socket-mode) on"
        os.chmod(path, mode)
    except OSError as error:
        with contextlib.suppress(OSError):
            path.unlink()
        if isinstance(error, SocketSetupError):
            raise
        raise SocketSetupError(
            f"cannot {action} the agent socket {path}: {error.strerror or error}"
        ) from error


__all__ = ["SocketSetupError", "bind_unix_socket", "make_socket_dir"]
