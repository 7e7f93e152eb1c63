"""The agent's config cache: the last good resources accepted from upstream, per type, and
their persistence in the state dir.

Owned by the agent's event loop. Upstream responses are checked before they replace anything
(:meth:`ConfigCache.accept` returns the NACK text instead), so what the cache holds is always
usable. Each accepted change is appended to the journal in the state dir
(:mod:`~mesh_agent.daemon.journal`: only what changed, readable after a kill at any moment)
and the whole is read back, checked, at start. A state file that is corrupt, of another format
or of another node is set aside (renamed ``*.rejected-<time>``) and reported, never fatal.

Observers of :attr:`ConfigCache.changed` learn what changed from
:attr:`ConfigCache.last_change`, so each can do work in proportion to the change.

:class:`CacheComponent` is the agent's ``cache`` component, the owner of its one cache.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from mesh.v1 import config_pb2
from mesh_agent.components import AgentContext
from mesh_agent.daemon.journal import Journal
from mesh_agent.daemon.journal import TypeState as JournalType
from mesh_agent.daemon.roles import CACHE
from mesh_agent.daemon.settings import SETTINGS, AgentSettings
from mesh_core.errors import ComponentError, ConfigError
from mesh_core.signals import Signal
from mesh_xds.types import (
    CLUSTER,
    ENDPOINT,
    FULL_STATE,
    LISTENER,
    ROUTE,
    SERVICE_POLICY,
    ResourceName,
    TypeUrl,
    Version,
    short_name,
)

log = structlog.get_logger(__name__)

STATE_FORMAT = 1
LEGACY_STATE_FILE = "config.json"
"""The single state file of earlier agents (format 1), read once and replaced by the journal."""
MESSAGE_TYPES: Mapping[TypeUrl, type[Message]] = {
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    SERVICE_POLICY: config_pb2.ServicePolicy,
}


def resource_name(type_url: TypeUrl, message: Message) -> str:
    if type_url == ENDPOINT:
        return str(message.cluster_name)  # type: ignore[attr-defined]
    return str(message.name)  # type: ignore[attr-defined]


def decode(resource: any_pb2.Any, type_url: TypeUrl) -> Message:
    """The message inside ``resource``, checked enough that local clients can use it.
    Raises ConfigError naming what is wrong."""
    if resource.type_url != type_url:
        raise ConfigError(f"resource of type {resource.type_url} in a {type_url} response")
    message = MESSAGE_TYPES[type_url]()
    try:
        message.ParseFromString(resource.value)
    except DecodeError as error:
        raise ConfigError(f"cannot decode {short_name(type_url)} resource: {error}") from error
    name = resource_name(type_url, message)
    if not name:
        raise ConfigError(f"{short_name(type_url)} resource without a name")
    if type_url == LISTENER:
        listener = message
        assert isinstance(listener, listener_pb2.Listener)
        manager = hcm_pb2.HttpConnectionManager()
        if not listener.api_listener.api_listener.Unpack(manager):
            raise ConfigError(f"listener {name}: api_listener is not an HttpConnectionManager")
        if not manager.http_filters:
            raise ConfigError(f"listener {name}: no http_filters")
    elif type_url == ENDPOINT:
        assignment = message
        assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
        for locality in assignment.endpoints:
            for lb_endpoint in locality.lb_endpoints:
                socket = lb_endpoint.endpoint.address.socket_address
                if not socket.address or not 0 < socket.port_value < 65536:
                    raise ConfigError(f"endpoints {name}: endpoint without an address and port")
    return message


@dataclass(slots=True)
class TypeEntry:
    version: Version = ""
    resources: dict[ResourceName, any_pb2.Any] = field(default_factory=dict)


class ConfigCache:
    """Resources by type URL and name, as last accepted from upstream. :attr:`changed` is
    emitted after every change (and after config is restored from the state dir); its
    observers run synchronously, so they must only take note or schedule work."""

    def __init__(self, state_dir: Path | None, node_id: str) -> None:
        self.state_dir = state_dir
        self.node_id = node_id
        self.types: dict[TypeUrl, TypeEntry] = {}
        self.updated_at = 0.0
        self.loaded_from_disk = False
        self.problems: list[str] = []
        self.changed: Signal[[]] = Signal()
        self.last_change: Mapping[TypeUrl, frozenset[ResourceName]] = {}
        """What the change being announced touched: per type, the names set, changed or
        removed (every name held, after a restore). Read it from a :attr:`changed` observer;
        it holds until the next change."""
        self._journal = Journal(state_dir, node_id) if state_dir is not None else None
        self._saved_at = 0.0

    # -- reading -----------------------------------------------------------------------------

    def version(self, type_url: TypeUrl) -> Version:
        entry = self.types.get(type_url)
        return entry.version if entry else ""

    def resources(self, type_url: TypeUrl) -> Mapping[ResourceName, any_pb2.Any]:
        entry = self.types.get(type_url)
        return entry.resources if entry else {}

    def message(self, type_url: TypeUrl, name: ResourceName) -> Message | None:
        packed = self.resources(type_url).get(name)
        return decode(packed, type_url) if packed is not None else None

    def names(self, type_url: TypeUrl) -> set[ResourceName]:
        return set(self.resources(type_url))

    # -- writing -----------------------------------------------------------------------------

    def accept(
        self,
        type_url: TypeUrl,
        version: Version,
        resources: Iterable[any_pb2.Any],
        requested: AbstractSet[ResourceName] | None,
    ) -> str | None:
        """Takes an upstream response; returns None when accepted, else the NACK text (and
        keeps what it had). ``requested`` is the subscription (None for wildcard): for full
        state types, subscribed names missing from the response are deleted."""
        received, problems = _decoded(type_url, resources)
        if problems:
            return "; ".join(problems)
        entry = self.types.setdefault(type_url, TypeEntry())
        removed: list[ResourceName] = []
        if type_url in FULL_STATE:
            removed = [
                name
                for name in entry.resources
                if name not in received and (requested is None or name in requested)
            ]
        self._update(type_url, entry, version, received, removed)
        return None

    def accept_delta(
        self,
        type_url: TypeUrl,
        version: Version,
        updated: Iterable[any_pb2.Any],
        removed: Iterable[ResourceName],
    ) -> str | None:
        """Takes an incremental (delta xDS) response: ``updated`` resources replace theirs,
        ``removed`` names go. Returns None when accepted, else the NACK text (and keeps what
        it had)."""
        received, problems = _decoded(type_url, updated)
        gone = set(removed)
        if gone & set(received):
            problems.append(f"resources both updated and removed: {sorted(gone & set(received))}")
        if problems:
            return "; ".join(problems)
        entry = self.types.setdefault(type_url, TypeEntry())
        self._update(type_url, entry, version, received, [n for n in gone if n in entry.resources])
        return None

    def forget(self, type_url: TypeUrl, names: Iterable[ResourceName]) -> None:
        """Drops resources nobody references any more (RDS and EDS are not full state)."""
        entry = self.types.get(type_url)
        if entry is None:
            return
        dropped = [n for n in names if n in entry.resources]
        if dropped:
            self._update(type_url, entry, entry.version, {}, dropped)

    def _update(
        self,
        type_url: TypeUrl,
        entry: TypeEntry,
        version: Version,
        received: Mapping[ResourceName, any_pb2.Any],
        removed: Iterable[ResourceName],
    ) -> None:
        """Applies one accepted change to ``entry``, journals what differs and announces it
        (also when only the version moved: the journal keeps the version for a resume)."""
        held = entry.resources
        updated = {
            name: packed
            for name, packed in received.items()
            if (old := held.get(name)) is None or old.value != packed.value
        }
        gone = [name for name in removed if held.pop(name, None) is not None]
        held.update(updated)
        entry.version = version
        self.updated_at = time.time()
        if self._journal is not None:
            self._journal.append(type_url, version, updated, gone)
            if self._journal.due:
                self.save()
        self.last_change = {type_url: frozenset([*updated, *gone])}
        self.changed.emit()

    # -- persistence -------------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        """The journal (:mod:`~mesh_agent.daemon.journal`), when there is a state dir."""
        return self._journal.path if self._journal is not None else None

    def save(self) -> None:
        """Writes the whole state anew (the journal compacted to it)."""
        if self._journal is None:
            return
        states = {t: JournalType(e.version, e.resources) for t, e in self.types.items()}
        self._journal.rewrite(states, self.updated_at or time.time())

    def flush(self) -> None:
        """Syncs the journal to the disk and closes it (at shutdown)."""
        if self._journal is not None:
            self._journal.sync()
            self._journal.close()

    def load(self) -> bool:
        """Reads the journal (or, once, the single state file of earlier agents, which it
        then replaces); returns True when config was restored from it. A file that cannot be
        trusted is set aside and reported."""
        if self._journal is None or self.state_dir is None:
            return False
        legacy = self.state_dir / LEGACY_STATE_FILE
        self._journal.remove_leftovers()
        if self._journal.exists():
            restored = self._read_journal()
            if restored is None:
                return False
            types, saved_at, source = restored, self._saved_at, self._journal.path
        elif legacy.exists():
            migrated = self._read_legacy(legacy)
            if migrated is None:
                return False
            types, saved_at = migrated
            source = legacy
        else:
            return False
        self.types = types
        self.updated_at = saved_at
        self.loaded_from_disk = True
        if source == legacy:
            self.save()
            legacy.unlink()
            log.info("state file migrated to the journal", path=str(self._journal.path))
        log.info(
            "config restored from the state dir",
            path=str(source),
            resources={short_name(t): len(e.resources) for t, e in types.items()},
        )
        self.last_change = {t: frozenset(e.resources) for t, e in types.items()}
        self.changed.emit()
        return True

    def _read_journal(self) -> dict[TypeUrl, TypeEntry] | None:
        assert self._journal is not None
        try:
            restored = self._journal.read()
            types: dict[TypeUrl, TypeEntry] = {}
            for type_url, state in restored.types.items():
                types[type_url] = TypeEntry(state.version, _checked(type_url, state.resources))
        except (OSError, ConfigError) as error:
            self._set_aside(self._journal.path, str(error))
            return None
        self._saved_at = restored.saved_at
        return types

    def _read_legacy(self, path: Path) -> tuple[dict[TypeUrl, TypeEntry], float] | None:
        try:
            document = json.loads(path.read_bytes())
            types = self._parse_state(document)
        except (OSError, ValueError, TypeError, KeyError, ConfigError) as error:
            self._set_aside(path, str(error))
            return None
        return types, float(document.get("saved_at", 0.0))

    def _parse_state(self, document: Any) -> dict[TypeUrl, TypeEntry]:
        """The types in a state file of format 1 (the agent's earlier single file)."""
        if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
            raise ConfigError(f"not a mesh-agent state file of format {STATE_FORMAT}")
        if document.get("node_id") != self.node_id:
            raise ConfigError(
                f"state of node {document.get('node_id')!r}, not of this node {self.node_id!r}"
            )
        types: dict[TypeUrl, TypeEntry] = {}
        for type_url, body in document["types"].items():
            resources = {
                name: any_pb2.Any(type_url=type_url, value=base64.b64decode(value))
                for name, value in body["resources"].items()
            }
            types[type_url] = TypeEntry(str(body["version"]), _checked(type_url, resources))
        return types

    def _set_aside(self, path: Path, reason: str) -> None:
        target = path.with_name(f"{path.name}.rejected-{int(time.time())}")
        try:
            os.replace(path, target)
        except OSError:
            target = path
        message = f"state file {path} rejected ({reason}); set aside as {target.name}"
        self.problems.append(message)
        log.warning("state file rejected", path=str(path), reason=reason, moved_to=str(target))


def _checked(
    type_url: TypeUrl, resources: dict[ResourceName, any_pb2.Any]
) -> dict[ResourceName, any_pb2.Any]:
    """``resources`` read back from the state dir, each checked as an upstream one is and
    under its own name; raises ConfigError naming the first that is not."""
    if type_url not in MESSAGE_TYPES:
        raise ConfigError(f"unknown resource type {type_url!r}")
    for name, packed in resources.items():
        if resource_name(type_url, decode(packed, type_url)) != name:
            raise ConfigError(f"{short_name(type_url)} resource {name!r}: name mismatch")
    return resources


def atomic_write(path: Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` so that a reader sees the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _decoded(
    type_url: TypeUrl, resources: Iterable[any_pb2.Any]
) -> tuple[dict[ResourceName, any_pb2.Any], list[str]]:
    """Resources by name, and what is wrong with them (undecodable, duplicate names)."""
    received: dict[ResourceName, any_pb2.Any] = {}
    problems: list[str] = []
    for resource in resources:
        try:
            message = decode(resource, type_url)
        except ConfigError as error:
            problems.append(str(error))
            continue
        name = resource_name(type_url, message)
        if name in received:
            problems.append(f"duplicate {short_name(type_url)} resource {name!r}")
        received[name] = resource
    return received, problems


class CacheComponent:
    """The ``cache`` component: the owner of the node's :class:`ConfigCache`, which it makes
    at its first start and restores from the state dir (unless it holds config already).
    Others ask their context for it: ``ctx.require("cache", CacheRole).cache``."""

    name = CACHE
    requires: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._cache: ConfigCache | None = None

    @property
    def cache(self) -> ConfigCache:
        if self._cache is None:
            raise ComponentError("the config cache is made when the cache component starts")
        return self._cache

    async def start(self, ctx: AgentContext) -> None:
        if self._cache is None:
            settings = ctx.setting(SETTINGS, AgentSettings)
            self._cache = ConfigCache(settings.state_dir, settings.node_id)
        if not self._cache.types:
            self._cache.load()

    async def run(self) -> None:
        return None  # nothing to loop on; it stays up until shutdown

    async def stop(self) -> None:
        if self._cache is not None:
            self._cache.flush()
