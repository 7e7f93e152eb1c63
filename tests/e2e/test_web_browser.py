"""The web page in a real headless browser: Debian's ``chromium`` driven through
``chromedriver`` by selenium (nothing is downloaded at test time), against a running mesh
(mesh-control with its page, an agent, a backend, callers through ``mesh_channel``) whose
breaker is tripped. One browser for the module. Locally a missing browser skips; with
CI=true it fails (``.ci/run`` installs ``chromium`` and ``chromium-driver``)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mesh.v1 import node_pb2, node_pb2_grpc
from tests.conftest import IN_CI, require_tool
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import breaker, configure, meshctl, page_url

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

WAIT = 60.0
"""Seconds the page gets to show a state (it refreshes every 3 s, agents report traffic
every 5 s); generous for a loaded machine, a wait ends as soon as the page shows it."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if IN_CI:
            pytest.fail("selenium is not installed (it is in the dev extra)")
        pytest.skip("selenium is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--window-size=1280,1000",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def shown(driver: Any, css: str, timeout: float = WAIT) -> Any:
    """The elements matching ``css`` once there are any; fails the test naming what the page
    showed instead."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, css)
        )
    except TimeoutException:
        text = driver.find_element(By.TAG_NAME, "body").text
        pytest.fail(f"the page did not show {css!r} within {timeout:g}s; it shows:\n{text}")


def console_errors(driver: Any) -> list[dict[str, Any]]:
    """The browser console's SEVERE entries since the last call."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_the_page_shows_the_services_and_an_open_breaker(
    browser: Any, procs: MeshProcesses, tmp_path: Path
) -> None:
    control_proc, control = procs.start_control("--http-port", "0")
    url = page_url(control_proc)
    _, flaky_backend = procs.start_backend("b1", proc_name="flaky-backend")
    _, steady_backend = procs.start_backend("b2", proc_name="steady-backend")
    services = tmp_path / "services.yaml"
    services.write_text(
        f"name: flaky\nendpoints: [{{address: '{flaky_backend}'}}]\n"
        "policy: {circuit_breaker: {consecutive_failures: 3, open_for: 60s}}\n"
        "---\n"
        f"name: steady\nendpoints: [{{address: '{steady_backend}'}}]\n"
    )
    meshctl(control, "apply", "-f", str(services), "-m", "two services")
    _, agent = procs.start_agent(control, "node-1")
    configure(flaky_backend, fail="UNAVAILABLE")
    caller = {"MESH_CALLER": "frontend"}  # both processes' name in the service graph
    procs.mesh_client("caller-flaky", agent, "flaky", "--interval", "0.05", env=caller)
    # A long deadline: on a loaded machine a 2 s one could fail calls to the healthy service.
    procs.mesh_client(
        "caller-steady", agent, "steady", "--interval", "0.05", "--timeout", "20", env=caller
    )

    console_errors(browser)  # what earlier tests left
    browser.get(url)
    shown(browser, '#services tr[data-service="steady"][data-state="ok"]')
    shown(browser, '#services tr[data-service="flaky"][data-state="open"]')
    assert (status := breaker(agent, "flaky")) is not None and status.reason
    [note] = shown(browser, '#services tr[data-service="flaky"] li[data-breaker="open"]')
    assert note.text.startswith("breaker open on node-1 (consecutive_failures), until ")
    # The graph: a circle per service, the open breaker's in red.
    shown(browser, '#graph-nodes g.svc.open.lvl-bad[data-service="flaky"] circle')
    shown(browser, '#graph-nodes g.svc.ok.lvl-ok[data-service="steady"] circle')
    # The calls, as the agent reports them (every 5 s): frontend -> steady is healthy,
    # frontend -> flaky failed and its breaker is open.
    shown(browser, '#graph-edges g.edge.ok[data-caller="frontend"][data-service="steady"] line')
    shown(browser, '#graph-edges g.edge.bad[data-caller="frontend"][data-service="flaky"] line')
    shown(browser, '#graph-nodes g.svc.caller[data-service="frontend"] circle')
    [calls] = shown(browser, '#calls tr[data-caller="frontend"][data-service="flaky"]')
    assert "100.0%" in calls.text and "breaker open" in calls.text, calls.text
    [label] = shown(browser, '#graph-edges g[data-service="steady"] text')
    assert re.fullmatch(r"\d+\.\d rps · 0\.\d%", label.text), label.text
    [endpoint] = shown(browser, '#services tr[data-service="steady"] li[data-state="serving"]')
    assert endpoint.text.startswith(f"{steady_backend} serving")
    [node] = shown(browser, '#nodes tr[data-node="node-1"]')
    assert "SERVING" in node.text
    [change] = shown(browser, '#changes tr[data-outcome="ok"]')
    assert "two services" in change.text and "flaky, steady" in change.text
    assert "1 with an open breaker" in browser.find_element("id", "summary").text
    assert browser.find_element("id", "status").text == ""
    assert console_errors(browser) == []


def test_the_token_is_given_once_in_the_browser(
    browser: Any, procs: MeshProcesses, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("page-token\n")
    control_proc, control = procs.start_control(
        "--http-port", "0", "--operator-token-file", str(token)
    )
    url = page_url(control_proc)
    meshctl(
        control,
        "--token-file",
        str(token),
        "apply",
        "-f",
        _service(tmp_path, "guarded"),
    )
    browser.get(url)
    [field] = shown(browser, "input#token")
    field.send_keys("page-token")
    field.submit()
    shown(browser, '#services tr[data-service="guarded"]')
    # The 401 of the first load is logged (a SEVERE network entry); what follows must not be.
    assert any("401" in entry["message"] for entry in console_errors(browser))
    browser.refresh()
    shown(browser, '#services tr[data-service="guarded"]')
    assert "token=" not in browser.current_url
    assert console_errors(browser) == []


def _service(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nendpoints: [{{address: '127.0.0.1:1'}}]\n")
    return str(path)


def test_the_page_shows_warnings_zones_and_nacks_as_text(
    browser: Any, procs: MeshProcesses, tmp_path: Path
) -> None:
    control_proc, control = procs.start_control("--http-port", "0")
    url = page_url(control_proc)
    meshctl(control, "apply", "-f", _service(tmp_path, "users"))
    # A node's report, as its agent sends it: a process's NACK (whose text must stay text),
    # an early warning for the service and the zones' priorities its agent serves.
    nacked = node_pb2.LocalClientStatus(
        client_id="app-1",
        type_url="type.googleapis.com/envoy.config.listener.v3.Listener",
        nack_version="7",
        nack_message="bad <b>listener</b> <img src=x>",
    )
    nacked.nack_time.GetCurrentTime()
    health = node_pb2.NodeHealth(status="SERVING")
    health.warnings.add(
        service="users", state="degrading", reason="error_budget_burn", burn_short=14.4
    )
    health.zone_priorities.add(service="users", zone="eu-1a", priority=0)
    health.zone_priorities.add(service="users", zone="eu-1b", priority=1)
    with grpc.insecure_channel(control) as channel:
        node_pb2_grpc.NodeServiceStub(channel).ReportClientStatus(
            node_pb2.ReportClientStatusRequest(node_id="node-x", clients=[nacked], health=health),
            timeout=5,
        )
    console_errors(browser)
    browser.get(url)
    shown(browser, '#graph-nodes g.svc.degrading.lvl-warn[data-service="users"] circle')
    [warning] = shown(browser, '#services tr[data-service="users"] li[data-warning="degrading"]')
    assert warning.text.startswith("degrading on node-x (error_budget_burn), burn 14.4/0.0")
    [zones] = shown(browser, '#services tr[data-service="users"] li[data-zones="node-x"]')
    assert zones.text == "zone priorities on node-x: eu-1a 0, eu-1b 1"
    [row] = shown(browser, '#nacks tr[data-node="node-x"]')
    cells = [td.text for td in row.find_elements("tag name", "td")]
    assert cells[1:] == ["node-x", "app-1", "Listener", "7", "bad <b>listener</b> <img src=x>"]
    assert row.find_elements("tag name", "img") == [] and row.find_elements("tag name", "b") == []
    assert console_errors(browser) == []
