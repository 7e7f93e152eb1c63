"""Command files between a test and a caller process it started, both sides: the test writes
``DIR/N.json`` (N = 1, 2, ...; written whole, by rename), the caller answers in ``DIR/N.out``
(by rename) and goes on to N + 1; ``{"exit": true}`` ends the caller. One process serves many
commands, so a test pays for its start once."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Command = dict[str, Any]


def serve_commands(directory: Path, handle: Callable[[Command], Command]) -> None:
    """The caller's side: answers each command with ``handle(command)`` until told to exit."""
    number = 1
    while True:
        path = directory / f"{number}.json"
        while not path.exists():
            time.sleep(0.005)
        command = json.loads(path.read_text())
        if command.get("exit"):
            return
        partial = directory / f"{number}.out.tmp"
        partial.write_text(json.dumps(handle(command)))
        partial.rename(directory / f"{number}.out")
        number += 1


class Commands:
    """The test's side, for the caller process ``proc`` serving ``directory``."""

    def __init__(self, directory: Path, proc: Any) -> None:
        self.directory = directory
        self.proc = proc
        self.number = 0

    def run(self, command: Command, within: float, what: str) -> Command:
        """Hands the caller ``command`` and waits (at most ``within`` seconds) for its answer;
        fails the test, with the caller's errors, when the caller exits first."""
        import pytest

        from tests.conftest import wait_for

        self.number += 1
        partial = self.directory / f"{self.number}.json.tmp"
        partial.write_text(json.dumps(command))
        partial.rename(self.directory / f"{self.number}.json")
        out = self.directory / f"{self.number}.out"

        def answered() -> bool:
            if not self.proc.alive:
                pytest.fail(f"{self.proc.name} exited:\n{self.proc.errors()[-3000:]}")
            return out.exists()

        wait_for(answered, within, what)
        answer: Command = json.loads(out.read_text())
        return answer
