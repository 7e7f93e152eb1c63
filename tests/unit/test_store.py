"""Config stores: what only the memory store (its log) and the file store (its directory) do.
The contract every backend keeps is tests/e2e/test_store_contract.py."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from control.config import load_documents
from control.store import FileStore, MemoryStore, StoreEvent, open_store
from mesh.v1 import config_pb2
from mesh_core.errors import ConfigError, ConflictError, NotFoundError, StoreUnavailableError
from tests.conftest import eventually

POLL = 0.05
SETTLE = 0.05


def svc(name: str, address: str = "10.0.0.1:50051", zone: str = "") -> config_pb2.Service:
    service = config_pb2.Service(name=name)
    service.endpoints.add(address=address, zone=zone)
    return service


def doc(name: str, address: str = "10.0.0.1:50051") -> str:
    return f"name: {name}\nendpoints:\n  - address: {address}\n"


def file_store(directory: Path) -> FileStore:
    return FileStore(directory, poll_interval=POLL, settle=SETTLE)


@pytest.fixture
async def fstore(tmp_path: Path) -> AsyncIterator[FileStore]:
    s = file_store(tmp_path / "store")
    await s.start()
    yield s
    await s.close()


async def take(events: AsyncIterator[StoreEvent], count: int) -> list[StoreEvent]:
    async def collect() -> list[StoreEvent]:
        out: list[StoreEvent] = []
        async for event in events:
            out.append(event)
            if len(out) == count:
                break
        return out

    return await asyncio.wait_for(collect(), timeout=5)


def summary(events: list[StoreEvent]) -> list[tuple[int, str, str | None]]:
    return [
        (e.revision, e.name, None if e.service is None else e.service.endpoints[0].address)
        for e in events
    ]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# -- the memory store: its log -----------------------------------------------------------------


async def test_watch_behind_the_log_gets_a_resync() -> None:
    store = MemoryStore(max_log=2)
    await store.start()
    await store.apply([svc("a")])  # 1
    await store.apply([svc("b")])  # 2
    await store.apply([svc("c")])  # 3
    await store.delete("a")  # 4
    await store.apply([svc("b", "10.0.0.2:1")])  # 5
    await store.apply([svc("d")])  # 6
    events = await take(store.watch(1), 4)
    assert summary(events) == [
        (3, "c", "10.0.0.1:50051"),
        (4, "a", None),
        (5, "b", "10.0.0.2:1"),
        (6, "d", "10.0.0.1:50051"),
    ]
    # replaying the resync on the state as of revision 1 gives the current state
    state = {"a": svc("a")}
    for event in events:
        if event.service is None:
            state.pop(event.name)
        else:
            state[event.name] = event.service
    _, current = await store.list()
    assert state == {s.service.name: s.service for s in current}
    # and the watch goes on with new changes
    watch = store.watch(6)
    task = asyncio.create_task(take(watch, 1))
    await asyncio.sleep(0.02)
    await store.delete("c")
    assert summary(await task) == [(7, "c", None)]
    await store.close()


# -- file store: the directory -----------------------------------------------------------------


async def test_file_store_writes_yaml_and_survives_restart(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "store"  # created if missing
    store = file_store(directory)
    await store.start()
    await store.apply([svc("orders"), svc("billing")])  # 1
    await store.apply([svc("orders", "10.0.0.2:1")])  # 2
    await store.apply([svc("gone")])  # 3
    await store.delete("gone")  # 4
    assert sorted(os.listdir(directory)) == [
        ".mesh-history",
        ".mesh-store.json",
        "billing.yaml",
        "orders.yaml",
    ]
    # the history of every service ever written, a deleted one's too
    history = sorted(os.listdir(directory / ".mesh-history"))
    assert history == ["billing.json", "gone.json", "orders.json"]
    assert load_documents((directory / "orders.yaml").read_text(), "orders.yaml") == [
        svc("orders", "10.0.0.2:1")
    ]
    before = await store.list()
    await store.close()

    store = file_store(directory)
    await store.start()
    assert store.revision == 4
    assert await store.list() == before
    # a watcher from before the restart is brought up to date
    events = await take(store.watch(1), 2)
    assert summary(events) == [(2, "orders", "10.0.0.2:1"), (4, "gone", None)]
    revision, applied = await store.apply([svc("billing", "10.0.0.9:1")])
    assert revision == 5
    assert applied[0].changed
    await store.close()


async def test_offline_edit_gets_a_new_revision_on_start(tmp_path: Path) -> None:
    store = file_store(tmp_path)
    await store.start()
    await store.apply([svc("orders"), svc("billing")])
    await store.close()
    (tmp_path / "orders.yaml").write_text(doc("orders", "10.0.0.7:1"))
    (tmp_path / "billing.yaml").unlink()

    store = file_store(tmp_path)
    await store.start()
    assert store.revision == 2
    stored = await store.get("orders")
    assert (stored.revision, stored.service.endpoints[0].address) == (2, "10.0.0.7:1")
    with pytest.raises(NotFoundError):
        await store.get("billing")
    await store.close()


async def test_hand_edit_is_picked_up_by_watch(fstore: FileStore) -> None:
    await fstore.apply([svc("orders")])
    watch = fstore.watch(fstore.revision)
    path = fstore.directory / "billing.yaml"
    path.write_text(doc("billing"))
    assert summary(await take(watch, 1)) == [(2, "billing", "10.0.0.1:50051")]
    (fstore.directory / "orders.yaml").write_text(doc("orders", "10.0.0.2:50051"))
    assert summary(await take(watch, 1)) == [(3, "orders", "10.0.0.2:50051")]
    path.unlink()
    assert summary(await take(watch, 1)) == [(4, "billing", None)]
    assert [s.service.name for s in (await fstore.list())[1]] == ["orders"]
    # a change that leaves the services as they were is no change
    (fstore.directory / "orders.yaml").write_text("# moved\n" + doc("orders", "10.0.0.2:50051"))
    await asyncio.sleep(0.3)
    assert fstore.revision == 4
    # hand edits are in the history, by "file"
    history = await fstore.history("billing")
    assert [(e.revision, e.action, e.who, e.created) for e in history] == [
        (2, "apply", "file", True),
        (4, "delete", "file", False),
    ]
    assert [(e.who, e.message) for e in await fstore.history("orders")][-1] == (
        "file",
        "edited on disk",
    )


async def test_a_corrupt_history_file_is_set_aside(tmp_path: Path) -> None:
    store = file_store(tmp_path)
    await store.start()
    await store.apply([svc("orders")])
    await store.close()
    (tmp_path / ".mesh-history" / "orders.json").write_text("{not json")
    store = file_store(tmp_path)
    await store.start()
    try:
        assert await store.history("orders") == []
        assert [p.name.split(".corrupt-")[0] for p in (tmp_path / ".mesh-history").iterdir()] == [
            "orders.json"
        ]
        await store.apply([svc("orders", "10.0.0.2:1")])
        assert [e.revision for e in await store.history("orders")] == [2]
    finally:
        await store.close()


async def test_broken_hand_edit_keeps_the_service_until_fixed(tmp_path: Path) -> None:
    store = file_store(tmp_path)
    await store.start()
    await store.apply([svc("orders")])
    path = tmp_path / "orders.yaml"
    path.write_text(doc("orders") + "policy: {retry: {attempts: 9}}\n")
    await eventually(lambda: bool(store.problems()), 5.0, "a problem to be reported")
    [problem] = store.problems()
    assert problem.source == str(path)
    assert "policy.retry.attempts" in problem.message
    assert store.revision == 1
    assert (await store.get("orders")).service == svc("orders")
    with pytest.raises(ConflictError, match=r"orders\.yaml"):
        await store.apply([svc("orders", "10.0.0.3:1")])
    with pytest.raises(ConflictError, match=r"orders\.yaml"):
        await store.delete("orders")

    # unparsable is no better, and the kept version survives a restart
    path.write_text("name: [orders\n")
    await eventually(
        lambda: "line" in store.problems()[0].message, 5.0, "the problem to name the line"
    )
    await store.close()
    store = file_store(tmp_path)
    await store.start()
    assert store.revision == 1
    assert (await store.get("orders")).service == svc("orders")
    assert len(store.problems()) == 1

    watch = store.watch(store.revision)
    path.write_text(doc("orders", "10.0.0.4:1"))
    assert summary(await take(watch, 1)) == [(2, "orders", "10.0.0.4:1")]
    assert store.problems() == []
    await store.close()


async def test_file_broken_while_stopped_keeps_its_services(tmp_path: Path) -> None:
    store = file_store(tmp_path)
    await store.start()
    await store.apply([svc("orders"), svc("billing")])
    await store.close()
    (tmp_path / "orders.yaml").write_text("name: orders\nendpoints: 12\n")

    store = file_store(tmp_path)
    await store.start()
    assert store.revision == 1
    assert (await store.get("orders")).service == svc("orders")
    [problem] = store.problems()
    assert problem.source == str(tmp_path / "orders.yaml")
    assert "endpoints" in problem.message
    await store.close()


async def test_hand_written_json_file_stays_json(fstore: FileStore) -> None:
    path = fstore.directory / "orders.json"
    path.write_text(json.dumps({"name": "orders", "endpoints": [{"address": "10.0.0.1:50051"}]}))
    await eventually(lambda: fstore.revision == 1, 5.0, "revision 1")
    await fstore.apply([svc("orders", "10.0.0.2:1")])
    assert json.loads(path.read_text())["endpoints"] == [{"address": "10.0.0.2:1"}]
    assert not (fstore.directory / "orders.yaml").exists()


async def test_new_broken_file_is_reported_and_removing_it_clears(fstore: FileStore) -> None:
    path = fstore.directory / "bad.yaml"
    path.write_text("- not a service\n")
    await eventually(lambda: bool(fstore.problems()), 5.0, "a problem to be reported")
    assert fstore.problems()[0].source == str(path)
    assert fstore.revision == 0
    path.unlink()
    await eventually(lambda: not fstore.problems(), 5.0, "the problems to clear")


async def test_hand_added_multi_document_file(fstore: FileStore) -> None:
    path = fstore.directory / "team.yaml"
    path.write_text(doc("orders") + "---\n" + doc("billing") + "---\n" + doc("shipping"))
    await eventually(lambda: fstore.revision == 1, 5.0, "revision 1")
    assert [s.service.name for s in (await fstore.list())[1]] == ["billing", "orders", "shipping"]

    revision, applied = await fstore.apply([svc("billing", "10.0.0.2:1")])
    assert (revision, applied[0].changed) == (2, True)
    assert not (fstore.directory / "billing.yaml").exists()
    assert load_documents(path.read_text(), "team.yaml") == [
        svc("orders"),
        svc("billing", "10.0.0.2:1"),
        svc("shipping"),
    ]
    assert await fstore.delete("orders") == 3
    assert load_documents(path.read_text(), "team.yaml") == [
        svc("billing", "10.0.0.2:1"),
        svc("shipping"),
    ]
    await fstore.delete("billing")
    await fstore.delete("shipping")
    assert not path.exists()
    assert (await fstore.list())[1] == []


async def test_service_defined_in_two_files(fstore: FileStore) -> None:
    first = fstore.directory / "a.yaml"
    first.write_text(doc("orders", "10.0.0.1:1"))
    await eventually(lambda: fstore.revision == 1, 5.0, "revision 1")
    second = fstore.directory / "b.yaml"
    second.write_text(doc("orders", "10.0.0.2:1") + "---\n" + doc("billing"))
    await eventually(lambda: fstore.revision == 2, 5.0, "revision 2")
    [problem] = fstore.problems()
    assert problem.source == str(second)
    assert "orders" in problem.message and "a.yaml" in problem.message
    assert (await fstore.get("orders")).service == svc("orders", "10.0.0.1:1")
    assert (await fstore.get("billing")).service == svc("billing")
    # apply writes to the owning file only
    await fstore.apply([svc("orders", "10.0.0.3:1")])
    assert load_documents(first.read_text(), "a.yaml") == [svc("orders", "10.0.0.3:1")]
    # when the owner lets go, the other definition takes over
    first.unlink()
    await eventually(lambda: not fstore.problems(), 5.0, "the problems to clear")
    assert (await fstore.get("orders")).service == svc("orders", "10.0.0.2:1")


async def test_delete_removes_every_definition(fstore: FileStore) -> None:
    (fstore.directory / "a.yaml").write_text(doc("orders"))
    await eventually(lambda: fstore.revision == 1, 5.0, "revision 1")
    (fstore.directory / "b.yaml").write_text(doc("orders", "10.0.0.2:1") + "---\n" + doc("x"))
    await eventually(lambda: fstore.revision == 2, 5.0, "revision 2")
    await fstore.delete("orders")
    with pytest.raises(NotFoundError):
        await fstore.get("orders")
    assert not (fstore.directory / "a.yaml").exists()
    assert load_documents((fstore.directory / "b.yaml").read_text(), "b") == [svc("x")]
    assert fstore.problems() == []


async def test_corrupt_index_is_set_aside_and_rebuilt(tmp_path: Path) -> None:
    store = file_store(tmp_path)
    await store.start()
    await store.apply([svc("orders"), svc("billing")])
    await store.apply([svc("orders", "10.0.0.2:1")])
    await store.close()
    index = tmp_path / ".mesh-store.json"
    index.write_text('{"format": 1, "revision": ')

    store = file_store(tmp_path)
    await store.start()
    assert [s.service.name for s in (await store.list())[1]] == ["billing", "orders"]
    assert (await store.get("orders")).service == svc("orders", "10.0.0.2:1")
    assert store.revision >= 1
    aside = [p.name for p in tmp_path.iterdir() if p.name.startswith(".mesh-store.json.corrupt-")]
    assert len(aside) == 1
    assert json.loads(index.read_text())["revision"] == store.revision
    assert store.problems() == []
    await store.close()

    index.unlink()  # missing: rebuilt as well
    store = file_store(tmp_path)
    await store.start()
    assert [s.service.name for s in (await store.list())[1]] == ["billing", "orders"]
    assert index.exists()
    await store.close()


async def test_writes_leave_no_temporary_files(tmp_path: Path) -> None:
    (tmp_path / ".mesh-tmp-orders.yaml-abc123").write_text("left by a crash")
    store = file_store(tmp_path)
    await store.start()
    for n in range(5):
        await store.apply([svc("orders", f"10.0.0.{n}:1"), svc(f"s{n}")])
    await store.delete("s0")
    await store.close()
    assert sorted(os.listdir(tmp_path)) == [
        ".mesh-history",
        ".mesh-store.json",
        "orders.yaml",
        "s1.yaml",
        "s2.yaml",
        "s3.yaml",
        "s4.yaml",
    ]


async def test_apply_refuses_what_the_store_could_not_read_back(fstore: FileStore) -> None:
    bad = svc("orders")
    bad.policy.retry.attempts = 9
    with pytest.raises(ConfigError, match="attempts"):
        await fstore.apply([bad])
    assert fstore.revision == 0
    assert os.listdir(fstore.directory) == [".mesh-store.json"]


async def test_file_store_must_be_started(tmp_path: Path) -> None:
    store = file_store(tmp_path)
    with pytest.raises(StoreUnavailableError, match="not started"):
        await store.list()


# -- open_store --------------------------------------------------------------------------------


def test_open_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store("memory:"), MemoryStore)
    relative = open_store("file:some/dir")
    assert isinstance(relative, FileStore)
    assert relative.directory == Path("some/dir")
    absolute = open_store(f"file://{tmp_path}/x%20y")
    assert isinstance(absolute, FileStore)
    assert absolute.directory == tmp_path / "x y"
    for url in ("/var/mesh", "redis://x", "file:", "file://host/x"):
        with pytest.raises(ConfigError, match="file:") as info:
            open_store(url)
        assert url in str(info.value)


async def test_unreadable_directory_keeps_the_last_state(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    store = file_store(directory)
    await store.start()
    await store.apply([svc("orders")])
    moved = tmp_path / "moved"
    directory.rename(moved)
    await eventually(lambda: bool(store.problems()), 5.0, "a problem to be reported")
    assert store.problems()[0].source == str(directory)
    assert (await store.get("orders")).service == svc("orders")
    with pytest.raises(StoreUnavailableError):
        await store.apply([svc("billing")])
    moved.rename(directory)
    await eventually(lambda: not store.problems(), 5.0, "the problems to clear")
    assert store.revision == 1
    await store.close()
