"""``memory:`` — a store that lives and dies with the process (its history and audit trail
too); for tests."""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from control.store._base import DEFAULT_MAX_LOG, AppliedService, BaseStore, Service
from control.store._history import Change, HistoryLimits


class MemoryStore(BaseStore):
    """Everything in memory; the revision starts at 0. Usable before :meth:`start` (which
    does nothing); :meth:`close` ends the watches and refuses further use."""

    def __init__(
        self, *, max_log: int = DEFAULT_MAX_LOG, history: HistoryLimits | None = None
    ) -> None:
        super().__init__(max_log=max_log, history=history)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._close()

    async def apply(
        self, services: Sequence[Service], *, if_revision: int = 0, change: Change | None = None
    ) -> tuple[int, builtins.list[AppliedService]]:
        self._check_open()
        self._check_batch(services)
        self._check_conflicts((svc.name for svc in services), if_revision)
        changed = self._changed_services(services)
        revision = self._commit(changed, [], change)
        return revision, self._applied(services, {svc.name for svc in changed})

    async def delete(self, name: str, *, if_revision: int = 0, change: Change | None = None) -> int:
        self._check_open()
        await self.get(name)
        self._check_conflicts([name], if_revision)
        return self._commit([], [name], change)
