"""Which route a call takes: the route matching of gRPC's xDS client (gRFC A28), written once
for the control server (validating routes) and the client library (applying the timeout of
the route a call takes, since grpcio applies route timeouts early, grpc/grpc#40633).

A route matches on the call's method (``/pkg.Service/Method`` exactly, or every method of
``/pkg.Service/*``) and on request metadata: every listed header must match. As in C-core, a
header's values are joined with ``,``; names ending in ``-bin`` and names starting with
``grpc-`` are never seen by matchers, so routes may not name them; regexes are RE2's and
match the whole value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from mesh.v1 import config_pb2
from mesh_core.errors import ConfigError

SERVICE_WILDCARD = "/*"
_METHOD = re.compile(r"/([A-Za-z_][A-Za-z0-9_.]*)/([A-Za-z_][A-Za-z0-9_]*|\*)")
_HEADER_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")

Metadata = Iterable[tuple[str, Any]]


def method_problem(method: str) -> str | None:
    """Why ``method`` is not a route's method pattern, or None when it is one."""
    if _METHOD.fullmatch(method):
        return None
    return (
        f"must be '/package.Service/Method' for one method or '/package.Service/*' for every "
        f"method of a service, got {method!r}"
    )


def header_name_problem(name: str) -> str | None:
    """Why a route may not match on the header ``name``, or None when it may."""
    if name.endswith("-bin"):
        return f"binary headers ({name!r} ends in '-bin') cannot be matched"
    if name.startswith("grpc-"):
        return f"gRPC's own headers ({name!r} starts with 'grpc-') cannot be matched"
    if not _HEADER_NAME.fullmatch(name):
        return f"must be a metadata key: lowercase letters, digits, '-', '_' and '.', got {name!r}"
    return None


def compile_regex(pattern: str) -> Any:
    """``pattern`` compiled with RE2 (what C-core matches with); ConfigError names what RE2
    refuses in it."""
    import re2  # loaded by the first regex: a process with none does not map RE2

    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error as error:
        reason = error.args[0] if error.args else error
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ConfigError(f"not an RE2 regular expression ({reason})") from None


def matches_every_call(route: config_pb2.Route) -> bool:
    """Whether ``route`` has no method or header to match: a default route."""
    return not route.match.method and not route.match.headers


def path_match(method: str) -> tuple[str, bool]:
    """A method pattern as (path, is_prefix): ``/pkg.Svc/M`` is the path itself,
    ``/pkg.Svc/*`` the prefix ``/pkg.Svc/``, and no pattern the prefix ``""`` (every call)."""
    if not method:
        return "", True
    if method.endswith(SERVICE_WILDCARD):
        return method[:-1], True
    return method, False


@dataclass(frozen=True, slots=True)
class HeaderRule:
    name: str
    kind: str  # exact, prefix, regex or present
    value: str
    regex: Any
    invert: bool

    @classmethod
    def of(cls, name: str, match: config_pb2.HeaderMatch) -> HeaderRule:
        invert = match.invert
        if match.HasField("regex"):
            return cls(name, "regex", match.regex, compile_regex(match.regex), invert)
        if match.HasField("exact"):
            return cls(name, "exact", match.exact, None, invert)
        if match.HasField("prefix"):
            return cls(name, "prefix", match.prefix, None, invert)
        # present: false is "absent", an inverted presence test
        return cls(name, "present", "", None, invert != (not match.present))

    def matches(self, value: str | None) -> bool:
        if self.kind == "present":
            found = value is not None
        elif value is None:
            return False  # a missing header matches no value test, inverted or not (A28)
        elif self.kind == "exact":
            found = value == self.value
        elif self.kind == "prefix":
            found = value.startswith(self.value)
        else:
            found = self.regex.fullmatch(value) is not None
        return found != self.invert


def header_value(metadata: Metadata, name: str) -> str | None:
    """The value a matcher sees for ``name``: every value sent under it, joined with ``,``;
    None when none was sent (``content-type`` is always ``application/grpc``, as in C-core)."""
    if name == "content-type":
        return "application/grpc"
    values = [
        value.decode() if isinstance(value, bytes) else str(value)
        for key, value in metadata
        if key.lower() == name
    ]
    return ",".join(values) if values else None


@dataclass(frozen=True, slots=True)
class RouteMatcher:
    """One route's match, compiled. ``matches`` is what gRPC's xDS client decides."""

    path: str
    prefix: bool
    headers: tuple[HeaderRule, ...]

    @classmethod
    def of(cls, match: config_pb2.RouteMatch) -> RouteMatcher:
        path, prefix = path_match(match.method)
        headers = tuple(HeaderRule.of(name, match.headers[name]) for name in sorted(match.headers))
        return cls(path, prefix, headers)

    def matches(self, method: str, metadata: Metadata) -> bool:
        if self.prefix:
            if not method.startswith(self.path):
                return False
        elif method != self.path:
            return False
        if not self.headers:
            return True
        pairs = list(metadata)
        return all(rule.matches(header_value(pairs, rule.name)) for rule in self.headers)


@dataclass(frozen=True, slots=True)
class RouteTimeouts:
    """A service's call timeouts when its routes set their own: the timeout (seconds, None
    for none) of the first route a call matches, else ``default``."""

    default: float | None
    routes: tuple[tuple[RouteMatcher, float | None], ...]

    def timeout_for(self, method: str | bytes, metadata: Metadata | None) -> float | None:
        if isinstance(method, bytes):
            method = method.decode("utf-8", "replace")
        pairs: list[tuple[str, Any]] | None = None
        for matcher, timeout in self.routes:
            if matcher.headers and pairs is None:
                pairs = list(metadata or ())
            if matcher.matches(method, pairs or ()):
                return timeout
        return self.default
