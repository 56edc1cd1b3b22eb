"""The permission matrix: every RPC of KV, Watch, Lease, Cluster, Maintenance, Auth, Lock and Election
x {no token, wrong token, read-only user on /app/, read-write user on another prefix, root} gives
either an answer past the auth check or etcd's exact error and gRPC code, on both gRPC engines,
against an in-process member (a real Node and NodeBackend; memory storage).

The rules are etcd's with its fixes of 2026-03 (docs/security.md): e.g. LeaseKeepAlive needs WRITE on
the lease's keys, Compact needs root, nested txns are checked op by op. ``AuthMember`` (also used by
the other auth tests) runs the member's event loop in a thread and offers blocking helpers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from conclave.api import edge_server, pb
from conclave.api.grpc_server import EtcdGrpcServer, etcd_handlers, server_options, start_etcd_server
from conclave.api.stubs import EtcdStub
from conclave.server.backend import NodeBackend
from conclave.server.config import ServerConfig
from conclave.server.launcher import free_ports
from conclave.server.node import MonotonicClock, Node
from conclave.storage.memory import MemoryStorage

TIMEOUT_S = 10.0
UE = ("INVALID_ARGUMENT", "etcdserver: user name is empty")
IT = ("UNAUTHENTICATED", "etcdserver: invalid auth token")
PD = ("PERMISSION_DENIED", "etcdserver: permission denied")
OK = "ok"
PAST = "past the auth check"  # any answer but an auth refusal (see Maintenance.Snapshot)
AUTH_REFUSALS = {UE, IT, PD, ("INVALID_ARGUMENT", "etcdserver: revision of auth store is old")}


def engines() -> list[str]:
    return ["python", "rust"] if edge_server.available() else ["python"]


class OffsetClock(MonotonicClock):
    """The real clock plus an offset tests move forward (token TTLs on virtual time)."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return super().now_ms() + self.offset_ms


class AuthMember:
    """One in-process member (Node + NodeBackend + a gRPC engine) on a loop in a background thread."""

    def __init__(self, tmp: Path, engine: str, tls: Any = None, **cfg_kwargs: Any) -> None:
        """``tls``: a ``tests.edge.tls_support.Pki``: serve TLS and require its client certificates."""
        self.engine = engine
        self.tls = tls
        self.clock = OffsetClock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="auth-member", daemon=True)
        self.thread.start()
        c, p = free_ports(2)
        cfg = ServerConfig(name="solo", data_dir=str(tmp / "solo"), listen_client_urls=[f"http://127.0.0.1:{c}"],
                           listen_peer_urls=[f"http://127.0.0.1:{p}"], heartbeat_interval_ms=20,
                           election_timeout_ms=200, **{"bcrypt_cost": 4, **cfg_kwargs})  # fmt: skip
        cfg.validate()
        self.node = Node(cfg, storage_factory=lambda _d: MemoryStorage(), clock=self.clock)
        self.backend: NodeBackend | None = None
        self.server: Any = None
        try:
            self.run(self._start())
        except BaseException:
            self.close()
            raise
        self.endpoint = self.server.endpoint
        if tls is None:
            self.channel = grpc.insecure_channel(self.endpoint)
        else:
            creds = grpc.ssl_channel_credentials(root_certificates=tls.ca.read_bytes(),
                                                 private_key=tls.client_key.read_bytes(),
                                                 certificate_chain=tls.client_cert.read_bytes())  # fmt: skip
            self.channel = grpc.secure_channel(self.endpoint, creds)
        self.tokens: dict[str, str] = {}

    async def _start(self) -> None:
        await self.node.start()
        for _ in range(500):
            if self.node.has_leader():
                break
            await asyncio.sleep(0.02)
        assert self.node.has_leader(), "the member elected no leader"
        self.backend = NodeBackend(self.node)
        tls = self.tls
        if self.engine == "rust":
            files = {} if tls is None else {"cert_file": str(tls.server_cert), "key_file": str(tls.server_key),
                                            "client_ca_file": str(tls.ca)}  # fmt: skip
            self.server = await edge_server.start_edge_server(self.backend, "127.0.0.1", 0, **files)
        elif tls is None:
            self.server = await start_etcd_server(self.backend, "127.0.0.1", 0)
        else:  # as cli/runner.py serves https:// client URLs with --client-cert-auth
            server = grpc.aio.server(options=server_options())
            server.add_generic_rpc_handlers(etcd_handlers(self.backend))
            creds = grpc.ssl_server_credentials([(tls.server_key.read_bytes(), tls.server_cert.read_bytes())],
                                                root_certificates=tls.ca.read_bytes(), require_client_auth=True)
            port = server.add_secure_port("127.0.0.1:0", creds)
            await server.start()
            self.server = EtcdGrpcServer(server, "127.0.0.1", port)

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stub(self, service: str) -> EtcdStub:
        return EtcdStub(self.channel, service)

    def call(self, service: str, method: str, req: Any, token: str | None = None, timeout: float = TIMEOUT_S) -> Any:
        md = (("token", token),) if token else None
        return getattr(self.stub(service), method)(req, metadata=md, timeout=timeout)

    def authenticate(self, name: str, password: str) -> str:
        r = self.call("etcdserverpb.Auth", "Authenticate", pb.AuthenticateRequest(name=name, password=password))
        return str(r.token)

    def close(self) -> None:
        ch = getattr(self, "channel", None)
        if ch is not None:
            ch.close()

        async def stop() -> None:
            if self.server is not None:
                await self.server.stop(0)
            await self.node.stop()

        try:
            if self.thread.is_alive():
                self.run(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


def code_of(fn: Callable[[], Any]) -> Any:
    """OK, or the (code name, details) of the gRPC error ``fn`` raised."""
    try:
        fn()
    except grpc.RpcError as err:
        return (err.code().name, err.details())
    return OK


def setup_users(m: AuthMember) -> dict[str, str]:
    """root (role root), ro (READ on /app/), rwo (READWRITE on /other/), scratch; auth on. -> tokens."""
    auth = "etcdserverpb.Auth"

    def call(method: str, req: Any, token: str | None = None) -> Any:
        return m.call(auth, method, req, token)

    call("UserAdd", pb.AuthUserAddRequest(name="root", password="rootpw"))
    call("RoleAdd", pb.AuthRoleAddRequest(name="root"))
    call("UserGrantRole", pb.AuthUserGrantRoleRequest(user="root", role="root"))
    for role, user, ptype, key, end in (("app-ro", "ro", 0, b"/app/", b"/app0"), ("other-rw", "rwo", 2, b"/other/",
                                                                                   b"/other0")):
        call("RoleAdd", pb.AuthRoleAddRequest(name=role))
        call("RoleGrantPermission", pb.AuthRoleGrantPermissionRequest(
            name=role, perm=pb.Permission(permType=ptype, key=key, range_end=end)))
        call("UserAdd", pb.AuthUserAddRequest(name=user, password=user + "pw"))
        call("UserGrantRole", pb.AuthUserGrantRoleRequest(user=user, role=role))
    call("UserAdd", pb.AuthUserAddRequest(name="scratch", password="x"))
    call("RoleAdd", pb.AuthRoleAddRequest(name="scratch-role"))
    call("AuthEnable", pb.AuthEnableRequest())
    return {"none": "", "wrong": "abcdefghijklmnop.5", "ro": m.authenticate("ro", "ropw"),
            "rwo": m.authenticate("rwo", "rwopw"), "root": m.authenticate("root", "rootpw")}  # fmt: skip


@pytest.fixture(scope="module", params=engines())
def member(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthMember]:
    m = AuthMember(tmp_path_factory.mktemp(f"auth-{request.param}"), request.param)
    try:
        m.tokens = setup_users(m)
        yield m
    finally:
        m.close()


# ----------------------------------------------------------------------------------- the operations

_counter = iter(range(1, 10**6))


def _unique(prefix: str) -> str:
    return f"{prefix}{next(_counter)}"


def _root_lease(m: AuthMember, key: bytes) -> int:
    """A lease granted by root with ``key`` attached."""
    root = m.tokens["root"]
    lease = m.call("etcdserverpb.Lease", "LeaseGrant", pb.LeaseGrantRequest(TTL=60), root).ID
    m.call("etcdserverpb.KV", "Put", pb.PutRequest(key=key, value=b"v", lease=lease), root)
    return int(lease)


def _watch(m: AuthMember, token: str, key: bytes, end: bytes) -> None:
    """One Watch create; raises a fake RpcError-like tuple through code_of via an exception class."""
    md = (("token", token),) if token else None
    req = pb.WatchRequest(create_request=pb.WatchCreateRequest(key=key, range_end=end))
    stream = m.stub("etcdserverpb.Watch").Watch(iter([req]), metadata=md, timeout=TIMEOUT_S)
    try:
        first = next(stream)
    finally:
        stream.cancel()
    if first.canceled:
        raise WatchRefused(first.cancel_reason)
    assert first.created


class WatchRefused(grpc.RpcError):
    """A watch created and canceled at once: the cancel reason carries the gRPC error, as in etcd."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def code(self) -> grpc.StatusCode:
        names = {"InvalidArgument": "INVALID_ARGUMENT", "Unauthenticated": "UNAUTHENTICATED",
                 "PermissionDenied": "PERMISSION_DENIED"}  # fmt: skip
        go = self.reason.split("code = ", 1)[1].split(" ", 1)[0]
        return grpc.StatusCode[names[go]]

    def details(self) -> str:
        prefix = f"rpc error: code = {self.reason.split('code = ', 1)[1].split(' ', 1)[0]} desc = "
        assert self.reason.startswith(prefix), self.reason
        return self.reason[len(prefix):]


def _keepalive(m: AuthMember, token: str, lease: int) -> None:
    md = (("token", token),) if token else None
    stream = m.stub("etcdserverpb.Lease").LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lease)]), metadata=md,
                                                         timeout=TIMEOUT_S)  # fmt: skip
    r = next(stream)
    assert lease == r.ID and r.TTL > 0, r


def _stream_first(m: AuthMember, service: str, method: str, req: Any, token: str, timeout: float) -> None:
    md = (("token", token),) if token else None
    stream = getattr(m.stub(service), method)(req, metadata=md, timeout=timeout)
    next(stream)
    stream.cancel()


KV, LEASE, CLUSTER, MAINT, AUTH = ("etcdserverpb.KV", "etcdserverpb.Lease", "etcdserverpb.Cluster",
                                   "etcdserverpb.Maintenance", "etcdserverpb.Auth")  # fmt: skip
LOCK, ELECTION = "v3lockpb.Lock", "v3electionpb.Election"
Op = Callable[[AuthMember, str], Any]


def unary(service: str, method: str, make: Callable[[AuthMember], Any]) -> Op:
    return lambda m, token: m.call(service, method, make(m), token)


def _txn_put(key: bytes) -> Any:
    return pb.TxnRequest(compare=[pb.Compare(key=key, target=pb.Compare.VERSION, version=0)],
                         success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=b"t"))])  # fmt: skip


def _nested_put(key: bytes) -> Any:
    inner = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=key, value=b"n"))])
    return pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"/app/k")),
                                  pb.RequestOp(request_txn=inner)])  # fmt: skip


def _member_id(m: AuthMember) -> int:
    return int(m.node.member_id)


NF = ("NOT_FOUND", "etcdserver: member not found")
# name -> (operation, expected for ro, rwo, root); none and wrong always get UE and IT.
MATRIX: dict[str, tuple[Op, Any, Any, Any]] = {
    "KV.Range": (unary(KV, "Range", lambda m: pb.RangeRequest(key=b"/app/k")), OK, PD, OK),
    "KV.Range prefix": (unary(KV, "Range", lambda m: pb.RangeRequest(key=b"/app/", range_end=b"/app0")), OK, PD, OK),
    "KV.Range other": (unary(KV, "Range", lambda m: pb.RangeRequest(key=b"/other/k")), PD, OK, OK),
    "KV.Put": (unary(KV, "Put", lambda m: pb.PutRequest(key=b"/app/k", value=b"1")), PD, PD, OK),
    "KV.Put other": (unary(KV, "Put", lambda m: pb.PutRequest(key=b"/other/k", value=b"1")), PD, OK, OK),
    "KV.Put other prev_kv": (unary(KV, "Put", lambda m: pb.PutRequest(key=b"/other/k", value=b"1", prev_kv=True)),
                             PD, OK, OK),
    "KV.DeleteRange": (unary(KV, "DeleteRange", lambda m: pb.DeleteRangeRequest(key=b"/app/gone")), PD, PD, OK),
    "KV.Txn read": (unary(KV, "Txn", lambda m: pb.TxnRequest(
        success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"/app/k"))])), OK, PD, OK),
    "KV.Txn put": (unary(KV, "Txn", lambda m: _txn_put(b"/app/t")), PD, PD, OK),
    "KV.Txn nested put": (unary(KV, "Txn", lambda m: _nested_put(b"/app/n")), PD, PD, OK),
    "KV.Txn nested other": (unary(KV, "Txn", lambda m: _nested_put(b"/other/n")), PD, PD, OK),
    "KV.Compact": (unary(KV, "Compact", lambda m: pb.CompactionRequest(revision=1)), PD, PD, OK),
    "Watch.Watch": (lambda m, t: _watch(m, t, b"/app/", b"/app0"), OK, PD, OK),
    "Watch.Watch other": (lambda m, t: _watch(m, t, b"/other/", b"/other0"), PD, OK, OK),
    "Lease.LeaseGrant": (unary(LEASE, "LeaseGrant", lambda m: pb.LeaseGrantRequest(TTL=60)), OK, OK, OK),
    "Lease.LeaseRevoke": (unary(LEASE, "LeaseRevoke", lambda m: pb.LeaseRevokeRequest(
        ID=_root_lease(m, b"/app/l"))), PD, PD, OK),
    "Lease.LeaseKeepAlive": (lambda m, t: _keepalive(m, t, _root_lease(m, b"/app/ka")), PD, PD, OK),
    "Lease.LeaseKeepAlive other": (lambda m, t: _keepalive(m, t, _root_lease(m, b"/other/ka")), PD, OK, OK),
    "Lease.LeaseTimeToLive keys": (unary(LEASE, "LeaseTimeToLive", lambda m: pb.LeaseTimeToLiveRequest(
        ID=_root_lease(m, b"/app/ttl"), keys=True)), OK, PD, OK),
    "Lease.LeaseTimeToLive": (unary(LEASE, "LeaseTimeToLive", lambda m: pb.LeaseTimeToLiveRequest(
        ID=_root_lease(m, b"/app/ttl2"))), OK, OK, OK),
    "Lease.LeaseLeases": (unary(LEASE, "LeaseLeases", lambda m: pb.LeaseLeasesRequest()), OK, OK, OK),
    "Cluster.MemberList": (unary(CLUSTER, "MemberList", lambda m: pb.MemberListRequest()), OK, OK, OK),
    "Cluster.MemberAdd": (unary(CLUSTER, "MemberAdd", lambda m: pb.MemberAddRequest(
        peerURLs=[f"http://127.0.0.1:{free_ports(1)[0]}"], isLearner=True)), PD, PD, OK),
    "Cluster.MemberRemove": (unary(CLUSTER, "MemberRemove", lambda m: pb.MemberRemoveRequest(ID=12345)), PD, PD, NF),
    "Cluster.MemberUpdate": (unary(CLUSTER, "MemberUpdate", lambda m: pb.MemberUpdateRequest(
        ID=12345, peerURLs=["http://127.0.0.1:1"])), PD, PD, NF),
    "Cluster.MemberPromote": (unary(CLUSTER, "MemberPromote", lambda m: pb.MemberPromoteRequest(ID=12345)), PD, PD,
                              NF),
    "Maintenance.Status": (unary(MAINT, "Status", lambda m: pb.StatusRequest()), OK, OK, OK),
    "Maintenance.Alarm get": (unary(MAINT, "Alarm", lambda m: pb.AlarmRequest(action=0)), OK, OK, OK),
    "Maintenance.Alarm deactivate": (unary(MAINT, "Alarm", lambda m: pb.AlarmRequest(
        action=2, memberID=_member_id(m), alarm=1)), PD, PD, OK),
    "Maintenance.Defragment": (unary(MAINT, "Defragment", lambda m: pb.DefragmentRequest()), PD, PD, OK),
    "Maintenance.Hash": (unary(MAINT, "Hash", lambda m: pb.HashRequest()), PD, PD, OK),
    "Maintenance.HashKV": (unary(MAINT, "HashKV", lambda m: pb.HashKVRequest()), PD, PD, OK),
    "Maintenance.MoveLeader": (unary(MAINT, "MoveLeader", lambda m: pb.MoveLeaderRequest(
        targetID=_member_id(m))), PD, PD, OK),
    # The backup is written by a forked child; forked from this test process (grpc client threads
    # running) it may crash, which is not what this test is about: root only has to get past auth.
    "Maintenance.Snapshot": (lambda m, t: _stream_first(m, MAINT, "Snapshot", pb.SnapshotRequest(), t, TIMEOUT_S),
                             PD, PD, PAST),
    "Auth.AuthStatus": (unary(AUTH, "AuthStatus", lambda m: pb.AuthStatusRequest()), PD, PD, OK),
    "Auth.AuthEnable": (unary(AUTH, "AuthEnable", lambda m: pb.AuthEnableRequest()), PD, PD, OK),
    "Auth.UserAdd": (unary(AUTH, "UserAdd", lambda m: pb.AuthUserAddRequest(name=_unique("u"), password="p")),
                     PD, PD, OK),
    "Auth.UserGet self": (unary(AUTH, "UserGet", lambda m: pb.AuthUserGetRequest(name="ro")), OK, PD, OK),
    "Auth.UserGet root": (unary(AUTH, "UserGet", lambda m: pb.AuthUserGetRequest(name="root")), PD, PD, OK),
    "Auth.UserList": (unary(AUTH, "UserList", lambda m: pb.AuthUserListRequest()), PD, PD, OK),
    "Auth.UserDelete": (unary(AUTH, "UserDelete", lambda m: pb.AuthUserDeleteRequest(name="nosuch")), PD, PD,
                        ("FAILED_PRECONDITION", "etcdserver: user name not found")),
    "Auth.UserChangePassword": (unary(AUTH, "UserChangePassword", lambda m: pb.AuthUserChangePasswordRequest(
        name="scratch", password="y")), PD, PD, OK),
    "Auth.UserGrantRole": (unary(AUTH, "UserGrantRole", lambda m: pb.AuthUserGrantRoleRequest(
        user="scratch", role="scratch-role")), PD, PD, OK),
    "Auth.UserRevokeRole": (unary(AUTH, "UserRevokeRole", lambda m: pb.AuthUserRevokeRoleRequest(
        name="scratch", role="app-ro")), PD, PD,
        ("FAILED_PRECONDITION", "etcdserver: role is not granted to the user")),
    "Auth.RoleAdd": (unary(AUTH, "RoleAdd", lambda m: pb.AuthRoleAddRequest(name=_unique("r"))), PD, PD, OK),
    "Auth.RoleGet own": (unary(AUTH, "RoleGet", lambda m: pb.AuthRoleGetRequest(role="app-ro")), OK, PD, OK),
    "Auth.RoleGet other": (unary(AUTH, "RoleGet", lambda m: pb.AuthRoleGetRequest(role="other-rw")), PD, OK, OK),
    "Auth.RoleList": (unary(AUTH, "RoleList", lambda m: pb.AuthRoleListRequest()), PD, PD, OK),
    "Auth.RoleDelete": (unary(AUTH, "RoleDelete", lambda m: pb.AuthRoleDeleteRequest(role="nosuch")), PD, PD,
                        ("FAILED_PRECONDITION", "etcdserver: role name not found")),
    "Auth.RoleGrantPermission": (unary(AUTH, "RoleGrantPermission", lambda m: pb.AuthRoleGrantPermissionRequest(
        name="scratch-role", perm=pb.Permission(permType=0, key=b"/s/"))), PD, PD, OK),
    "Auth.RoleRevokePermission": (unary(AUTH, "RoleRevokePermission", lambda m: pb.AuthRoleRevokePermissionRequest(
        role="scratch-role", key=b"/nosuch")), PD, PD,
        ("FAILED_PRECONDITION", "etcdserver: permission is not granted to the role")),
    "Lock.Lock": (unary(LOCK, "Lock", lambda m: pb.LockRequest(name=b"/app/lock")), PD, PD, OK),
    "Lock.Unlock": (unary(LOCK, "Unlock", lambda m: pb.UnlockRequest(key=b"/app/lock/1")), PD, PD, OK),
    "Election.Campaign": (unary(ELECTION, "Campaign", lambda m: pb.CampaignRequest(name=b"/app/el", value=b"me")),
                          PD, PD, OK),
    "Election.Leader": (unary(ELECTION, "Leader", lambda m: pb.LeaderRequest(name=b"/app/none")), (
        "UNKNOWN", "election: no leader"), PD, ("UNKNOWN", "election: no leader")),
    "Election.Proclaim": (unary(ELECTION, "Proclaim", lambda m: pb.ProclaimRequest(
        leader=pb.LeaderKey(name=b"/app/el", key=b"/app/el/1", rev=1), value=b"x")), PD, PD,
        ("UNKNOWN", "election: not leader")),
    "Election.Resign": (unary(ELECTION, "Resign", lambda m: pb.ResignRequest(
        leader=pb.LeaderKey(name=b"/app/el", key=b"/app/el/1", rev=1))), PD, PD, OK),
    # Observe waits for a leader: a caller past the checks times out, a refused one fails at once.
    "Election.Observe": (lambda m, t: _stream_first(m, ELECTION, "Observe", pb.LeaderRequest(name=b"/app/obs"), t, 1.0),
                         ("DEADLINE_EXCEEDED", "Deadline Exceeded"), PD, ("DEADLINE_EXCEEDED", "Deadline Exceeded")),
}
IDENTITIES = ("none", "wrong", "ro", "rwo", "root")


def test_every_rpc_of_every_service_is_in_the_matrix() -> None:
    covered = {name.split(" ")[0] for name in MATRIX} | {"Auth.Authenticate", "Auth.AuthDisable"}  # tested below
    missing = [f"{svc.rsplit('.', 1)[-1]}.{m.name}" for svc_name, svc in pb.SERVICES.items()
               for m in svc.methods if f"{svc.name}.{m.name}" not in covered and m.name != "Downgrade"]  # fmt: skip
    assert not missing, missing


def test_permission_matrix(member: AuthMember) -> None:
    got: dict[tuple[str, str], Any] = {}
    want: dict[tuple[str, str], Any] = {}
    for name, (op, ro, rwo, root) in MATRIX.items():
        expected = {"none": UE, "wrong": IT, "ro": ro, "rwo": rwo, "root": root}
        for who in IDENTITIES:
            want[(name, who)] = expected[who]
            got[(name, who)] = code_of(lambda op=op, who=who: op(member, member.tokens[who]))
            if expected[who] == PAST and got[(name, who)] not in AUTH_REFUSALS:
                got[(name, who)] = PAST
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not wrong, "\n".join(f"{n} as {w}: got {g}, want {e}" for (n, w), (g, e) in sorted(wrong.items()))


def test_authenticate_and_auth_disable(member: AuthMember) -> None:
    bad = code_of(lambda: member.authenticate("ro", "nope"))
    assert bad == ("INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password")
    assert code_of(lambda: member.authenticate("nosuch", "x")) == bad
    for who, expected in (("none", UE), ("wrong", IT), ("ro", PD), ("rwo", PD)):
        got = code_of(lambda who=who: member.call(AUTH, "AuthDisable", pb.AuthDisableRequest(), member.tokens[who]))
        assert got == expected, (who, got)
    status = member.call(AUTH, "AuthStatus", pb.AuthStatusRequest(), member.tokens["root"])
    assert status.enabled and status.authRevision > 0
    # Disabling drops every token; enabling again needs no credentials (auth is off), then new tokens.
    member.call(AUTH, "AuthDisable", pb.AuthDisableRequest(), member.tokens["root"])
    assert member.call(KV, "Put", pb.PutRequest(key=b"/x", value=b"1")).header.revision > 0  # no auth: anyone
    member.call(AUTH, "AuthEnable", pb.AuthEnableRequest())
    assert code_of(lambda: member.call(KV, "Range", pb.RangeRequest(key=b"/app/k"), member.tokens["ro"])) == IT
    member.tokens.update(ro=member.authenticate("ro", "ropw"), rwo=member.authenticate("rwo", "rwopw"),
                         root=member.authenticate("root", "rootpw"))  # fmt: skip
    assert code_of(lambda: member.call(KV, "Range", pb.RangeRequest(key=b"/app/k"), member.tokens["ro"])) == OK


def test_token_in_authorization_metadata_and_gateway_marker(member: AuthMember) -> None:
    stub = member.stub(KV)
    req = pb.RangeRequest(key=b"/app/k")
    assert stub.Range(req, metadata=(("authorization", member.tokens["ro"]),), timeout=TIMEOUT_S).header.revision
    # `token` wins over `authorization`.
    md = (("token", member.tokens["rwo"]), ("authorization", member.tokens["ro"]))
    assert code_of(lambda: stub.Range(req, metadata=md, timeout=TIMEOUT_S)) == PD
    # The gateway marker does not change token auth.
    md = (("authorization", member.tokens["ro"]), ("grpcgateway-accept", "application/json"))
    assert code_of(lambda: stub.Range(req, metadata=md, timeout=TIMEOUT_S)) == OK


def test_a_changed_password_or_deleted_user_invalidates_its_tokens(member: AuthMember) -> None:
    root = member.tokens["root"]
    member.call(AUTH, "UserAdd", pb.AuthUserAddRequest(name="tmp", password="a"), root)
    member.call(AUTH, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="tmp", role="app-ro"), root)
    tok = member.authenticate("tmp", "a")
    assert code_of(lambda: member.call(KV, "Range", pb.RangeRequest(key=b"/app/k"), tok)) == OK
    member.call(AUTH, "UserChangePassword", pb.AuthUserChangePasswordRequest(name="tmp", password="b"), root)
    assert code_of(lambda: member.call(KV, "Range", pb.RangeRequest(key=b"/app/k"), tok)) == IT
    assert code_of(lambda: member.authenticate("tmp", "a"))[0] == "INVALID_ARGUMENT"
    tok = member.authenticate("tmp", "b")
    member.call(AUTH, "UserDelete", pb.AuthUserDeleteRequest(name="tmp"), root)
    assert code_of(lambda: member.call(KV, "Range", pb.RangeRequest(key=b"/app/k"), tok)) == IT


def test_passwords_are_stored_hashed_only(member: AuthMember) -> None:
    users = member.node.sm.auth.users
    assert users["ro"].password_hash.startswith(b"$2b$04$")  # bcrypt at --bcrypt-cost (4 in these tests)
    image = member.node.sm.snapshot()
    assert b"ropw" not in image and b"rootpw" not in image


def test_simple_token_format_and_member_local_expiry(member: AuthMember) -> None:
    tok = member.authenticate("ro", "ropw")
    letters, _, index = tok.partition(".")
    assert len(letters) == 16 and letters.isalpha() and index.isdigit() and int(index) > 0, tok
    ttl_ms = member.node.tokens.ttl_ms  # type: ignore[attr-defined]
    for _ in range(3):  # each use slides the deadline: three uses 0.6 TTL apart keep it alive
        member.clock.offset_ms += int(ttl_ms * 0.6)
        assert code_of(lambda: member.call(KV, "Range", pb.RangeRequest(key=b"/app/k"), tok)) == OK
    member.clock.offset_ms += ttl_ms + 1
    assert code_of(lambda: member.call(KV, "Range", pb.RangeRequest(key=b"/app/k"), tok)) == IT
    member.tokens.update(ro=member.authenticate("ro", "ropw"), rwo=member.authenticate("rwo", "rwopw"),
                         root=member.authenticate("root", "rootpw"))  # fmt: skip


def test_authenticate_attempts_are_rate_limited(member: AuthMember) -> None:
    failed = ("INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password")
    limiter = member.backend.attempts  # type: ignore[union-attr]
    for _ in range(limiter.free):
        assert code_of(lambda: member.authenticate("rwo", "guess")) == failed
    # Locked now: even the right password is refused, with the same answer, until the delay passes.
    assert code_of(lambda: member.authenticate("rwo", "rwopw")) == failed
    member.clock.offset_ms += limiter.base_ms + 1
    started = time.monotonic()
    assert code_of(lambda: member.authenticate("rwo", "rwopw")) == OK
    assert time.monotonic() - started < 5
    # A success clears the count.
    assert code_of(lambda: member.authenticate("rwo", "guess")) == failed
    assert code_of(lambda: member.authenticate("rwo", "rwopw")) == OK
