"""The Grafana dashboard (``deploy/grafana/mesh.json``) against the metrics the daemons really
export: one mesh (a control server, an agent, two backends) runs for the module, the events
behind every series happen (a pushed change ACKed, a NACK, health checks, an early warning,
a breaker trip, RPCs), both ``/metrics`` pages are scraped, and every query of the dashboard
must name series, and labels, that are in them."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from mesh.demo.v1 import echo_pb2, echo_pb2_grpc
from mesh_xds.testing import AdsClient
from mesh_xds.types import CLUSTER, LISTENER
from tests.conftest import ROOT, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import configure, health, meshctl, metrics_url, scrape

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DASHBOARD = ROOT / "deploy" / "grafana" / "mesh.json"

# -- reading PromQL -----------------------------------------------------------------------------

# Grafana's own variables, and the dashboard's, are replaced before Prometheus sees a query.
GRAFANA_VARIABLES = {"__rate_interval", "__interval", "__range"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
BINARY = {"and", "or", "unless"}
FUNCTIONS = {
    "sum", "min", "max", "avg", "count", "topk", "bottomk", "quantile", "stddev",
    "rate", "irate", "increase", "delta", "deriv", "histogram_quantile", "vector", "scalar",
    "clamp_min", "clamp_max", "abs", "time", "label_values", "max_over_time", "min_over_time",
    "avg_over_time", "changes", "resets", "absent",
}  # fmt: skip
# Labels every scraped series gets from Prometheus itself, not from the exporter.
SCRAPE_LABELS = {"instance", "job"}

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<var>\$\{?\w+\}?)
    | (?P<range>\[[^\]]*\])
    | (?P<number>\d+(?:\.\d+)?(?:[smhdwy]|ms)?\b)
    | (?P<ident>[A-Za-z_:][\w:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,(){}])
    | (?P<space>\s+)
    """,
    re.VERBOSE,
)


@dataclass
class Query:
    """What one PromQL expression asks for: each selector's metric and the label names its
    matchers use, the labels of its ``by (...)`` clauses, its functions and variables."""

    selectors: list[tuple[str, set[str]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    variables: set[str] = field(default_factory=set)

    @property
    def metrics(self) -> set[str]:
        return {name for name, _ in self.selectors}


def parse(expr: str) -> Query:
    """Reads ``expr`` (PromQL, with Grafana's ``$variables``); fails on what it cannot read,
    so a query the reader does not understand is not silently passed."""
    tokens: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        found = _TOKEN.match(expr, position)
        if found is None:
            raise ValueError(f"cannot read {expr[position:]!r} in {expr!r}")
        position = found.end()
        kind = found.lastgroup or ""
        if kind != "space":
            tokens.append((kind, found.group()))
    query = Query()
    depth = 0
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if kind == "var":
            query.variables.add(text.strip("${}"))
        elif kind in ("string", "range"):
            query.variables |= set(re.findall(r"\$\{?(\w+)", text))
        elif text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced parentheses in {expr!r}")
        elif kind == "ident" and text in KEYWORDS:
            if text in ("by", "without", "on", "ignoring", "group_left", "group_right"):
                # A label list: "by (a, b)".
                if following != "(":
                    raise ValueError(f"{text} without a label list in {expr!r}")
                close = next(i for i in range(index, len(tokens)) if tokens[i][1] == ")")
                labels = {t for k, t in tokens[index + 2 : close] if k == "ident"}
                if text in ("by", "on"):
                    query.grouping |= labels
                index = close
        elif kind == "ident" and text in BINARY:
            pass
        elif kind == "ident" and following in ("(", "by", "without"):
            if text not in FUNCTIONS:
                raise ValueError(f"unknown function {text!r} in {expr!r}")
            query.functions.add(text)
        elif kind == "ident":
            labels: set[str] = set()
            if following == "{":
                close = next(i for i in range(index, len(tokens)) if tokens[i][1] == "}")
                inner = tokens[index + 2 : close]
                for i, (k, t) in enumerate(inner):
                    if k == "ident" and i + 1 < len(inner) and inner[i + 1][0] == "op":
                        labels.add(t)
                    elif k == "string":
                        query.variables |= set(re.findall(r"\$\{?(\w+)", t))
                index = close
            query.selectors.append((text, labels))
        index += 1
    if depth != 0:
        raise ValueError(f"unbalanced parentheses in {expr!r}")
    return query


def test_the_promql_reader_finds_metrics_and_labels() -> None:
    """The reader the dashboard test relies on: metric names among functions, matchers,
    ranges, grouping clauses, strings and Grafana variables."""
    query = parse(
        "histogram_quantile(0.99, sum by (le, rpc_method) (rate(rpc_server_call_duration"
        '_seconds_bucket{instance=~"$node", rpc_method!~"a|b(c)"}[$__rate_interval])))'
        ' or count(mesh_breaker_state{mesh_service=~"${service}"} == 2) or vector(0)'
    )
    assert query.selectors == [
        ("rpc_server_call_duration_seconds_bucket", {"instance", "rpc_method"}),
        ("mesh_breaker_state", {"mesh_service"}),
    ]
    assert query.grouping == {"le", "rpc_method"}
    assert query.variables == {"node", "__rate_interval", "service"}
    assert query.functions == {"histogram_quantile", "sum", "rate", "count", "vector"}
    assert parse("label_values(mesh_xds_pushes_total, mesh_xds_type)").selectors == [
        ("mesh_xds_pushes_total", set()),
        ("mesh_xds_type", set()),
    ]
    for bad in ("sum(rate(x[5m])", "made_up(x)", "x{a=~'b'} ? 1"):
        with pytest.raises(ValueError):
            parse(bad)


# -- the dashboard ------------------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(panel title, expr) of every query of every panel."""
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    return {
        v["name"]: v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        for v in dashboard["templating"]["list"]
        if v["type"] == "query"
    }


def test_the_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = load_dashboard()
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = variables["datasource"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    # Both daemons export rpc_server_call_duration: "All" control servers must mean those
    # found (a regex of their instances), not ".*", which would take the agents in too.
    for name in ("control", "node"):
        assert variables[name]["includeAll"] and not variables[name].get("allValue"), name

    panels = list(all_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    grid: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel.get("title"), panel
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        cells = {
            (position["y"] + dy, position["x"] + dx)
            for dy in range(position["h"])
            for dx in range(position["w"])
        }
        assert not cells & grid, f"{panel['title']} overlaps another panel"
        grid |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel.get("description"), f"{panel['title']} says what it shows"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]

    defined = set(variables) | GRAFANA_VARIABLES
    used: set[str] = set()
    for title, expr in queries(dashboard):
        query = parse(expr)
        assert query.selectors, f"{title}: {expr} selects nothing"
        used |= query.variables
        assert query.variables <= defined, f"{title}: undefined variable in {expr}"
        for name, _ in query.selectors:
            if name.endswith("_bucket"):
                assert "histogram_quantile" in query.functions, f"{title}: raw buckets"
            if name.endswith(("_total", "_bucket", "_count")):
                assert query.functions & {"rate", "irate", "increase"}, (
                    f"{title}: a counter is read through rate() or increase(): {expr}"
                )
    for expr in variable_queries(dashboard).values():
        used |= parse(expr).variables
    assert set(variables) - {"datasource"} <= used, "every variable is used"


# -- the mesh -----------------------------------------------------------------------------------

SERVICE = """\
name: echo
endpoints: [{{address: '{backend}'}}]
policy:
  timeout: {timeout}
  circuit_breaker: {{consecutive_failures: 3, open_for: 30s}}
  health_check: {{interval: 0.2s, timeout: 0.2s, unhealthy_threshold: 2, healthy_threshold: 1}}
"""


SLO_SERVICE = """\
name: orders
endpoints: [{{address: '{backend}'}}]
policy:
  slo: {{success: 99, burn: {{short_window: 2s, long_window: 4s}}}}
"""


@dataclass
class Scrapes:
    control: str
    agent: str


SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)")
LABEL = re.compile(r'(\w+)="(?:[^"\\]|\\.)*"')


def series(text: str) -> dict[str, set[str]]:
    """Prometheus text: each series name (``..._total``, ``..._bucket``...) with the label
    names it carries."""
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        sample = SAMPLE.match(line)
        if sample is None or line.startswith("#"):
            continue
        labels = found.setdefault(sample["name"], set())
        labels |= set(LABEL.findall(sample["labels"] or ""))
    return found


def value(text: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        sample = SAMPLE.match(line)
        if sample is None or sample["name"] != name:
            continue
        pairs = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', sample["labels"] or ""))
        if all(pairs.get(k) == v for k, v in labels.items()):
            total += float(sample["value"])
    return total


@pytest.fixture(scope="module")
def scrapes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrapes]:
    procs = MeshProcesses(tmp_path_factory.mktemp("dashboard"))
    try:
        control_proc, control = procs.start_control("--metrics-port", "0")
        _, backend = procs.start_backend("b1", proc_name="backend")
        # A second service with an objective, whose backend fails half its calls: the node's
        # agent judges it degrading (an early warning), with its burn rates. Windows of 2 s
        # and 4 s hold the 20 calls a window needs to be judged even if calls slow down
        # fivefold on a loaded machine.
        _, slo_backend = procs.start_backend("b2", proc_name="slo-backend")
        with grpc.insecure_channel(slo_backend) as channel:
            echo_pb2_grpc.EchoServiceStub(channel).Configure(
                echo_pb2.ConfigureRequest(fail="UNAVAILABLE", fail_share=0.5), timeout=5
            )
        services = procs.workdir / "services.yaml"

        def write_services(timeout: str) -> None:
            services.write_text(
                SERVICE.format(backend=backend, timeout=timeout)
                + "---\n"
                + SLO_SERVICE.format(backend=slo_backend)
            )

        write_services("2s")
        meshctl(control, "apply", "-f", str(services))  # an admin RPC
        agent_proc, agent = procs.start_agent(control, "node-1", "--metrics-port", "0")
        control_url, agent_url = metrics_url(control_proc), metrics_url(agent_proc)

        # Local clients make the agent subscribe upstream; their calls are reported.
        client = procs.mesh_client("client", agent, "echo", "--count", "3", "--interval", "0.05")
        slo_client = procs.mesh_client(
            "slo-client", agent, "orders", "--count", "1000", "--interval", "0.01"
        )
        wait_for(
            lambda: value(scrape(control_url), "mesh_xds_acks_total", mesh_xds_type="Listener"),
            10,
            "the agent's Listener ACK at the control server",
        )
        # A change pushed to a node already subscribed, and ACKed: a convergence time.
        write_services("3s")
        meshctl(control, "apply", "-f", str(services))
        wait_for(
            lambda: value(scrape(control_url), "mesh_xds_convergence_duration_seconds_count"),
            10,
            "a convergence time at the control server",
        )

        # A client that NACKs what the control server sends.
        async def nack() -> None:
            def reject(response: object) -> str | None:
                return (
                    "refused by the test" if getattr(response, "type_url", "") == CLUSTER else None
                )

            async with AdsClient(control, "nacker", reject=reject) as ads:
                ads.subscribe(LISTENER)
                ads.subscribe(CLUSTER)
                await ads.wait_for(lambda a: bool(a.of_type(CLUSTER)), 10)

        asyncio.run(nack())
        wait_for(
            lambda: value(scrape(control_url), "mesh_xds_nacks_total", mesh_xds_type="Cluster"),
            10,
            "the NACK at the control server",
        )

        # The burn rates are there while there are calls to judge: this scrape is kept.
        judged = wait_for(
            lambda: (
                (text := scrape(agent_url))
                and value(text, "mesh_service_warnings_total", mesh_service="orders")
                and "mesh_slo_burn_rate{" in text
                and text
            ),
            30,
            "an early warning for orders, and its burn rates, at the agent",
        )
        slo_client.stop()
        assert client.popen.wait(30) == 0, client.errors()[-2000:]

        # The backend fails every call: the node's breaker opens.
        configure(backend, fail="UNAVAILABLE")
        failing = procs.mesh_client("failing", agent, "echo", "--count", "6", "--interval", "0.05")
        assert failing.popen.wait(30) == 0, failing.errors()[-2000:]
        wait_for(
            lambda: value(scrape(agent_url), "mesh_breaker_transitions_total"),
            20,
            "a breaker transition at the agent",
        )
        # Unary calls on both daemons' own servers.
        assert health(control) == health(agent) == 1  # SERVING
        wait_for(
            lambda: value(scrape(agent_url), "mesh_health_check_duration_seconds_count"),
            10,
            "health checks timed at the agent",
        )
        yield Scrapes(control=scrape(control_url), agent=scrape(agent_url) + judged)
    finally:
        procs.stop_all()


def _scrape_for(selector_labels: str, scrapes: Scrapes) -> list[tuple[str, str]]:
    """Which daemons a query selects: ``$control`` the control server, ``$node`` the agent,
    otherwise either."""
    if '"$control"' in selector_labels:
        return [("mesh-control", scrapes.control)]
    if '"$node"' in selector_labels:
        return [("mesh-agent", scrapes.agent)]
    return [("mesh-control", scrapes.control), ("mesh-agent", scrapes.agent)]


def test_every_series_the_dashboard_queries_is_exported(scrapes: Scrapes) -> None:
    dashboard = load_dashboard()
    exported = {"mesh-control": series(scrapes.control), "mesh-agent": series(scrapes.agent)}
    checked: set[str] = set()
    problems: list[str] = []
    for title, expr in [
        *queries(dashboard),
        *(("$" + n, q) for n, q in variable_queries(dashboard).items()),
    ]:
        query = parse(expr)
        is_label_values = "label_values" in query.functions
        if is_label_values and len(query.selectors) == 1:
            # label_values(LABEL): the label's values on any series.
            label = query.selectors[0][0]
            if not any(label in labels for d in exported.values() for labels in d.values()):
                problems.append(f"{title}: no series has the label {label}")
            continue
        selectors = query.selectors[:1] if is_label_values else query.selectors
        found_labels: set[str] = set()
        for name, labels in selectors:
            where = _scrape_for(expr, scrapes)
            holders = [d for d, _ in where if name in exported[d]]
            if not holders:
                problems.append(f"{title}: {name} is exported by none of {[d for d, _ in where]}")
                continue
            checked.add(name)
            carried = set().union(*(exported[d][name] for d in holders)) | SCRAPE_LABELS
            found_labels |= carried
            if missing := labels - carried:
                problems.append(f"{title}: {name} has no label {sorted(missing)}")
        if is_label_values:
            label = query.selectors[1][0]
            if label not in found_labels:
                problems.append(f"{title}: {query.selectors[0][0]} has no label {label}")
        elif missing := query.grouping - found_labels - {"le"}:
            problems.append(f"{title}: grouped by {sorted(missing)}, which no series has")
    assert not problems, "\n".join(problems)
    assert checked  # the loop above saw the dashboard's series


def test_the_dashboard_shows_every_family_the_daemons_export(scrapes: Scrapes) -> None:
    """The other way round: a mesh metric no panel shows is one nobody watches."""
    shown = set()
    for _, expr in queries(load_dashboard()):
        shown |= parse(expr).metrics
    families = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for text in (scrapes.control, scrapes.agent)
        for name in series(text)
        if name.startswith(("mesh_", "rpc_"))
    }
    shown_families = {re.sub(r"_(bucket|count|sum)$", "", name) for name in shown}
    assert families - shown_families == set()
