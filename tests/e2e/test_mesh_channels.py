"""mesh_channel() and aio_mesh_channel() with real processes: a control server, an agent, the
demo backend (a unary and a bidi method) and :mod:`tests.e2e.arity_backend` (the other two
arities), and a caller process (:mod:`tests.e2e.channel_caller`) making every arity's calls
in every way grpc offers. Each way to call has a service of its own, so each has its own
breaker at the agent: the failures of each must open it (they reached the agent), its calls
must then fail fast in the way that call style fails, and a successful probe must close it
again (successes reach the agent too). The grpc types callers check for hold throughout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.e2e.commands import Commands
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import CLOSED, OPEN, breaker, configure, meshctl

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

STYLES = {
    "sync": [
        ("unary_unary", "call"),
        ("unary_unary", "with_call"),
        ("unary_unary", "future"),
        ("unary_stream", "iterate"),
        ("stream_unary", "call"),
        ("stream_unary", "with_call"),
        ("stream_unary", "future"),
        ("stream_stream", "iterate"),
    ],
    "aio": [
        ("unary_unary", "await"),
        ("unary_unary", "status"),
        ("unary_stream", "iterate"),
        ("unary_stream", "read"),
        ("stream_unary", "await"),
        ("stream_unary", "write"),
        ("stream_stream", "iterate"),
        ("stream_stream", "write"),
    ],
}
POLICY = "{timeout: 5s, circuit_breaker: {consecutive_failures: 3, open_for: 3s}}"
UNARY_AND_BIDI = ("unary_unary", "stream_stream")  # the demo backend's methods


def service_of(flavour: str, kind: str, style: str) -> str:
    return f"{flavour}-{kind}-{style}".replace("_", "-")


@pytest.mark.parametrize("flavour", ["sync", "aio"])
def test_every_arity_and_way_to_call_reaches_the_breaker(
    procs: MeshProcesses, tmp_path: Path, flavour: str
) -> None:
    _, control = procs.start_control()
    _, demo = procs.start_backend("b1", proc_name="demo")
    _, arity = procs.start_ready("arity", "tests.e2e.arity_backend")
    styles = STYLES[flavour]
    documents = [
        f"name: {service_of(flavour, kind, style)}\n"
        f"endpoints: [{{address: '{demo if kind in UNARY_AND_BIDI else arity}'}}]\n"
        f"policy: {POLICY}\n"
        for kind, style in styles
    ]
    (tmp_path / "services.yaml").write_text("---\n".join(documents))
    meshctl(control, "apply", "-f", str(tmp_path / "services.yaml"))
    _, agent = procs.start_agent(control, "node-1")
    directory = tmp_path / "commands"
    directory.mkdir()
    caller = Commands(
        directory,
        procs.python(
            "caller",
            "tests.e2e.channel_caller",
            *("--agent", agent, "--commands", str(directory)),
        ),
    )

    def call(kind: str, style: str, payload: str = "ok") -> dict[str, Any]:
        command = {
            "flavour": flavour,
            "service": service_of(flavour, kind, style),
            "kind": kind,
            "style": style,
            "payload": payload,
        }
        answer = caller.run(command, 20, f"a {flavour} {kind} call ({style})")
        assert answer["wrong_types"] == [], (kind, style, answer)
        return answer

    # Every way to call works; the first call of each also waits for the service's policy.
    for kind, style in styles:
        for _ in range(2):
            assert call(kind, style)["code"] == "OK", (kind, style)

    # Backends failing: three failures open each breaker at the agent.
    configure(demo, fail="UNAVAILABLE")
    for kind, style in styles:
        for _ in range(3):
            answer = call(kind, style, "fail")
            assert answer["code"] != "OK" and not answer["circuit_open"], (kind, style, answer)
        service = service_of(flavour, kind, style)
        wait_for(
            lambda s=service: (b := breaker(agent, s)) is not None and b.state == OPEN,
            10,
            f"{service}'s breaker to open",
        )
        status = breaker(agent, service)
        assert status is not None and status.reason == "consecutive_failures"

        # The caller hears of it and fails calls fast, as this style fails a call.
        def failed_fast(kind: str = kind, style: str = style) -> dict[str, Any] | None:
            answer = call(kind, style, "fail")
            return answer if answer["circuit_open"] else None

        fast = wait_for(failed_fast, 10, f"a fast-fail of {service}")
        assert fast["code"] == "UNAVAILABLE", fast
        assert f"circuit for service '{service}' is open until" in fast["details"], fast

    # Backends healed: once the breakers half-open, a successful probe closes each.
    configure(demo)
    for kind, style in styles:
        service = service_of(flavour, kind, style)

        def closed(kind: str = kind, style: str = style, service: str = service) -> bool:
            call(kind, style)
            status = breaker(agent, service)
            return status is not None and status.state == CLOSED

        wait_for(closed, 15, f"{service}'s breaker to close again", every=0.1)
