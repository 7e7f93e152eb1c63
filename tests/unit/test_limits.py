"""The limits: the token bucket (fake clock), the stream counter (mesh_core.limits), the ADS
request checks (mesh_xds.guard), the status each limit ends a call with (mesh_core.status),
the flags (control.limits)."""

from __future__ import annotations

import argparse
import threading

import grpc
import pytest
from envoy.service.discovery.v3 import discovery_pb2

from control import cli
from control.limits import add_arguments, from_args
from mesh_core.errors import ConfigError, LimitExceeded, TooManyStreams
from mesh_core.limits import Limits, RateLimiter, StreamCounter, peer_host
from mesh_core.status import status_code
from mesh_xds.guard import AdsStreamGuard
from mesh_xds.types import CLUSTER


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_admits_a_burst_then_says_when_to_retry() -> None:
    clock = FakeClock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    clock.now += 0.25
    assert limiter.acquire("a") == pytest.approx(0.25)  # half a token so far, none taken
    clock.now += 0.25
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") == pytest.approx(0.5)


def test_bucket_refills_to_burst_and_no_more() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, 2, clock=clock)
    assert limiter.acquire("a") == 0.0 and limiter.acquire("a") == 0.0
    clock.now += 60
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


def test_keys_have_their_own_buckets() -> None:
    limiter = RateLimiter(1.0, 1, clock=FakeClock())
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("a") > 0
    assert limiter.acquire("b") == 0.0


def test_rate_zero_admits_everything() -> None:
    limiter = RateLimiter(0.0, 0, clock=FakeClock())
    assert all(limiter.acquire("a") == 0.0 for _ in range(1000))


def test_full_buckets_are_forgotten_past_max_keys() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 1, clock=clock, max_keys=3)
    for key in "abc":
        limiter.acquire(key)
    clock.now += 5  # every bucket has refilled
    limiter.acquire("d")
    limiter.acquire("e")
    assert len(limiter) <= 3
    assert limiter.acquire("a") == 0.0  # a forgotten key starts full, as new


def test_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RateLimiter(-1.0, 1)
    with pytest.raises(ValueError):
        RateLimiter(1.0, 0)


def test_stream_counter_refuses_past_the_limit_until_one_closes() -> None:
    streams = StreamCounter(2)
    assert streams.acquire("n1") and streams.acquire("n1")
    assert not streams.acquire("n1")
    assert streams.count("n1") == 2
    assert streams.acquire("n2")
    streams.release("n1")
    assert streams.acquire("n1")
    for _ in range(3):
        streams.release("n1")  # one release too many is harmless
    assert streams.count("n1") == 0
    assert streams.acquire("n1")


def test_stream_counter_zero_is_unlimited() -> None:
    streams = StreamCounter(0)
    assert all(streams.acquire("n") for _ in range(100))


def test_stream_counter_is_thread_safe() -> None:
    streams = StreamCounter(1000)
    admitted: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(200):
            ok = streams.acquire("n")
            with lock:
                admitted.append(ok)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert admitted.count(True) == 1000 == streams.count("n")


def request(node: str = "", names: list[str] | None = None) -> discovery_pb2.DiscoveryRequest:
    message = discovery_pb2.DiscoveryRequest(type_url=CLUSTER, resource_names=names or [])
    if node:
        message.node.id = node
    return message


def test_guard_refuses_too_many_or_too_long_names() -> None:
    guard = AdsStreamGuard(Limits(max_names_per_request=5, max_name_length=60))
    guard.check(request("n", [f"s{i}" for i in range(5)]))
    with pytest.raises(LimitExceeded) as too_many:
        guard.check(request(names=[f"s{i}" for i in range(6)]))
    assert status_code(too_many.value) is grpc.StatusCode.INVALID_ARGUMENT
    assert too_many.value.limit == "max_names_per_request"
    assert str(too_many.value) == "6 resource names in one request; the limit is 5"
    with pytest.raises(LimitExceeded) as too_long:
        guard.check(request(names=["ok", "x" * 61]))
    assert too_long.value.limit == "max_name_length"
    assert "61 characters long; the limit is 60" in str(too_long.value)
    with pytest.raises(LimitExceeded):
        guard.check(discovery_pb2.DiscoveryRequest(type_url="t" * 61))


def test_guard_refuses_a_long_node_id_and_quotes_only_its_start() -> None:
    guard = AdsStreamGuard(Limits(max_node_id_length=100))
    with pytest.raises(LimitExceeded) as error:
        guard.check(request("n" * 5000))
    assert error.value.limit == "max_node_id_length"
    assert len(str(error.value)) < 200
    assert guard.node_id == "n" * 100


def test_guard_holds_one_place_per_stream() -> None:
    streams = StreamCounter(2)
    first, second, third = (AdsStreamGuard(Limits(), streams) for _ in range(3))
    first.take_place("n1")
    first.take_place("n1")  # the same stream counts once
    second.take_place("n1")
    with pytest.raises(LimitExceeded) as error:
        third.take_place("n1")
    assert status_code(error.value) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(error.value).startswith("node n1 already has 2 streams")
    third.release()  # holds nothing: releases nothing
    assert streams.count("n1") == 2
    first.release()
    first.release()
    assert streams.count("n1") == 1
    third.take_place("n1")
    assert streams.count("n1") == 2


def test_guard_takes_the_stream_s_place_when_the_node_is_known() -> None:
    class Session:
        node_id = "n1"

    streams = StreamCounter(1)
    first = AdsStreamGuard(Limits(), streams)
    first.on_node(Session())  # type: ignore[arg-type]
    with pytest.raises(TooManyStreams) as error:
        AdsStreamGuard(Limits(), streams).on_node(Session())  # type: ignore[arg-type]
    assert status_code(error.value) is grpc.StatusCode.RESOURCE_EXHAUSTED
    first.release()
    AdsStreamGuard(Limits(), streams).on_node(Session())  # type: ignore[arg-type]


async def test_guard_requests_passes_good_requests_and_stops_at_a_bad_one() -> None:
    async def source():  # type: ignore[no-untyped-def]
        yield request("n", ["a"])
        yield request(names=["a", "b", "c"])
        yield request(names=["never"])

    guard = AdsStreamGuard(Limits(max_names_per_request=2))
    seen = []
    with pytest.raises(LimitExceeded):
        async for item in guard.requests(source()):
            seen.append(list(item.resource_names))
    assert seen == [["a"]]


@pytest.mark.parametrize(
    ("peer", "host"),
    [
        ("ipv4:127.0.0.1:5000", "127.0.0.1"),
        ("ipv6:[::1]:5000", "::1"),
        ("ipv6:[2001:db8::7]:443", "2001:db8::7"),
        ("unix:/run/x.sock", "unix:/run/x.sock"),
        ("unix:", "unix:"),
        ("", ""),
    ],
)
def test_peer_host(peer: str, host: str) -> None:
    assert peer_host(peer) == host


def test_limits_validate_and_give_server_options() -> None:
    with pytest.raises(ConfigError):
        Limits(max_streams_per_node=-1)
    with pytest.raises(ConfigError):
        Limits(admin_writes_per_second=1, admin_write_burst=0)
    assert Limits(admin_writes_per_second=0, admin_write_burst=0).write_limiter().acquire("a") == 0
    options = dict(Limits(max_message_bytes=65536, max_send_message_bytes=0).server_options())
    assert options == {
        "grpc.max_receive_message_length": 65536,
        "grpc.max_send_message_length": -1,
    }


def test_limits_checks_name_the_limit_and_the_count() -> None:
    limits = Limits(max_services_per_apply=3, max_registrations_per_node=2)
    limits.check_apply(3)
    with pytest.raises(LimitExceeded) as error:
        limits.check_apply(4)
    assert error.value.limit == "max_services_per_apply"
    assert str(error.value) == "4 services in one request; the limit is 3"
    with pytest.raises(LimitExceeded) as error:
        limits.check_registrations("node", 3)
    assert error.value.limit == "max_registrations_per_node"
    with pytest.raises(LimitExceeded) as error:
        limits.check_registrations("n" * 2000, 0)
    assert error.value.limit == "max_node_id_length"
    limits.check_client_report("node", 1000)
    with pytest.raises(LimitExceeded):
        limits.check_client_report("node", 1001)
    Limits(max_services_per_apply=0).check_apply(10**6)


def test_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert from_args(parser.parse_args([])) == Limits()
    limits = from_args(
        parser.parse_args(
            [
                "--max-message-bytes",
                "64KiB",
                "--max-streams-per-node",
                "2",
                "--admin-writes-per-second",
                "0.5",
                "--admin-write-burst",
                "2",
                "--max-names-per-request",
                "5",
            ]
        )
    )
    assert limits.max_message_bytes == 65536
    assert limits.max_streams_per_node == 2
    assert limits.admin_writes_per_second == 0.5
    assert limits.max_names_per_request == 5
    assert from_args(parser.parse_args(["--max-message-bytes", "4M"])).max_message_bytes == 4 << 20
    for bad in (["--max-streams-per-node", "-1"], ["--admin-writes-per-second", "fast"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_serve_has_the_limit_flags() -> None:
    args = cli.build_parser().parse_args(["serve", "--max-streams-per-node", "3"])
    assert args.max_streams_per_node == 3
    assert args.admin_write_burst == Limits().admin_write_burst
