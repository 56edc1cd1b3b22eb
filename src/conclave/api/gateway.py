"""etcd's JSON gateway (grpc-gateway v1, as etcd 3.4/3.5 serve it): ``POST /v3/...`` over HTTP/1.1.

Theory of operation: one table (:data:`ROUTES`) maps each gateway path of etcd's ``rpc.proto``,
``v3lock.proto`` and ``v3election.proto`` (their ``google.api.http`` annotations) to a gRPC method
path. A request's JSON body is parsed into that method's *protobuf request message* with protobuf's
own JSON mapping (``google.protobuf.json_format``, unknown fields ignored, as grpc-gateway's
decoder), and the message is handed to the *same* method handler the gRPC engines run
(``grpc_server.etcd_handlers``, looked up as the compiled edge does) with an ``EdgeContext``. The
response message goes back through ``json_format`` with etcd's options: proto field names,
64-bit integers as strings, bytes as base64, enums by name, zero values omitted. So no rule of
etcd is written twice: validation, errors and headers are the handlers'.

Errors a handler aborts with become grpc-gateway v1's body ``{"error": msg, "message": msg,
"code": grpc_code}`` with its HTTP status for that code (:data:`HTTP_STATUS`; FailedPrecondition is
412 as in etcd 3.4/3.5). A body that is not JSON is InvalidArgument with Go's decoder wording
("unexpected EOF", "invalid character 'x' looking for beginning of value"...). An empty body is an
empty request, as in grpc-gateway (its decoder's io.EOF is not an error).

Streaming RPCs (Watch, LeaseKeepAlive, Maintenance.Snapshot, Election.Observe) answer
``200`` with a chunked body: one ``{"result": <response>}`` object and a newline per chunk; an error
in the stream is one final ``{"error": {"grpc_code", "http_code", "message", "http_status"}}``
chunk (before the first response it also sets the HTTP status). For the two bidirectional RPCs the
request body is itself a stream of JSON objects (create/cancel/progress requests, keepalive
pings), read incrementally as the body arrives (both the standalone ``--listen-client-http-urls``
server and the compiled edge deliver a chunked body as it comes). The body's
end half-closes the RPC: a watch keeps running (as etcd's) until the client disconnects, a
keepalive stream ends after answering each ping. A first request object that does not parse
answers 500/Unknown as grpc-gateway does; a later one ends the request stream.

Authentication: the ``Authorization`` header becomes gRPC metadata ``authorization`` and every
request carries ``grpcgateway-accept`` (the marker etcd's auth uses to ignore a TLS client
certificate for gateway calls); ``Grpc-Metadata-<name>`` headers are passed on as ``<name>``.

``GET /version`` answers etcd 3.5's shape, ``{"etcdserver": ..., "etcdcluster": ...}``, with the
server version Maintenance.Status reports (so both agree; numeric dotted, as Patroni parses it),
the cluster version ``major.minor.0``, and Conclave's own version under ``"conclave"``.
"""

from __future__ import annotations

import base64
import codecs
import http
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format

from conclave.api import pb
from conclave.api.edge_server import EdgeContext, method_table
from conclave.api.grpc_server import etcd_handlers
from conclave.api.http import Headers, HttpResult, HttpRouter, peer_of, read_body, version_document
from conclave.wire.contract import EtcdBackend

log = logging.getLogger("conclave.api.gateway")

_KV, _LEASE, _CLUSTER, _MAINT, _AUTH = (
    "/etcdserverpb.KV/", "/etcdserverpb.Lease/", "/etcdserverpb.Cluster/", "/etcdserverpb.Maintenance/",
    "/etcdserverpb.Auth/",
)
# gateway path -> gRPC method (etcd's google.api.http annotations, additional bindings included).
ROUTES: dict[str, str] = {
    "/v3/kv/range": _KV + "Range",
    "/v3/kv/put": _KV + "Put",
    "/v3/kv/deleterange": _KV + "DeleteRange",
    "/v3/kv/txn": _KV + "Txn",
    "/v3/kv/compaction": _KV + "Compact",
    "/v3/watch": "/etcdserverpb.Watch/Watch",
    "/v3/lease/grant": _LEASE + "LeaseGrant",
    "/v3/lease/revoke": _LEASE + "LeaseRevoke",
    "/v3/kv/lease/revoke": _LEASE + "LeaseRevoke",
    "/v3/lease/keepalive": _LEASE + "LeaseKeepAlive",
    "/v3/lease/timetolive": _LEASE + "LeaseTimeToLive",
    "/v3/kv/lease/timetolive": _LEASE + "LeaseTimeToLive",
    "/v3/lease/leases": _LEASE + "LeaseLeases",
    "/v3/kv/lease/leases": _LEASE + "LeaseLeases",
    "/v3/cluster/member/add": _CLUSTER + "MemberAdd",
    "/v3/cluster/member/remove": _CLUSTER + "MemberRemove",
    "/v3/cluster/member/update": _CLUSTER + "MemberUpdate",
    "/v3/cluster/member/list": _CLUSTER + "MemberList",
    "/v3/cluster/member/promote": _CLUSTER + "MemberPromote",
    "/v3/maintenance/alarm": _MAINT + "Alarm",
    "/v3/maintenance/status": _MAINT + "Status",
    "/v3/maintenance/defragment": _MAINT + "Defragment",
    "/v3/maintenance/hash": _MAINT + "Hash",
    "/v3/maintenance/hashkv": _MAINT + "HashKV",
    "/v3/maintenance/snapshot": _MAINT + "Snapshot",
    "/v3/maintenance/transfer-leadership": _MAINT + "MoveLeader",
    "/v3/maintenance/downgrade": _MAINT + "Downgrade",
    "/v3/auth/enable": _AUTH + "AuthEnable",
    "/v3/auth/disable": _AUTH + "AuthDisable",
    "/v3/auth/status": _AUTH + "AuthStatus",
    "/v3/auth/authenticate": _AUTH + "Authenticate",
    "/v3/auth/user/add": _AUTH + "UserAdd",
    "/v3/auth/user/get": _AUTH + "UserGet",
    "/v3/auth/user/list": _AUTH + "UserList",
    "/v3/auth/user/delete": _AUTH + "UserDelete",
    "/v3/auth/user/changepw": _AUTH + "UserChangePassword",
    "/v3/auth/user/grant": _AUTH + "UserGrantRole",
    "/v3/auth/user/revoke": _AUTH + "UserRevokeRole",
    "/v3/auth/role/add": _AUTH + "RoleAdd",
    "/v3/auth/role/get": _AUTH + "RoleGet",
    "/v3/auth/role/list": _AUTH + "RoleList",
    "/v3/auth/role/delete": _AUTH + "RoleDelete",
    "/v3/auth/role/grant": _AUTH + "RoleGrantPermission",
    "/v3/auth/role/revoke": _AUTH + "RoleRevokePermission",
    "/v3/lock/lock": "/v3lockpb.Lock/Lock",
    "/v3/lock/unlock": "/v3lockpb.Lock/Unlock",
    "/v3/election/campaign": "/v3electionpb.Election/Campaign",
    "/v3/election/proclaim": "/v3electionpb.Election/Proclaim",
    "/v3/election/leader": "/v3electionpb.Election/Leader",
    "/v3/election/observe": "/v3electionpb.Election/Observe",
    "/v3/election/resign": "/v3electionpb.Election/Resign",
}

# grpc-gateway v1's HTTP status per gRPC code (runtime.HTTPStatusFromCode, as etcd 3.4/3.5 ship it).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 408,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

# etcd's gateway answers every /v3 call with these (CORS), and successful ones with the metadata header.
COMMON_HEADERS: Headers = [
    ("access-control-allow-headers", "accept, content-type, authorization"),
    ("access-control-allow-methods", "POST, GET, OPTIONS, PUT, DELETE"),
    ("access-control-allow-origin", "*"),
]
JSON_HEADERS: Headers = [*COMMON_HEADERS, ("content-type", "application/json")]
OK_HEADERS: Headers = [*JSON_HEADERS, ("grpc-metadata-content-type", "application/grpc")]
TEXT_HEADERS: Headers = [*COMMON_HEADERS, ("content-type", "text/plain; charset=utf-8"),
                         ("x-content-type-options", "nosniff")]  # fmt: skip

METADATA_PREFIX = "grpc-metadata-"
MAX_PENDING_BYTES = 8 * 1024 * 1024  # an unfinished JSON object in a request body stream


# ------------------------------------------------------------------------------------ JSON codec


class BadJson(Exception):
    """A request body that is not JSON; ``str()`` is Go's encoding/json wording."""


def _go_char(c: str) -> str:
    """A character as Go's encoding/json quotes it in a syntax error."""
    if c == "'":
        return "'\\''"
    if c == '"':
        return "'\"'"
    return "'" + json.dumps(c)[1:-1] + "'"


def _innermost_open(text: str, pos: int) -> str:
    """The bracket ('{' or '[') enclosing ``pos``, skipping strings."""
    stack: list[str] = []
    in_str = esc = False
    for c in text[:pos]:
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "{[":
            stack.append(c)
        elif c in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _cut_short(err: json.JSONDecodeError) -> bool:
    """The text ended inside a value: more data could complete it."""
    return err.pos >= len(err.doc.rstrip()) or err.msg.startswith("Unterminated string")


def go_json_error(err: json.JSONDecodeError) -> str:
    """Python's decode error said as Go's decoder says it (clients show that text)."""
    if _cut_short(err):
        return "unexpected EOF"
    text, pos = err.doc, err.pos
    c = _go_char(text[pos])
    msg = err.msg
    if msg.startswith("Expecting value"):
        return f"invalid character {c} looking for beginning of value"
    if msg.startswith("Expecting property name"):
        return f"invalid character {c} looking for beginning of object key string"
    if msg.startswith("Expecting ':'"):
        return f"invalid character {c} after object key"
    if msg.startswith("Expecting ','"):
        where = "array element" if _innermost_open(text, pos) == "[" else "object key:value pair"
        return f"invalid character {c} after {where}"
    if msg.startswith("Invalid control character"):
        return f"invalid character {c} in string literal"
    if msg.startswith("Invalid \\escape") or msg.startswith("Invalid \\u"):
        return f"invalid character {c} in string escape code"
    return msg


_DECODER = json.JSONDecoder()
_WS = " \t\r\n"


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _decode_one(text: str, pos: int) -> tuple[Any, int]:
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError as err:
        raise BadJson(go_json_error(err)) from None


def _kind(value: Any) -> str:
    return {list: "array", dict: "object", str: "string", bool: "bool", type(None): "null"}.get(type(value), "number")


_B64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def go_base64_error(text: str) -> int | None:
    """Where Go's base64.StdEncoding rejects ``text`` (the byte its error names), or None."""
    t = text.replace("\r", "").replace("\n", "")  # Go's decoder skips line breaks
    for i, c in enumerate(t):
        if c not in _B64 and c != "=":
            return i
    for q in range(0, len(t), 4):
        quantum = t[q:q + 4]
        if "=" in quantum:
            p = quantum.index("=")
            if p < 2 or quantum[p:] != "=" * (4 - p):
                return q + p
            return q + 4 if q + 4 < len(t) else None
        if len(quantum) < 4:
            return q
    return None


def _go_enum_name(enum: Any) -> str:
    package: str = enum.file.package
    name: str = enum.full_name
    return package + "." + name[len(package) + 1:].replace(".", "_")


def _check_field(field: Any, value: Any) -> Any:
    """One field's JSON value checked as Go's jsonpb checks it (json_format is laxer or differs)."""
    if value is None:
        return value
    if field.type == field.TYPE_MESSAGE:
        return _go_checks(value, field.message_type) if isinstance(value, dict) else value
    if field.type == field.TYPE_ENUM and isinstance(value, str) and value not in field.enum_type.values_by_name:
        raise BadJson(f'unknown value "{value}" for enum {_go_enum_name(field.enum_type)}')
    if field.type == field.TYPE_BYTES:
        if isinstance(value, list) and all(type(b) is int and 0 <= b < 256 for b in value):
            return base64.b64encode(bytes(value)).decode()  # Go's json reads []byte from an array too
        if not isinstance(value, str):
            raise BadJson(f"json: cannot unmarshal {_kind(value)} into Go value of type []uint8")
        at = go_base64_error(value)
        if at is not None:
            raise BadJson(f"illegal base64 data at input byte {at}")
    if field.type == field.TYPE_BOOL and not isinstance(value, bool):
        raise BadJson(f"json: cannot unmarshal {_kind(value)} into Go value of type bool")
    return value


def _go_checks(obj: dict[str, Any], desc: Any) -> dict[str, Any]:
    """``obj`` with Go's jsonpb checks applied per field (unknown names are left to be ignored)."""
    out = dict(obj)
    for name, value in obj.items():
        field = desc.fields_by_name.get(name) or desc.fields_by_camelcase_name.get(name)
        if field is None:
            continue
        if field.is_repeated and isinstance(value, list):
            out[name] = [_check_field(field, v) for v in value]
        else:
            out[name] = _check_field(field, value)
    return out


def _to_message(value: Any, cls: Any) -> Any:
    if not isinstance(value, dict):
        raise BadJson(f"json: cannot unmarshal {_kind(value)} into Go value of type map[string]json.RawMessage")
    value = _go_checks(value, cls.DESCRIPTOR)
    msg = cls()
    try:
        json_format.ParseDict(value, msg, ignore_unknown_fields=True)
    except json_format.ParseError as err:
        raise BadJson(str(err)) from None
    return msg


def parse_request(body: bytes, cls: Any) -> Any:
    """The first JSON value of ``body`` as a ``cls`` message (an empty body is an empty request;
    what follows the first value is ignored, as Go's json.Decoder does)."""
    text = body.decode("utf-8", errors="replace")
    pos = _skip_ws(text, 0)
    if pos == len(text):
        return cls()
    value, _ = _decode_one(text, pos)
    return _to_message(value, cls)


async def parse_stream(body: bytes | AsyncIterable[bytes], cls: Any) -> AsyncIterator[Any]:
    """Every JSON object of a request body stream as a ``cls`` message, each as soon as it is whole."""
    chunks: AsyncIterator[bytes] = _once(bytes(body)) if isinstance(body, bytes | bytearray) else aiter(body)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = ""
    eof = False
    while True:
        pos = _skip_ws(text, 0)
        if pos < len(text):
            try:
                value, end = _DECODER.raw_decode(text, pos)
            except json.JSONDecodeError as err:
                if eof or not _cut_short(err):  # more data will not help
                    raise BadJson(go_json_error(err)) from None
            else:
                text = text[end:]
                yield _to_message(value, cls)
                continue
        elif eof:
            return
        if len(text) > MAX_PENDING_BYTES:
            raise BadJson(f"a request object larger than {MAX_PENDING_BYTES} bytes")
        chunk = await anext(chunks, None)
        if chunk is None:
            eof = True
            text += decoder.decode(b"", final=True)
        else:
            text += decoder.decode(chunk)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def to_json(message: Any) -> dict[str, Any]:
    """A response message as etcd's gateway writes it (proto names, zero values left out)."""
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def error_body(code: grpc.StatusCode, message: str) -> bytes:
    return _dumps({"error": message, "message": message, "code": code.value[0]})


def error_result(code: grpc.StatusCode, message: str) -> HttpResult:
    return HTTP_STATUS.get(code, 500), list(JSON_HEADERS), error_body(code, message)


def stream_error_chunk(code: grpc.StatusCode, message: str) -> bytes:
    status = HTTP_STATUS.get(code, 500)
    err = {"grpc_code": code.value[0], "http_code": status, "message": message,
           "http_status": http.HTTPStatus(status).phrase}  # fmt: skip
    return _dumps({"error": err}) + b"\n"


def result_chunk(message: Any) -> bytes:
    return _dumps({"result": to_json(message)}) + b"\n"


# ---------------------------------------------------------------------------------------- gateway


def metadata_from_headers(headers: Headers) -> list[tuple[str, str]]:
    """The gRPC metadata grpc-gateway derives from HTTP headers (names are lower case)."""
    meta: list[tuple[str, str]] = []
    accept = "*/*"
    for name, value in headers:
        if name == "authorization":
            meta.append(("authorization", value))
        elif name == "accept":
            accept = value
        elif name.startswith(METADATA_PREFIX) and len(name) > len(METADATA_PREFIX):
            key = name[len(METADATA_PREFIX):]
            if not key.startswith(":"):  # pseudo keys (":tls-client-cn") are the edge's own
                meta.append((key, value))
    meta.append(("grpcgateway-accept", accept))
    return meta


@dataclass(frozen=True, slots=True)
class _Method:
    path: str
    handler: Any  # grpc.RpcMethodHandler
    request_cls: Any


def _request_classes() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for service, desc in pb.SERVICES.items():
        for m in desc.methods:
            out[f"/{service}/{m.name}"] = pb.message_class(m.input_type.full_name)
    return out


class Gateway:
    """The JSON gateway over ``backend``: an ``HttpHandler`` for ``/v3/`` plus ``/version``."""

    def __init__(self, backend: EtcdBackend, handlers: list[grpc.GenericRpcHandler] | None = None) -> None:
        self.backend = backend
        table = method_table(handlers if handlers is not None else etcd_handlers(backend))
        classes = _request_classes()
        self.routes: dict[str, _Method] = {}
        for http_path, rpc in ROUTES.items():
            if rpc in classes:
                self.routes[http_path] = _Method(rpc, table.get(rpc), classes[rpc])

    def register(self, router: HttpRouter) -> None:
        router.add("/v3/", self.handle, stream_body=True)
        router.alias("/v3beta/", "/v3/")
        router.add("/version", self.version)

    # ------------------------------------------------------------------------------- /version

    async def version(self, method: str, path: str, headers: Headers, body: Any) -> HttpResult:
        if method == "OPTIONS":
            return 200, list(COMMON_HEADERS), b""
        if method != "GET":
            return 405, list(TEXT_HEADERS), b"Method Not Allowed\n"
        return 200, [("content-type", "application/json")], _dumps(await version_document(self.backend))

    # ------------------------------------------------------------------------------------ /v3/

    async def handle(self, method: str, path: str, headers: Headers, body: Any) -> HttpResult:
        base = path.partition("?")[0]
        route = self.routes.get(base)
        if method == "OPTIONS":  # a CORS preflight: etcd answers every path with its headers
            return 200, list(COMMON_HEADERS), b""
        if route is None:
            return 404, list(TEXT_HEADERS), b"Not Found\n"
        if method != "POST":
            return 405, list(TEXT_HEADERS), b"Method Not Allowed\n"
        mh = route.handler
        if mh is None:  # a method no service implements: grpc answers UNIMPLEMENTED
            if not isinstance(body, bytes | bytearray):
                await read_body(body)
            return error_result(grpc.StatusCode.UNIMPLEMENTED, f"unknown method {route.path.rsplit('/', 1)[-1]}")
        ctx = EdgeContext(metadata_from_headers(headers), peer_of(headers))
        if mh.request_streaming:
            return await self._bidi(route, mh, ctx, body)
        raw = body if isinstance(body, bytes | bytearray) else await read_body(body)
        try:
            request = parse_request(bytes(raw), route.request_cls)
        except BadJson as err:
            return error_result(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        if mh.response_streaming:
            return await self._stream(mh.unary_stream(request, ctx), ctx)
        try:
            response = await mh.unary_unary(request, ctx)
        except grpc.aio.AbortError:
            return error_result(ctx.code, ctx.details)
        return 200, list(OK_HEADERS), _dumps(to_json(response))

    async def _bidi(self, route: _Method, mh: Any, ctx: EdgeContext, body: Any) -> HttpResult:
        """A bidirectional RPC: the request objects stream from the body (its end half-closes)."""
        requests = parse_stream(body, route.request_cls)
        try:
            first = await anext(requests, None)
        except BadJson as err:  # grpc-gateway: the first request's decode error fails the call
            return error_result(grpc.StatusCode.UNKNOWN, str(err))

        async def incoming() -> AsyncIterator[Any]:
            if first is None:
                return
            yield first
            try:
                async for request in requests:
                    yield request
            except BadJson as err:  # a later bad object ends the request stream, as grpc-gateway
                log.debug("gateway %s: request stream ended by undecodable JSON: %s", route.path, err)

        return await self._stream(mh.stream_stream(incoming(), ctx), ctx)

    async def _stream(self, responses: AsyncIterator[Any], ctx: EdgeContext) -> HttpResult:
        """A streaming response: waits for the first message (or error) to choose the status."""
        try:
            first = await anext(responses)
        except StopAsyncIteration:
            return 200, list(OK_HEADERS), _empty()
        except grpc.aio.AbortError:
            await _close(responses)
            status = HTTP_STATUS.get(ctx.code, 500)
            return status, list(JSON_HEADERS), _single(stream_error_chunk(ctx.code, ctx.details))
        return 200, list(OK_HEADERS), _chunks(first, responses, ctx)


async def _close(it: AsyncIterator[Any]) -> None:
    aclose = getattr(it, "aclose", None)
    if aclose is not None:
        await aclose()


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""


async def _single(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk


async def _chunks(first: Any, rest: AsyncIterator[Any], ctx: EdgeContext) -> AsyncIterator[bytes]:
    try:
        yield result_chunk(first)
        async for message in rest:
            yield result_chunk(message)
    except grpc.aio.AbortError:
        yield stream_error_chunk(ctx.code, ctx.details)
    finally:
        await _close(rest)


def gateway_router(backend: EtcdBackend, handlers: list[grpc.GenericRpcHandler] | None = None) -> HttpRouter:
    """A router serving the JSON gateway and ``/version`` (other helpers add ``/metrics``, ``/health``)."""
    router = HttpRouter()
    Gateway(backend, handlers).register(router)
    return router
