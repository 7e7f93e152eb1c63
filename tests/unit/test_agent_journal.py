"""The agent's state journal: only what changed is appended, a torn tail (a write cut short by
a kill) is ignored and cut off, damage is set aside and reported, compaction keeps the state,
and an earlier agent's single state file is read once and replaced."""

from __future__ import annotations

import base64
import itertools
import json
import time
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from control.resources import build_cluster
from mesh.v1 import config_pb2
from mesh_agent.daemon import journal
from mesh_agent.daemon.cache import LEGACY_STATE_FILE, ConfigCache
from mesh_agent.daemon.journal import JOURNAL_FILE, JournalError, parse
from mesh_xds.types import CLUSTER, SERVICE_POLICY

pytestmark = pytest.mark.timeout(20)


def cluster(name: str, timeout_s: int = 1) -> any_pb2.Any:
    message = build_cluster(config_pb2.Service(name=name))
    message.connect_timeout.seconds = timeout_s
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def policy(name: str) -> any_pb2.Any:
    message = config_pb2.ServicePolicy(name=name)
    return any_pb2.Any(type_url=SERVICE_POLICY, value=message.SerializeToString())


def filled(state: Path, count: int = 20) -> ConfigCache:
    cache = ConfigCache(state, "node-1")
    assert cache.accept_delta(CLUSTER, "v1", [cluster(f"s{i}") for i in range(count)], []) is None
    assert cache.accept(SERVICE_POLICY, "p1", [policy("s0")], None) is None
    return cache


def restored(state: Path) -> ConfigCache:
    cache = ConfigCache(state, "node-1")
    assert cache.load()
    return cache


def test_a_change_appends_only_itself(tmp_path: Path) -> None:
    cache = filled(tmp_path)
    size = (tmp_path / JOURNAL_FILE).stat().st_size
    assert cache.accept_delta(CLUSTER, "v2", [cluster("s3", 9)], ["s4"]) is None
    grown = (tmp_path / JOURNAL_FILE).stat().st_size - size
    assert 0 < grown < len(cluster("s3", 9).value) + 200, "more than the change was written"
    assert cache.last_change == {CLUSTER: frozenset({"s3", "s4"})}

    back = restored(tmp_path)
    assert back.names(CLUSTER) == {f"s{i}" for i in range(20)} - {"s4"}
    assert back.resources(CLUSTER)["s3"].value == cluster("s3", 9).value
    assert (back.version(CLUSTER), back.version(SERVICE_POLICY)) == ("v2", "p1")
    assert back.last_change[CLUSTER] == frozenset(back.names(CLUSTER))


def test_a_resent_resource_is_not_journaled_again(tmp_path: Path) -> None:
    cache = filled(tmp_path)
    size = (tmp_path / JOURNAL_FILE).stat().st_size
    assert cache.accept(SERVICE_POLICY, "p2", [policy("s0")], None) is None
    assert cache.last_change == {SERVICE_POLICY: frozenset()}
    # The version still moves (a reconnect names it), in a record without resources.
    assert (tmp_path / JOURNAL_FILE).stat().st_size - size < 100
    assert restored(tmp_path).version(SERVICE_POLICY) == "p2"


def test_every_cut_of_the_last_record_reads_as_the_state_before_it(tmp_path: Path) -> None:
    cache = filled(tmp_path)
    path = tmp_path / JOURNAL_FILE
    before = path.read_bytes()
    assert cache.accept_delta(CLUSTER, "v2", [cluster("s1", 7)], []) is None
    after = path.read_bytes()
    for cut in range(len(before), len(after)):
        state = parse(after[:cut], "node-1")
        assert state.types[CLUSTER].version == "v1"
        assert state.types[CLUSTER].resources["s1"].value == cluster("s1").value
        assert state.torn_bytes == cut - len(before)
    assert parse(after, "node-1").types[CLUSTER].version == "v2"


def test_a_torn_tail_is_cut_off_and_appends_follow_the_last_whole_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = filled(tmp_path)
    path = tmp_path / JOURNAL_FILE
    good = path.read_bytes()
    assert cache.accept_delta(CLUSTER, "v2", [cluster("s1", 7)], []) is None
    path.write_bytes(path.read_bytes()[:-5])  # the kill came mid-write

    back = restored(tmp_path)
    assert back.version(CLUSTER) == "v1" and not back.problems
    assert "torn journal tail ignored" in capsys.readouterr().out
    assert path.read_bytes() == good
    assert back.accept_delta(CLUSTER, "v3", [cluster("s2", 5)], []) is None
    again = restored(tmp_path)
    assert again.version(CLUSTER) == "v3"
    assert again.resources(CLUSTER)["s2"].value == cluster("s2", 5).value


def test_zeros_after_the_last_record_are_a_torn_tail(tmp_path: Path) -> None:
    filled(tmp_path)
    path = tmp_path / JOURNAL_FILE
    path.write_bytes(path.read_bytes() + bytes(4096))
    assert restored(tmp_path).version(CLUSTER) == "v1"


def test_damage_before_the_tail_sets_the_journal_aside(tmp_path: Path) -> None:
    cache = filled(tmp_path)
    assert cache.accept_delta(CLUSTER, "v2", [cluster("s1", 7)], []) is None
    path = tmp_path / JOURNAL_FILE
    data = bytearray(path.read_bytes())
    data[60] ^= 0xFF  # inside the first change record, with another after it
    path.write_bytes(bytes(data))

    cache = ConfigCache(tmp_path, "node-1")
    assert not cache.load()
    assert not cache.types
    assert list(tmp_path.glob(f"{JOURNAL_FILE}.rejected-*"))
    assert cache.problems and "damaged record" in cache.problems[0]
    # The next accepted change starts a new journal.
    assert cache.accept(SERVICE_POLICY, "p1", [policy("s0")], None) is None
    assert restored(tmp_path).names(SERVICE_POLICY) == {"s0"}


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "no header"),
        (b"not a journal at all, but long enough to hold a header", "no header"),
        (journal.header_record("node-2"), "not of this node"),
    ],
)
def test_what_is_not_this_nodes_journal_is_refused(data: bytes, reason: str) -> None:
    with pytest.raises(JournalError, match=reason):
        parse(data, "node-1")


def test_a_resource_that_does_not_decode_is_not_trusted(tmp_path: Path) -> None:
    bad = any_pb2.Any(type_url=CLUSTER, value=b"\xff\xff")
    data = journal.header_record("node-1") + journal.change_record(
        CLUSTER, "v1", {"a": bad}, (), time.time()
    )
    (tmp_path / JOURNAL_FILE).write_bytes(data)
    cache = ConfigCache(tmp_path, "node-1")
    assert not cache.load()
    assert "cannot decode" in cache.problems[0]


def test_compaction_rewrites_the_state_and_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal, "COMPACT_MIN", 4096)
    cache = filled(tmp_path)
    path = tmp_path / JOURNAL_FILE
    sizes = []
    for i in range(200):
        assert cache.accept_delta(CLUSTER, f"w{i}", [cluster("s1", i + 2)], []) is None
        sizes.append(path.stat().st_size)
    assert max(sizes) < 4 * 4096, "the journal was not compacted"
    assert any(b < a for a, b in itertools.pairwise(sizes)), "never rewritten"
    back = restored(tmp_path)
    assert back.version(CLUSTER) == "w199"
    assert back.resources(CLUSTER)["s1"].value == cluster("s1", 201).value
    assert back.names(CLUSTER) == cache.names(CLUSTER)
    assert not list(tmp_path.glob(".*tmp"))


def test_a_compaction_cut_short_leaves_the_journal_whole_and_its_file_is_removed(
    tmp_path: Path,
) -> None:
    filled(tmp_path)
    # Killed after writing the new journal's temporary file, before the rename.
    leftover = tmp_path / f".{JOURNAL_FILE}.12345.tmp"
    leftover.write_bytes(b"half a compaction")
    back = restored(tmp_path)
    assert back.version(CLUSTER) == "v1" and not back.problems
    assert not leftover.exists()


def test_the_single_state_file_of_earlier_agents_is_read_once_and_replaced(
    tmp_path: Path,
) -> None:
    saved_at = time.time() - 100
    legacy = {
        "format": 1,
        "node_id": "node-1",
        "saved_at": saved_at,
        "types": {
            CLUSTER: {
                "version": "v7",
                "resources": {"s0": base64.b64encode(cluster("s0").value).decode()},
            }
        },
    }
    (tmp_path / LEGACY_STATE_FILE).write_text(json.dumps(legacy))
    cache = restored(tmp_path)
    assert cache.version(CLUSTER) == "v7" and cache.names(CLUSTER) == {"s0"}
    assert cache.updated_at == pytest.approx(saved_at)
    assert not (tmp_path / LEGACY_STATE_FILE).exists()
    again = restored(tmp_path)
    assert again.version(CLUSTER) == "v7"
    assert again.updated_at == pytest.approx(saved_at)


def test_a_corrupt_single_state_file_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / LEGACY_STATE_FILE).write_text('{"format": 1, "node_id": "node-1", "types": {"x": ')
    cache = ConfigCache(tmp_path, "node-1")
    assert not cache.load()
    assert list(tmp_path.glob(f"{LEGACY_STATE_FILE}.rejected-*"))
    assert not (tmp_path / JOURNAL_FILE).exists()
