"""What the node's processes declared to the agent: the services they serve on which
listening address (``DeclareServer``: the agent serves each such xDS-enabled server its
Listener, :func:`mesh_xds.transport.server_listener`) and the identities they use
(``HoldIdentity``: the agent keeps their certificates).

Kept in ``servers.json`` in the state dir, so that after a restart of the agent a running
server is still served its Listener (without one, grpc's xDS server stops serving) and its
certificate still renewed. Bounded: past :data:`MAX_DECLARED` addresses or identities the
oldest declaration is forgotten. A declaration is never removed otherwise: a process that
ended leaves one Listener nobody asks for, and the next server on that address replaces it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from envoy.config.listener.v3 import listener_pb2

from mesh.v1 import agent_pb2, config_pb2
from mesh_agent.daemon.cache import ConfigCache, atomic_write, decode
from mesh_agent.daemon.identities.keeper import PROCESS, HeldIdentity, IdentityKeeper
from mesh_agent.daemon.status import identity_statuses
from mesh_core.aio import wait_event
from mesh_core.authorization import compile_rules
from mesh_core.errors import ConfigError
from mesh_core.names import server_listener_name
from mesh_core.policy import SECURITY_DISABLED
from mesh_core.signals import Signal
from mesh_core.validation import address_problem, service_name_problem
from mesh_xds.types import SERVICE_POLICY

log = structlog.get_logger(__name__)
STATE_FILE = "servers.json"
MAX_DECLARED = 256


def _mode(policy: config_pb2.ServicePolicy) -> str:
    return policy.security.mode or SECURITY_DISABLED


def _policy(cache: ConfigCache, service: str) -> config_pb2.ServicePolicy | None:
    """The service's policy as the cache holds it, or None while it does not."""
    packed = cache.resources(SERVICE_POLICY).get(service)
    if packed is None:
        return None
    policy = decode(packed, SERVICE_POLICY)
    assert isinstance(policy, config_pb2.ServicePolicy)
    return policy


class Declarations:
    """Servers and identities declared by the node's processes. Event-loop owned."""

    def __init__(self, state_dir: Path | None, trust_domain: str | None = None) -> None:
        """``trust_domain``: the node's, which the callers named by authorization rules
        are in."""
        self._path = state_dir / STATE_FILE if state_dir is not None else None
        self.trust_domain = trust_domain
        self.servers: dict[str, str] = {}
        """listening address -> service, oldest first."""
        self.identities: dict[str, None] = {}
        """services whose identity processes use, oldest first."""
        self.asked: set[str] = set()
        self.changed: Signal[[]] = Signal()

    # -- declaring -----------------------------------------------------------------------------

    def declare_server(self, service: str, listening_address: str) -> str:
        """Records that ``service`` is served on ``listening_address``; returns the name of
        the Listener the server asks for. ConfigError names a bad service or address."""
        problem = service_name_problem(service)
        if problem:
            raise ConfigError(f"service: {problem}")
        problem = address_problem(listening_address)
        if problem:
            raise ConfigError(f"listening_address: {problem}")
        if self.servers.get(listening_address) != service:
            self.servers.pop(listening_address, None)
            self.servers[listening_address] = service
            _bound(self.servers)
            log.info("server declared", service=service, listening_address=listening_address)
            self._changed()
        return server_listener_name(listening_address)

    def hold_identity(self, service: str) -> None:
        """Records that a process uses the identity of ``service``."""
        problem = service_name_problem(service)
        if problem:
            raise ConfigError(f"service: {problem}")
        if service not in self.identities:
            self.identities[service] = None
            _bound(self.identities)
            log.info("identity asked for by a process", service=service)
            self._changed()

    def hold_policy(self, service: str) -> None:
        """Asks for the policy of ``service`` (whose mode a process wants to know) for as
        long as the agent runs. ConfigError names a bad service name."""
        problem = service_name_problem(service)
        if problem:
            raise ConfigError(f"service: {problem}")
        if service not in self.asked:
            self.asked.add(service)
            self.changed.emit()

    def services(self) -> set[str]:
        """Every service declared, served or used as an identity, or whose mode a process
        asked (whose policies the agent needs)."""
        return set(self.servers.values()) | set(self.identities) | self.asked

    # -- what is served ------------------------------------------------------------------------

    def listeners(self, cache: ConfigCache) -> dict[str, listener_pb2.Listener]:
        """The Listener of every declared server whose service's policy the cache holds, with
        its mode and authorization (a server whose policy is not known yet gets none:
        serving it plaintext, or open, could be wrong)."""
        listeners: dict[str, listener_pb2.Listener] = {}
        for address, service in self.servers.items():
            policy = _policy(cache, service)
            if policy is None:
                continue
            authorization = compile_rules(policy.security.authorization, self.trust_domain)
            from mesh_xds.transport import server_listener  # the TLS and RBAC protos

            listener = server_listener(address, _mode(policy), authorization)
            listeners[listener.name] = listener
        return listeners

    def statuses(self, cache: ConfigCache) -> list[agent_pb2.DeclaredServer]:
        """Every declared server, with the mode its Listener is served with."""
        statuses = []
        for address, service in self.servers.items():
            facts = Declarations.policy_facts(cache, service)
            statuses.append(
                agent_pb2.DeclaredServer(
                    service=service,
                    listening_address=address,
                    listener_name=server_listener_name(address),
                    mode=facts[0] if facts is not None else "",
                )
            )
        return statuses

    @staticmethod
    def policy_facts(cache: ConfigCache, service: str) -> tuple[str, bool] | None:
        """``(mode, has_identity)`` of ``service`` as the cache's policy says, or None while
        the cache does not hold it."""
        policy = _policy(cache, service)
        if policy is None:
            return None
        return _mode(policy), bool(policy.security.hosts)

    # -- persistence ---------------------------------------------------------------------------

    def load(self) -> None:
        """Reads the declarations a previous run kept; a damaged file is logged and set
        aside, never trusted in part."""
        if self._path is None or not self._path.exists():
            return
        try:
            document: Any = json.loads(self._path.read_text())
            servers = {str(a): str(s) for a, s in dict(document.get("servers", {})).items()}
            identities = [str(s) for s in list(document.get("identities", []))]
            for address, service in servers.items():
                if service_name_problem(service) or address_problem(address):
                    raise ValueError(f"bad server declaration {address!r}: {service!r}")
            for service in identities:
                if service_name_problem(service):
                    raise ValueError(f"bad identity declaration {service!r}")
        except (OSError, ValueError, TypeError, AttributeError) as error:
            aside = self._path.with_suffix(".json.bad")
            log.error(
                "declared servers not read; file set aside",
                path=str(self._path),
                set_aside=str(aside),
                error=str(error),
            )
            self._path.replace(aside)
            return
        self.servers = servers
        self.identities = dict.fromkeys(identities)
        _bound(self.servers)
        _bound(self.identities)

    def _changed(self) -> None:
        if self._path is not None:
            document = {"servers": self.servers, "identities": list(self.identities)}
            try:
                atomic_write(self._path, json.dumps(document, indent=1).encode())
            except OSError as error:
                log.warning("declared servers not saved", path=str(self._path), error=str(error))
        self.changed.emit()


async def _until(signal: Signal[[]], done: Callable[[], bool], timeout: float) -> bool:
    """Waits up to ``timeout`` seconds for ``done()``, checked at every emission of
    ``signal``; returns ``done()``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    event = asyncio.Event()
    disconnect = signal.connect(event.set)
    try:
        while not done():
            left = deadline - loop.time()
            if left <= 0:
                break
            event.clear()
            await wait_event(event, left)
    finally:
        disconnect()
    return done()


class ProcessRequests:
    """What ``HoldIdentity`` and ``DeclareServer`` do: record the declaration (so the keeper
    holds the identity and the local server serves the Listener) and wait, bounded, for what
    the process needs to know."""

    def __init__(
        self, declarations: Declarations, keeper: IdentityKeeper, cache: ConfigCache
    ) -> None:
        self.declarations = declarations
        self.keeper = keeper
        self.cache = cache

    def _held(self, service: str) -> HeldIdentity | None:
        return next((h for h in self.keeper.held() if h.service == service), None)

    async def hold_identity(self, service: str, wait: float) -> agent_pb2.IdentityStatus:
        """The identity's status once its certificate is in place, or once an attempt
        failed, or after ``wait`` seconds (then without a certificate and maybe without an
        error yet). ConfigError names a bad service name."""
        self.declarations.hold_identity(service)
        self.keeper.want(PROCESS, self.declarations.identities)

        def settled() -> bool:
            held = self._held(service)
            return held is not None and (held.not_after is not None or bool(held.last_error))

        await _until(self.keeper.changed, settled, wait)
        held = self._held(service)
        if held is None:
            return agent_pb2.IdentityStatus(service=service, last_error="not held yet")
        return identity_statuses([held])[0]

    async def declare_server(
        self, service: str, listening_address: str, wait: float
    ) -> agent_pb2.DeclareServerResponse:
        """Records the server; answers with its Listener's name and the service's mode once
        the cache holds the service's policy (waiting up to ``wait`` seconds for it)."""
        if listening_address:
            name = self.declarations.declare_server(service, listening_address)
        else:
            name = ""
            self.declarations.hold_policy(service)
        facts = Declarations.policy_facts(self.cache, service)
        if facts is None:
            await _until(
                self.cache.changed,
                lambda: Declarations.policy_facts(self.cache, service) is not None,
                wait,
            )
            facts = Declarations.policy_facts(self.cache, service)
        response = agent_pb2.DeclareServerResponse(listener_name=name)
        if facts is not None:
            response.mode, response.has_identity = facts
        return response


def _bound(entries: dict[str, Any]) -> None:
    while len(entries) > MAX_DECLARED:
        del entries[next(iter(entries))]


__all__ = ["MAX_DECLARED", "STATE_FILE", "Declarations", "ProcessRequests"]
