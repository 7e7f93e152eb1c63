"""The README runs as written: its tour is run against real processes (with the ports and
paths of this test put in place of the README's), its Python snippets are executed, its
grpcurl commands are run, and every flag its shell commands name exists."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from control.config import load_documents
from tests.conftest import ROOT, require_tool, wait_for
from tests.e2e.conftest import MeshProcesses
from tests.e2e.helpers import agent_status, meshctl

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

README = ROOT / "README.md"
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)
OUR_PROGRAMS = ("meshctl", "mesh-control", "mesh-agent")


def blocks(kind: str) -> list[str]:
    """The README's code blocks of ``kind`` (``sh``, ``python``, ``yaml``), in order, with
    the indentation of a block inside a list item removed."""
    found = []
    for indent, lang, body in FENCE.findall(README.read_text()):
        if lang == kind:
            found.append("\n".join(line[len(indent) :] for line in body.splitlines()))
    return found


def commands(block: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines
    dropped."""
    joined = block.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def tour_block(first_word: str) -> str:
    return next(b for b in blocks("sh") if commands(b) and commands(b)[0].startswith(first_word))


def service_blocks() -> list[tuple[int, str]]:
    """Each YAML block as a whole service document, with where it starts in the README. A
    block without a ``name`` (the traffic examples' ``routes:``) completes the last block
    that has one: its keys replace that service's."""
    text = README.read_text()
    found: list[tuple[int, str]] = []
    base: dict[str, Any] = {}
    for match in FENCE.finditer(text):
        if match.group(2) != "yaml":
            continue
        indent = match.group(1)
        body = "\n".join(line[len(indent) :] for line in match.group(3).splitlines())
        data = yaml.safe_load(body)
        assert isinstance(data, dict), f"README YAML block is not a mapping:\n{body}"
        base = data if "name" in data else {**base, **data}
        assert "name" in base, f"README YAML block without a service before it:\n{body}"
        found.append((match.start(), yaml.safe_dump(base, sort_keys=False)))
    return found


# -- every flag named exists -------------------------------------------------------------------


@functools.cache
def _run_help(args: tuple[str, ...]) -> tuple[int, str]:
    """The exit code and stdout of ``args`` (a ``--help`` command line); the README names the
    same commands many times, and their help does not change within a run."""
    result = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    return result.returncode, result.stdout


def _help_of(words: list[str]) -> str:
    """``--help`` of the longest prefix of ``words`` that is a command (program, then its
    subcommands), and how many words it took."""
    if words[0] in OUR_PROGRAMS:
        module = {
            "meshctl": "control.meshctl",
            "mesh-control": "control",
            "mesh-agent": "mesh_agent",
        }
        base, rest = [sys.executable, "-m", module[words[0]]], words[1:]
    else:  # python -m MODULE
        base, rest = [sys.executable, "-m", words[2]], words[3:]
    text = ""
    taken: list[str] = []
    for word in [None, *[w for w in rest if re.fullmatch(r"[a-z][a-z-]*", w)]]:
        code, stdout = _run_help((*base, *taken, *([word] if word else []), "--help"))
        if code != 0:
            break
        text = stdout
        if word:
            taken.append(word)
    return text


def test_every_flag_the_readme_names_exists() -> None:
    checked = 0
    for block in blocks("sh"):
        for command in commands(block):
            words = command.removeprefix("export ").split()
            if words[0] == "make":
                target = words[1]
                result = subprocess.run(
                    ["make", "-n", *[w for w in words[1:] if "=" in w], target],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                assert result.returncode == 0, f"make {target}: {result.stderr}"
                checked += 1
                continue
            if not (words[0] in OUR_PROGRAMS or words[:2] == ["python", "-m"]):
                continue
            text = _help_of(words)
            assert text, f"no --help for: {command}"
            for flag in re.findall(r"(?<![\w./-])--?[a-zA-Z][\w-]*", command):
                if flag in ("-m", "-f") and words[0] == "python":
                    continue
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (
                    f"{flag} of `{command}` is not in its --help"
                )
            checked += 1
    assert checked >= 10, checked  # the blocks were found and parsed


def test_every_service_in_the_readme_is_valid() -> None:
    """Every YAML block is a service ``meshctl validate`` accepts (the traffic examples as the
    ``routes`` of the service before them), and routes to subsets it declares."""
    services = service_blocks()
    for _, document in services:
        (service,) = load_documents(document, "README.md")  # raises, naming each problem
        subsets = {subset.name for subset in service.subsets}
        assert all(set(route.to) <= subsets for route in service.routes), document
    assert len(services) >= 8, len(services)  # the blocks were found: tour and traffic


# -- the tour, run ------------------------------------------------------------------------------


def test_the_tour_runs_as_written(procs: MeshProcesses, tmp_path: Path) -> None:
    _, backend = procs.start_backend("b1", "--listen", "127.0.0.1:0", proc_name="backend")
    store = tmp_path / "mesh-store"
    _, control = procs.start_control(store=f"file:{store}")
    tour = tmp_path / "tour"
    places = {
        "127.0.0.1:50051": backend,
        "127.0.0.1:15010": control,
        "/tmp/mesh-tour": str(tour),
        "/run/mesh-agent/agent.sock": str(tour / "agent.sock"),
    }

    def placed(text: str) -> str:
        for written, here in places.items():
            text = text.replace(written, here)
        return text

    (tmp_path / "echo.yaml").write_text(placed(blocks("yaml")[0]))
    for command in commands(tour_block("meshctl validate")):
        if "[" in command or "--watch" in command:
            continue  # a synopsis, or runs until Ctrl-C
        words = shlex.split(command)
        result = subprocess.run(
            [sys.executable, "-m", "control.meshctl", "--control", control, *words[1:]],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
            env=procs.env,
            check=False,
        )
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
        if words[1] == "apply":
            assert result.stdout.startswith("service/echo configured (revision "), result.stdout

    # The traffic example's `meshctl get services orders`, as the README prints it.
    text_at = README.read_text().index("```text\n")
    example = [document for start, document in service_blocks() if start < text_at][-1]
    (tmp_path / "orders.yaml").write_text(example)
    applied = meshctl(control, "apply", "-f", str(tmp_path / "orders.yaml"))
    revision = applied.removeprefix("service/orders configured (revision ").split(")")[0]
    shown = blocks("text")[0].splitlines()
    shown[1] = re.sub(r"\d+$", revision, shown[1])  # the README's store has only the tour's
    assert meshctl(control, "get", "services", "orders").splitlines() == shown

    agent_line = commands(tour_block("mesh-agent run --control 127.0.0.1:15010"))[0]
    agent_words = shlex.split(placed(agent_line).removesuffix("&"))
    ready = tmp_path / "agent.ready"
    agent = procs.python(
        "agent", "mesh_agent", *agent_words[1:], "--ready-file", str(ready), "--log-level", "info"
    )
    wait_for(lambda: ready.exists() or not agent.alive, 20, "the agent to be ready")
    assert agent.alive, agent.errors()[-2000:]
    target = placed(commands(tour_block("mesh-agent run"))[1]).split("=", 1)[1]
    wait_for(lambda: agent_status(target).connected, 20, "the agent to reach mesh-control")

    snippet = tmp_path / "tour.py"
    snippet.write_text(placed(blocks("python")[0]))
    result = subprocess.run(
        [sys.executable, str(snippet)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**procs.env, "MESH_AGENT": target},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["b1", "b1"], result.stdout

    # The CSDS commands, against this agent and this control server.
    grpcurl = require_tool("grpcurl")
    for block in blocks("sh"):
        for command in commands(block):
            if command.startswith("grpcurl") and "FetchClientStatus" in command:
                words = shlex.split(placed(command))
                result = subprocess.run(
                    [grpcurl, *words[1:]], capture_output=True, text=True, timeout=30, check=False
                )
                assert result.returncode == 0, f"{command}: {result.stderr}"
                assert '"config"' in result.stdout, result.stdout


def test_every_python_snippet_runs(procs: MeshProcesses, tmp_path: Path) -> None:
    """The snippets after the tour's need no mesh (they build servers and channels)."""
    for number, code in enumerate(blocks("python")[1:], start=2):
        path = tmp_path / f"snippet{number}.py"
        path.write_text(code)
        result = subprocess.run(
            [sys.executable, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
            env=procs.env,
            check=False,
        )
        assert result.returncode == 0, f"README python block {number}:\n{result.stderr[-2000:]}"
