"""Service identities in the config: ``security: {hosts, mode}`` checked with field paths, the
host patterns and their matching, the policy resource carrying it, and the paths of an
identity's files on a node."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.config.loading import load_documents
from control.resources import build_policy
from mesh.v1 import config_pb2
from mesh_core.errors import ConfigError
from mesh_core.identity import (
    host_matching,
    host_pattern_problem,
    service_of_uri,
    service_uri,
)
from mesh_core.identity_files import CERTS_DIR_ENV, DEFAULT_CERTS_DIR, certs_dir, identity_paths
from mesh_core.validation import validate_problems, validate_warnings

pytestmark = pytest.mark.timeout(30)


def _service(text: str) -> config_pb2.Service:
    services = load_documents(text, "svc.yaml")
    assert len(services) == 1
    service: config_pb2.Service = services[0]
    return service


def _problems(text: str) -> list[str]:
    try:
        load_documents(text, "svc.yaml")
    except ConfigError as error:
        return error.problems
    return []


def test_security_loads_and_is_valid() -> None:
    service = _service("name: web\nsecurity: {hosts: [web-1, 'web-*', 'db-[0-9]'], mode: strict}\n")
    assert list(service.security.hosts) == ["web-1", "web-*", "db-[0-9]"]
    assert service.security.mode == "strict"
    assert validate_problems(service) == []


@pytest.mark.parametrize(
    ("yaml", "path", "words"),
    [
        ("security: {mode: strong}", "security.mode", "unknown mode 'strong'"),
        ("security: {hosts: ['']}", "security.hosts[0]", "must not be empty"),
        ("security: {hosts: ['web-[0-9']}", "security.hosts[0]", "never closed"),
        ("security: {hosts: ['web-]']}", "security.hosts[0]", "closes no '['"),
        ("security: {hosts: ['web-[]x]']}", "security.hosts[0]", "node id characters"),
        ("security: {hosts: ['a/b']}", "security.hosts[0]", "'/' is not in any node id"),
        ("security: {hosts: [web, web]}", "security.hosts[1]", "duplicate entry 'web'"),
        ("security: {hosts: web}", "security.hosts", "expected a list"),
        ("security: {hosts: [7]}", "security.hosts[0]", "expected a string"),
        ("security: {host: [web]}", "security", "unknown field 'host'"),
    ],
)
def test_bad_security_is_refused_at_its_field_path(yaml: str, path: str, words: str) -> None:
    problems = _problems(f"name: web\n{yaml}\n")
    assert any(p.startswith(f"svc.yaml: document 1 (web): {path}: ") for p in problems), problems
    assert any(words in p for p in problems), problems


def test_mode_disabled_is_the_default() -> None:
    for text in ("security: {hosts: [a]}", "security: {hosts: [a], mode: disabled}"):
        assert validate_problems(_service(f"name: web\n{text}\n")) == []


def test_warnings_for_every_node_and_for_strict_without_hosts() -> None:
    everyone = validate_warnings(_service("name: web\nsecurity: {hosts: ['*']}\n"))
    assert [path for path, _ in everyone] == ["security.hosts"]
    assert "every node" in everyone[0][1]
    nobody = validate_warnings(_service("name: web\nsecurity: {mode: strict}\n"))
    assert [path for path, _ in nobody] == ["security.mode"]
    assert validate_warnings(_service("name: web\nsecurity: {hosts: [web-1]}\n")) == []


@pytest.mark.parametrize(
    ("hosts", "node", "match"),
    [
        (["web-*"], "web-7", "web-*"),
        (["web-*"], "web-", "web-*"),
        (["web-*"], "db-1", None),
        (["web-*"], "Web-7", None),  # case-sensitive, as node ids are
        (["web-?"], "web-12", None),
        (["db-1", "web-[0-9]"], "web-3", "web-[0-9]"),
        (["web-[!0-9]"], "web-3", None),
        (["web-[!0-9]"], "web-a", "web-[!0-9]"),
        (["web"], "web-1", None),  # the whole id, not a prefix
        (["*.eu"], "n1.eu", "*.eu"),
        ([], "web-1", None),
    ],
)
def test_host_matching(hosts: list[str], node: str, match: str | None) -> None:
    assert host_matching(hosts, node) == match


@pytest.mark.parametrize("pattern", ["web-1", "*", "n?.eu-[a-c]", "edge_[!x]*", "A.b_c-d"])
def test_host_patterns_accepted(pattern: str) -> None:
    assert host_pattern_problem(pattern) is None


def test_service_uri_round_trips() -> None:
    uri = service_uri("mesh.test", "orders")
    assert uri == "spiffe://mesh.test/service/orders"
    assert service_of_uri(uri) == ("mesh.test", "orders")
    assert service_of_uri("spiffe://mesh.test/node/orders") is None
    assert service_of_uri("https://mesh.test/service/orders") is None


def test_the_policy_resource_carries_security_only_when_set() -> None:
    plain = _service("name: web\n")
    assert not build_policy(plain).HasField("security")
    secured = _service("name: web\nsecurity: {hosts: ['web-*']}\n")
    assert list(build_policy(secured).security.hosts) == ["web-*"]


def test_identity_paths_and_the_file_watcher_config(tmp_path: Path) -> None:
    paths = identity_paths("orders", tmp_path)
    assert paths.directory == tmp_path / "orders"
    assert paths.cert == tmp_path / "orders" / "current" / "cert.pem"
    assert paths.key == tmp_path / "orders" / "current" / "key.pem"
    assert paths.ca == tmp_path / "orders" / "current" / "ca.pem"
    assert paths.file_watcher(30) == {
        "plugin_name": "file_watcher",
        "config": {
            "certificate_file": str(paths.cert),
            "private_key_file": str(paths.key),
            "ca_certificate_file": str(paths.ca),
            "refresh_interval": "30s",
        },
    }
    assert paths.file_watcher(0.5)["config"]["refresh_interval"] == "0.5s"
    with pytest.raises(ConfigError, match="refresh_interval"):
        paths.file_watcher(0)


@pytest.mark.parametrize("name", ["", "..", "a/b", "Orders", "../etc"])
def test_identity_paths_refuse_what_is_not_a_service_name(name: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="service name"):
        identity_paths(name, tmp_path)


def test_the_certs_dir_comes_from_the_argument_the_environment_or_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CERTS_DIR_ENV, raising=False)
    assert certs_dir() == DEFAULT_CERTS_DIR
    monkeypatch.setenv(CERTS_DIR_ENV, str(tmp_path / "env"))
    assert certs_dir() == tmp_path / "env"
    assert certs_dir(tmp_path / "given") == tmp_path / "given"
    assert identity_paths("orders").directory == tmp_path / "env" / "orders"
