"""The state machine's auth store: auth commands in the log, the Checked revision rule, images."""

from __future__ import annotations

import random

import msgpack
import pytest

from conclave.kv import auth as a
from conclave.kv import errors as kverr
from conclave.kv.auth import Permission, PermType
from conclave.kv.command import Checked, Command, Noop
from conclave.kv.types import (
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseRevokeRequest,
    PutRequest,
    PutResponse,
    RangeRequest,
    RequestOp,
    TxnRequest,
)
from conclave.machine import Member, StateMachine, entry, rules
from conclave.raft.types import Entry

A, B = 0xA, 0xB
H = b"$2b$04$hash"


class Log:
    """Feeds commands to machines as committed entries, one command per entry."""

    def __init__(self, *machines: StateMachine) -> None:
        self.machines = machines
        self.index = machines[0].applied_index
        self.seq = entry.seq_base(1)

    def apply(self, cmd: Command, *, seq: int | None = None, origin: int = A) -> list[object]:
        """Apply ``cmd`` on every machine; the (response or error) of each."""
        self.index += 1
        if seq is None:
            self.seq += 1
            seq = self.seq
        data = entry.encode_batch(origin, [(seq, cmd)])
        outs: list[object] = []
        for sm in self.machines:
            results = sm.apply(Entry(1, self.index, data=data), 0).results
            outs.append(results[0].error or results[0].response if results else "skipped")
        return outs

    def one(self, cmd: Command, **kw: int) -> object:
        out = self.apply(cmd, **kw)
        assert all(o == out[0] or type(o) is type(out[0]) for o in out)
        return out[0]


def enabled_machine() -> tuple[StateMachine, Log]:
    sm = StateMachine.bootstrap(1, [Member(A, "a", ["http://127.0.0.1:1"])])
    log = Log(sm)
    for cmd in (a.UserAddRequest("root", H), a.RoleAddRequest("root"), a.UserGrantRoleRequest("root", "root"),
                a.UserAddRequest("alice", H), a.RoleAddRequest("app"),
                a.RoleGrantPermissionRequest("app", Permission(PermType.READWRITE, b"/w/", b"/w0")),
                a.UserGrantRoleRequest("alice", "app"), a.AuthEnableRequest()):
        assert isinstance(log.one(cmd), a.AuthChangeResponse)
    return sm, log


def test_auth_commands_apply_through_the_log_with_results() -> None:
    sm, log = enabled_machine()
    assert sm.auth.enabled and sm.auth.revision == 8
    assert sm.auth.user_get("alice").roles == ("app",)
    out = log.one(Checked(8, a.UserAddRequest("alice", H)))
    assert isinstance(out, kverr.UserAlreadyExist)
    assert sm.auth.revision == 8
    assert sm.store.revision == 1  # the kv store saw none of it


def test_checked_at_a_stale_revision_fails_and_changes_nothing() -> None:
    sm, log = enabled_machine()
    rev = sm.auth.revision
    assert isinstance(log.one(Checked(rev, PutRequest(b"/w/x", b"1"))), PutResponse)
    assert isinstance(log.one(Checked(rev, a.RoleRevokePermissionRequest("app", b"/w/", b"/w0"))),
                      a.AuthChangeResponse)
    # checked before the revoke: refused, and the key is unchanged
    assert isinstance(log.one(Checked(rev, PutRequest(b"/w/x", b"2"))), kverr.AuthOldRevision)
    assert isinstance(log.one(Checked(rev + 5, PutRequest(b"/w/x", b"2"))), kverr.AuthOldRevision)
    assert [kv.value for kv in sm.store.range(RangeRequest(b"/w/x")).kvs] == [b"1"]
    assert isinstance(log.one(Checked(rev + 1, PutRequest(b"/w/x", b"3"))), PutResponse)


def test_unwrapped_client_commands_count_as_revision_zero_internal_ones_pass() -> None:
    sm, log = enabled_machine()
    assert isinstance(log.one(PutRequest(b"/w/x", b"1")), kverr.AuthOldRevision)
    assert isinstance(log.one(a.AuthDisableRequest()), kverr.AuthOldRevision)
    assert log.one(Noop(b"barrier")) is None
    lease = log.one(Checked(sm.auth.revision, LeaseGrantRequest(30)))
    assert isinstance(lease, LeaseGrantResponse)
    # the leader's lease expiry: seq 0, never checked
    out = sm.apply(Entry(1, log.index + 1, data=entry.encode_lease_expiry(lease.id)), 0)
    log.index += 1
    assert out.results[0].error is None and lease.id not in sm.store.lease_ids()


def test_checked_while_auth_is_off_ignores_the_revision_and_hot_path_is_unwrapped() -> None:
    sm = StateMachine.bootstrap(1, [])
    log = Log(sm)
    assert isinstance(log.one(PutRequest(b"k", b"v")), PutResponse)
    assert isinstance(log.one(Checked(77, PutRequest(b"k", b"v"))), PutResponse)
    log.one(a.UserAddRequest("u", H))
    assert isinstance(log.one(PutRequest(b"k", b"v")), PutResponse)  # revision 1, auth off
    data = entry.encode_batch(A, [(log.seq + 1, Checked(0, RangeRequest(b"k")))])
    out = sm.apply(Entry(1, log.index + 1, data=data), 0)
    assert out.results[0].command == RangeRequest(b"k")  # results name the command, not its wrapper


def test_enable_bumps_the_revision_so_a_command_checked_while_off_cannot_slip_in() -> None:
    sm = StateMachine.bootstrap(1, [])
    log = Log(sm)
    for cmd in (a.UserAddRequest("root", H), a.UserGrantRoleRequest("root", "root")):
        log.one(cmd)
    checked_while_off = Checked(sm.auth.revision, PutRequest(b"/secret", b"x"))
    log.one(a.AuthEnableRequest())
    assert isinstance(log.one(checked_while_off), kverr.AuthOldRevision)


def test_authenticate_result_is_the_same_on_every_member() -> None:
    sm1, _ = enabled_machine()
    sm2 = StateMachine.restore(sm1.snapshot())
    log = Log(sm1, sm2)
    outs = log.apply(Checked(sm1.auth.revision, a.AuthenticateRequest("alice", "tvAuppMrkNcYNeaf")), origin=B)
    assert outs[0] == outs[1] == a.AuthenticateResponse(f"tvAuppMrkNcYNeaf.{log.index}", "alice", sm1.auth.revision)
    outs = log.apply(Checked(sm1.auth.revision, a.AuthenticateRequest("alice", "x")), seq=log.seq, origin=B)
    assert outs == ["skipped", "skipped"]  # once-only apply covers auth commands too


def test_image_carries_the_auth_store_and_old_images_restore_without_auth() -> None:
    sm, log = enabled_machine()
    log.one(Checked(sm.auth.revision, PutRequest(b"/w/x", b"1")))
    back = StateMachine.restore(sm.snapshot())
    assert back.auth == sm.auth and back.auth.enabled
    assert back.snapshot() == sm.snapshot()
    body = msgpack.unpackb(sm.snapshot(), raw=False)
    del body["auth"]
    old = StateMachine.restore(msgpack.packb(body, use_bin_type=True))
    assert not old.auth.enabled and old.auth.users == {} and old.auth.revision == 0
    assert old.store.hash() == sm.store.hash()
    body["auth"] = b"junk"
    with pytest.raises(ValueError, match="not a state machine image"):
        StateMachine.restore(msgpack.packb(body, use_bin_type=True))


def random_command(rng: random.Random, sm: StateMachine) -> Command:
    user = rng.choice(["root", "alice", "alice", "bob", ""])
    role = rng.choice(["root", "app", "app", "ops", ""])
    key = rng.choice([b"/w/a", b"/w/b", b"/x"])
    options: list[Command] = [
        a.UserAddRequest(user, H), a.UserDeleteRequest(user), a.UserGrantRoleRequest(user, role),
        a.UserRevokeRoleRequest(user, role), a.RoleAddRequest(role), a.RoleDeleteRequest(role),
        a.RoleGrantPermissionRequest(role, Permission(rng.choice(list(PermType)), key, rng.choice([b"", b"\x00"]))),
        a.RoleRevokePermissionRequest(role, key), a.AuthEnableRequest(), a.AuthDisableRequest(),
        a.AuthenticateRequest(user, "prefix"), a.UserChangePasswordRequest(user, b"new"),
        PutRequest(key, b"v"), LeaseGrantRequest(30),
    ]
    cmd = rng.choice(options)
    return Checked(sm.auth.revision - rng.choice([0, 0, 0, 1]), cmd) if rng.random() < 0.8 else cmd


@pytest.mark.parametrize("seed", range(5))
def test_replicas_applying_the_same_entries_agree(seed: int) -> None:
    rng = random.Random(seed)
    sm1, sm2 = StateMachine.bootstrap(1, []), StateMachine.bootstrap(1, [])
    log = Log(sm1, sm2)
    for cmd in (a.UserAddRequest("root", H), a.UserGrantRoleRequest("root", "root")):
        log.apply(cmd)
    late: StateMachine | None = None
    seen: set[str] = set()
    for step in range(300):
        outs = log.apply(random_command(rng, sm1))
        seen.add(type(outs[0]).__name__)
        seen.add("enabled" if sm1.auth.enabled else "disabled")
        assert outs[0] == outs[1] or (type(outs[0]) is type(outs[1]) and isinstance(outs[0], kverr.EtcdError))
        if step == 150:
            late = StateMachine.restore(sm1.snapshot())
            log.machines = (sm1, sm2, late)
    assert sm1.auth == sm2.auth and late is not None and late.auth == sm1.auth
    assert sm1.snapshot() == sm2.snapshot() == late.snapshot()
    # the run went through both states and both verdicts of the revision rule
    assert {"enabled", "disabled", "AuthOldRevision", "AuthChangeResponse", "PutResponse"} <= seen


def test_rules_refuse_static_auth_errors_before_the_log() -> None:
    limits = rules.Limits()
    bad: list[tuple[object, type[kverr.EtcdError]]] = [
        (a.UserAddRequest("", H), kverr.UserEmpty),
        (a.RoleAddRequest(""), kverr.RoleEmpty),
        (a.RoleGrantPermissionRequest("app", None), kverr.PermissionNotGiven),
        (a.RoleGrantPermissionRequest("app", Permission(PermType.READ, b"b", b"a")), kverr.InvalidAuthMgmt),
        (a.RoleGrantPermissionRequest("", Permission(PermType.READ, b"a")), kverr.RoleNotFound),
        (a.UserDeleteRequest(""), kverr.UserNotFound),
        (a.UserGrantRoleRequest("", "app"), kverr.UserNotFound),
        (a.UserRevokeRoleRequest("", "app"), kverr.UserNotFound),
        (a.UserChangePasswordRequest("", H), kverr.UserNotFound),
        (a.RoleDeleteRequest(""), kverr.RoleNotFound),
        (a.RoleRevokePermissionRequest("", b"k"), kverr.RoleNotFound),
    ]
    for req, err in bad:
        with pytest.raises(err):
            rules.validate(req, limits)
        # the store gives the same error at apply time (validate only saves a proposal)
        store = a.AuthStore()
        with pytest.raises(err):
            store.apply(req)  # type: ignore[arg-type]
    ok = a.RoleGrantPermissionRequest("app", Permission(PermType.READ, b"a", b"\x00"))
    assert rules.validate(ok, limits) is ok
    assert rules.validate(a.UserGrantRoleRequest("u", ""), limits) is not None  # role "" is the store's call


def test_rules_validate_a_checked_command_by_what_it_wraps() -> None:
    limits = rules.Limits(min_lease_ttl_s=5)
    assert rules.validate(Checked(3, LeaseGrantRequest(1)), limits) == Checked(3, LeaseGrantRequest(5))
    with pytest.raises(kverr.KeyNotProvided):
        rules.validate(Checked(3, PutRequest(b"")), limits)
    with pytest.raises(kverr.UserEmpty):
        rules.validate(Checked(3, a.UserAddRequest("")), limits)


def test_lease_keys_are_rechecked_at_apply_when_the_checked_names_its_user() -> None:
    sm, log = enabled_machine()
    rev = sm.auth.revision
    lease = log.one(Checked(rev, LeaseGrantRequest(30), "alice"))
    assert isinstance(lease, LeaseGrantResponse)
    assert isinstance(log.one(Checked(rev, PutRequest(b"/w/a", b"1", lease=lease.id), "alice")), PutResponse)
    # alice's revoke is checked now (she can write every attached key) ...
    revoke = LeaseRevokeRequest(lease.id)
    sm.auth.check("alice", revoke, sm.store.lease_keys)
    # ... but root attaches a key alice cannot write before it applies
    assert isinstance(log.one(Checked(rev, PutRequest(b"/secret", b"s", lease=lease.id), "root")), PutResponse)
    assert isinstance(log.one(Checked(rev, revoke, "alice")), kverr.PermissionDenied)
    assert isinstance(log.one(Checked(rev, TxnRequest(success=(RequestOp(request_put=PutRequest(
        b"/w/b", b"", lease=lease.id)),)), "alice")), kverr.PermissionDenied)
    assert [kv.value for kv in sm.store.range(RangeRequest(b"/secret")).kvs] == [b"s"]
    # without a user the machine trusts the server's check (the contract's two-field form)
    assert log.one(Checked(rev, revoke)) is not None
    assert sm.store.range(RangeRequest(b"/secret")).kvs == ()


def test_auth_commands_carry_no_watch_events() -> None:
    sm = StateMachine.bootstrap(1, [])
    data = entry.encode_batch(A, [(1, PutRequest(b"k", b"v")), (2, a.UserAddRequest("u", H))])
    out = sm.apply(Entry(1, 1, data=data), 0)
    assert [len(r.events) for r in out.results] == [1, 0] and len(out.events) == 1
    out = sm.apply(Entry(1, 2, data=entry.encode_batch(A, [(3, a.RoleAddRequest("r"))])), 0)
    assert out.events == [] and out.results[0].events == ()
