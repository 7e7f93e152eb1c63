"""The audit trail of admin writes: every apply, delete and rollback, done or refused, becomes
one structured log line (event ``admin write``) and one ``mesh.v1.AuditEntry`` kept in the
store (:meth:`control.store.Store.record_audit`), so every control server on a shared store
shows the same trail (``meshctl audit``).

An entry says who (the operator, or for a refused caller what its certificate names), from
where (the peer address), what (action, services, message), and how it ended: ``ok`` with the
store revision, or ``refused`` with a reason (:data:`REASONS`) and the refusal's message.
Nothing secret goes in: never a token, only that a token was used (``who`` ``token``).

Writes refused by the rate limit are logged each, but kept in the store at most once per
caller every :data:`LIMITED_EVERY` seconds: a caller flooding the server must not turn each
refused call into a store write. A write refused because the store is unavailable is logged
only.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog

from control.security import Access
from control.store import Store
from mesh.v1 import admin_pb2
from mesh_core.errors import (
    ConfigError,
    ConflictError,
    LimitExceeded,
    MeshError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    RateLimited,
    StoreUnavailableError,
    UnavailableError,
)

log = structlog.get_logger(__name__)

ANONYMOUS = "anonymous"
# What a refused write's entry names: at most so many services, each at most so long (a
# refused request may carry anything).
_MAX_NAMES = 20
_MAX_NAME = 200
_MAX_DETAIL = 2000
LIMITED_EVERY = 5.0
_MAX_LIMITED_CALLERS = 10_000

REASONS: tuple[tuple[type[MeshError], str], ...] = (
    (RateLimited, "rate limited"),
    (LimitExceeded, "limit exceeded"),
    (ConfigError, "invalid"),
    (PermissionDeniedError, "permission denied"),
    (ConflictError, "conflict"),
    (NotFoundError, "not found"),
    (PreconditionError, "precondition failed"),
    (UnavailableError, "store unavailable"),
)
"""The reason a refusal is filed under, by error class (the first match)."""


def reason_of(error: MeshError) -> str:
    for kind, reason in REASONS:
        if isinstance(error, kind):
            return reason
    return "failed"


def operator_name(operator: str) -> str:
    """How an operator of :meth:`Access.operator` is named in history and audit."""
    return ANONYMOUS if operator == "anyone" else operator


@dataclass
class AuditRecord:
    """What a write fills in while it runs (see :meth:`AuditTrail.write`)."""

    who: str
    revision: int = 0
    services: list[str] = field(default_factory=list)


class AuditTrail:
    """Writes the audit entries of one control server's admin writes."""

    def __init__(self, store: Store, access: Access, server_id: str) -> None:
        self._store = store
        self._access = access
        self._server_id = server_id
        # caller -> when its last rate-limited refusal was kept in the store (monotonic)
        self._limited: dict[str, float] = {}

    def caller(self, context: Any) -> str:
        """Who a caller is before it is known to be an operator: its certificate's identity,
        else anonymous."""
        identity = self._access.identity(context)
        return str(identity) if identity is not None else ANONYMOUS

    @asynccontextmanager
    async def write(
        self, context: Any, action: str, services: Sequence[str], message: str
    ) -> AsyncIterator[AuditRecord]:
        """Audits the write run in the ``with`` block: ``ok`` when it ends normally, else
        ``refused`` with the reason of the :class:`MeshError` it raises (raised on)."""
        record = AuditRecord(self.caller(context), services=list(services))
        try:
            yield record
        except MeshError as error:
            await self._keep(context, action, record, message, error)
            raise
        await self._keep(context, action, record, message, None)

    def _keep_limited(self, who: str, peer: str) -> bool:
        """Whether to keep this rate-limited refusal in the store (see the module's doc)."""
        now = time.monotonic()
        if len(self._limited) > _MAX_LIMITED_CALLERS:
            self._limited = {k: t for k, t in self._limited.items() if now - t < LIMITED_EVERY}
        caller = f"{who} {peer.rpartition(':')[0]}"
        last = self._limited.get(caller)
        if last is not None and now - last < LIMITED_EVERY:
            return False
        self._limited[caller] = now
        return True

    async def _keep(
        self,
        context: Any,
        action: str,
        record: AuditRecord,
        message: str,
        error: MeshError | None,
    ) -> None:
        names = [name[:_MAX_NAME] for name in record.services[:_MAX_NAMES]]
        item = admin_pb2.AuditEntry(
            who=record.who,
            peer=context.peer() or "",
            action=action,
            services=names,
            outcome="ok" if error is None else "refused",
            reason="" if error is None else reason_of(error),
            detail="" if error is None else str(error)[:_MAX_DETAIL],
            revision=record.revision,
            message=message[:_MAX_DETAIL],
            server_id=self._server_id,
        )
        item.time.GetCurrentTime()
        fields: dict[str, Any] = {
            "action": action,
            "outcome": item.outcome,
            "who": item.who,
            "peer": item.peer,
            "services": names,
            "message": item.message,
        }
        if error is None:
            log.info("admin write", revision=record.revision, **fields)
        else:
            log.warning("admin write", reason=item.reason, detail=item.detail, **fields)
        if isinstance(error, RateLimited) and not self._keep_limited(record.who, item.peer):
            return
        if isinstance(error, StoreUnavailableError):
            return  # it would not take the entry either (and would make the caller wait again)
        try:
            await self._store.record_audit(item)
        except Exception as exc:  # the write's own outcome stands; the log line has it
            log.error("cannot keep the audit entry in the store", error=str(exc), **fields)
