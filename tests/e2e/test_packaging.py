"""The distributions fit their users: the base install is the client library alone. A fresh
virtualenv gets ``pip install`` of the project with no extra, calls a service through
``mesh_channel`` and a running agent, and holds none of the server side's dependencies; the
daemons' console scripts there say which extra to install."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import agent_status, meshctl, service_yaml

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

SERVER_SIDE = (
    "aetcd",
    "cryptography",
    "envoy",
    "xds",
    "udpa",
    "validate",
    "yaml",
    "grpc_health",
    "grpc_reflection",
    "opentelemetry.sdk",
    "opentelemetry.exporter",
)

CALL = """
import importlib.util, json, sys
from mesh.demo.v1 import echo_pb2, echo_pb2_grpc
from mesh_agent.client import mesh_channel

channel = mesh_channel("echo")
reply = echo_pb2_grpc.EchoServiceStub(channel).Echo(
    echo_pb2.EchoRequest(message="base"), timeout=20, wait_for_ready=True
)

def present(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False

# The web page's files ship in the distribution (looked up without importing control).
from pathlib import Path
control_dir = Path(importlib.util.find_spec("control").submodule_search_locations[0])
static = control_dir / "web" / "static"
print(json.dumps({
    "web": sorted(p.name for p in static.iterdir()) if static.is_dir() else [],
    "backend": reply.backend,
    "present": [m for m in sys.argv[1:] if present(m)],
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("control", "mesh_xds")),
}))
"""


def _source_copy(into: Path) -> Path:
    """The project as a fresh clone has it (no virtualenv, caches or build output)."""
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", ".demo", ".bench", "build", "*.egg-info", ".*_cache"
    )
    return Path(shutil.copytree(ROOT, into, ignore=ignore))


def test_the_base_install_is_the_client_library(procs: MeshProcesses, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    source = _source_copy(tmp_path / "source")
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    _, control = procs.start_control()
    _, backend = procs.start_backend("b1")
    meshctl(control, "apply", "-f", str(service_yaml(tmp_path / "echo.yaml", "echo", backend)))
    _, agent = procs.start_agent(control, "node-1")
    wait_for(lambda: agent_status(agent).connected, 20, "the agent to connect")

    # The base install alone: not the project's sources, only what pip put in the virtualenv.
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "MESH_AGENT": agent,
        "HOME": str(tmp_path),
    }
    called = subprocess.run(
        [str(venv / "bin" / "python"), "-c", CALL, *SERVER_SIDE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert called.returncode == 0, called.stderr[-3000:]
    result = json.loads(called.stdout.strip().splitlines()[-1])
    assert result["backend"] == "b1"
    assert result["web"] == ["app.js", "favicon.svg", "index.html", "style.css"]
    assert result["present"] == [], f"the base install holds {result['present']}"
    assert result["loaded"] == []

    # The daemons' scripts are there and say what to install.
    for script, extra in (
        ("mesh-control", "control"),
        ("mesh-agent", "agent"),
        ("meshctl", "control"),
    ):
        ran = subprocess.run(
            [str(venv / "bin" / script), "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
            check=False,
        )
        assert ran.returncode == 2, (script, ran.stdout, ran.stderr)
        assert f"{script}: needs the '{extra}' extra of python-mesh" in ran.stderr, ran.stderr
        assert f"pip install 'python-mesh[{extra}]'" in ran.stderr
