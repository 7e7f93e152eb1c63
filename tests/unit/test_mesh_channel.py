"""The mesh channels (``mesh_channel()``'s and ``aio_mesh_channel()``'s kind) over a real grpc
server on loopback, with a fake link at the seam (:class:`FakeLink`: it decides as told and
keeps the outcomes it is given): every arity and every way to call, sync and asyncio, the
outcome of each call handed to the link, the fast-fail of an open circuit in each style,
cancellation, the policy timeout, what is passed through to grpcio, and the grpc types that
callers check for."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
import pytest

from mesh_agent.client import OPEN_CIRCUIT_KEY, CircuitOpenError
from mesh_agent.client._aio_channel import AioMeshChannel
from mesh_agent.client._gate import Gate
from mesh_agent.client._link import CallTimeout, Decision
from mesh_agent.client._sync_channel import MeshChannel
from tests.conftest import eventually, wait_for

pytestmark = pytest.mark.timeout(30)

SERVICE = "test.v1.Probe"
KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
METHODS = {kind: f"/{SERVICE}/{kind.title().replace('_', '')}" for kind in KINDS}
SYNC_STYLES = [
    ("unary_unary", "call"),
    ("unary_unary", "with_call"),
    ("unary_unary", "future"),
    ("unary_stream", "iterate"),
    ("stream_unary", "call"),
    ("stream_unary", "with_call"),
    ("stream_unary", "future"),
    ("stream_stream", "iterate"),
]
AIO_STYLES = [
    ("unary_unary", "await"),
    ("unary_unary", "status"),  # the status read from the call, the response never awaited
    ("unary_stream", "iterate"),
    ("unary_stream", "read"),
    ("stream_unary", "await"),
    ("stream_unary", "write"),
    ("stream_stream", "iterate"),
    ("stream_stream", "write"),
]
AIO_CALL_TYPES = {
    "unary_unary": grpc.aio.UnaryUnaryCall,
    "unary_stream": grpc.aio.UnaryStreamCall,
    "stream_unary": grpc.aio.StreamUnaryCall,
    "stream_stream": grpc.aio.StreamStreamCall,
}
SYNC_MULTICALLABLES = {
    "unary_unary": grpc.UnaryUnaryMultiCallable,
    "unary_stream": grpc.UnaryStreamMultiCallable,
    "stream_unary": grpc.StreamUnaryMultiCallable,
    "stream_stream": grpc.StreamStreamMultiCallable,
}
AIO_MULTICALLABLES = {
    "unary_unary": grpc.aio.UnaryUnaryMultiCallable,
    "unary_stream": grpc.aio.UnaryStreamMultiCallable,
    "stream_unary": grpc.aio.StreamUnaryMultiCallable,
    "stream_stream": grpc.aio.StreamStreamMultiCallable,
}


class FakeLink:
    """:class:`AgentLink` at its seam: decides as told (``decision``), knows the policy
    timeouts in ``timeouts``; a service missing there is waited for briefly and then
    ``told`` (in ``call_timeout``/``call_timeout_async``). Keeps what it is told to record."""

    def __init__(self, timeouts: dict[str, CallTimeout] | None = None) -> None:
        self.timeouts: dict[str, CallTimeout] = {"probe": None} if timeouts is None else timeouts
        self.decision: tuple[Decision, float] = (Decision.ADMIT, 0.0)
        self.told: CallTimeout = None
        self.waits = 0
        self.recorded: list[tuple[str, bool]] = []
        self.fail_record = False

    def watch(self, service: str) -> None:
        pass

    def decide(self, service: str) -> tuple[Decision, float]:
        return self.decision

    def call_timeout(self, service: str, limit: float | None = None) -> CallTimeout:
        self.waits += 1
        time.sleep(0.02)
        return self.told

    async def call_timeout_async(self, service: str, limit: float | None = None) -> CallTimeout:
        self.waits += 1
        await asyncio.sleep(0.02)
        return self.told

    def record(self, service: str, code: str, latency: float, *, probe: bool = False) -> None:
        if self.fail_record:
            raise RuntimeError("the link is broken")
        assert service == "probe" and latency >= 0
        self.recorded.append((code, probe))

    def reject(self) -> None:
        self.decision = (Decision.REJECT, time.time() + 60)

    def codes(self) -> list[str]:
        return [code for code, _ in self.recorded]


class Backend:
    """A grpc server with one method per arity; a request ``fail`` is answered UNAVAILABLE,
    ``slow`` after a second. Counts the calls that reached it."""

    def __init__(self) -> None:
        self.calls = 0
        self.metadata: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(8), handlers=[self._handlers()])
        self.target = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _seen(self, first: bytes, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.calls += 1
            self.metadata.append({k: v for k, v in context.invocation_metadata()})  # type: ignore[misc]
        if first == b"fail":
            context.abort(grpc.StatusCode.UNAVAILABLE, "told to fail")
        if first == b"slow":
            time.sleep(1.0)

    def _handlers(self) -> grpc.GenericRpcHandler:
        def unary_unary(request: bytes, context: grpc.ServicerContext) -> bytes:
            self._seen(request, context)
            return request

        def unary_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
            self._seen(request, context)
            yield from (request, request)

        def stream_unary(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
            items = list(requests)
            self._seen(items[0], context)
            return b"".join(items)

        def stream_stream(
            requests: Iterator[bytes], context: grpc.ServicerContext
        ) -> Iterator[bytes]:
            # Every request read before answering: a status sent while the client still
            # writes can reach a grpc.aio client as INTERNAL "Internal error from Core"
            # (its write fails first), whatever the status was.
            items = list(requests)
            self._seen(items[0], context)
            yield from items

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary),
                "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream),
                "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary),
                "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream),
            },
        )


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    server = Backend()
    yield server
    server.server.stop(None)


@pytest.fixture
def link() -> FakeLink:
    return FakeLink()


@pytest.fixture
def channel(backend: Backend, link: FakeLink) -> Iterator[MeshChannel]:
    with MeshChannel(grpc.insecure_channel(backend.target), Gate(link, "probe")) as mesh:  # type: ignore[arg-type]
        yield mesh


def _request(kind: str, payload: bytes) -> Any:
    return iter([payload, b"-x"]) if kind.startswith("stream") else payload


# -- sync ------------------------------------------------------------------------------------


def sync_call(channel: grpc.Channel, kind: str, style: str, payload: bytes) -> list[bytes]:
    """One call in ``style``; asserts the grpc types a caller may check for on the way."""
    multicallable = getattr(channel, kind)(METHODS[kind])
    assert isinstance(multicallable, SYNC_MULTICALLABLES[kind])
    request = _request(kind, payload)
    if style == "call":
        return [multicallable(request, timeout=5)]
    if style == "with_call":
        response, call = multicallable.with_call(request, timeout=5)
        assert isinstance(call, grpc.Call) and call.code() is grpc.StatusCode.OK
        return [response]
    if style == "future":
        future = multicallable.future(request, timeout=5)
        assert isinstance(future, grpc.Future) and isinstance(future, grpc.Call)
        return [future.result()]
    responses = multicallable(request, timeout=5)
    assert isinstance(responses, grpc.Call) and isinstance(responses, grpc.Future)
    return list(responses)


@pytest.mark.parametrize(("kind", "style"), SYNC_STYLES)
def test_sync_calls_hand_their_outcome_to_the_link(
    channel: MeshChannel, link: FakeLink, kind: str, style: str
) -> None:
    assert isinstance(channel, grpc.Channel)
    assert sync_call(channel, kind, style, b"ok")[0].startswith(b"ok")
    wait_for(lambda: link.codes() == ["OK"], 5, "the OK outcome")
    with pytest.raises(grpc.RpcError) as failed:
        sync_call(channel, kind, style, b"fail")
    assert isinstance(failed.value, grpc.Call)
    assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
    assert failed.value.details() == "told to fail"
    wait_for(lambda: link.codes() == ["OK", "UNAVAILABLE"], 5, "the failure's outcome")


@pytest.mark.parametrize(("kind", "style"), SYNC_STYLES)
def test_sync_calls_fail_fast_as_before_when_the_circuit_is_open(
    channel: MeshChannel, link: FakeLink, backend: Backend, kind: str, style: str
) -> None:
    link.reject()
    before = backend.calls
    multicallable = getattr(channel, kind)(METHODS[kind])
    request = _request(kind, b"ok")
    if style in ("call", "with_call"):
        with pytest.raises(CircuitOpenError) as raised:
            getattr(multicallable, "__call__" if style == "call" else style)(request, timeout=5)
        error: Any = raised.value
    else:
        # future() and streaming calls return it as a finished, failed call.
        invoke = multicallable.future if style == "future" else multicallable
        error = invoke(request, timeout=5)
        assert isinstance(error, CircuitOpenError) and error.done()
        assert isinstance(error, grpc.Future) and isinstance(error, grpc.Call)
        with pytest.raises(CircuitOpenError):
            error.result() if style == "future" else next(iter(error))
    assert isinstance(error, grpc.RpcError)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert "circuit for service 'probe' is open until" in error.details()
    assert dict(error.trailing_metadata())[OPEN_CIRCUIT_KEY] == "open"
    assert backend.calls == before and link.recorded == []


def test_cancelled_sync_calls_are_not_recorded(channel: MeshChannel, link: FakeLink) -> None:
    future = channel.unary_unary(METHODS["unary_unary"]).future(b"slow", timeout=5)
    responses = channel.unary_stream(METHODS["unary_stream"])(b"slow", timeout=5)
    time.sleep(0.1)
    assert future.cancel() and responses.cancel()
    assert future.code() is grpc.StatusCode.CANCELLED
    assert responses.code() is grpc.StatusCode.CANCELLED
    channel.unary_unary(METHODS["unary_unary"])(b"ok", timeout=5)
    assert link.codes() == ["OK"]


def test_the_policy_timeout_is_each_sync_calls_deadline(backend: Backend) -> None:
    link = FakeLink({"probe": 0.3})
    with MeshChannel(grpc.insecure_channel(backend.target), Gate(link, "probe")) as channel:  # type: ignore[arg-type]
        for kind, style in (("unary_unary", "call"), ("stream_stream", "iterate")):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as failed:
                sync_call(channel, kind, style, b"slow")
            assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert 0.25 < time.monotonic() - started < 0.9
            # The caller's earlier deadline wins.
            started = time.monotonic()
            with pytest.raises(grpc.RpcError):
                channel.unary_unary(METHODS["unary_unary"])(b"slow", timeout=0.1)
            assert time.monotonic() - started < 0.25
    assert link.codes() == ["DEADLINE_EXCEEDED"] * 4


def test_the_first_sync_call_waits_for_the_policy(backend: Backend) -> None:
    link = FakeLink({})
    link.told = 0.3  # what the agent says, once waited for
    with MeshChannel(grpc.insecure_channel(backend.target), Gate(link, "probe")) as channel:  # type: ignore[arg-type]
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as failed:
            channel.unary_unary(METHODS["unary_unary"])(b"slow", timeout=5)
    assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # 0.3 s from when the call was made, the wait for the policy included.
    assert 0.25 < time.monotonic() - started < 0.9 and link.waits == 1


def test_sync_channels_stack_under_other_interceptors(channel: MeshChannel, link: FakeLink) -> None:
    class Seen(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
        def __init__(self) -> None:
            self.methods: list[str] = []

        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            self.methods.append(details.method)
            return continuation(details, request)

        def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
            self.methods.append(details.method)
            return continuation(details, requests)

    seen = Seen()
    outer = grpc.intercept_channel(channel, seen)
    for style in ("call", "with_call", "future"):
        assert sync_call(outer, "unary_unary", style, b"ok") == [b"ok"]
    assert sync_call(outer, "stream_stream", "iterate", b"ok") == [b"ok", b"-x"]
    assert seen.methods == [METHODS["unary_unary"]] * 3 + [METHODS["stream_stream"]]
    wait_for(lambda: link.codes() == ["OK"] * 4, 5, "four outcomes")


def test_the_sync_channel_is_the_wrapped_channels_connectivity_and_lifetime(
    backend: Backend, link: FakeLink
) -> None:
    raw = grpc.insecure_channel(backend.target)
    channel = MeshChannel(raw, Gate(link, "probe"))  # type: ignore[arg-type]
    grpc.channel_ready_future(channel).result(timeout=5)  # subscribe / unsubscribe
    with channel as entered:
        assert entered is channel
    with pytest.raises(ValueError, match="closed channel"):
        raw.unary_unary(METHODS["unary_unary"])(b"ok", timeout=1)


class FakeMultiCallable:
    """grpcio's multicallable at the seam: remembers what it is called with."""

    def __init__(self, seen: list[tuple[str, dict[str, Any]]], name: str) -> None:
        self.seen, self.name = seen, name

    def _call(self, style: str, request: Any, **kwargs: Any) -> Any:
        self.seen.append((f"{self.name}.{style}", kwargs))
        return FakeCall()

    def __call__(self, request: Any, **kwargs: Any) -> Any:
        return self._call("__call__", request, **kwargs)

    def with_call(self, request: Any, **kwargs: Any) -> Any:
        return None, self._call("with_call", request, **kwargs)

    def future(self, request: Any, **kwargs: Any) -> Any:
        return self._call("future", request, **kwargs)


class FakeCall:
    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        pass


class FakeChannel:
    """A grpc channel at the seam: hands out :class:`FakeMultiCallable` and remembers how
    each was asked for."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.made: list[tuple[str, str, Any, Any, Any]] = []

    def __getattr__(self, kind: str) -> Callable[..., FakeMultiCallable]:
        def make(method: str, serializer: Any, deserializer: Any, registered: Any) -> Any:
            self.made.append((kind, method, serializer, deserializer, registered))
            return FakeMultiCallable(self.seen, kind)

        return make


def test_everything_a_call_carries_is_passed_through() -> None:
    credentials = grpc.access_token_call_credentials("token")
    carried = {
        "metadata": (("k", "v"),),
        "credentials": credentials,
        "wait_for_ready": True,
        "compression": grpc.Compression.Gzip,
    }
    fake = FakeChannel()
    sync = MeshChannel(fake, Gate(FakeLink({"probe": 2.0}), "probe"))  # type: ignore[arg-type]
    for kind in KINDS:
        multicallable = getattr(sync, kind)(f"/s/{kind}", str.encode, bytes.decode, True)
        styles = ["__call__"] + (["with_call", "future"] if kind.endswith("unary") else [])
        for style in styles:
            getattr(multicallable, style)(b"r", timeout=9.0, **carried)
    aio = AioMeshChannel(fake, Gate(FakeLink({"probe": 2.0}), "probe"))  # type: ignore[arg-type]
    for kind in KINDS:
        multicallable = getattr(aio, kind)(f"/s/{kind}", str.encode, bytes.decode, True)
        assert isinstance(multicallable, AIO_MULTICALLABLES[kind])
        multicallable(b"r", timeout=9.0, **carried)
    # Generated stubs pass _registered_method: it reaches grpcio, with the (de)serializers.
    assert fake.made == [(k, f"/s/{k}", str.encode, bytes.decode, True) for k in KINDS] * 2
    assert [name for name, _ in fake.seen] == [
        "unary_unary.__call__",
        "unary_unary.with_call",
        "unary_unary.future",
        "unary_stream.__call__",
        "stream_unary.__call__",
        "stream_unary.with_call",
        "stream_unary.future",
        "stream_stream.__call__",
        *(f"{kind}.__call__" for kind in KINDS),
    ]
    for name, kwargs in fake.seen:
        assert 1.95 < kwargs.pop("timeout") <= 2.0, name  # the policy's, earlier than 9 s
        assert kwargs == carried, name


# -- asyncio ---------------------------------------------------------------------------------


async def aio_call(channel: grpc.aio.Channel, kind: str, style: str, payload: bytes) -> list[Any]:
    """One call in ``style``; asserts the grpc.aio types a caller may check for."""
    multicallable = getattr(channel, kind)(METHODS[kind])
    assert isinstance(multicallable, AIO_MULTICALLABLES[kind])
    if style == "write":
        call = multicallable(timeout=5)
    else:
        call = multicallable(_request(kind, payload), timeout=5)
    assert isinstance(call, grpc.aio.Call) and isinstance(call, AIO_CALL_TYPES[kind])
    if style == "await":
        return [await call]
    if style == "status":
        code = await call.code()
        if code is not grpc.StatusCode.OK:
            raise grpc.aio.AioRpcError(
                code,
                await call.initial_metadata(),
                await call.trailing_metadata(),
                await call.details(),
            )
        return [code]
    if style == "iterate":
        return [response async for response in call]
    if style == "write":
        await call.write(payload)
        await call.write(b"-x")
        await call.done_writing()
        if kind == "stream_unary":
            return [await call]
    responses = []
    while (response := await call.read()) is not grpc.aio.EOF:
        responses.append(response)
    return responses


@pytest.fixture(params=["known", "waited"])
def aio_link(request: pytest.FixtureRequest) -> FakeLink:
    """A link that knows the service's policy (the usual case: grpc.aio's own call objects),
    or one that has it waited for on every call (a call made before the agent told it)."""
    return FakeLink({"probe": None} if request.param == "known" else {})


@pytest.mark.parametrize(("kind", "style"), AIO_STYLES)
async def test_aio_calls_hand_their_outcome_to_the_link(
    backend: Backend, aio_link: FakeLink, kind: str, style: str
) -> None:
    link = aio_link
    async with AioMeshChannel(
        grpc.aio.insecure_channel(backend.target),
        Gate(link, "probe"),  # type: ignore[arg-type]
    ) as channel:
        assert isinstance(channel, grpc.aio.Channel)
        assert (await aio_call(channel, kind, style, b"ok"))[0]
        await eventually(lambda: link.codes() == ["OK"], 5, "the OK outcome")
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await aio_call(channel, kind, style, b"fail")
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
        assert failed.value.details() == "told to fail"
        await eventually(lambda: link.codes() == ["OK", "UNAVAILABLE"], 5, "the failure")
    assert link.waits == (0 if link.timeouts else 2)


@pytest.mark.parametrize(("kind", "style"), AIO_STYLES)
async def test_aio_calls_fail_fast_as_before_when_the_circuit_is_open(
    backend: Backend, aio_link: FakeLink, kind: str, style: str
) -> None:
    link = aio_link
    link.reject()
    before = backend.calls
    async with AioMeshChannel(
        grpc.aio.insecure_channel(backend.target),
        Gate(link, "probe"),  # type: ignore[arg-type]
    ) as channel:
        multicallable = getattr(channel, kind)(METHODS[kind])
        call = (
            multicallable(timeout=5)
            if style == "write"
            else multicallable(_request(kind, b"ok"), timeout=5)
        )
        assert isinstance(call, grpc.aio.Call) and isinstance(call, AIO_CALL_TYPES[kind])
        if style == "write":
            # As through grpc.aio's interceptors: the call is over before the first write.
            with pytest.raises(asyncio.InvalidStateError):
                await call.write(b"ok")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            if style in ("await", "status") or kind == "stream_unary":
                await call
            elif style == "iterate":
                _ = [response async for response in call]
            else:
                await call.read()
        assert await call.code() is grpc.StatusCode.UNAVAILABLE and call.done()
        assert not call.cancelled() and not call.cancel()
        for error_or_call in (raised.value, call):
            trailing = error_or_call.trailing_metadata()
            if asyncio.iscoroutine(trailing):
                trailing = await trailing
            assert dict(trailing)[OPEN_CIRCUIT_KEY] == "open"
        assert "circuit for service 'probe' is open until" in await call.details()
        seen: list[Any] = []
        call.add_done_callback(seen.append)
        assert seen == [call]
    assert backend.calls == before and link.recorded == []


async def test_cancelled_aio_calls_are_not_recorded(backend: Backend, link: FakeLink) -> None:
    async with AioMeshChannel(
        grpc.aio.insecure_channel(backend.target),
        Gate(link, "probe"),  # type: ignore[arg-type]
    ) as channel:
        call = channel.unary_unary(METHODS["unary_unary"])(b"slow", timeout=5)
        task = asyncio.ensure_future(call.code())
        await asyncio.sleep(0.1)
        assert call.cancel() and call.cancelled()
        assert await task is grpc.StatusCode.CANCELLED
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await channel.unary_unary(METHODS["unary_unary"])(b"ok", timeout=5) == b"ok"
    await eventually(lambda: link.codes() == ["OK"], 5, "the OK outcome alone")


async def test_an_aio_call_waiting_for_the_policy_is_a_call_already(backend: Backend) -> None:
    link = FakeLink({})
    link.told = 0.3
    async with AioMeshChannel(
        grpc.aio.insecure_channel(backend.target),
        Gate(link, "probe"),  # type: ignore[arg-type]
    ) as channel:
        unary = channel.unary_unary(METHODS["unary_unary"])
        # Cancelled before it could start: nothing is sent, nothing recorded.
        before = backend.calls
        early = unary(b"ok", timeout=5)
        assert not early.done() and early.time_remaining() is None
        seen: list[Any] = []
        early.add_done_callback(seen.append)
        assert early.cancel()
        assert await early.code() is grpc.StatusCode.CANCELLED
        assert early.cancelled() and early.done() and seen == [early]
        with pytest.raises(asyncio.CancelledError):
            await early
        # The policy's 0.3 s, from when the call was made.
        started = time.monotonic()
        slow = unary(b"slow", timeout=5)
        slow.add_done_callback(seen.append)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await slow
        assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.25 < time.monotonic() - started < 0.9
        assert seen == [early, slow]
        assert await slow.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert await slow.details() == "Deadline Exceeded"
        assert backend.calls == before + 1
    assert link.codes() == ["DEADLINE_EXCEEDED"]


async def test_the_policy_timeout_is_each_aio_calls_deadline(backend: Backend) -> None:
    link = FakeLink({"probe": 0.3})
    async with AioMeshChannel(
        grpc.aio.insecure_channel(backend.target),
        Gate(link, "probe"),  # type: ignore[arg-type]
    ) as channel:
        for kind, style in (("unary_unary", "await"), ("stream_stream", "iterate")):
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await aio_call(channel, kind, style, b"slow")
            assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            assert 0.25 < time.monotonic() - started < 0.9
    await eventually(lambda: link.codes() == ["DEADLINE_EXCEEDED"] * 2, 5, "two outcomes")


async def test_a_failing_link_never_breaks_an_aio_call(backend: Backend) -> None:
    # grpc.aio runs done-callbacks inside the call's own completion: an error raised there
    # would fail the caller's call.
    link = FakeLink()
    link.fail_record = True
    async with AioMeshChannel(
        grpc.aio.insecure_channel(backend.target),
        Gate(link, "probe"),  # type: ignore[arg-type]
    ) as channel:
        for kind, style in AIO_STYLES:
            assert (await aio_call(channel, kind, style, b"ok"))[0], (kind, style)


async def test_the_aio_channel_is_the_wrapped_channels_connectivity_and_lifetime(
    backend: Backend, link: FakeLink
) -> None:
    raw = grpc.aio.insecure_channel(backend.target)
    channel = AioMeshChannel(raw, Gate(link, "probe"))  # type: ignore[arg-type]
    async with channel as entered:
        assert entered is channel
        assert channel.get_state() is grpc.ChannelConnectivity.IDLE
        changed = asyncio.ensure_future(
            channel.wait_for_state_change(grpc.ChannelConnectivity.IDLE)
        )
        await asyncio.wait_for(channel.channel_ready(), 5)
        await asyncio.wait_for(changed, 5)
        assert channel.get_state() is grpc.ChannelConnectivity.READY
    with pytest.raises(grpc.aio.UsageError):  # closed with the mesh channel
        await raw.unary_unary(METHODS["unary_unary"])(b"ok", timeout=1)
