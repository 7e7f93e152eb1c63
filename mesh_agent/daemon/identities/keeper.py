"""The service identities a node holds, kept fresh: for each one the agent should hold, a
fresh key and CSR, the certificate the control server signs for it, written where a grpcio
file watcher reads it (:mod:`.files`), and again at half of the validity it had at issue.

Which identities: the union of what each source wants (:meth:`IdentityKeeper.want`): the
services the node registered endpoints of that have ``security.hosts`` (the control server
decides whether this node is among them), and those configured with ``--identity`` (a
process that only calls). An identity no longer wanted is no longer renewed; its files stay
(a draining server may still read them) and run out by themselves.

A failed attempt (the control server unreachable, or refusing) is retried with backoff and
shown in ``last_error``; the files in place stay in force meanwhile. :meth:`IdentityKeeper.
retry_now` skips the wait (the component calls it when the upstream reconnects and when the
hosts of a service change). Nothing restarts: the
files are swapped under the processes that read them.

Event-loop owned: :meth:`IdentityKeeper.run` owns one task per identity; :meth:`want` and
:meth:`retry_now` only take note and wake it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from mesh.v1 import node_pb2
from mesh_agent.daemon.identities import files
from mesh_core.aio import end_tasks, wait_event
from mesh_core.backoff import Backoff
from mesh_core.errors import CertError, MeshError, PermissionDeniedError, PreconditionError
from mesh_core.identity import service_uri
from mesh_core.identity_files import IdentityPaths, identity_paths
from mesh_core.signals import Signal

log = structlog.get_logger(__name__)

REGISTRATION = "registration"
"""Source: the node registered endpoints of the service, which has ``security.hosts``."""
CONFIGURED = "configured"
"""Source: ``--identity`` (``identities`` in the agent's config file)."""
PROCESS = "process"
"""Source: a process on the node asked for it (``HoldIdentity``: ``mesh_channel(...,
identity=NAME)``, ``mesh_server``)."""
RETRY_BACKOFF = Backoff(base=1.0, cap=60.0)
MIN_RENEW_AFTER = 1.0
"""Seconds: the soonest a certificate is renewed after it was asked for."""
NO_TRUST_DOMAIN = (
    "the agent has no node certificate (--tls-cert, --tls-key, --tls-ca), so it can neither "
    "name its trust domain nor prove to the control server which node it is"
)


class Signer(Protocol):
    """What signs a CSR: the control server (:class:`.component.ControlSigner`), or a fake.
    Raises a :class:`~mesh_core.errors.MeshError` saying why it did not."""

    async def sign(self, csr_pem: str) -> node_pb2.SignCertificateResponse: ...


@dataclass
class Timing:
    """Seconds each step of the last renewal took: key and CSR, the signing RPC, checking
    and writing the files; ``total`` from the start of the key to the swap of ``current``."""

    key_and_csr: float = 0.0
    sign: float = 0.0
    write: float = 0.0
    total: float = 0.0


@dataclass
class HeldIdentity:
    """One identity the node holds or tries to (what the agent's status shows)."""

    service: str
    paths: IdentityPaths
    sources: set[str] = field(default_factory=set)
    spiffe_id: str = ""
    not_after: datetime.datetime | None = None
    renew_at: datetime.datetime | None = None
    updated: datetime.datetime | None = None
    last_error: str = ""
    refused: bool = False
    renewals: int = 0
    timing: Timing | None = None
    next_attempt: float = 0.0  # wall time
    kick: asyncio.Event = field(default_factory=asyncio.Event)


def _wall(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC)


class IdentityKeeper:
    """Keeps a certificate for every identity wanted, under ``certs_dir``. ``trust_domain``
    is the node's (None without a node certificate: every attempt then fails, saying so).
    ``grace``: how long a replaced version's files stay. ``changed`` is emitted whenever an
    identity's state changes (a certificate written, an error, one wanted or no longer)."""

    def __init__(
        self,
        certs_dir: Path,
        trust_domain: str | None,
        signer: Signer,
        *,
        backoff: Backoff = RETRY_BACKOFF,
        grace: float = files.DEFAULT_GRACE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.certs_dir = certs_dir
        self.trust_domain = trust_domain
        self.signer = signer
        self.backoff = backoff
        self.grace = grace
        self.clock = clock
        self.changed: Signal[[]] = Signal()
        self._wanted: dict[str, set[str]] = {}  # source -> services
        self._held: dict[str, HeldIdentity] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._reconcile = asyncio.Event()

    # -- what is wanted ------------------------------------------------------------------------

    def want(self, source: str, services: Iterable[str]) -> None:
        """``source`` wants the identities of ``services`` (replacing what it wanted)."""
        wanted = set(services)
        if self._wanted.get(source, set()) == wanted:
            return
        self._wanted[source] = wanted
        self._reconcile.set()

    def wanted(self) -> dict[str, set[str]]:
        """Service -> the sources that want its identity."""
        result: dict[str, set[str]] = {}
        for source, services in self._wanted.items():
            for service in services:
                result.setdefault(service, set()).add(source)
        return result

    def held(self) -> list[HeldIdentity]:
        """Every identity wanted, by service name."""
        return [self._held[name] for name in sorted(self._held)]

    def retry_now(self) -> None:
        """Retries at once every identity whose last attempt failed (a control server is
        back, say)."""
        for held in self._held.values():
            if held.last_error:
                held.kick.set()

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Keeps one task per identity wanted, until cancelled (which ends them all)."""
        try:
            while True:
                self._reconcile.clear()
                self._apply_wanted()
                await self._reconcile.wait()
        finally:
            tasks = list(self._tasks.values())
            for task in tasks:
                task.cancel()
            await end_tasks(tasks, 2.0)
            self._tasks.clear()

    def _apply_wanted(self) -> None:
        wanted = self.wanted()
        for name in [n for n in self._held if n not in wanted]:
            log.info("identity no longer wanted; no longer renewed", service=name)
            del self._held[name]
            task = self._tasks.pop(name, None)
            if task is not None:
                task.cancel()
        for name, sources in wanted.items():
            held = self._held.get(name)
            if held is None:
                held = HeldIdentity(name, identity_paths(name, self.certs_dir))
                self._held[name] = held
            held.sources = sources
            if name not in self._tasks:  # new, or after a restart of the component
                self._tasks[name] = asyncio.create_task(self._keep(held), name=f"identity:{name}")
        self.changed.emit()

    async def _keep(self, held: HeldIdentity) -> None:
        """Renews ``held`` when due, retrying with backoff after a failure."""
        if held.not_after is None:
            self._load(held)
        delays: Iterator[float] = self.backoff.delays()
        while True:
            wait = held.next_attempt - self.clock()
            if wait > 0:
                kicked = await wait_event(held.kick, wait)
                held.kick.clear()
                if kicked and not held.last_error:
                    continue  # nothing to retry: wait for the renewal time
            try:
                await self.renew(held)
            except MeshError as error:
                delay = next(delays)
                held.last_error = str(error)
                held.refused = isinstance(error, PermissionDeniedError)
                held.next_attempt = self.clock() + delay
                log.warning(
                    "identity certificate not renewed; retrying",
                    service=held.service,
                    error=held.last_error,
                    retry_in=round(delay, 2),
                )
                self.changed.emit()
            else:
                delays = self.backoff.delays()

    def _load(self, held: HeldIdentity) -> None:
        """Takes over the certificate already on disk when it is the identity's, matches its
        key and is still valid: renewed at its half-life rather than at once."""
        material = files.read_current(held.paths)
        if material is None or self.trust_domain is None:
            return
        spiffe_id = service_uri(self.trust_domain, held.service)
        from mesh_agent.daemon.identities import keys  # cryptography: loaded by the first identity

        try:
            facts = keys.chain_facts(material.chain)
        except CertError:
            return
        if spiffe_id not in facts.uris or not keys.key_matches(material.chain, material.key):
            return
        if facts.not_after <= _wall(self.clock()):
            return
        held.spiffe_id = spiffe_id
        held.not_after = facts.not_after
        held.renew_at = facts.half_life()
        held.next_attempt = held.renew_at.timestamp()
        with contextlib.suppress(OSError):
            held.updated = _wall(held.paths.cert.stat().st_mtime)
        log.info(
            "identity certificate found on disk",
            service=held.service,
            not_after=facts.not_after.isoformat(),
            renew_at=held.renew_at.isoformat(),
        )

    async def renew(self, held: HeldIdentity) -> None:
        """Asks for a certificate for ``held`` and puts it in place; a MeshError says why
        not (nothing on disk changes then)."""
        if self.trust_domain is None:
            raise PreconditionError(NO_TRUST_DOMAIN)
        spiffe_id = service_uri(self.trust_domain, held.service)
        started = time.perf_counter()
        issued = self.clock()
        from mesh_agent.daemon.identities import keys  # cryptography: loaded by the first identity

        request = keys.new_key_and_csr(spiffe_id)
        made = time.perf_counter()
        response = await self.signer.sign(request.csr_pem)
        signed = time.perf_counter()
        material = files.Material(
            response.certificate_chain.encode(), request.key_pem, response.trust_bundle.encode()
        )
        not_after = _checked(material, spiffe_id)
        await asyncio.to_thread(files.write_version, held.paths, material)
        written = time.perf_counter()
        held.timing = Timing(made - started, signed - made, written - signed, written - started)
        held.spiffe_id = spiffe_id
        held.not_after = not_after
        # Half of the validity it had when asked for, as this node's clock sees it; never
        # sooner than MIN_RENEW_AFTER, so a certificate cut short (its CA about to end) does
        # not make the node ask again and again.
        half = max((not_after.timestamp() - issued) / 2, MIN_RENEW_AFTER)
        held.renew_at = _wall(issued + half)
        held.next_attempt = held.renew_at.timestamp()
        held.updated = _wall(self.clock())
        held.last_error = ""
        held.refused = False
        held.renewals += 1
        log.info(
            "identity certificate written",
            service=held.service,
            spiffe_id=spiffe_id,
            not_after=not_after.isoformat(),
            renew_at=held.renew_at.isoformat(),
            csr_to_files_ms=round(held.timing.total * 1000, 3),
            key_ms=round(held.timing.key_and_csr * 1000, 3),
            sign_ms=round(held.timing.sign * 1000, 3),
            write_ms=round(held.timing.write * 1000, 3),
        )
        self.changed.emit()
        await asyncio.to_thread(files.prune, held.paths, self.grace)


def _checked(material: files.Material, spiffe_id: str) -> datetime.datetime:
    """The certificate's end, once it is checked to be what was asked for: the identity, on
    the key sent, verifying against the bundle sent with it; CertError otherwise (and the
    files in place stay)."""
    from mesh_agent.daemon.identities import keys  # cryptography: loaded by the first identity

    facts = keys.chain_facts(material.chain)
    if spiffe_id not in facts.uris:
        raise CertError(f"the certificate signed names {', '.join(facts.uris)}, not {spiffe_id}")
    if not keys.key_matches(material.chain, material.key):
        raise CertError("the certificate signed is not for the key this node sent")
    problem = keys.chain_problem(material.chain, material.bundle)
    if problem is not None:
        raise CertError(f"the certificate signed does not verify with its trust bundle: {problem}")
    return facts.not_after


__all__ = [
    "CONFIGURED",
    "PROCESS",
    "REGISTRATION",
    "HeldIdentity",
    "IdentityKeeper",
    "Signer",
    "Timing",
]
