"""Hostile service config: arbitrary text and bytes, alias bombs, deep nesting and mutations of
valid documents, through :func:`control.config.load_documents` / ``load_path`` and the admin
API's ApplyServices over a memory store.

Properties: a call returns valid services or raises ConfigError whose every problem names the
file (and the line, or the document and field path); no other exception escapes; every example
ends within its deadline; a rejected apply leaves the store's revision and contents as they
were, and an accepted one stores exactly what was validated."""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import json
import re
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from control.admin import AdminServicer
from control.config import (
    Dumper,
    load_documents,
    load_path,
    service_to_dict,
    validate_service,
)
from control.nodes import ConnectedNodes
from control.registry import Registrations
from control.resources import build_resources
from control.store import MemoryStore
from mesh.v1 import admin_pb2, config_pb2
from mesh_core.durations import format_duration
from mesh_core.errors import ConfigError
from mesh_core.policy import (
    DEFAULT_MIN_RING_SIZE,
    GRPC_STATUS_NAMES,
    LB_POLICIES,
    RETRYABLE_STATUS_NAMES,
    RING_HASH,
    RING_SIZE_CAP,
)
from mesh_xds.cache import SnapshotCache

pytestmark = pytest.mark.timeout(60)

SOURCE = "svc.yaml"
DEADLINE = timedelta(milliseconds=500)
HOSTILE = settings(
    database=None,
    deadline=DEADLINE,
    max_examples=100,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
DAY_NANOS = 86_400 * 10**9

# ---------------------------------------------------------------------------- the oracle

_WHERE = re.compile(r"(line \d+: |document \d+[ :]|document: |.*(position|byte) \d+)", re.S)


def load_or_error(text: str, source: str = SOURCE) -> list[Any] | ConfigError:
    """The services of ``text``, or the ConfigError; any other exception fails the test. Each
    problem must start with the source and then say where: a line, a document, a position."""
    try:
        services = load_documents(text, source)
    except ConfigError as error:
        check_problems(error, source)
        return error
    for service in services:
        assert isinstance(service, config_pb2.Service)
        assert validate_service(service) == [], "load_documents returned an invalid service"
    return services


def check_problems(error: ConfigError, source: str) -> None:
    assert error.problems, "a ConfigError must list its problems"
    assert str(error)
    for problem in error.problems:
        assert problem.startswith(f"{source}: "), problem
        if problem == f"{source}: no service documents":
            continue  # the whole file is the place
        assert _WHERE.match(problem, len(source) + 2), f"no place named in {problem!r}"


# ---------------------------------------------------------------------------- valid documents

_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10).map(
    lambda label: label.strip("-") or "a"
)
names = st.builds(lambda labels: ".".join(labels), st.lists(_label, min_size=1, max_size=3))
# YAML folds line breaks (NEL, LS, PS) and control characters inside scalars, so text meant to
# load back unchanged leaves them out.
plain_text = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cc", "Cs", "Zl", "Zp"]), max_size=12
)


@st.composite
def durations(draw: st.DrawFn, low: int = 1, high: int = DAY_NANOS) -> tuple[int, Any]:
    """(nanoseconds, how a document writes it): ``"1m30s"``, ``"250ms"``, or seconds."""
    value = draw(st.integers(low, high))
    forms: list[Any] = [
        format_duration(Duration(seconds=value // 10**9, nanos=value % 10**9)),
        f"{value}ns",
    ]
    if value % 10**9 == 0:
        forms += [value // 10**9, f"{value // 10**9}s"]
    if value % 10**6 == 0:
        forms.append(f"{value // 10**6}ms")
    return value, draw(st.sampled_from(forms))


def _socket_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


_ips = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address) | st.integers(0, 2**128 - 1).map(
    ipaddress.IPv6Address
)
addresses = st.builds(_socket_address, _ips, st.integers(1, 65535))
# YAML 1.1 reads JSON's exponent form ("1e-05") as a string, so valid documents written as JSON
# keep their rates to numbers Python writes without an exponent.
rates = st.just(0.0) | st.floats(1e-4, 1)
uint32 = st.integers(0, 2**32 - 1)
percents = st.integers(0, 100)


@st.composite
def endpoints(draw: st.DrawFn) -> list[dict[str, Any]]:
    out = []
    for address in draw(st.lists(addresses, max_size=4, unique_by=str.lower)):
        endpoint: dict[str, Any] = {"address": address}
        if draw(st.booleans()):
            endpoint["zone"] = draw(plain_text)
        if draw(st.booleans()):
            endpoint["weight"] = draw(st.integers(0, 1_000_000))
        if draw(st.booleans()):
            endpoint["metadata"] = draw(st.dictionaries(plain_text, plain_text, max_size=3))
        if draw(st.booleans()):
            endpoint["draining"] = draw(st.booleans())
        out.append(endpoint)
    return out


@st.composite
def hash_policies(draw: st.DrawFn) -> dict[str, Any]:
    """What ring_hash hashes on: a header or the channel, with ring sizes or without."""
    hashed: dict[str, Any] = draw(
        st.sampled_from([{"header": "x-user-id"}, {"header": "tenant.id_2"}, {"channel": True}])
    )
    low = draw(st.integers(1, RING_SIZE_CAP))
    if draw(st.booleans()):
        hashed["min_ring_size"] = low
    else:
        low = DEFAULT_MIN_RING_SIZE
    if draw(st.booleans()):
        hashed["max_ring_size"] = draw(st.integers(low, RING_SIZE_CAP))
    return hashed


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    if draw(st.booleans()):
        policy["timeout"] = draw(durations())[1]
    if draw(st.booleans()):
        policy["lb"] = draw(st.sampled_from(LB_POLICIES))
    if policy.get("lb") == RING_HASH and draw(st.booleans()):
        policy["hash"] = draw(hash_policies())
    if draw(st.booleans()):
        retry: dict[str, Any] = {"attempts": draw(st.integers(1, 5))}
        retry["retry_on"] = draw(st.lists(st.sampled_from(RETRYABLE_STATUS_NAMES), unique=True))
        if draw(st.booleans()):
            base, base_text = draw(durations())
            retry["backoff"] = {"base": base_text}
            if draw(st.booleans()):
                retry["backoff"]["max"] = draw(durations(low=base))[1]
        policy["retry"] = retry
    if draw(st.booleans()):
        breaker: dict[str, Any] = {
            "max_requests": draw(uint32),
            "failure_rate": draw(rates),
            "min_requests": draw(uint32),
            "consecutive_failures": draw(uint32),
            "half_open_probes": draw(st.integers(0, 1000)),
            "failure_codes": draw(st.lists(st.sampled_from(GRPC_STATUS_NAMES), unique=True)),
        }
        if draw(st.booleans()):
            breaker["slow_call"] = {"threshold": draw(durations())[1], "rate": draw(rates)}
        if breaker["failure_rate"] or "slow_call" in breaker or draw(st.booleans()):
            breaker["window"] = draw(durations())[1]
        if draw(st.booleans()):
            open_for, breaker["open_for"] = draw(durations())
            if draw(st.booleans()):
                breaker["max_open_for"] = draw(durations(low=open_for))[1]
        policy["circuit_breaker"] = breaker
    if draw(st.booleans()):
        outlier: dict[str, Any] = {"max_ejection_percent": draw(percents)}
        if draw(st.booleans()):
            outlier["interval"] = draw(durations())[1]
        if draw(st.booleans()):
            base, outlier["base_ejection_time"] = draw(durations())
            outlier["max_ejection_time"] = draw(durations(low=base))[1]
        if draw(st.booleans()):
            outlier["failure_percentage"] = {
                "threshold": draw(percents),
                "minimum_hosts": draw(uint32),
                "request_volume": draw(uint32),
                "enforcement_percentage": draw(percents),
            }
        if draw(st.booleans()):
            outlier["success_rate"] = {
                "stdev_factor": draw(uint32),
                "enforcement_percentage": draw(percents),
            }
        policy["outlier_detection"] = outlier
    if draw(st.booleans()):
        interval, interval_text = draw(durations())
        policy["health_check"] = {
            "interval": interval_text,
            "timeout": draw(durations(high=interval))[1],
            "unhealthy_threshold": draw(uint32),
            "healthy_threshold": draw(uint32),
        }
    return policy


@st.composite
def valid_services(draw: st.DrawFn, name: str | None = None) -> dict[str, Any]:
    service: dict[str, Any] = {"name": name or draw(names)}
    if draw(st.booleans()):
        service["endpoints"] = draw(endpoints())
    if draw(st.booleans()):
        service["policy"] = draw(policies())
    return service


@st.composite
def valid_documents(draw: st.DrawFn) -> list[dict[str, Any]]:
    chosen = draw(st.lists(names, min_size=1, max_size=3, unique=True))
    return [draw(valid_services(name)) for name in chosen]


def as_yaml(documents: list[Any]) -> str:
    """YAML as the project writes it (``meshctl get -o yaml``, the file store)."""
    return yaml.dump_all(documents, Dumper=Dumper, sort_keys=False, allow_unicode=True)


def as_json(documents: list[Any]) -> str:
    return "\n---\n".join(json.dumps(document) for document in documents)


@settings(HOSTILE, max_examples=50)
@given(valid_documents(), st.sampled_from([as_yaml, as_json]))
def test_valid_documents_load_in_yaml_and_json(
    documents: list[dict[str, Any]], dump: Callable[[list[Any]], str]
) -> None:
    loaded = load_or_error(dump(documents))
    assert not isinstance(loaded, ConfigError), f"valid documents rejected: {loaded.problems}"
    assert [s.name for s in loaded] == [d["name"] for d in documents]
    again = load_or_error(as_yaml([service_to_dict(s) for s in loaded]))
    assert again == loaded


# ---------------------------------------------------------------------------- mutations

hostile_strings = st.sampled_from(
    [
        "",
        " ",
        "-1s",
        "-0s",
        "0s",
        "0",
        "1ns",
        "25h",
        "1e400s",
        "99999999999999999999h",
        "1.5.5s",
        "2 s",
        "inf",
        "NaN",
        "10.0.0.1:0",
        "10.0.0.1:65536",
        "10.0.0.1:-1",
        "10.0.0.1:" + "9" * 40,
        "host.example:80",
        "::1:80",
        "[::1]",
        "[zz]:1",
        "[::1]:0",
        "1.2.3.4",
        "١٢٣.1.1.1:80",
        "10.0.0.1:٨٠",
        "unavailable",
        "deadline-exceeded",
        "OK",
        "Orders",
        "-orders",
        "a" * 300,
        "\x00",
        "\u202e",
        "😀",
        "{}",
        "[]",
        "*",
    ]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([-1, 2**31, 2**32, 2**63, 2**64, -(2**63) - 1, 10**300]),
    st.floats(),
    plain_text,
    hostile_strings,
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(plain_text, children, max_size=3)
    ),
    max_leaves=8,
)

Path_ = tuple[str | int, ...]


def _paths(node: Any, path: Path_ = ()) -> Iterator[Path_]:
    yield path
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, (*path, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from _paths(child, (*path, index))


def _dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _at(root: Any, path: Path_) -> Any:
    for part in path:
        root = root[part]
    return root


@st.composite
def mutated(draw: st.DrawFn, document: dict[str, Any]) -> tuple[Any, list[Path_]]:
    """``document`` with one to three mutations; returns it and the paths mutated."""
    doc: Any = copy.deepcopy(document)
    touched: list[Path_] = []
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(doc))))
        node = _at(doc, path)
        op = draw(
            st.sampled_from(
                ["replace", "delete", "rename", "unknown", "wrap", "to_map", "duplicate", "swap"]
            )
        )
        if not path:  # the document itself
            if op in ("replace", "wrap"):
                doc = draw(values) if op == "replace" else [doc]
                touched.append(path)
            continue
        parent, key = _at(doc, path[:-1]), path[-1]
        if op == "replace":
            parent[key] = draw(values)
        elif op == "delete":
            del parent[key]
        elif op == "rename" and isinstance(key, str):
            new = draw(
                st.sampled_from([key.upper(), key + "s", key[:-1], key.replace("_", "-")])
                | plain_text
            )
            parent[new] = parent.pop(key)
        elif op == "unknown" and isinstance(node, dict):
            node[draw(plain_text)] = draw(values)
            path = (*path, "?")
        elif op == "wrap":
            parent[key] = [node]
        elif op == "to_map" and isinstance(node, list):
            parent[key] = {str(i): item for i, item in enumerate(node)}
        elif op == "duplicate" and isinstance(parent, list):
            parent.append(copy.deepcopy(node))
            path = (*path[:-1], len(parent) - 1)
        elif op == "swap":
            if isinstance(node, bool) or node is None:
                parent[key] = str(node)
            elif isinstance(node, int | float):
                parent[key] = draw(st.sampled_from([str(node), -node, node * 10**12, [node]]))
            elif isinstance(node, str):
                parent[key] = draw(st.sampled_from([len(node), [node], {node: node}, None]))
            else:
                parent[key] = draw(scalars)
        else:
            continue
        touched.append(path)
    return doc, touched


@st.composite
def mutated_documents(draw: st.DrawFn) -> tuple[list[Any], list[Path_]]:
    documents = draw(valid_documents())
    index = draw(st.integers(0, len(documents) - 1))
    documents[index], touched = draw(mutated(documents[index]))
    return documents, touched


@settings(HOSTILE, max_examples=150)
@given(mutated_documents(), st.booleans())
def test_mutated_documents_are_valid_or_rejected_naming_the_place(
    case: tuple[list[Any], list[Path_]], json_text: bool
) -> None:
    documents, touched = case
    loaded = load_or_error((as_json if json_text else as_yaml)(documents))
    if not isinstance(loaded, ConfigError):
        return
    text = str(loaded)
    # Cross-field rules report a sibling (backoff.max for a changed base) and a rename is an
    # unknown field of the parent: so the parent of some mutated path must be named.
    parents = [_dotted(path[:-1]) for path in touched]
    assert any(parent in text for parent in parents) or not touched, (parents, text)


# ---------------------------------------------------------------------------- arbitrary text

yaml_tokens = st.sampled_from(
    [
        "name: ",
        "orders",
        "endpoints:",
        "- ",
        "  ",
        "    ",
        "\n",
        "\t",
        "address: ",
        "10.0.0.5:50051",
        "policy: ",
        "timeout: ",
        "retry: ",
        "attempts: ",
        "2s",
        "{",
        "}",
        "[",
        "]",
        ", ",
        ": ",
        "? ",
        "---\n",
        "...\n",
        "%YAML 1.1\n",
        "%TAG ! tag:x,2000:\n",
        "&a ",
        "*a",
        "&b ",
        "*b",
        "<<: ",
        "!!int ",
        "!!float ",
        "!!bool ",
        "!!timestamp ",
        "!!binary ",
        "!!str ",
        "!!set ",
        "!!omap ",
        "!!python/object:os.system ",
        "!local ",
        '"\\ud800"',
        '"\\ud83d\\ude00"',
        '"\\x00"',
        "'",
        '"',
        "|\n",
        ">-\n",
        "#",
        "9" * 5000,
        "1" + "0" * 400,
        "0x" + "f" * 100,
        "1e999",
        "-1e-999",
        ".nan",
        ".inf",
        "-.inf",
        "2001-02-30",
        "2001-12-14t21:59:43.10-99:00",
        "1:2:3",
        "0o777",
        "null",
        "~",
        "yes",
        "\x00",
        "\x85",
        "\ufeff",
        "\u2028",
        "😀",
        "\u202e",
    ]
)
yaml_soup = st.lists(yaml_tokens | st.text(max_size=5), max_size=60).map("".join)


@settings(HOSTILE, max_examples=200)
@given(st.text() | yaml_soup)
@example("!!int")  # IndexError in PyYAML's int constructor
@example("name: !!timestamp x")  # AttributeError
@example("name: !!bool maybe")  # KeyError
@example("name: 2001-02-30")  # ValueError: no such date
@example("name: x\nendpoints: [{address: '1.2.3.4:1', weight: " + "9" * 5000 + "}]")
@example("name: x\nendpoints: [{address: '1.2.3.4:" + "9" * 5000 + "'}]")
@example('name: "\\ud800"')  # UnicodeEncodeError setting a proto string
@example('name: x\n"\\udc00": 1')  # SystemError looking the field up
@example("name: " + "[" * 1000 + "]" * 1000)  # RecursionError in the composer
def test_arbitrary_text_is_loaded_or_rejected(text: str) -> None:
    load_or_error(text)


@settings(HOSTILE, max_examples=80)
@given(st.recursive(scalars, lambda c: st.lists(c) | st.dictionaries(plain_text, c), max_leaves=20))
def test_arbitrary_structures_as_json_and_yaml(data: Any) -> None:
    load_or_error(json.dumps(data))
    load_or_error(as_yaml([data, data]))


@pytest.fixture(scope="module")
def file_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@settings(HOSTILE, max_examples=150)
@given(
    st.binary()
    | yaml_soup.map(lambda t: t.encode("utf-8", "surrogatepass"))
    | st.sampled_from([b"\xff\xfe", b"name: \xc3\x28", b"\xef\xbb\xbfname: a", b"\x00" * 10])
)
def test_arbitrary_bytes_in_a_file(file_dir: Path, content: bytes) -> None:
    path = file_dir / "svc.yaml"
    path.write_bytes(content)
    try:
        services = load_path(path)
    except ConfigError as error:
        check_problems(error, str(path))
        return
    assert all(validate_service(s) == [] for s in services)


@settings(HOSTILE, max_examples=40)
@given(
    st.integers(1, 5000),
    st.sampled_from(["[", "{a: ", "- ", "{? ", "[{a: "]),
    st.sampled_from(["name: x\nendpoints: ", "name: x\nfoo:\n  ", ""]),
)
def test_deep_nesting_is_rejected_not_a_recursion_error(
    depth: int, opener: str, prefix: str
) -> None:
    closer = {"[": "]", "{a: ": "}", "- ": "", "{? ": "}", "[{a: ": "}]"}[opener]
    text = prefix + opener * depth + "1" + closer * depth
    result = load_or_error(text)
    if depth > 64:
        assert isinstance(result, ConfigError), result


# ---------------------------------------------------------------------------- alias bombs


def laughs(width: int, depth: int, *, container: str = "list", where: str = "unknown") -> str:
    """A "billion laughs" document: ``width ** depth`` leaves from ``width * depth`` aliases."""
    lines = ["a0: &a0 " + ("[x, x]" if container == "list" else "{x: 1}")]
    for level in range(1, depth + 1):
        refs = [f"*a{level - 1}"] * width
        if container == "list":
            body = "[" + ", ".join(refs) + "]"
        else:
            body = "{" + ", ".join(f"k{i}: {ref}" for i, ref in enumerate(refs)) + "}"
        lines.append(f"a{level}: &a{level} {body}")
    top = f"*a{depth}"
    lines.append("name: bomb")
    targets = {
        "unknown": f"extra: {top}",
        "endpoints": f"endpoints: {top}",
        "policy": f"policy: {top}",
        "retry_on": f"policy: {{retry: {{attempts: 1, retry_on: {top}}}}}",
        "metadata": f"endpoints: [{{address: '10.0.0.1:1', metadata: {top}}}]",
        "key": f"? {top}\n: 1",
        "merge": f"<<: {top}",
    }
    lines.append(targets[where])
    return "\n".join(lines) + "\n"


@settings(HOSTILE, max_examples=40)
@given(
    st.integers(2, 12),
    st.integers(1, 12),
    st.sampled_from(["list", "map"]),
    st.sampled_from(["unknown", "endpoints", "policy", "retry_on", "metadata", "key", "merge"]),
)
def test_alias_bombs_neither_hang_nor_blow_memory(
    width: int, depth: int, container: str, where: str
) -> None:
    tracemalloc.start()
    try:
        started = time.monotonic()
        load_or_error(laughs(width, depth, container=container, where=where))
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"{peak / 2**20:.0f} MiB to load {width}**{depth} laughs"
    assert elapsed < DEADLINE.total_seconds()


# ---------------------------------------------------------------------------- the admin path


class Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class FakeContext:
    """The part of a grpc.aio servicer context ApplyServices uses."""

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: object = ()
    ) -> None:
        raise Aborted(code, details)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


BASELINE = [
    config_pb2.Service(name="stored", endpoints=[config_pb2.Endpoint(address="10.9.9.9:9")]),
    config_pb2.Service(name="other"),
]


async def _apply(services: list[config_pb2.Service]) -> None:
    """Applies ``services`` through the admin servicer to a store holding BASELINE; checks
    the store is unchanged when it is refused and holds exactly them when not."""
    store = MemoryStore()
    await store.apply(BASELINE)
    admin = AdminServicer(
        store, SnapshotCache(build_resources), ConnectedNodes(Registrations()), "test"
    )
    before = await store.list()
    problems = [p for s in services for p in validate_service(s)]
    names_ = [s.name for s in services]
    should_refuse = bool(problems) or not services or len(set(names_)) != len(names_)
    request = admin_pb2.ApplyServicesRequest(services=services)
    try:
        response = await admin.ApplyServices(request, FakeContext())  # type: ignore[arg-type]
    except Aborted as refused:
        assert refused.code == grpc.StatusCode.INVALID_ARGUMENT, refused
        assert should_refuse, f"valid services refused: {refused.details}"
        for problem in problems:
            assert problem in refused.details
        assert await store.list() == before
        assert store.revision == before[0]
        return
    assert not should_refuse, problems
    assert response.revision == store.revision
    for service in services:
        assert (await store.get(service.name)).service == service
    untouched = {s.name for s in BASELINE} - set(names_)
    for stored in before[1]:
        if stored.service.name in untouched:
            assert await store.get(stored.service.name) == stored


def _value_for(fd: FieldDescriptor, draw: st.DrawFn) -> Any:
    if fd.type == FieldDescriptor.TYPE_STRING:
        return draw(plain_text | hostile_strings)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return draw(st.booleans())
    if fd.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return draw(st.floats())
    if fd.type == FieldDescriptor.TYPE_UINT32:
        return draw(st.integers(0, 2**32 - 1) | st.sampled_from([0, 1, 5, 6, 100, 101, 1001]))
    raise AssertionError(f"no strategy for {fd.full_name}")


def _mutate_message(msg: Message, draw: st.DrawFn) -> None:
    """Sets one field somewhere under ``msg`` to an arbitrary value of its proto type."""
    if msg.DESCRIPTOR.full_name == Duration.DESCRIPTOR.full_name:
        seconds = draw(st.integers(-(10**12), 10**12) | st.sampled_from([0, -1, 86_400, 86_401]))
        msg.CopyFrom(Duration(seconds=seconds, nanos=draw(st.integers(-(10**9) + 1, 10**9 - 1))))
        return
    fd: Any = draw(st.sampled_from(list(msg.DESCRIPTOR.fields)))
    field = getattr(msg, fd.name)
    if fd.type == FieldDescriptor.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry:
        value_fd = fd.message_type.fields_by_name["value"]
        key = draw(plain_text)
        if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
            _mutate_message(field[key], draw)
        else:
            field[key] = _value_for(value_fd, draw)
    elif fd.type == FieldDescriptor.TYPE_MESSAGE and fd.is_repeated:
        if field and draw(st.booleans()):
            _mutate_message(draw(st.sampled_from(list(field))), draw)
        elif field and draw(st.booleans()):
            field.add().CopyFrom(draw(st.sampled_from(list(field))))  # a duplicate
        else:
            _mutate_message(field.add(), draw)
    elif fd.is_repeated:
        field.append(_value_for(fd, draw))
    elif fd.type == FieldDescriptor.TYPE_MESSAGE:
        _mutate_message(field, draw)
    else:
        setattr(msg, fd.name, _value_for(fd, draw))


@st.composite
def hostile_requests(draw: st.DrawFn) -> list[config_pb2.Service]:
    loaded = load_documents(as_yaml(draw(valid_documents())), SOURCE)
    for _ in range(draw(st.integers(0, 4))):
        _mutate_message(draw(st.sampled_from(loaded)), draw)
    if draw(st.booleans()):
        loaded.append(draw(st.sampled_from([*loaded, *BASELINE])))
    return list(draw(st.permutations(loaded)))


@settings(HOSTILE, max_examples=80)
@given(hostile_requests())
def test_apply_refuses_without_change_or_stores_exactly(services: list[Any]) -> None:
    asyncio.run(_apply(services))


@settings(HOSTILE, max_examples=50)
@given(mutated_documents())
def test_apply_of_mutated_documents(case: tuple[list[Any], list[Path_]]) -> None:
    loaded = load_or_error(as_yaml(case[0]))
    if not isinstance(loaded, ConfigError):
        asyncio.run(_apply(loaded))


def test_apply_of_nothing_is_refused() -> None:
    asyncio.run(_apply([]))
