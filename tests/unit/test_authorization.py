"""The authorization compiler: decisions (deny wins, allow rules close the service, no rules
open it), what each part of a rule matches, and the RBAC filters built from the same rules.
The real enforcement, sync and asyncio side by side, is tests/e2e/test_authorization.py."""

from __future__ import annotations

import pytest
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2

from control.config import load_documents
from control.meshctl.services import traffic_lines
from mesh.v1 import config_pb2
from mesh_core.authorization import NO_ALLOW_MATCHED, compile_rules, service_of_id
from mesh_core.errors import ConfigError
from mesh_core.validation import validate_service
from mesh_xds.transport import RBAC_ALLOW_FILTER, RBAC_DENY_FILTER, rbac_filters

SERVICE = """\
name: web
endpoints: []
security:
  hosts: [web-*]
  mode: strict
  authorization:
    - {name: no-test, action: deny, headers: {x-env: {exact: test}}}
    - {name: checkout-charge, action: allow, callers: [checkout], methods: [/shop.Pay/Charge]}
    - {action: allow, callers: ["*"], methods: ["/shop.Pay/*"], headers: {x-ro: {present: true}}}
"""
TD = "mesh.test"


def service(text: str = SERVICE) -> config_pb2.Service:
    (parsed,) = load_documents(text, "web.yaml")
    assert isinstance(parsed, config_pb2.Service)
    assert validate_service(parsed) == []
    return parsed


def peer(name: str, domain: str = TD) -> str:
    return f"spiffe://{domain}/service/{name}"


@pytest.mark.parametrize(
    ("caller", "method", "metadata", "expected"),
    [
        (peer("checkout"), "/shop.Pay/Charge", [], (True, "checkout-charge")),
        (peer("checkout"), "/shop.Pay/Refund", [], (False, NO_ALLOW_MATCHED)),
        (peer("checkout"), "/shop.Pay/Charge", [("x-env", "test")], (False, "no-test")),
        (peer("checkout", "other.td"), "/shop.Pay/Charge", [], (False, NO_ALLOW_MATCHED)),
        (peer("web"), "/shop.Pay/Charge", [], (False, NO_ALLOW_MATCHED)),
        (peer("web"), "/shop.Pay/Refund", [("x-ro", "1")], (True, "rule-2")),
        ("", "/shop.Pay/Refund", [("x-ro", "1")], (True, "rule-2")),  # any certificate
        (None, "/shop.Pay/Refund", [("x-ro", "1")], (False, NO_ALLOW_MATCHED)),  # plaintext
        (None, "/shop.Pay/Charge", [("x-env", "test")], (False, "no-test")),
    ],
)
def test_decisions(
    caller: str | None, method: str, metadata: list[tuple[str, str]], expected: tuple[bool, str]
) -> None:
    rules = compile_rules(service().security.authorization, TD)
    assert rules.decide(caller, method, metadata) == expected


def test_no_rules_is_open_and_deny_rules_alone_close_nothing_else() -> None:
    assert compile_rules([], TD).decide(None, "/a.B/C", []) == (True, "")
    deny_only = service(SERVICE.split("    - {name: checkout")[0])
    rules = compile_rules(deny_only.security.authorization, TD)
    assert rules.decide(None, "/a.B/C", []) == (True, "")
    assert rules.decide(None, "/a.B/C", [("x-env", "test")]) == (False, "no-test")


def test_the_rbac_filters_carry_the_same_rules() -> None:
    authorization = compile_rules(service().security.authorization, TD)
    deny, allow = rbac_filters(authorization)
    assert (deny.name, allow.name) == (RBAC_DENY_FILTER, RBAC_ALLOW_FILTER)
    rules = {}
    for http_filter in (deny, allow):
        config = rbac_filter_pb2.RBAC()
        assert http_filter.typed_config.Unpack(config)
        rules[http_filter.name] = config.rules
        assert config.rules.audit_logging_options.audit_condition == (
            rbac_pb2.RBAC.AuditLoggingOptions.ON_DENY
        )
    assert rules[RBAC_DENY_FILTER].action == rbac_pb2.RBAC.DENY
    assert list(rules[RBAC_DENY_FILTER].policies) == ["no-test"]
    assert rules[RBAC_ALLOW_FILTER].action == rbac_pb2.RBAC.ALLOW
    charge = rules[RBAC_ALLOW_FILTER].policies["checkout-charge"]
    assert charge.principals[0].authenticated.principal_name.exact == peer("checkout")
    assert charge.permissions[0].or_rules.rules[0].url_path.path.exact == "/shop.Pay/Charge"
    any_caller = rules[RBAC_ALLOW_FILTER].policies["rule-2"]
    assert any_caller.principals[0].authenticated.HasField("principal_name") is False
    both = any_caller.permissions[0].and_rules.rules
    assert both[0].or_rules.rules[0].url_path.path.prefix == "/shop.Pay/"
    assert both[1].header.name == "x-ro" and both[1].header.present_match
    assert rbac_filters(compile_rules([], TD)) == []


def test_service_ids() -> None:
    assert service_of_id("spiffe://td/service/web") == ("td", "web")
    assert service_of_id("spiffe://td/node/web") is None
    assert service_of_id("https://td/service/web") is None


def test_meshctl_get_shows_the_security_and_the_rules() -> None:
    lines = traffic_lines(service())
    start = lines.index("security: strict · identity held by web-*")
    assert lines[start + 1 :] == [
        "RULE             ACTION  CALLERS   METHODS           HEADERS",
        'no-test          deny    anyone    every method      header x-env exact "test"',
        "checkout-charge  allow   checkout  /shop.Pay/Charge  -",
        "rule-2           allow   *         /shop.Pay/*       header x-ro present",
        "deny rules first; a call no allow rule matches is denied",
    ]
    plain = service("name: web\nendpoints: []\nsecurity: {hosts: [web-1]}\n")
    assert traffic_lines(plain)[-2:] == [
        "security: disabled · identity held by web-1",
        "authorization: none (every caller may call every method)",
    ]


def test_validation_names_each_bad_field() -> None:
    text = (
        SERVICE
        + "    - {name: no-test, action: maybe, callers: ['*', x], methods: [nope],"
        + " headers: {grpc-x: {exact: a}}}\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_documents(text, "web.yaml")
    fields = [p.split(": ")[2] for p in str(refused.value).split("; web.yaml")]
    assert fields == [
        "security.authorization[3].action",
        "security.authorization[3].name",
        "security.authorization[3].callers",
        "security.authorization[3].methods[0]",
        "security.authorization[3].headers.grpc-x",
    ], refused.value
