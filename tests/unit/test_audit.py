"""The audit trail's seam (:class:`control.audit.AuditTrail` over a memory store, with the
little of a servicer context it reads), the field-level diff of ``meshctl diff`` and
``history``, and ``--since``/``--history-age`` periods. The trail through real servers is
tests/e2e/test_history.py."""

from __future__ import annotations

import pytest
import structlog

from control.audit import AuditTrail, operator_name, reason_of
from control.meshctl.diff import changes, flatten, summary
from control.security import Access
from control.store import MemoryStore
from mesh_core.durations import parse_period
from mesh_core.errors import (
    ConfigError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimited,
    StoreUnavailableError,
)


class Context:
    """What the trail reads of a grpc.aio servicer context."""

    def __init__(self, peer: str = "ipv4:127.0.0.1:5000") -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


def test_reasons_and_names() -> None:
    assert reason_of(ConfigError(["x"])) == "invalid"
    assert reason_of(PermissionDeniedError("x")) == "permission denied"
    assert reason_of(ConflictError("x")) == "conflict"
    assert reason_of(NotFoundError("x")) == "not found"
    assert reason_of(RateLimited("admin_writes_per_second", "slow down", 1.0)) == "rate limited"
    assert operator_name("anyone") == "anonymous"
    assert operator_name("token") == "token"


async def test_done_and_refused_writes_are_kept_and_logged() -> None:
    store = MemoryStore()
    trail = AuditTrail(store, Access(), "server-1")
    with structlog.testing.capture_logs() as logs:
        async with trail.write(Context(), "apply", ["orders"], "first") as record:
            record.who = "alice"
            record.revision = 7
        with pytest.raises(ConflictError):
            async with trail.write(Context(), "delete", ["orders"], "") as record:
                raise ConflictError("service 'orders' changed at revision 8")
    done, refused = await store.audit()
    assert (done.who, done.outcome, done.revision, done.message) == ("alice", "ok", 7, "first")
    assert (refused.who, refused.outcome, refused.reason) == ("anonymous", "refused", "conflict")
    assert refused.detail == "service 'orders' changed at revision 8"
    assert {done.server_id, refused.peer} == {"server-1", "ipv4:127.0.0.1:5000"}
    assert [(x["event"], x["outcome"]) for x in logs] == [
        ("admin write", "ok"),
        ("admin write", "refused"),
    ]


async def test_a_rate_limited_flood_is_logged_but_kept_once() -> None:
    store = MemoryStore()
    trail = AuditTrail(store, Access(), "server-1")
    with structlog.testing.capture_logs() as logs:
        for port in range(5):
            with pytest.raises(RateLimited):
                async with trail.write(Context(f"ipv4:10.0.0.9:{port}"), "apply", ["a"], ""):
                    raise RateLimited("admin_writes_per_second", "slow down", 1.0)
        with pytest.raises(RateLimited):
            async with trail.write(Context("ipv4:10.0.0.8:1"), "apply", ["a"], ""):
                raise RateLimited("admin_writes_per_second", "slow down", 1.0)
    assert len([x for x in logs if x["event"] == "admin write"]) == 6
    assert [e.peer for e in await store.audit()] == ["ipv4:10.0.0.9:0", "ipv4:10.0.0.8:1"]


async def test_a_write_the_store_could_not_take_is_logged_only() -> None:
    store = MemoryStore()
    trail = AuditTrail(store, Access(), "server-1")
    with structlog.testing.capture_logs() as logs, pytest.raises(StoreUnavailableError):
        async with trail.write(Context(), "apply", ["orders"], ""):
            raise StoreUnavailableError("etcd is unreachable")
    assert [(x["event"], x["reason"]) for x in logs] == [("admin write", "store unavailable")]
    assert await store.audit() == []


def test_diff_paths_are_readable() -> None:
    old = {
        "name": "orders",
        "endpoints": [{"address": "10.0.0.5:1"}, {"address": "10.0.0.6:1", "zone": "a"}],
        "policy": {"timeout": "2s", "retry": {"attempts": 2, "retry_on": ["UNAVAILABLE"]}},
    }
    new = {
        "name": "orders",
        "endpoints": [{"address": "10.0.0.4:1"}, {"address": "10.0.0.6:1", "zone": "b"}],
        "policy": {"timeout": "3s", "retry": {"attempts": 2, "retry_on": ["UNAVAILABLE"]}},
    }
    assert [c.line() for c in changes(old, new)] == [
        "endpoints[10.0.0.4:1].address: (none) -> 10.0.0.4:1",
        "endpoints[10.0.0.6:1].zone: a -> b",
        "policy.timeout: 2s -> 3s",
        "endpoints[10.0.0.5:1].address: 10.0.0.5:1 -> (none)",
    ]
    assert flatten({"policy": {}}) == {"policy": {}}
    assert summary(None, new) == "created"
    assert summary(None, new, known_before=False) == "(earlier versions not kept)"
    assert summary(old, None) == "deleted"
    assert summary(new, new) == "no change"
    assert summary(old, new, limit=2).startswith("4 changes: endpoints[10.0.0.4:1].address, ")


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 2592000.0), ("1h", 3600.0), ("1d12h", 129600.0), ("90m", 5400.0)]
)
def test_periods(text: str, seconds: float) -> None:
    assert parse_period(text) == seconds


@pytest.mark.parametrize("text", ["", "1x", "d", "0s", "1h2d", "an hour"])
def test_bad_periods_are_named(text: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid period {text!r}"):
        parse_period(text)
