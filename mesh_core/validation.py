"""The semantic rules of a service: what a valid ``mesh.v1.Service`` is, beyond its shape.
Shared by the control server (its config loader and admin API) and the agent (a local
service's registration becomes an endpoint of one); each problem names its field path.
Nothing a rule accepts may produce a resource gRPC's xDS clients reject."""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from typing import Any

from google.protobuf.duration_pb2 import Duration

from mesh.v1 import config_pb2
from mesh_core.authorization import ACTIONS, ANY_AUTHENTICATED, rule_name
from mesh_core.durations import format_duration, nanos
from mesh_core.errors import ConfigError
from mesh_core.identity import host_pattern_problem
from mesh_core.policy import (
    DEFAULT_MIN_RING_SIZE,
    GRPC_STATUS_NAMES,
    LB_POLICIES,
    MAX_AUTHORIZATION_RULES,
    MAX_DURATION,
    MAX_HALF_OPEN_PROBES,
    MAX_ROUTE_WEIGHT,
    MAX_ROUTES,
    MAX_SECURITY_HOSTS,
    MAX_SUBSETS,
    MAX_WEIGHT,
    RETRYABLE_STATUS_NAMES,
    RING_HASH,
    RING_SIZE_CAP,
    SECURITY_MODES,
    SECURITY_STRICT,
    UINT32_MAX,
    UNSUPPORTED_LB_POLICIES,
)
from mesh_core.routing import (
    compile_regex,
    header_name_problem,
    matches_every_call,
    method_problem,
)
from mesh_core.slo import (
    MAX_LONG_WINDOW,
    alert_burn,
    burn_threshold,
    burn_windows,
    success_budget,
)

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_SUBSET = re.compile(_LABEL)
_LABEL_KEY = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?")
_RULE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,63}")
MAX_LABEL_VALUE = 253


def join_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))


def validate_service(svc: Any) -> list[str]:
    """Semantic checks of a ``mesh.v1.Service``; each problem reads ``field.path: message``.
    An empty list means the service is valid."""
    return [f"{path}: {message}" for path, message in validate_problems(svc)]


def validate_problems(svc: config_pb2.Service) -> list[tuple[str, str]]:
    p = _Problems()
    _check_name(p, svc.name)
    _check_endpoints(p, svc.endpoints)
    if svc.HasField("policy"):
        _check_policy(p, svc.policy)
    subsets = _check_subsets(p, svc.subsets)
    _check_routes(p, svc.routes, subsets)
    if svc.HasField("security"):
        _check_security(p, svc.security, "security")
    return p.items


def validate_warnings(svc: config_pb2.Service) -> list[tuple[str, str]]:
    """What a valid service may not do as its author expects, as (field path, message):
    served as written, but worth a word from ``meshctl apply`` and ``meshctl validate``."""
    p = _Problems()
    policy = svc.policy
    if policy.lb == RING_HASH and not policy.HasField("hash"):
        p.add(
            "policy.lb",
            "ring_hash without policy.hash: each call hashes at random and spreads like "
            "round robin; add hash: {header: NAME} or hash: {channel: true}",
        )
    if policy.lb == RING_HASH and policy.HasField("hash"):
        for i, route in enumerate(svc.routes):
            if sum(1 for weight in route.to.values() if weight > 0) >= 2:
                p.add(
                    f"routes[{i}].to",
                    "not sticky across subsets: the split is chosen before the hash, so "
                    "calls with the same hash may go to different subsets (the hash keeps "
                    "them on one endpoint within each)",
                )
    _warn_security(p, svc)
    _warn_slo(p, svc.policy)
    return p.items


def _warn_slo(p: _Problems, policy: config_pb2.Policy) -> None:
    budget = success_budget(policy.slo)
    failure_rate = policy.circuit_breaker.failure_rate
    if budget is None or not 0 < budget < 1 or failure_rate <= 0:
        return
    warns_at = alert_burn(burn_threshold(policy.slo), budget) * budget
    if warns_at >= failure_rate:
        p.add(
            "policy.slo.success",
            f"the error-budget alert needs {warns_at:.0%} of calls failing, the breaker opens "
            f"at {failure_rate:.0%}: the breaker's own trend still warns, but the objective "
            "will not; lower the burn threshold or raise the objective",
        )


def _warn_security(p: _Problems, svc: config_pb2.Service) -> None:
    security = svc.security
    if "*" in security.hosts:
        p.add(
            "security.hosts",
            f"'*' lets every node of the mesh hold the identity of {svc.name!r}; name the "
            "nodes (or a pattern such as web-*) that run it",
        )
    if security.mode != SECURITY_STRICT and any(r.callers for r in security.authorization):
        p.add(
            "security.authorization",
            "rules name callers but the mode is not strict: a plaintext caller shows no "
            "identity, so it matches only rules without callers",
        )
    if security.mode == SECURITY_STRICT and not security.hosts:
        p.add(
            "security.mode",
            "strict with no hosts: no node may hold the service's identity, so none of its "
            "endpoints could serve mTLS; list the nodes that run it in security.hosts",
        )


def service_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a service (None: it can). A service's name is also a
    resource name, a directory name on nodes, and part of its SPIFFE identity."""
    if not name:
        return "required"
    if len(name) > 253 or not _NAME.fullmatch(name):
        return (
            f"must be a lowercase DNS name (letters a-z, digits and '-', starting and ending "
            f"with a letter or digit, labels separated by '.'), got {name!r}"
        )
    return None


def _check_name(p: _Problems, name: str) -> None:
    problem = service_name_problem(name)
    if problem:
        p.add("name", problem)


def address_problem(address: str) -> str | None:
    """What is wrong with ``address`` as an endpoint's ``IP:PORT`` (IPv6 in brackets), or
    None."""
    if not address:
        return "required"
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
        if not sep:
            return f"must be host:port with an IPv6 host in brackets, got {address!r}"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"invalid IPv6 address {host!r} in {address!r}"
    else:
        host, sep, port = address.rpartition(":")
        if not sep or not host:
            return f"must be host:port, got {address!r}"
        if ":" in host:
            return f"IPv6 hosts must be in brackets, like [::1]:50051, got {address!r}"
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return (
                f"host must be an IP address (xDS clients connect to addresses, they do not "
                f"resolve names), got {host!r}"
            )
    if not port.isascii() or not port.isdigit():
        return f"invalid port {port!r} in {address!r}"
    if len(port.lstrip("0")) > 5:
        return f"port must be between 1 and 65535, got a number of {len(port)} digits"
    if not 1 <= int(port) <= 65535:
        return f"port must be between 1 and 65535, got {int(port)}"
    return None


def _check_endpoints(p: _Problems, endpoints: Sequence[Any]) -> None:
    seen: dict[str, int] = {}
    for i, ep in enumerate(endpoints):
        path = f"endpoints[{i}]"
        problem = address_problem(ep.address)
        if problem:
            p.add(f"{path}.address", problem)
        else:
            key = ep.address.lower()
            if key in seen:
                p.add(
                    f"{path}.address",
                    f"duplicate address {ep.address!r}, also endpoints[{seen[key]}]",
                )
            else:
                seen[key] = i
        if ep.weight > MAX_WEIGHT:
            p.add(f"{path}.weight", f"must be at most {MAX_WEIGHT}, got {ep.weight}")
        _check_labels(p, ep.labels, f"{path}.labels")
    total = sum(min(ep.weight, MAX_WEIGHT) or 1 for ep in endpoints)
    if total > UINT32_MAX:
        p.add(
            "endpoints",
            f"the weights add up to {total}, more than xDS allows ({UINT32_MAX}); "
            "lower them or split the service",
        )


def _check_duration(
    p: _Problems, msg: Any, name: str, path: str, *, required: str | None = None
) -> int | None:
    """Checks a Duration field is within (0, 1 day]; returns its nanoseconds when set."""
    full = join_path(path, name)
    if not msg.HasField(name):
        if required:
            p.add(full, required)
        return None
    d: Duration = getattr(msg, name)
    total = nanos(d)
    if total <= 0:
        p.add(full, f"must be greater than 0, got {format_duration(d)}")
    elif total > nanos(MAX_DURATION):
        p.add(full, f"must be at most 24h (1 day), got {format_duration(d)}")
    return total


def _check_rate(p: _Problems, value: float, path: str) -> None:
    if not 0.0 <= value <= 1.0:
        p.add(path, f"must be between 0 and 1, got {value!r}")


def _check_percent(p: _Problems, value: int, path: str) -> None:
    if value > 100:
        p.add(path, f"must be between 0 and 100, got {value}")


def _check_statuses(
    p: _Problems, names: Sequence[str], path: str, allowed: Sequence[str], what: str
) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        item = f"{path}[{i}]"
        if name not in allowed:
            if name in GRPC_STATUS_NAMES:
                p.add(item, f"{name!r} is not {what}; expected one of {', '.join(allowed)}")
            else:
                p.add(
                    item,
                    f"unknown gRPC status {name!r}; expected one of {', '.join(allowed)}",
                )
        elif name in seen:
            p.add(item, f"duplicate status {name!r}")
        seen.add(name)


def _check_policy(p: _Problems, policy: Any) -> None:
    _check_duration(p, policy, "timeout", "policy")
    if policy.lb not in LB_POLICIES:
        supported = ", ".join(x for x in LB_POLICIES if x)
        reason = UNSUPPORTED_LB_POLICIES.get(policy.lb)
        if reason is not None:
            p.add("policy.lb", f"{policy.lb!r} is not supported: {reason}; use one of {supported}")
        else:
            p.add(
                "policy.lb",
                f"unknown load balancing policy {policy.lb!r}; expected one of {supported}",
            )
    if policy.HasField("retry"):
        _check_retry(p, policy.retry, "policy.retry")
    if policy.HasField("circuit_breaker"):
        _check_breaker(p, policy.circuit_breaker, "policy.circuit_breaker")
    if policy.HasField("outlier_detection"):
        _check_outlier(p, policy.outlier_detection, "policy.outlier_detection")
    if policy.HasField("health_check"):
        _check_health(p, policy.health_check, "policy.health_check")
    if policy.locality.HasField("spill_over_below"):
        _check_rate(p, policy.locality.spill_over_below, "policy.locality.spill_over_below")
    if policy.HasField("hash"):
        _check_hash(p, policy, "policy.hash")
    if policy.HasField("slo"):
        _check_slo(p, policy, "policy.slo")


def _check_slo(p: _Problems, policy: config_pb2.Policy, path: str) -> None:
    slo = policy.slo
    if not slo.success and not slo.HasField("latency"):
        p.add(path, "needs an objective: success (like 99.9%) or latency (like {p99: 300ms})")
    if slo.success and not (math.isfinite(slo.success) and 0 < slo.success < 100):
        p.add(f"{path}.success", f"must be above 0% and below 100%, got {slo.success!r}%")
    if slo.HasField("latency"):
        lpath = f"{path}.latency"
        fields = [fd.name for fd in slo.latency.DESCRIPTOR.fields]
        if not any(slo.latency.HasField(name) for name in fields):
            p.add(lpath, f"needs at least one quantile: {', '.join(fields)}")
        for name in fields:
            _check_duration(p, slo.latency, name, lpath)
    if not slo.HasField("burn"):
        return
    bpath = f"{path}.burn"
    threshold = slo.burn.threshold
    if threshold and not (math.isfinite(threshold) and 1 < threshold <= 1000):
        p.add(f"{bpath}.threshold", f"must be above 1 and at most 1000, got {threshold!r}")
    short_ns = _check_duration(p, slo.burn, "short_window", bpath)
    long_ns = _check_duration(p, slo.burn, "long_window", bpath)
    if (short_ns is not None and short_ns <= 0) or (long_ns is not None and long_ns <= 0):
        return
    short, long = burn_windows(policy)
    if long > MAX_LONG_WINDOW:
        p.add(
            f"{bpath}.long_window",
            f"must be at most {MAX_LONG_WINDOW:g}s, got {long:g}s"
            + ("" if long_ns is not None else " (three times the breaker's window)"),
        )
    if long <= short:
        own = long_ns is not None
        p.add(
            f"{bpath}.{'long_window' if own else 'short_window'}",
            f"the long window ({long:g}s{'' if own else ', three times the breaker window'}) "
            f"must be longer than the short window ({short:g}s"
            f"{'' if short_ns is not None else ', half the breaker window'})",
        )


def _check_retry(p: _Problems, retry: Any, path: str) -> None:
    if not 1 <= retry.attempts <= 5:
        p.add(f"{path}.attempts", "must be between 1 and 5")
    _check_statuses(p, retry.retry_on, f"{path}.retry_on", RETRYABLE_STATUS_NAMES, "retryable")
    if retry.HasField("backoff"):
        bpath = f"{path}.backoff"
        base = _check_duration(p, retry.backoff, "base", bpath, required="required")
        top = _check_duration(p, retry.backoff, "max", bpath)
        if base is not None and top is not None and base > 0 and top < base:
            p.add(
                f"{bpath}.max",
                f"must be at least base ({format_duration(retry.backoff.base)}), "
                f"got {format_duration(retry.backoff.max)}",
            )


def _check_breaker(p: _Problems, cb: Any, path: str) -> None:
    _check_rate(p, cb.failure_rate, f"{path}.failure_rate")
    needs_window = cb.failure_rate != 0.0 or cb.HasField("slow_call")
    _check_duration(
        p,
        cb,
        "window",
        path,
        required="required when failure_rate or slow_call is set" if needs_window else None,
    )
    open_for = _check_duration(p, cb, "open_for", path)
    max_open_for = _check_duration(p, cb, "max_open_for", path)
    if open_for is not None and max_open_for is not None and 0 < max_open_for < open_for:
        p.add(
            f"{path}.max_open_for",
            f"must be at least open_for ({format_duration(cb.open_for)}), "
            f"got {format_duration(cb.max_open_for)}",
        )
    if cb.half_open_probes > MAX_HALF_OPEN_PROBES:
        p.add(
            f"{path}.half_open_probes",
            f"must be at most {MAX_HALF_OPEN_PROBES}, got {cb.half_open_probes}",
        )
    if cb.HasField("slow_call"):
        spath = f"{path}.slow_call"
        _check_duration(p, cb.slow_call, "threshold", spath, required="required")
        _check_rate(p, cb.slow_call.rate, f"{spath}.rate")
    _check_statuses(
        p, cb.failure_codes, f"{path}.failure_codes", GRPC_STATUS_NAMES, "a failure status"
    )


def _check_outlier(p: _Problems, od: Any, path: str) -> None:
    _check_duration(p, od, "interval", path)
    base = _check_duration(p, od, "base_ejection_time", path)
    top = _check_duration(p, od, "max_ejection_time", path)
    if base is not None and top is not None and 0 < top < base:
        p.add(
            f"{path}.max_ejection_time",
            f"must be at least base_ejection_time ({format_duration(od.base_ejection_time)}), "
            f"got {format_duration(od.max_ejection_time)}",
        )
    _check_percent(p, od.max_ejection_percent, f"{path}.max_ejection_percent")
    if od.HasField("failure_percentage"):
        fp = od.failure_percentage
        fpath = f"{path}.failure_percentage"
        _check_percent(p, fp.threshold, f"{fpath}.threshold")
        _check_percent(p, fp.enforcement_percentage, f"{fpath}.enforcement_percentage")
    if od.HasField("success_rate"):
        sr = od.success_rate
        _check_percent(p, sr.enforcement_percentage, f"{path}.success_rate.enforcement_percentage")


def _check_health(p: _Problems, hc: Any, path: str) -> None:
    interval = _check_duration(p, hc, "interval", path)
    timeout = _check_duration(p, hc, "timeout", path)
    if interval is not None and timeout is not None and 0 < interval < timeout:
        p.add(
            f"{path}.timeout",
            f"must be at most interval ({format_duration(hc.interval)}), "
            f"got {format_duration(hc.timeout)}",
        )
    # unhealthy_threshold / healthy_threshold: 0 means "use the default"; any other is fine.


def _check_hash(p: _Problems, policy: config_pb2.Policy, path: str) -> None:
    """What ring_hash hashes on: only under ring_hash, on exactly one of a header a route
    could match or the channel, with a ring gRPC will build as asked."""
    if policy.lb != RING_HASH:
        got = f"lb {policy.lb!r}" if policy.lb else "no lb (round_robin)"
        p.add(
            path,
            f"is used only by lb: ring_hash, got {got}; set lb: ring_hash or remove hash",
        )
    hash_policy = policy.hash
    if bool(hash_policy.header) == hash_policy.channel:
        got = "both" if hash_policy.channel else "neither"
        p.add(
            path,
            f"needs exactly one of header (a metadata key, like header: x-user-id) or "
            f"channel: true; got {got}",
        )
    if hash_policy.header:
        problem = header_name_problem(hash_policy.header)
        if problem:
            p.add(f"{path}.header", problem)
    _check_ring_sizes(p, hash_policy, path)


def _ring_size_problem(size: int) -> str | None:
    if size < 1:
        return f"must be at least 1, got {size}"
    if size > RING_SIZE_CAP:
        return (
            f"must be at most {RING_SIZE_CAP}, got {size}: gRPC caps the ring at "
            f"{RING_SIZE_CAP:,} entries by default, so a larger ring is never built"
        )
    return None


def _check_ring_sizes(p: _Problems, hash_policy: config_pb2.HashPolicy, path: str) -> None:
    """Each size within [1, 4096], and the maximum at least the minimum, the default
    minimum (1024) when only the maximum is set: gRPC and Envoy both reject a ring whose
    minimum exceeds its maximum."""
    sizes_ok = True
    for name in ("min_ring_size", "max_ring_size"):
        if hash_policy.HasField(name):
            problem = _ring_size_problem(getattr(hash_policy, name))
            if problem:
                p.add(f"{path}.{name}", problem)
                sizes_ok = False
    if not sizes_ok or not hash_policy.HasField("max_ring_size"):
        return
    top = hash_policy.max_ring_size
    if hash_policy.HasField("min_ring_size"):
        if top < hash_policy.min_ring_size:
            p.add(
                f"{path}.max_ring_size",
                f"must be at least min_ring_size ({hash_policy.min_ring_size}), got {top}",
            )
    elif top < DEFAULT_MIN_RING_SIZE:
        p.add(
            f"{path}.max_ring_size",
            f"must be at least min_ring_size, which is {DEFAULT_MIN_RING_SIZE} when unset; "
            f"got {top}: set min_ring_size too (at most {top})",
        )


def _check_labels(p: _Problems, labels: Any, path: str) -> None:
    for key in sorted(labels):
        if not _LABEL_KEY.fullmatch(key):
            p.add(
                join_path(path, key),
                f"label names are letters, digits, '.', '_', '-' and '/' (at most 253, "
                f"starting and ending with a letter or digit), got {key!r}",
            )
        if len(labels[key]) > MAX_LABEL_VALUE:
            p.add(join_path(path, key), f"at most {MAX_LABEL_VALUE} characters")


def _check_entry_name(
    p: _Problems, name: str, listed: str, index: int, seen: dict[str, int], what: str
) -> None:
    """The name of entry ``index`` of a service's ``listed`` (subsets, routes): a DNS label,
    unique among ``seen`` (name -> index), which it joins."""
    path = f"{listed}[{index}].name"
    if not _SUBSET.fullmatch(name):
        p.add(
            path,
            f"must be a DNS label (letters a-z, digits and '-', at most 63), got {name!r}",
        )
    elif name in seen:
        p.add(path, f"duplicate {what} {name!r}, also {listed}[{seen[name]}]")
    else:
        seen[name] = index


def _check_subsets(p: _Problems, subsets: Sequence[Any]) -> set[str]:
    """Checks the subsets; returns the names routes may send to."""
    if len(subsets) > MAX_SUBSETS:
        p.add("subsets", f"at most {MAX_SUBSETS} subsets, got {len(subsets)}")
    names: dict[str, int] = {}
    for i, subset in enumerate(subsets):
        path = f"subsets[{i}]"
        if not subset.name:
            p.add(f"{path}.name", "required")
        else:
            _check_entry_name(p, subset.name, "subsets", i, names, "subset")
        if not subset.labels:
            p.add(
                f"{path}.labels",
                "required: a subset is the endpoints that carry all of its labels",
            )
        _check_labels(p, subset.labels, f"{path}.labels")
    return set(names)


def _check_routes(p: _Problems, routes: Sequence[Any], subsets: set[str]) -> None:
    if len(routes) > MAX_ROUTES:
        p.add("routes", f"at most {MAX_ROUTES} routes, got {len(routes)}")
    names: dict[str, int] = {}
    for i, route in enumerate(routes):
        path = f"routes[{i}]"
        if route.name:
            _check_entry_name(p, route.name, "routes", i, names, "route name")
        if matches_every_call(route) and i < len(routes) - 1:
            p.add(
                f"{path}.match",
                f"matches every call, so the {len(routes) - 1 - i} route(s) after it would "
                "never be used: a route without a match (the default route) must be the last",
            )
        if route.HasField("match"):
            _check_match(p, route.match, f"{path}.match")
        _check_split(p, route.to, subsets, f"{path}.to")
        if route.HasField("policy"):
            _check_duration(p, route.policy, "timeout", f"{path}.policy")
            if route.policy.HasField("retry"):
                _check_retry(p, route.policy.retry, f"{path}.policy.retry")
        if route.HasField("fault"):
            _check_fault(p, route.fault, f"{path}.fault")


def _check_match(p: _Problems, match: Any, path: str) -> None:
    if match.method:
        problem = method_problem(match.method)
        if problem:
            p.add(f"{path}.method", problem)
    _check_headers(p, match.headers, f"{path}.headers")


def _check_headers(p: _Problems, headers: Any, path: str) -> None:
    """Header matches by name (a route's match, an authorization rule)."""
    for name in sorted(headers):
        hpath = join_path(path, name)
        problem = header_name_problem(name)
        if problem:
            p.add(hpath, problem)
        header = headers[name]
        kinds = [k for k in ("exact", "prefix", "regex", "present") if header.HasField(k)]
        if len(kinds) != 1:
            got = f"got {', '.join(kinds)}" if kinds else "got none"
            p.add(hpath, f"needs exactly one of exact, prefix, regex or present; {got}")
            continue
        if kinds == ["prefix"] and not header.prefix:
            p.add(f"{hpath}.prefix", "must not be empty (use present: true for any value)")
        if kinds == ["regex"]:
            try:
                compile_regex(header.regex)
            except ConfigError as error:
                p.add(f"{hpath}.regex", str(error))


def _check_split(p: _Problems, to: Any, subsets: set[str], path: str) -> None:
    total = 0
    for name in sorted(to):
        if name not in subsets:
            known = ", ".join(sorted(subsets)) if subsets else "none are declared"
            p.add(join_path(path, name), f"unknown subset {name!r} (subsets: {known})")
        if to[name] > MAX_ROUTE_WEIGHT:
            p.add(join_path(path, name), f"must be at most {MAX_ROUTE_WEIGHT}, got {to[name]}")
        total += to[name]
    if to and total == 0:
        p.add(path, "the weights add up to 0: at least one subset needs a weight above 0")


def _check_fault(p: _Problems, fault: Any, path: str) -> None:
    if not fault.HasField("delay") and not fault.HasField("abort"):
        p.add(path, "needs a delay, an abort or both")
    if fault.HasField("delay"):
        dpath = f"{path}.delay"
        _check_duration(p, fault.delay, "fixed", dpath, required="required")
        _check_share(p, fault.delay.percent, f"{dpath}.percent")
    if fault.HasField("abort"):
        apath = f"{path}.abort"
        status = fault.abort.status
        if not status:
            p.add(f"{apath}.status", f"required: one of {', '.join(GRPC_STATUS_NAMES)}")
        elif status not in GRPC_STATUS_NAMES:
            p.add(
                f"{apath}.status",
                f"unknown gRPC status {status!r}; expected one of {', '.join(GRPC_STATUS_NAMES)}",
            )
        _check_share(p, fault.abort.percent, f"{apath}.percent")


def _check_share(p: _Problems, percent: float, path: str) -> None:
    if not 0.0 <= percent <= 100.0 or percent != percent:
        p.add(path, f"must be between 0 and 100, got {percent!r}")
    elif percent and percent < 0.0001:
        p.add(path, f"must be 0 or at least 0.0001 (one call in a million), got {percent!r}")


def _check_security(p: _Problems, security: config_pb2.ServiceSecurity, path: str) -> None:
    """Who may hold the service's identity (node ids or patterns, see
    :func:`mesh_core.identity.host_pattern_problem`) and the mode callers reach it in."""
    if len(security.hosts) > MAX_SECURITY_HOSTS:
        p.add(f"{path}.hosts", f"at most {MAX_SECURITY_HOSTS} entries, got {len(security.hosts)}")
    seen: dict[str, int] = {}
    for i, pattern in enumerate(security.hosts):
        problem = host_pattern_problem(pattern)
        if problem:
            p.add(f"{path}.hosts[{i}]", problem)
        elif pattern in seen:
            p.add(f"{path}.hosts[{i}]", f"duplicate entry {pattern!r}, also hosts[{seen[pattern]}]")
        else:
            seen[pattern] = i
    if security.mode not in SECURITY_MODES:
        allowed = ", ".join(m for m in SECURITY_MODES if m)
        p.add(f"{path}.mode", f"unknown mode {security.mode!r}; expected one of {allowed}")
    _check_authorization(p, security.authorization, f"{path}.authorization")


def _check_authorization(p: _Problems, rules: Any, path: str) -> None:
    """The rules' actions, names, callers (service names or ``*``), methods and headers."""
    if len(rules) > MAX_AUTHORIZATION_RULES:
        p.add(path, f"at most {MAX_AUTHORIZATION_RULES} rules, got {len(rules)}")
    names: dict[str, int] = {}
    for i, rule in enumerate(rules):
        rpath = f"{path}[{i}]"
        if rule.action not in ACTIONS:
            got = f"got {rule.action!r}" if rule.action else "required"
            p.add(f"{rpath}.action", f"must be allow or deny; {got}")
        if rule.name and not _RULE_NAME.fullmatch(rule.name):
            p.add(
                f"{rpath}.name",
                f"must be 1-63 letters, digits, '-', '_' or '.', got {rule.name!r}",
            )
        name = rule_name(rule, i)
        if name in names:
            p.add(f"{rpath}.name", f"duplicate rule name {name!r}, also {path}[{names[name]}]")
        names[name] = i
        if ANY_AUTHENTICATED in rule.callers and len(rule.callers) > 1:
            p.add(
                f"{rpath}.callers",
                "'*' already admits every caller with a certificate of the mesh; give '*' "
                "or service names, not both",
            )
        for j, caller in enumerate(rule.callers):
            problem = None if caller == ANY_AUTHENTICATED else service_name_problem(caller)
            if problem:
                p.add(f"{rpath}.callers[{j}]", problem)
        for j, method in enumerate(rule.methods):
            problem = method_problem(method)
            if problem:
                p.add(f"{rpath}.methods[{j}]", problem)
        _check_headers(p, rule.headers, f"{rpath}.headers")
