"""``meshctl`` as an operator meets it: files with nothing in them, servers it cannot reach or
that want TLS, and the shape of its JSON output."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.mark.parametrize(
    "text",
    ["", "# nothing here yet\n", "---\n", "---\n# still nothing\n---\n"],
    ids=["empty", "comment-only", "separator-only", "separators-and-comments"],
)
def test_validate_and_apply_refuse_a_file_without_services_alike(tmp_path: Path, text: str) -> None:
    path = tmp_path / "services.yaml"
    path.write_text(text)
    validate = run_cli("control.meshctl", "validate", "-f", str(path))
    # apply refuses before it contacts any server: nothing listens on this port.
    apply = run_cli("control.meshctl", "--control", "127.0.0.1:1", "apply", "-f", str(path))
    expected = f"no service documents in {path}"
    assert validate.returncode != 0 and apply.returncode != 0
    assert expected in validate.stdout, validate.stdout + validate.stderr
    assert expected in apply.stderr, apply.stderr
    assert "cannot reach" not in apply.stderr


def test_validate_refuses_a_directory_without_config_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("name: orders\n")
    result = run_cli("control.meshctl", "validate", "-f", str(tmp_path))
    assert result.returncode != 0
    assert f"no service documents in {tmp_path}" in result.stdout
