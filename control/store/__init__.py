"""Config stores: where mesh-control keeps the services (DESIGN.md, decision 6).

Every backend implements :class:`Store`; :func:`open_store` picks one from a URL:

* ``memory:`` — :class:`MemoryStore`, in-process, for tests;
* ``file:DIR`` or ``file:///abs/dir`` — :class:`FileStore`, a directory of YAML files, the
  embedded default;
* ``etcd://HOST:PORT[,HOST:PORT...][/prefix]`` — :class:`EtcdStore`, shared by several
  control servers (prefix ``/mesh`` unless given).

Every backend also keeps each service's history (who changed it, when, why, and the version
it left) and the audit trail of admin writes, within :class:`HistoryLimits`
(:mod:`control.store._history`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

from control.store._base import Store, StoreEvent
from control.store._history import DEFAULT_AUDIT_COUNT, DEFAULT_HISTORY_COUNT, Change, HistoryLimits
from control.store.etcd import EtcdStore, parse_etcd_url
from control.store.file import FileStore
from control.store.memory import MemoryStore
from mesh_core.errors import ConfigError

__all__ = [
    "DEFAULT_AUDIT_COUNT",
    "DEFAULT_HISTORY_COUNT",
    "Change",
    "EtcdStore",
    "FileStore",
    "HistoryLimits",
    "MemoryStore",
    "Store",
    "StoreEvent",
    "open_store",
]

SUPPORTED = "memory:, file:DIR, file:///abs/dir, etcd://HOST:PORT[,HOST:PORT...][/prefix]"


def _open_memory(url: str, rest: str, history: HistoryLimits) -> Store:
    if rest not in ("", "//"):
        raise ConfigError(f"store URL {url!r}: memory: takes no path")
    return MemoryStore(history=history)


def _open_file(url: str, rest: str, history: HistoryLimits) -> Store:
    if not rest:
        raise ConfigError(f"store URL {url!r}: missing the directory (file:DIR)")
    if rest.startswith("//"):  # file://[localhost]/abs/dir
        host, slash, path = rest[2:].partition("/")
        if host not in ("", "localhost") or not slash:
            raise ConfigError(f"store URL {url!r}: expected file:///absolute/dir or file:DIR")
        directory = Path("/" + unquote(path))
    else:
        directory = Path(rest)
    return FileStore(directory, history=history)


def _open_etcd(url: str, rest: str, history: HistoryLimits) -> Store:
    endpoints, prefix = parse_etcd_url(url)
    return EtcdStore(endpoints, prefix=prefix, url=url, history=history)


# scheme -> factory(url, rest after "scheme:", history limits).
_BACKENDS: dict[str, Callable[[str, str, HistoryLimits], Store]] = {
    "memory": _open_memory,
    "file": _open_file,
    "etcd": _open_etcd,
}


def open_store(url: str, history: HistoryLimits | None = None) -> Store:
    """The store for ``url`` (not started yet), keeping history within ``history`` (default
    :class:`HistoryLimits`). Raises ConfigError for anything else, naming the URL and the
    supported schemes."""
    scheme, colon, rest = url.partition(":")
    factory = _BACKENDS.get(scheme.lower()) if colon else None
    if factory is None:
        raise ConfigError(f"unsupported store URL {url!r}: supported are {SUPPORTED}")
    return factory(url, rest, history or HistoryLimits())
