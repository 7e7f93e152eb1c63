"""The project's standing promises: generated code is fresh, lint is clean, and the OTLP
exporters import despite the xds-protos packaging clash."""

from __future__ import annotations

import re
import subprocess

import pytest

from mesh_core import preflight as _preflight
from tests.conftest import ROOT, require_tool, run_cli

pytestmark = pytest.mark.timeout(300)


def test_generated_code_is_fresh() -> None:
    from control._protogen import stale_files

    assert stale_files() == [], "generated code is stale: run `make proto`"


def test_otlp_exporters_import() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope

    assert OTLPSpanExporter and OTLPMetricExporter and InstrumentationScope
    assert _preflight.otel_proto_problem() is None


def test_clash_is_explained_by_the_clis(tmp_path) -> None:
    # A stale copy of the proto modules, shadowing the real ones as xds-protos' copy does,
    # while the rest of the opentelemetry package (API, SDK) stays the installed one.
    stale = tmp_path / "opentelemetry" / "proto" / "common" / "v1"
    stale.mkdir(parents=True)
    (tmp_path / "opentelemetry" / "__init__.py").write_text(
        "import pkgutil\n__path__ = pkgutil.extend_path(__path__, __name__)\n"
    )
    for d in (
        tmp_path / "opentelemetry" / "proto",
        tmp_path / "opentelemetry" / "proto" / "common",
        stale,
    ):
        (d / "__init__.py").write_text("")
    (stale / "common_pb2.py").write_text("AnyValue = object\n")
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}"}
    result = run_cli("control.meshctl", "validate", "-f", "/nonexistent.yaml", env=env)
    assert "meshctl: warning: the opentelemetry-proto modules were overwritten" in result.stderr
    assert "pip install --force-reinstall --no-deps opentelemetry-proto==" in result.stderr
    result = run_cli(
        "control",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--store",
        "memory:",
        env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"},
    )
    assert result.returncode == 2
    assert "mesh-control: error: the opentelemetry-proto modules were overwritten" in result.stderr


def test_ruff_is_clean() -> None:
    ruff = require_tool("ruff")
    result = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    mypy = require_tool("mypy")
    result = subprocess.run([mypy], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts_hold() -> None:
    """The layers of docs/architecture.md, as the contracts in pyproject.toml state them."""
    lint_imports = require_tool("lint-imports")
    result = subprocess.run([lint_imports], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_is_clean() -> None:
    buf = require_tool("buf")
    result = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_clis_have_help() -> None:
    for module in ("control", "control.meshctl"):
        result = run_cli(module, "--help")
        assert result.returncode == 0 and "usage:" in result.stdout, (module, result.stderr)


# -- docs/architecture.md is a map of the code: every file it names exists, and every name it
# gives beside a file ("`path.py` `Name`" or "`Name.method`") is defined there.
_FILE = re.compile(r"`([\w/]+\.(?:py|toml|proto))`")
_NAMED = re.compile(r"`([\w/]+\.py)` `([A-Za-z_][\w.]*)`")
_MODULE = re.compile(r"`((?:mesh_core|mesh_xds|mesh_agent|control)(?:\.\w+)*)`")


def _defines(source: str, name: str) -> bool:
    pattern = rf"^\s*(?:async\s+def|def|class)\s+{name}\b|^\s*{name}\s*(?::[^=\n]*)?="
    return re.search(pattern, source, re.MULTILINE) is not None


def test_architecture_map_is_true() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    text = re.sub(r"\s*\n\s*", " ", text)  # names may wrap across lines
    missing = [f for f in sorted(set(_FILE.findall(text))) if not (ROOT / f).exists()]
    assert missing == [], f"docs/architecture.md names files that do not exist: {missing}"
    named = _NAMED.findall(text)
    assert len(named) >= 15, named  # the map still names its hops
    wrong = [
        f"{path} {name}"
        for path, name in named
        if not all(_defines((ROOT / path).read_text(), part) for part in name.split("."))
    ]
    assert wrong == [], f"docs/architecture.md names what these files do not define: {wrong}"
    for module in sorted(set(_MODULE.findall(text))):
        parts = module.split(".")
        base = ROOT.joinpath(*parts)
        attr = ROOT.joinpath(*parts[:-1]).with_suffix(".py") if len(parts) > 1 else None
        found = base.with_suffix(".py").exists() or (base / "__init__.py").exists()
        if not found and attr is not None and attr.exists():
            found = _defines(attr.read_text(), parts[-1])
        assert found, f"docs/architecture.md names {module}, which does not exist"
