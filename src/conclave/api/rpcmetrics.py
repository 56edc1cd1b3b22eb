"""gRPC server metrics as go-grpc-prometheus names them (what etcd exports and its dashboards read).

Theory of operation: one :class:`RpcMetrics` per member registers ``grpc_server_started_total``,
``grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}`` and, with
``extensive`` (etcd's ``--metrics extensive``), the ``grpc_server_handling_seconds`` histogram
in the member's registry. Like go-grpc-prometheus, every method of every etcd service is
pre-initialised with all 17 status codes, so a rate() over a code that never happened reads 0
instead of "no data".

Both engines report here, each once per call: the compiled edge's server when it queues a
call's trailers (``api/edge_server.py``), grpc.aio through :meth:`RpcMetrics.interceptor`. The
cost per call is one dict lookup and two plain integer increments (a prometheus_client counter
takes a lock: ten times the cost); a collector turns the integers into the two counter families
at scrape time. Extensive mode adds a clock read and a prometheus_client histogram observation.
``grpc_server_msg_{received,sent}_total`` and ``etcd_network_client_grpc_{received,sent}_bytes_total``
count the gRPC messages and their bytes (the edge adds their lengths; grpc.aio's interceptor asks
each message its ``ByteSize()``; a client stream's requests are not seen there, only counted
by the edge). ``etcd_debugging_mvcc_watch_stream_total`` is the Watch streams started and not ended.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from conclave.api import pb

WATCH_PATH = "/etcdserverpb.Watch/Watch"
# go-grpc-prometheus's default buckets (etcd keeps them).
HANDLING_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CODES = tuple(sorted(grpc.StatusCode, key=lambda c: c.value[0]))
CODE_NAMES = {  # the names Go's codes.Code.String() gives (what grpc_code carries)
    "OK": "OK", "CANCELLED": "Canceled", "UNKNOWN": "Unknown", "INVALID_ARGUMENT": "InvalidArgument",
    "DEADLINE_EXCEEDED": "DeadlineExceeded", "NOT_FOUND": "NotFound", "ALREADY_EXISTS": "AlreadyExists",
    "PERMISSION_DENIED": "PermissionDenied", "RESOURCE_EXHAUSTED": "ResourceExhausted",
    "FAILED_PRECONDITION": "FailedPrecondition", "ABORTED": "Aborted", "OUT_OF_RANGE": "OutOfRange",
    "UNIMPLEMENTED": "Unimplemented", "INTERNAL": "Internal", "UNAVAILABLE": "Unavailable",
    "DATA_LOSS": "DataLoss", "UNAUTHENTICATED": "Unauthenticated",
}


def grpc_type(method: Any) -> str:
    """unary, client_stream, server_stream or bidi_stream (a protobuf MethodDescriptor)."""
    if method.client_streaming and method.server_streaming:
        return "bidi_stream"
    if method.client_streaming:
        return "client_stream"
    if method.server_streaming:
        return "server_stream"
    return "unary"


class _Method:
    __slots__ = ("handled", "labels", "msg_received", "msg_sent", "seconds", "started")

    def __init__(self, labels: tuple[str, str, str], seconds: Any) -> None:
        self.labels = labels  # grpc_type, grpc_service, grpc_method
        self.handled = [0] * len(CODES)  # by status code value (0..16)
        self.started = 0
        self.msg_received = 0
        self.msg_sent = 0
        self.seconds = seconds  # the histogram child (extensive), or None


class RpcMetrics:
    """The gRPC families of one member (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry, *, extensive: bool = False) -> None:
        self.extensive = extensive
        self.received_bytes = 0
        self.sent_bytes = 0
        seconds = None
        if extensive:
            seconds = Histogram("grpc_server_handling_seconds", "Histogram of response latency (seconds) of gRPC "
                                "that had been application-level handled by the server.",
                                ["grpc_type", "grpc_service", "grpc_method"], buckets=HANDLING_BUCKETS,
                                registry=registry)
        self.methods: dict[str, _Method] = {}
        for service, desc in pb.SERVICES.items():
            for m in desc.methods:
                labels = (grpc_type(m), service, m.name)
                self.methods[f"/{service}/{m.name}"] = _Method(
                    labels, seconds.labels(*labels) if seconds is not None else None)
        registry.register(_Counters(self))

    def start(self, path: str) -> float:
        """A call began; returns its start time (0.0 unless extensive)."""
        m = self.methods.get(path)
        if m is not None:
            m.started += 1
        return time.perf_counter() if self.extensive else 0.0

    def received(self, path: str, nbytes: int) -> None:
        """One request message of ``nbytes`` arrived on a call to ``path``."""
        self.received_bytes += nbytes
        m = self.methods.get(path)
        if m is not None:
            m.msg_received += 1

    def sent(self, path: str, nbytes: int) -> None:
        """One response message of ``nbytes`` went out on a call to ``path``."""
        self.sent_bytes += nbytes
        m = self.methods.get(path)
        if m is not None:
            m.msg_sent += 1

    def handled(self, path: str, code: int, started: float) -> None:
        """A call on ``path`` ended with status ``code`` (its numeric value)."""
        m = self.methods.get(path)
        if m is None:
            return
        m.handled[code if 0 <= code < len(m.handled) else 2] += 1  # 2: Unknown
        if m.seconds is not None and started:
            m.seconds.observe(time.perf_counter() - started)

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        """For the grpc.aio engine: counts every call the same way."""
        return _Interceptor(self)


class _Counters(Collector):
    """grpc_server_started_total and grpc_server_handled_total from the plain integers."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> list[Metric]:
        started = CounterMetricFamily("grpc_server_started", "Total number of RPCs started on the server.",
                                      labels=["grpc_type", "grpc_service", "grpc_method"])
        handled = CounterMetricFamily("grpc_server_handled", "Total number of RPCs completed on the server, "
                                      "regardless of success or failure.",
                                      labels=["grpc_type", "grpc_service", "grpc_method", "grpc_code"])
        msg_in = CounterMetricFamily("grpc_server_msg_received", "Total number of RPC stream messages received "
                                     "on the server.", labels=["grpc_type", "grpc_service", "grpc_method"])
        msg_out = CounterMetricFamily("grpc_server_msg_sent", "Total number of gRPC stream messages sent by the "
                                      "server.", labels=["grpc_type", "grpc_service", "grpc_method"])
        names = [CODE_NAMES[c.name] for c in CODES]
        watch_streams = 0
        for path, m in self.metrics.methods.items():
            started.add_metric(list(m.labels), m.started)
            msg_in.add_metric(list(m.labels), m.msg_received)
            msg_out.add_metric(list(m.labels), m.msg_sent)
            if path == WATCH_PATH:
                watch_streams = m.started - sum(m.handled)
            for name, n in zip(names, m.handled, strict=True):
                handled.add_metric([*m.labels, name], n)
        received = CounterMetricFamily("etcd_network_client_grpc_received_bytes",
                                       "The total number of bytes received from grpc clients.",
                                       value=self.metrics.received_bytes)
        sent = CounterMetricFamily("etcd_network_client_grpc_sent_bytes",
                                   "The total number of bytes sent to grpc clients.", value=self.metrics.sent_bytes)
        streams = GaugeMetricFamily("etcd_debugging_mvcc_watch_stream_total", "Total number of watch streams.",
                                    value=watch_streams)
        return [started, handled, msg_in, msg_out, received, sent, streams]


def _size(message: Any) -> int:
    size = getattr(message, "ByteSize", None)
    return int(size()) if size is not None else 0


def _code_of(context: Any, default: int) -> int:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return int(code.value[0])
    return int(code) if isinstance(code, int) else default


class _Call:
    """One grpc.aio call, counted: started on entry, handled with the code it ended with on exit.

    The code: the one the handler set on ``context`` (OK if none) when it returned; after an
    abort, the aborted code; after any other exception, Canceled if the client went away and
    Unknown otherwise. The exception itself is never swallowed.
    """

    __slots__ = ("context", "metrics", "path", "t0")

    def __init__(self, metrics: RpcMetrics, path: str, context: Any) -> None:
        self.metrics, self.path, self.context = metrics, path, context
        self.t0 = 0.0

    def __enter__(self) -> None:
        self.t0 = self.metrics.start(self.path)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        context = self.context
        if exc_type is None:
            code = _code_of(context, 0) if context.code() is not None else 0
        elif issubclass(exc_type, grpc.aio.AbortError):
            code = _code_of(context, 2)
        else:
            code = 1 if context.cancelled() else 2
        self.metrics.handled(self.path, code, self.t0)


class _Interceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: RpcMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        path = details.method
        if handler is None or path not in self.metrics.methods:
            return handler
        metrics = self.metrics
        if handler.unary_unary is not None or handler.stream_unary is not None:
            inner = handler.unary_unary or handler.stream_unary

            async def unary(request: Any, context: Any) -> Any:
                with _Call(metrics, path, context):
                    if handler.unary_unary is not None:
                        metrics.received(path, _size(request))
                    resp = await inner(request, context)
                    metrics.sent(path, _size(resp))
                    return resp

            if handler.unary_unary is not None:
                return handler._replace(unary_unary=unary)
            return handler._replace(stream_unary=unary)
        inner_s = handler.unary_stream or handler.stream_stream

        async def stream(request: Any, context: Any) -> Any:
            with _Call(metrics, path, context):
                if handler.unary_stream is not None:
                    metrics.received(path, _size(request))
                async for item in inner_s(request, context):
                    metrics.sent(path, _size(item))
                    yield item

        if handler.unary_stream is not None:
            return handler._replace(unary_stream=stream)
        return handler._replace(stream_stream=stream)
