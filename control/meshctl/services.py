"""``meshctl get services NAME`` as text: the traffic rules of one service, pure functions of
the stored ``mesh.v1.Service`` (and the endpoints nodes registered for it), no I/O.

For a ``ring_hash`` service, a line says what calls are hashed on and the ring's bounds as
gRPC builds it (``hash: header x-user-id (ring 1024-4096)``). Two tables follow, when the
service has subsets or routes:

- the subsets: name, labels, how many endpoints each selects (the service's endpoints and
  those nodes registered, counted as the control server serves them: an address listed twice
  counts once, the operator's entry first) and the resources serving it (``orders/v2``);
- the routes in the order they are tried (first match wins), named as in the
  RouteConfiguration (``route-<index>`` when unnamed), with what each matches, where it sends
  calls, its timeout and retry (``(service)`` when inherited from the service's policy) and
  its faults; last the default route the control server adds when the operator's routes do
  not end with one matching every call.

What it shows follows ``control/resources.py`` (``build_route``, ``_route_entry``,
``build_load_assignment``), which meshctl may not import: it loads the xDS protos.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

from control.meshctl.status import table_lines
from mesh.v1 import admin_pb2, config_pb2, node_pb2
from mesh_core.authorization import ALLOW, rule_name
from mesh_core.durations import format_duration
from mesh_core.names import subset_cluster_name
from mesh_core.policy import (
    DEFAULT_MIN_RING_SIZE,
    RING_HASH,
    RING_SIZE_CAP,
    SECURITY_DISABLED,
    SPILL_OVER_BELOW,
)
from mesh_core.routing import matches_every_call
from mesh_core.slo import alert_burn, burn_threshold, burn_windows, latency_objectives

DEFAULT_ROUTE = "default"
SEPARATOR = " · "


def served_endpoints(
    service: config_pb2.Service, registered: Iterable[node_pb2.Registration] = ()
) -> list[config_pb2.Endpoint]:
    """The endpoints the control server serves for ``service``: the operator's, then those
    nodes registered for it at addresses not listed yet (as
    ``control.registry.merge_registered`` merges them)."""
    endpoints = list(service.endpoints)
    present = {e.address.lower() for e in endpoints}
    for registration in registered:
        key = registration.address.lower()
        if registration.service != service.name or key in present:
            continue
        present.add(key)
        endpoints.append(
            config_pb2.Endpoint(
                address=registration.address,
                zone=registration.zone,
                labels=dict(registration.labels),
                draining=registration.draining,
            )
        )
    return endpoints


def _selects(labels: Mapping[str, str], endpoint: config_pb2.Endpoint) -> bool:
    return all(endpoint.labels.get(key) == value for key, value in labels.items())


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={labels[key]}" for key in sorted(labels)) or "-"


def _number(value: float) -> str:
    return f"{round(value, 2):g}"


def _weights(to: Mapping[str, int]) -> list[tuple[str, int]]:
    return [(name, weight) for name, weight in sorted(to.items()) if weight > 0]


def split_text(to: Mapping[str, int]) -> str:
    """Where a route sends calls: ``v1 90% · v2 10%`` (shares of the weights' sum), or
    ``whole service``."""
    weights = _weights(to)
    if not weights:
        return "whole service"
    total = sum(weight for _, weight in weights)
    return SEPARATOR.join(f"{name} {_number(100 * weight / total)}%" for name, weight in weights)


def _header_text(name: str, header: config_pb2.HeaderMatch) -> str:
    if header.HasField("exact"):
        test = f"exact {json.dumps(header.exact)}"
    elif header.HasField("prefix"):
        test = f"prefix {json.dumps(header.prefix)}"
    elif header.HasField("regex"):
        test = f"regex {json.dumps(header.regex)}"
    else:
        # present: false is an inverted presence test, as the builder serves it
        absent = header.invert != (not header.present)
        return f"header {name} {'absent' if absent else 'present'}"
    return f"header {name} {'not ' if header.invert else ''}{test}"


def match_text(match: config_pb2.RouteMatch) -> str:
    """What a route matches: ``method=/shop.Orders/Refund and header x-canary exact "yes"``,
    or ``every call``."""
    parts = [f"method={match.method}"] if match.method else []
    parts += [_header_text(name, match.headers[name]) for name in sorted(match.headers)]
    return " and ".join(parts) or "every call"


def retry_text(retry: config_pb2.RetryPolicy) -> str:
    if retry.attempts <= 1:
        return "none"
    codes = ",".join(retry.retry_on) or "UNAVAILABLE"
    return f"{retry.attempts} attempts on {codes}"


def fault_text(fault: config_pb2.FaultPolicy) -> str:
    """``abort UNAVAILABLE 20% · delay 50ms 10% · at most 5 active``, or ``-``."""
    parts = []
    if fault.HasField("abort"):
        parts.append(f"abort {fault.abort.status} {_number(fault.abort.percent)}%")
    if fault.HasField("delay"):
        fixed = format_duration(fault.delay.fixed)
        parts.append(f"delay {fixed} {_number(fault.delay.percent)}%")
    if parts and fault.max_active_faults:
        parts.append(f"at most {fault.max_active_faults} active")
    return SEPARATOR.join(parts) or "-"


def _policy_cells(service: config_pb2.Service, route: config_pb2.Route) -> tuple[str, str]:
    """The route's timeout and retry, or the service's marked ``(service)``, or ``-``."""
    own, base = route.policy, service.policy
    if own.HasField("timeout"):
        timeout = format_duration(own.timeout)
    elif base.HasField("timeout"):
        timeout = f"{format_duration(base.timeout)} (service)"
    else:
        timeout = "-"
    if own.HasField("retry"):
        retry = retry_text(own.retry)
    elif base.HasField("retry"):
        retry = f"{retry_text(base.retry)} (service)"
    else:
        retry = "-"
    return timeout, retry


def route_rows(service: config_pb2.Service) -> list[tuple[str, ...]]:
    """The ROUTE table: the service's routes in order, then the default route when the
    control server adds one."""
    rows: list[tuple[str, ...]] = [("ROUTE", "MATCH", "TO", "TIMEOUT", "RETRY", "FAULT")]
    for index, route in enumerate(service.routes):
        timeout, retry = _policy_cells(service, route)
        fault = fault_text(route.fault) if route.HasField("fault") else "-"
        rows.append(
            (
                route.name or f"route-{index}",
                match_text(route.match),
                split_text(route.to),
                timeout,
                retry,
                fault,
            )
        )
    if not service.routes or not matches_every_call(service.routes[-1]):
        timeout, retry = _policy_cells(service, config_pb2.Route())
        match = "every other call" if service.routes else "every call"
        rows.append((DEFAULT_ROUTE, f"{match} (implicit)", "whole service", timeout, retry, "-"))
    return rows


def subset_rows(
    service: config_pb2.Service, endpoints: Sequence[config_pb2.Endpoint]
) -> list[tuple[str, ...]]:
    """The SUBSET table: each subset's labels, the endpoints it selects among ``endpoints``
    (how many of them drain; a subset a route sends to but with no endpoint says its calls
    fail) and its Cluster and ClusterLoadAssignment."""
    targets = {name for route in service.routes for name, _ in _weights(route.to)}
    rows: list[tuple[str, ...]] = [("SUBSET", "LABELS", "ENDPOINTS", "CLUSTER")]
    for subset in service.subsets:
        chosen = [e for e in endpoints if _selects(subset.labels, e)]
        draining = sum(1 for e in chosen if e.draining)
        count = str(len(chosen))
        if draining:
            count += f" ({draining} draining)"
        elif not chosen and subset.name in targets:
            count += " (calls routed to it fail)"
        rows.append(
            (
                subset.name,
                _labels(subset.labels),
                count,
                subset_cluster_name(service.name, subset.name),
            )
        )
    return rows


def hash_text(policy: config_pb2.Policy) -> str | None:
    """What a ``ring_hash`` service hashes calls on, with the ring's bounds as gRPC builds it
    (unset sizes are the defaults, and gRPC caps both at 4096): ``hash: header x-user-id
    (ring 1024-4096)``, ``hash: channel (ring 16-64)``, or that calls hash at random. None
    for other policies."""
    if policy.lb != RING_HASH:
        return None
    if not policy.HasField("hash"):
        return "hash: none (each call hashes at random, spreading like round robin)"
    hashed = policy.hash
    low = hashed.min_ring_size if hashed.HasField("min_ring_size") else DEFAULT_MIN_RING_SIZE
    high = hashed.max_ring_size if hashed.HasField("max_ring_size") else RING_SIZE_CAP
    what = "channel" if hashed.channel else f"header {hashed.header}"
    return f"hash: {what} (ring {min(low, RING_SIZE_CAP)}-{min(high, RING_SIZE_CAP)})"


def traffic_lines(
    service: config_pb2.Service, registered: Iterable[node_pb2.Registration] = ()
) -> list[str]:
    """What ``meshctl get services NAME`` adds for ``service``, each part after a blank
    line: what ring_hash hashes on, its zones when its endpoints span several, the subsets
    (counting the endpoints in ``registered`` too, and saying how many those added), the
    routes, its security (mode, hosts, authorization rules) and its objective; nothing when
    it has none of them."""
    hashed = hash_text(service.policy)
    lines: list[str] = ["", hashed] if hashed else []
    endpoints = served_endpoints(service, registered)
    if len({endpoint.zone for endpoint in endpoints}) > 1:
        lines += ["", *table_lines(zone_rows(endpoints)), locality_line(service.policy.locality)]
    if service.subsets:
        lines += ["", *table_lines(subset_rows(service, endpoints))]
        added = len(endpoints) - len(service.endpoints)
        if added:
            lines.append(f"(the subsets count {added} endpoint(s) registered by nodes)")
    if service.subsets or service.routes:
        lines += ["", *table_lines(route_rows(service))]
    if service.HasField("security"):
        lines += ["", *security_lines(service.security)]
    if service.policy.HasField("slo"):
        lines += ["", slo_line(service.policy)]
    return lines


def slo_line(policy: config_pb2.Policy) -> str:
    """The objective and when node agents warn that it is at risk: ``slo: success 99.9%,
    p99 300ms · degrading at a burn rate of 10x over 5s and 30s``."""
    slo = policy.slo
    parts = [f"success {slo.success!r}%"] if slo.success else []
    parts += [f"{name} {target * 1000:g}ms" for name, target, _ in latency_objectives(slo)]
    short, long = burn_windows(policy)
    threshold = burn_threshold(slo)
    budgets = [1 - slo.success / 100] if 0 < slo.success < 100 else []
    budgets += [budget for _, _, budget in latency_objectives(slo)]
    capped = sorted({alert_burn(threshold, b) for b in budgets if 0 < b < 1} - {threshold})
    extra = f" ({', '.join(f'{c:g}x' for c in capped)} for the looser budgets)" if capped else ""
    return (
        f"slo: {', '.join(parts) or 'none'}{SEPARATOR}degrading at a burn rate of "
        f"{threshold:g}x{extra} over {short:g}s and {long:g}s"
    )


def security_lines(security: config_pb2.ServiceSecurity) -> list[str]:
    """The service's mode, who may hold its identity, and its authorization rules in the
    order they are listed (deny rules are checked first whatever their place)."""
    hosts = ", ".join(security.hosts) or "no node"
    lines = [f"security: {security.mode or SECURITY_DISABLED}{SEPARATOR}identity held by {hosts}"]
    rules = security.authorization
    if not rules:
        return [*lines, "authorization: none (every caller may call every method)"]
    rows: list[tuple[str, ...]] = [("RULE", "ACTION", "CALLERS", "METHODS", "HEADERS")]
    for index, rule in enumerate(rules):
        callers = ", ".join(rule.callers) or "anyone"
        methods = ", ".join(rule.methods) or "every method"
        headers = ", ".join(_header_text(n, rule.headers[n]) for n in sorted(rule.headers))
        rows.append((rule_name(rule, index), rule.action, callers, methods, headers or "-"))
    closing = (
        "deny rules first; a call no allow rule matches is denied"
        if any(rule.action == ALLOW for rule in rules)
        else "deny rules only: every other call is allowed"
    )
    return [*lines, *table_lines(rows), closing]


def locality_line(locality: config_pb2.LocalityPolicy) -> str:
    """How callers with a zone are served the service's zones (``policy.locality``)."""
    if locality.HasField("prefer_own_zone") and not locality.prefer_own_zone:
        return "(every zone at priority 0, by weight: prefer_own_zone is false)"
    spill = locality.spill_over_below if locality.HasField("spill_over_below") else SPILL_OVER_BELOW
    return f"(a caller's own zone first, then the others; the next joins below {spill:.0%} usable)"


def zone_rows(endpoints: Sequence[config_pb2.Endpoint]) -> list[tuple[str, ...]]:
    """Each zone of the endpoints served: how many, and the locality weight (their total)."""
    counts: dict[str, int] = {}
    weights: dict[str, int] = {}
    for endpoint in endpoints:
        counts[endpoint.zone] = counts.get(endpoint.zone, 0) + 1
        weights[endpoint.zone] = weights.get(endpoint.zone, 0) + (endpoint.weight or 1)
    rows: list[tuple[str, ...]] = [("ZONE", "ENDPOINTS", "WEIGHT")]
    rows += [(zone or "-", str(counts[zone]), str(weights[zone])) for zone in sorted(counts)]
    return rows


def registrations_of(
    nodes: Iterable[admin_pb2.NodeStatus], service: str
) -> list[node_pb2.Registration]:
    """The registrations for ``service`` among ``GetStatusResponse.nodes`` (a node with
    several streams is listed once per stream), by node id."""
    seen: set[str] = set()
    found: list[tuple[str, node_pb2.Registration]] = []
    for node in nodes:
        if node.node_id in seen:
            continue
        seen.add(node.node_id)
        found += [(node.node_id, r) for r in node.registrations if r.service == service]
    return [r for _, r in sorted(found, key=lambda pair: pair[0])]
