"""The JSON gateway on a real member: the client port (compiled edge) and --listen-client-http-urls.

One `conclave serve` member serves both. The endpoint-by-endpoint comparison with etcd is
test_gateway_etcd_diff.py; these tests check what Patroni and etcd3gw rely on, the streaming
request bodies only the standalone listener reads incrementally, and (without a server) the JSON
codec, the Authorization header and the one-mapping rule.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from conclave.api import gateway as gw
from conclave.api import pb
from conclave.api.edge_server import available
from conclave.api.grpc_server import service_handler

from .gateway_support import BodyStream, Http, b64, http_port, single_member, unb64


def _wait_leader(client: Http) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if client.post("/v3/maintenance/status", {}).json.get("leader"):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise AssertionError("no leader within 20 s")


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Http]]:
    """``http``: the python engine with --listen-client-http-urls; ``edge``: HTTP/1.1 on the client port."""
    port = http_port()
    clusters = [single_member(Path(tmp_path_factory.mktemp("gw-http")), "conclave", http_port=port,
                              extra=("--grpc-engine", "python"))]  # fmt: skip
    clients = {"http": Http(f"127.0.0.1:{port}")}
    try:
        if available():
            clusters.append(single_member(Path(tmp_path_factory.mktemp("gw-edge")), "conclave"))
            clients["edge"] = Http(clusters[1].endpoints[0])
        for client in clients.values():
            _wait_leader(client)
        yield clients
    finally:
        for cluster in clusters:
            cluster.stop()


PORTS = ["http", "edge"]


def _client(clients: dict[str, Http], port: str) -> Http:
    if port not in clients:
        pytest.skip("the compiled edge is not built")
    return clients[port]


@pytest.mark.parametrize("port", PORTS)
def test_version_is_etcd_35_numeric_plus_conclave(member: Any, port: str) -> None:
    reply = _client(member, port).get("/version")
    assert reply.status == 200
    doc = reply.json
    # Patroni: tuple(int(x) for x in s.split('.')) on both, and >= (3, 4) picks the /v3 prefix.
    server = tuple(int(x) for x in doc["etcdserver"].split("."))
    cluster = tuple(int(x) for x in doc["etcdcluster"].split("."))
    assert server[:2] == (3, 5) and cluster == (3, 5, 0)
    assert doc["conclave"]
    status = _client(member, port).post("/v3/maintenance/status", {}).json
    assert status["version"] == doc["etcdserver"]  # one source for both


@pytest.mark.parametrize("port", PORTS)
def test_kv_json_conventions(member: Any, port: str) -> None:
    c = _client(member, port)
    key = b64(f"/conv/{port}")
    put = c.post("/v3/kv/put", {"key": key, "value": b64("v1")})
    assert put.status == 200 and put.headers["content-type"] == "application/json"
    rev = put.json["header"]["revision"]
    assert isinstance(rev, str) and int(rev) > 1  # int64 as a string
    again = c.post("/v3/kv/put", {"key": key, "value": b64("v2"), "prev_kv": True}).json
    assert unb64(again["prev_kv"]["value"]) == "v1" and again["prev_kv"]["mod_revision"] == rev
    got = c.post("/v3/kv/range", {"key": key, "serializable": True}).json
    kv = got["kvs"][0]
    # Patroni's cache: the put's header revision is the key's new mod_revision.
    assert kv["mod_revision"] == again["header"]["revision"] and kv["version"] == "2" and got["count"] == "1"
    assert "lease" not in kv  # zero values are left out
    missing = c.post("/v3/kv/range", {"key": b64("/conv/none")}).json
    assert set(missing) == {"header"}
    deleted = c.post("/v3/kv/deleterange", {"key": key}).json
    assert deleted["deleted"] == "1"


@pytest.mark.parametrize("port", PORTS)
def test_patroni_leader_txns(member: Any, port: str) -> None:
    c = _client(member, port)
    lease = c.post("/v3/lease/grant", {"TTL": 30}).json["ID"]
    leader = b64(f"/svc-{port}/leader")
    create = {"compare": [{"key": leader, "target": "CREATE", "create_revision": "0"}],
              "success": [{"request_put": {"key": leader, "value": b64("n1"), "lease": lease}}]}
    first = c.post("/v3/kv/txn", create).json
    assert first["succeeded"] is True and first["responses"][0]["response_put"]["header"]["revision"]
    second = c.post("/v3/kv/txn", create).json
    assert "succeeded" not in second and "responses" not in second  # false and empty are omitted
    update = {"compare": [{"key": leader, "target": "VALUE", "value": b64("n1")}],
              "success": [{"request_put": {"key": leader, "value": b64("n1"), "lease": lease}}],
              "failure": [{"request_txn": create}]}
    assert c.post("/v3/kv/txn", update).json["succeeded"] is True
    delete = {"compare": [{"key": leader, "target": "VALUE", "value": b64("n1")}],
              "success": [{"request_delete_range": {"key": leader}}]}
    assert c.post("/v3/kv/txn", delete).json["responses"][0]["response_delete_range"]["deleted"] == "1"


@pytest.mark.parametrize("port", PORTS)
def test_errors_have_etcds_body_and_http_status(member: Any, port: str) -> None:
    c = _client(member, port)

    def err(path: str, body: Any) -> tuple[int, int, str]:
        reply = c.post(path, body)
        doc = reply.json
        assert doc["error"] == doc["message"], doc
        return reply.status, doc["code"], doc["message"]

    assert err("/v3/kv/put", b'{"key": "Zm9v"') == (400, 3, "unexpected EOF")
    assert err("/v3/kv/put", b'{"key": x}') == (400, 3, "invalid character 'x' looking for beginning of value")
    assert err("/v3/kv/put", {"value": b64("x")}) == (400, 3, "etcdserver: key is not provided")
    assert err("/v3/kv/txn", {"compare": [{"key": b64("k"), "target": "NOPE"}]}) == (
        400, 3, 'unknown value "NOPE" for enum etcdserverpb.Compare_CompareTarget')
    assert err("/v3/lease/revoke", {"ID": "987654321"}) == (404, 5, "etcdserver: requested lease not found")
    assert err("/v3/kv/put", {"key": b64("k"), "value": b64("v"), "lease": "987654321"})[1:] == (
        5, "etcdserver: requested lease not found")
    assert err("/v3/auth/authenticate", {"name": "a", "password": "b"}) == (
        412, 9, "etcdserver: authentication is not enabled")
    future = int(c.post("/v3/kv/range", {"key": b64("k")}).json["header"]["revision"]) + 1000
    assert err("/v3/kv/range", {"key": b64("k"), "revision": future}) == (
        400, 11, "etcdserver: mvcc: required revision is a future revision")
    assert err("/v3/lease/keepalive", b'{"ID": ') == (500, 2, "unexpected EOF")
    not_found = c.post("/v3/kv/nothing", {})
    assert (not_found.status, not_found.raw) == (404, b"Not Found\n")
    assert c.get("/v3/kv/range").status == 405


@pytest.mark.parametrize("port", PORTS)
def test_watch_streams_events_and_a_compacted_start_is_canceled(member: Any, port: str) -> None:
    c = _client(member, port)
    prefix = f"/watch-{port}/"
    start = c.post("/v3/kv/put", {"key": b64(prefix + "a"), "value": b64("1")}).json["header"]["revision"]
    c.post("/v3/kv/deleterange", {"key": b64(prefix + "a")})
    status, headers, objs = c.stream("/v3/watch", {"create_request": {
        "key": b64(prefix), "range_end": b64(prefix[:-1] + "0"), "start_revision": start, "filters": []}}, 2)
    assert status == 200 and headers.get("transfer-encoding") == "chunked"
    assert objs[0]["result"]["created"] is True and "watch_id" not in objs[0]["result"]  # id 0 is omitted
    events = objs[1]["result"]["events"]
    assert "type" not in events[0] and unb64(events[0]["kv"]["value"]) == "1"  # PUT is enum 0: omitted
    assert events[1]["type"] == "DELETE" and set(events[1]["kv"]) == {"key", "mod_revision"}
    # Compact past the start: a fresh watch from there is created, then canceled with the revision.
    now = c.post("/v3/kv/put", {"key": b64(prefix + "b"), "value": b64("2")}).json["header"]["revision"]
    assert c.post("/v3/kv/compaction", {"revision": now}).status == 200
    _, _, objs = c.stream("/v3/watch", {"create_request": {"key": b64(prefix), "start_revision": start}}, 2)
    assert objs[0]["result"]["created"] is True
    assert objs[1]["result"]["canceled"] is True and objs[1]["result"]["compact_revision"] == now


@pytest.mark.parametrize("port", PORTS)
def test_watch_sees_a_live_put(member: Any, port: str) -> None:
    c = _client(member, port)
    key = b64(f"/live-{port}")
    stream = BodyStream(c, "/v3/watch")
    try:
        stream.send({"create_request": {"key": key}})
        stream.end()  # the body's end half-closes: the watch goes on, as etcd's
        assert stream.read()["result"]["created"] is True
        c.post("/v3/kv/put", {"key": key, "value": b64("x")})
        event = stream.read()["result"]["events"][0]
        assert event["kv"]["key"] == key and unb64(event["kv"]["value"]) == "x"
    finally:
        stream.close()


def test_watch_requests_stream_in_the_open_request_body(member: Any) -> None:
    """Standalone listener: create, progress and cancel each answered while the body stays open."""
    c = _client(member, "http")
    stream = BodyStream(c, "/v3/watch")
    try:
        stream.send({"create_request": {"key": b64("/bs/a")}})
        created = stream.read()["result"]
        assert created["created"] is True
        stream.send({"create_request": {"key": b64("/bs/b"), "watch_id": "7"}})
        assert stream.read()["result"]["watch_id"] == "7"
        c.post("/v3/kv/put", {"key": b64("/bs/b"), "value": b64("1")})
        ev = stream.read()["result"]
        assert ev["watch_id"] == "7" and unb64(ev["events"][0]["kv"]["key"]) == "/bs/b"
        stream.send({"progress_request": {}})
        progress = stream.read()["result"]
        assert "events" not in progress and int(progress["header"]["revision"]) >= int(ev["header"]["revision"])
        stream.send({"cancel_request": {"watch_id": "7"}})
        canceled = stream.read()["result"]
        assert canceled["canceled"] is True and canceled["watch_id"] == "7"
    finally:
        stream.close()


@pytest.mark.parametrize("port", PORTS)
def test_lease_keepalive_is_a_stream_of_one_answer_per_ping(member: Any, port: str) -> None:
    c = _client(member, port)
    lease = c.post("/v3/lease/grant", {"TTL": 20}).json["ID"]
    status, headers, objs = c.stream("/v3/lease/keepalive", b'{"ID":"%s"}\n{"ID":"%s"}' % (lease.encode(), b"1"), 5)
    assert status == 200 and headers.get("transfer-encoding") == "chunked"
    assert len(objs) == 2  # the body's end ends the stream after both answers
    assert objs[0]["result"]["ID"] == lease and objs[0]["result"]["TTL"] == "20"
    assert objs[1]["result"]["ID"] == "1" and "TTL" not in objs[1]["result"]  # unknown lease: TTL 0 omitted
    ttl = c.post("/v3/kv/lease/timetolive", {"ID": lease, "keys": True}).json
    assert ttl["grantedTTL"] == "20" and 0 < int(ttl["TTL"]) <= 20
    assert c.post("/v3/kv/lease/revoke", {"ID": lease}).status == 200


@pytest.mark.parametrize("port", PORTS)
def test_snapshot_streams_base64_chunks_to_the_end(member: Any, port: str) -> None:
    c = _client(member, port)
    status, _, objs = c.stream("/v3/maintenance/snapshot", {}, 10_000)
    assert status == 200 and objs
    blob = b"".join(base64.b64decode(o["result"].get("blob", "")) for o in objs)
    assert blob and "remaining_bytes" not in objs[-1]["result"]  # 0 left: omitted


@pytest.mark.parametrize("port", PORTS)
def test_lock_and_election(member: Any, port: str) -> None:
    c = _client(member, port)
    lease = c.post("/v3/lease/grant", {"TTL": 30}).json["ID"]
    lock = c.post("/v3/lock/lock", {"name": b64(f"lk-{port}"), "lease": lease}).json
    assert unb64(lock["key"]) == f"lk-{port}/{int(lease):x}"
    assert c.post("/v3/lock/unlock", {"key": lock["key"]}).status == 200
    name = b64(f"el-{port}")
    leader = c.post("/v3/election/campaign", {"name": name, "lease": lease, "value": b64("a")}).json["leader"]
    assert c.post("/v3/election/proclaim", {"leader": leader, "value": b64("b")}).status == 200
    assert unb64(c.post("/v3/election/leader", {"name": name}).json["kv"]["value"]) == "b"
    _, _, observed = c.stream("/v3/election/observe", {"name": name}, 1)
    assert unb64(observed[0]["result"]["kv"]["value"]) == "b"
    assert c.post("/v3/election/resign", {"leader": leader}).status == 200
    gone = c.post("/v3/election/leader", {"name": name})
    assert (gone.status, gone.json["code"], gone.json["message"]) == (500, 2, "election: no leader")  # as etcd


def test_v3beta_is_v3_and_cluster_member_list(member: Any) -> None:
    c = _client(member, "http")
    listed = c.post("/v3beta/cluster/member/list", {}).json
    m = listed["members"][0]
    assert m["clientURLs"] and m["peerURLs"] and m["ID"] and "revision" not in listed["header"]


# ------------------------------------------------------------------------------- without a server


def test_go_json_errors_and_the_body_stream_parser() -> None:
    def bad(body: bytes) -> str:
        with pytest.raises(gw.BadJson) as info:
            gw.parse_request(body, pb.RangeRequest)
        return str(info.value)

    assert bad(b'{"key":') == "unexpected EOF"
    assert bad(b"{x}") == "invalid character 'x' looking for beginning of object key string"
    assert bad(b'{"a":1 "b":2}') == "invalid character '\"' after object key:value pair"
    assert bad(b'{"a":[1 2]}') == "invalid character '2' after array element"
    assert bad(b'{"key":"Zm9vYg"}') == "illegal base64 data at input byte 4"
    assert bad(b"[1]") == "json: cannot unmarshal array into Go value of type map[string]json.RawMessage"
    assert gw.parse_request(b"  ", pb.RangeRequest) == pb.RangeRequest()
    assert gw.parse_request(b'{"key":[102,111],"x":{}} tail', pb.RangeRequest).key == b"fo"

    async def chunks() -> Any:
        text = '{"ID":"1"}{"ID": "2"}\n {"ID":"3", "name":"\u00e9"}'.encode()
        for i in range(len(text)):  # one byte at a time: objects and UTF-8 sequences split anywhere
            yield text[i:i + 1]

    async def collect() -> list[int]:
        return [m.ID async for m in gw.parse_stream(chunks(), pb.LeaseKeepAliveRequest)]

    assert asyncio.run(collect()) == [1, 2, 3]


def test_the_authorization_header_reaches_the_handler_as_metadata() -> None:
    seen: list[tuple[tuple[str, str], ...]] = []

    async def range_(request: Any, context: Any) -> Any:
        seen.append(tuple(context.invocation_metadata()))
        return pb.RangeResponse(header=pb.ResponseHeader(revision=request.revision + 1))

    gateway = gw.Gateway(backend=None, handlers=[service_handler("etcdserverpb.KV", {"Range": range_})])  # type: ignore[arg-type]

    async def call(headers: list[tuple[str, str]]) -> Any:
        return await gateway.handle("POST", "/v3/kv/range", headers, b'{"revision": "41"}')

    status, _, body = asyncio.run(call([("authorization", "tok.1"), ("accept", "application/json"),
                                        ("grpc-metadata-hasleader", "true"), ("grpc-metadata-:tls-client-cn", "x")]))
    assert status == 200 and json.loads(body) == {"header": {"revision": "42"}}
    assert seen[0] == (("authorization", "tok.1"), ("hasleader", "true"), ("grpcgateway-accept", "application/json"))
    status, _, body = asyncio.run(gateway.handle("POST", "/v3/kv/put", [], b"{}"))
    assert status == 501 and json.loads(body)["code"] == grpc.StatusCode.UNIMPLEMENTED.value[0]


def test_every_route_names_a_method_of_the_protos() -> None:
    methods = {f"/{s}/{m.name}" for s, d in pb.SERVICES.items() for m in d.methods}
    assert set(gw.ROUTES.values()) <= methods
    assert methods - set(gw.ROUTES.values()) <= {"/etcdserverpb.KV/RangeStream"}  # gRPC only, as in etcd


async def _open_watch(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    body = json.dumps({"create_request": {"key": b64("foo")}}).encode()
    writer.write(b"POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b'"created":true'), 5)
    assert head.startswith(b"HTTP/1.1 200 ")
    return reader, writer


async def _until(cond: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.02)
    return bool(cond())


def test_a_client_that_goes_away_releases_its_watch_on_the_standalone_server() -> None:
    from conclave.api.http import start_http_server

    from .fake_backend import FakeBackend

    async def go() -> None:
        backend = FakeBackend()
        server = await start_http_server(gw.gateway_router(backend), [("127.0.0.1", 0)])
        try:
            _, writer = await _open_watch("127.0.0.1", server.port)
            assert len(backend.notifies) == 1
            writer.close()  # no event is pending: the server must notice the closed socket itself
            assert await _until(lambda: not backend.notifies), "the watch outlived its client"
        finally:
            await server.stop()

    asyncio.run(go())


def test_the_edge_releases_http_watches_when_it_stops() -> None:
    if not available():
        pytest.skip("the compiled edge is not built")
    from conclave.api.edge_server import start_edge_server

    from .fake_backend import FakeBackend

    async def go() -> None:
        backend = FakeBackend()
        server = await start_edge_server(backend, "127.0.0.1", 0, http_handler=gw.gateway_router(backend))
        host, port = server.endpoint.rsplit(":", 1)
        _, writer = await _open_watch(host, int(port))
        assert len(backend.notifies) == 1 and len(server.http) == 1
        await server.stop()
        assert await _until(lambda: not backend.notifies and not server.http)
        writer.close()

    asyncio.run(go())


def test_stream_errors_before_and_after_the_first_response() -> None:
    """grpc-gateway v1: an error before any response sets the status; after one, it is a last chunk."""
    fail_at: list[int] = []

    async def observe(request: Any, context: Any) -> Any:
        for i in range(3):
            if i in fail_at:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
            yield pb.LeaderResponse(header=pb.ResponseHeader(revision=i + 1))

    gateway = gw.Gateway(backend=None,  # type: ignore[arg-type]
                         handlers=[service_handler("v3electionpb.Election", {"Observe": observe})])

    async def call() -> tuple[int, list[Any]]:
        status, _, body = await gateway.handle("POST", "/v3/election/observe", [], b'{"name":"ZQ=="}')
        assert not isinstance(body, bytes)
        return status, [json.loads(chunk) async for chunk in body]

    assert asyncio.run(call()) == (200, [{"result": {"header": {"revision": str(i)}}} for i in (1, 2, 3)])
    fail_at[:] = [1]
    error = {"grpc_code": 14, "http_code": 503, "message": "etcdserver: no leader",
             "http_status": "Service Unavailable"}
    assert asyncio.run(call()) == (200, [{"result": {"header": {"revision": "1"}}}, {"error": error}])
    fail_at[:] = [0]
    assert asyncio.run(call()) == (503, [{"error": error}])


def test_the_standalone_server_stops_promptly_with_a_watch_open() -> None:
    from conclave.api.http import start_http_server

    from .fake_backend import FakeBackend

    async def go() -> None:
        backend = FakeBackend()
        server = await start_http_server(gw.gateway_router(backend), [("127.0.0.1", 0)])
        _, writer = await _open_watch("127.0.0.1", server.port)
        started = time.monotonic()
        await asyncio.wait_for(server.stop(), 10)
        assert time.monotonic() - started < 2.0  # aiohttp alone waits up to its 60 s shutdown timeout
        assert not backend.notifies
        writer.close()

    asyncio.run(go())
