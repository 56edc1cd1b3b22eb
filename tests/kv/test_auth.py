"""The auth store: etcd's rules for users, roles, permissions, enable/disable, errors and checks."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conclave.kv import auth as a
from conclave.kv import errors
from conclave.kv.auth import AuthStore, Permission, PermType
from conclave.kv.command import Command
from conclave.kv.types import (
    AlarmAction,
    AlarmRequest,
    AlarmType,
    CompactionRequest,
    Compare,
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)

H = b"$2b$04$hash"  # what a bcrypt hash looks like to the store: opaque bytes


def root_store(enabled: bool = True) -> AuthStore:
    """root (with role root) and alice; auth on when ``enabled``."""
    s = AuthStore()
    s.apply(a.UserAddRequest(a.ROOT_USER, H))
    s.apply(a.UserGrantRoleRequest(a.ROOT_USER, a.ROOT_ROLE))
    s.apply(a.RoleAddRequest(a.ROOT_ROLE))
    s.apply(a.UserAddRequest("alice", H))
    if enabled:
        s.apply(a.AuthEnableRequest())
    return s


def grant(s: AuthStore, role: str, perm_type: PermType, key: bytes, range_end: bytes = b"") -> None:
    if role not in s.roles:
        s.apply(a.RoleAddRequest(role))
    s.apply(a.RoleGrantPermissionRequest(role, Permission(perm_type, key, range_end)))


def no_leases(_lease: int) -> list[bytes]:
    raise errors.LeaseNotFound()


# ---------------------------------------------------------------------- errors: text and code

AUTH_ERRORS = [
    (errors.PermissionDenied, "PERMISSION_DENIED", "etcdserver: permission denied"),
    (errors.InvalidAuthToken, "UNAUTHENTICATED", "etcdserver: invalid auth token"),
    (errors.AuthNotEnabled, "FAILED_PRECONDITION", "etcdserver: authentication is not enabled"),
    (errors.AuthFailed, "INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password"),
    (errors.UserEmpty, "INVALID_ARGUMENT", "etcdserver: user name is empty"),
    (errors.RootUserNotExist, "FAILED_PRECONDITION", "etcdserver: root user does not exist"),
    (errors.RootRoleNotExist, "FAILED_PRECONDITION", "etcdserver: root user does not have root role"),
    (errors.UserAlreadyExist, "FAILED_PRECONDITION", "etcdserver: user name already exists"),
    (errors.UserNotFound, "FAILED_PRECONDITION", "etcdserver: user name not found"),
    (errors.RoleAlreadyExist, "FAILED_PRECONDITION", "etcdserver: role name already exists"),
    (errors.RoleNotFound, "FAILED_PRECONDITION", "etcdserver: role name not found"),
    (errors.RoleEmpty, "INVALID_ARGUMENT", "etcdserver: role name is empty"),
    (errors.PermissionNotGiven, "INVALID_ARGUMENT", "etcdserver: permission not given"),
    (errors.RoleNotGranted, "FAILED_PRECONDITION", "etcdserver: role is not granted to the user"),
    (errors.PermissionNotGranted, "FAILED_PRECONDITION", "etcdserver: permission is not granted to the role"),
    (errors.InvalidAuthMgmt, "INVALID_ARGUMENT", "etcdserver: invalid auth management"),
    (errors.AuthOldRevision, "INVALID_ARGUMENT", "etcdserver: revision of auth store is old"),
]


@pytest.mark.parametrize(("cls", "code", "message"), AUTH_ERRORS)
def test_auth_errors_are_etcds_byte_for_byte(cls: type[errors.EtcdError], code: str, message: str) -> None:
    assert cls.code == code
    assert cls.message == message
    assert str(cls()) == message
    assert errors.error_for_message(message) is cls


def test_contract_aliases() -> None:
    assert errors.ErrPermissionDenied is errors.PermissionDenied
    assert errors.ErrAuthOldRevision is errors.AuthOldRevision
    assert [m.value for m in PermType] == [0, 1, 2] and [m.name for m in PermType] == ["READ", "WRITE", "READWRITE"]


# ---------------------------------------------------------------------- enable / disable


def test_enable_needs_root_user_with_root_role_like_etcdctls_loop() -> None:
    s = AuthStore()
    with pytest.raises(errors.RootUserNotExist):
        s.apply(a.AuthEnableRequest())
    s.apply(a.UserAddRequest("root", H))
    with pytest.raises(errors.RootRoleNotExist):
        s.apply(a.AuthEnableRequest())
    assert not s.enabled
    # etcdctl's auth enable: on RootRoleNotExist, RoleAdd("root") + UserGrantRole("root", "root"), retry.
    s.apply(a.RoleAddRequest("root"))
    s.apply(a.UserGrantRoleRequest("root", "root"))
    before = s.revision
    assert s.apply(a.AuthEnableRequest()) == a.AuthChangeResponse(before + 1)
    assert s.enabled and s.status() == a.AuthStatusResponse(True, before + 1)
    # a repeated enable is a no-op: no error, no revision bump
    assert s.apply(a.AuthEnableRequest()) == a.AuthChangeResponse(before + 1)
    assert s.apply(a.AuthDisableRequest()) == a.AuthChangeResponse(before + 2)
    assert not s.enabled
    assert s.apply(a.AuthDisableRequest()) == a.AuthChangeResponse(before + 2)


def test_root_role_can_be_granted_before_it_exists() -> None:
    s = AuthStore()
    s.apply(a.UserAddRequest("root", H))
    s.apply(a.UserGrantRoleRequest("root", "root"))
    assert s.is_admin("root")
    s.apply(a.AuthEnableRequest())
    assert s.enabled
    with pytest.raises(errors.RoleNotFound):
        s.role_get("root")


def test_revision_counts_every_successful_change_and_nothing_else() -> None:
    s = AuthStore()
    assert s.revision == 0
    s.apply(a.UserAddRequest("u", H))
    assert s.revision == 1  # the first change gives 1
    with pytest.raises(errors.UserAlreadyExist):
        s.apply(a.UserAddRequest("u", H))
    assert s.revision == 1
    s.apply(a.RoleAddRequest("r"))
    s.apply(a.UserGrantRoleRequest("u", "r"))
    assert s.revision == 3
    s.apply(a.UserGrantRoleRequest("u", "r"))  # already granted: etcd ignores it
    assert s.revision == 3
    grant(s, "r", PermType.READ, b"a")
    grant(s, "r", PermType.READ, b"a")  # etcd rewrites the permission and commits
    assert s.revision == 5


# ---------------------------------------------------------------------- users


def test_user_rules_and_errors() -> None:
    s = AuthStore()
    with pytest.raises(errors.UserEmpty):
        s.apply(a.UserAddRequest("", H))
    s.apply(a.UserAddRequest("bob", H))
    with pytest.raises(errors.UserAlreadyExist):
        s.apply(a.UserAddRequest("bob", b"other"))
    with pytest.raises(errors.UserNotFound):
        s.apply(a.UserDeleteRequest("nobody"))
    with pytest.raises(errors.UserNotFound):
        s.apply(a.UserChangePasswordRequest("nobody", H))
    with pytest.raises(errors.UserNotFound):
        s.apply(a.UserGrantRoleRequest("nobody", "r"))
    with pytest.raises(errors.RoleNotFound):
        s.apply(a.UserGrantRoleRequest("bob", "nosuch"))
    with pytest.raises(errors.UserNotFound):
        s.apply(a.UserRevokeRoleRequest("nobody", "r"))
    with pytest.raises(errors.RoleNotGranted):
        s.apply(a.UserRevokeRoleRequest("bob", "r"))
    with pytest.raises(errors.UserNotFound):
        s.user_get("nobody")
    s.apply(a.UserChangePasswordRequest("bob", b"new"))
    assert s.users["bob"].password_hash == b"new"
    s.apply(a.UserDeleteRequest("bob"))
    assert "bob" not in s.users


def test_user_roles_are_kept_sorted_and_lists_are_in_byte_order() -> None:
    s = AuthStore()
    s.apply(a.UserAddRequest("zed", H))
    s.apply(a.UserAddRequest("Amy", H))
    s.apply(a.UserAddRequest("bob", H))
    for r in ("web", "app", "db"):
        s.apply(a.RoleAddRequest(r))
        s.apply(a.UserGrantRoleRequest("bob", r))
    assert s.user_get("bob") == a.UserGetResponse(("app", "db", "web"))
    assert s.user_list() == a.UserListResponse(("Amy", "bob", "zed"))
    assert s.role_list() == a.RoleListResponse(("app", "db", "web"))
    s.apply(a.UserRevokeRoleRequest("bob", "db"))
    assert s.user_get("bob").roles == ("app", "web")


def test_no_password_user_cannot_authenticate_and_keeps_no_password() -> None:
    s = root_store()
    s.apply(a.UserAddRequest("cn-user", b"ignored", no_password=True))
    assert s.users["cn-user"].password_hash == b""
    s.apply(a.UserChangePasswordRequest("cn-user", H))
    assert s.users["cn-user"].password_hash == b""
    with pytest.raises(errors.AuthFailed):
        s.apply(a.AuthenticateRequest("cn-user", "abcdefghijklmnop"))


def test_authenticate() -> None:
    s = root_store(enabled=False)
    with pytest.raises(errors.AuthNotEnabled):
        s.apply(a.AuthenticateRequest("alice", "abcdefghijklmnop"), 9)
    s.apply(a.AuthEnableRequest())
    rev = s.revision
    with pytest.raises(errors.AuthFailed):
        s.apply(a.AuthenticateRequest("nobody", "abcdefghijklmnop"), 9)
    resp = s.apply(a.AuthenticateRequest("alice", "tvAuppMrkNcYNeaf"), 42)
    assert resp == a.AuthenticateResponse("tvAuppMrkNcYNeaf.42", "alice", rev)  # etcd's simple token
    assert s.apply(a.AuthenticateRequest("alice", ""), 43) == a.AuthenticateResponse("", "alice", rev)  # JWT
    assert s.revision == rev  # authenticating changes nothing


# ---------------------------------------------------------------------- root protections


def test_root_protections_while_enabled_only() -> None:
    s = root_store()
    with pytest.raises(errors.InvalidAuthMgmt):
        s.apply(a.UserDeleteRequest("root"))
    with pytest.raises(errors.InvalidAuthMgmt):
        s.apply(a.UserRevokeRoleRequest("root", "root"))
    with pytest.raises(errors.InvalidAuthMgmt):
        s.apply(a.RoleDeleteRequest("root"))
    assert s.is_admin("root") and "root" in s.roles
    s.apply(a.AuthDisableRequest())
    s.apply(a.UserRevokeRoleRequest("root", "root"))
    s.apply(a.RoleDeleteRequest("root"))
    s.apply(a.UserDeleteRequest("root"))
    assert "root" not in s.users and "root" not in s.roles


# ---------------------------------------------------------------------- roles and permissions


def test_role_rules_and_errors() -> None:
    s = AuthStore()
    with pytest.raises(errors.RoleEmpty):
        s.apply(a.RoleAddRequest(""))
    s.apply(a.RoleAddRequest("app"))
    with pytest.raises(errors.RoleAlreadyExist):
        s.apply(a.RoleAddRequest("app"))
    with pytest.raises(errors.PermissionNotGiven):
        s.apply(a.RoleGrantPermissionRequest("app", None))
    with pytest.raises(errors.RoleNotFound):
        s.apply(a.RoleGrantPermissionRequest("nosuch", Permission(PermType.READ, b"k")))
    with pytest.raises(errors.InvalidAuthMgmt):
        s.apply(a.RoleGrantPermissionRequest("app", Permission(PermType.READ, b"b", b"a")))
    with pytest.raises(errors.RoleNotFound):
        s.apply(a.RoleRevokePermissionRequest("nosuch", b"k"))
    with pytest.raises(errors.PermissionNotGranted):
        s.apply(a.RoleRevokePermissionRequest("app", b"k"))
    with pytest.raises(errors.RoleNotFound):
        s.apply(a.RoleDeleteRequest("nosuch"))
    with pytest.raises(errors.RoleNotFound):
        s.role_get("nosuch")


def test_role_get_matches_the_transcript_order() -> None:
    # etcdctl role grant-permission app --prefix readwrite /service/; read /cfg; write /a /b
    s = AuthStore()
    grant(s, "app", PermType.READWRITE, b"/service/", b"/service0")
    grant(s, "app", PermType.READ, b"/cfg")
    grant(s, "app", PermType.WRITE, b"/a", b"/b")
    assert s.role_get("app").perm == (
        Permission(PermType.WRITE, b"/a", b"/b"),
        Permission(PermType.READ, b"/cfg", b""),
        Permission(PermType.READWRITE, b"/service/", b"/service0"),
    )
    # granting the same (key, range_end) again replaces the type in place
    grant(s, "app", PermType.READ, b"/a", b"/b")
    assert s.role_get("app").perm[0] == Permission(PermType.READ, b"/a", b"/b")
    assert len(s.role_get("app").perm) == 3
    s.apply(a.RoleRevokePermissionRequest("app", b"/cfg"))
    assert [p.key for p in s.role_get("app").perm] == [b"/a", b"/service/"]
    with pytest.raises(errors.PermissionNotGranted):  # the range must match exactly
        s.apply(a.RoleRevokePermissionRequest("app", b"/service/", b"/service1"))


def test_root_role_shows_etcds_root_permission() -> None:
    s = root_store()
    assert s.role_get("root") == a.RoleGetResponse((Permission(PermType.READWRITE, b"", b"\x00"),))


def test_role_delete_removes_it_from_users_with_one_revision() -> None:
    s = root_store()
    grant(s, "app", PermType.READ, b"k")
    s.apply(a.UserGrantRoleRequest("alice", "app"))
    s.apply(a.UserGrantRoleRequest("root", "app"))
    assert s.permitted("alice", b"k", b"", PermType.READ)
    rev = s.revision
    s.apply(a.RoleDeleteRequest("app"))
    assert s.revision == rev + 1
    assert s.users["alice"].roles == () and s.users["root"].roles == ("root",)
    assert not s.permitted("alice", b"k", b"", PermType.READ)


# ---------------------------------------------------------------------- permitted


def test_permission_shapes_single_prefix_from_key_and_readwrite() -> None:
    s = root_store()
    grant(s, "app", PermType.READ, b"/cfg")
    grant(s, "app", PermType.READWRITE, b"/svc/", b"/svc0")
    grant(s, "app", PermType.WRITE, b"/logs/", b"\x00")
    s.apply(a.UserGrantRoleRequest("alice", "app"))
    p = s.permitted
    assert p("alice", b"/cfg", b"", PermType.READ) and not p("alice", b"/cfg", b"", PermType.WRITE)
    assert not p("alice", b"/cfg/x", b"", PermType.READ)  # a single key is not a prefix
    assert not p("alice", b"/cfg", b"/cfh", PermType.READ)  # nor a range
    assert p("alice", b"/svc/x", b"", PermType.READWRITE)
    assert p("alice", b"/svc/", b"/svc0", PermType.WRITE) and p("alice", b"/svc/a", b"/svc/b", PermType.READ)
    assert not p("alice", b"/svc/", b"/svc1", PermType.READ)
    assert not p("alice", b"/svc", b"", PermType.READ)
    assert p("alice", b"/logs/", b"\x00", PermType.WRITE) and p("alice", b"\xff\xff", b"", PermType.WRITE)
    assert not p("alice", b"/logs/", b"\x00", PermType.READ)
    assert not p("alice", b"/a", b"\x00", PermType.WRITE)  # from-key starting before the grant
    assert not p("nobody", b"/cfg", b"", PermType.READ)


def test_union_of_touching_ranges_across_roles_covers_a_spanning_range() -> None:
    s = root_store()
    grant(s, "r1", PermType.READ, b"a", b"c")
    grant(s, "r2", PermType.READWRITE, b"c", b"e")
    grant(s, "r3", PermType.READ, b"e")  # the single key e: [e, e\x00)
    grant(s, "r3", PermType.READ, b"e\x00", b"f")
    for r in ("r1", "r2", "r3"):
        s.apply(a.UserGrantRoleRequest("alice", r))
    assert s.permitted("alice", b"a", b"f", PermType.READ)
    assert s.permitted("alice", b"b", b"e\x00", PermType.READ)
    assert not s.permitted("alice", b"a", b"f\x00", PermType.READ)
    assert not s.permitted("alice", b"b", b"d", PermType.WRITE)
    assert s.permitted("alice", b"c", b"e", PermType.WRITE)


def test_root_bypasses_and_cache_follows_revision() -> None:
    s = root_store()
    assert s.permitted("root", b"anything", b"\x00", PermType.READWRITE) and s.is_admin("root")
    assert not s.is_admin("alice") and not s.is_admin("nobody")
    assert not s.permitted("alice", b"k", b"", PermType.READ)
    grant(s, "app", PermType.READ, b"k")
    s.apply(a.UserGrantRoleRequest("alice", "app"))
    assert s.permitted("alice", b"k", b"", PermType.READ)  # the cached denial did not survive the change
    s.apply(a.RoleRevokePermissionRequest("app", b"k"))
    assert not s.permitted("alice", b"k", b"", PermType.READ)


# ---------------------------------------------------------------------- check


def alice_on(prefix: bytes, perm_type: PermType) -> AuthStore:
    s = root_store()
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    grant(s, "app", perm_type, prefix, end)
    s.apply(a.UserGrantRoleRequest("alice", "app"))
    return s


def test_check_is_a_no_op_while_auth_is_off() -> None:
    s = root_store(enabled=False)
    s.check("", PutRequest(b"k", b"v"), no_leases)
    s.check("nobody", CompactionRequest(5), no_leases)
    s.check_admin("")
    s.check_read_range("", b"k", b"")
    s.check_lease_renew("", [b"k"])


def test_check_needs_a_user() -> None:
    s = root_store()
    calls: list[Callable[[], None]] = [
        lambda: s.check("", RangeRequest(b"k"), no_leases), lambda: s.check_admin(""),
        lambda: s.check_read_range("", b"k", b""), lambda: s.check_lease_renew("", []),
    ]
    for call in calls:
        with pytest.raises(errors.UserEmpty):
            call()
    with pytest.raises(errors.UserNotFound):
        s.check_admin("nobody")
    with pytest.raises(errors.PermissionDenied):
        s.check("nobody", RangeRequest(b"k"), no_leases)


def test_check_range_put_delete_and_prev_kv() -> None:
    w = alice_on(b"/w/", PermType.WRITE)
    w.check("alice", PutRequest(b"/w/x", b"1"), no_leases)
    w.check("alice", DeleteRangeRequest(b"/w/", b"/w0"), no_leases)
    for cmd in (RangeRequest(b"/w/x"), PutRequest(b"/w/x", b"1", prev_kv=True),
                DeleteRangeRequest(b"/w/x", prev_kv=True), PutRequest(b"/other", b"1"),
                DeleteRangeRequest(b"/w/", b"/x")):
        with pytest.raises(errors.PermissionDenied):
            w.check("alice", cmd, no_leases)
    rw = alice_on(b"/w/", PermType.READWRITE)
    rw.check("alice", PutRequest(b"/w/x", b"1", prev_kv=True), no_leases)
    rw.check("alice", DeleteRangeRequest(b"/w/x", prev_kv=True), no_leases)
    rw.check("alice", RangeRequest(b"/w/", b"/w0"), no_leases)
    rw.check_read_range("alice", b"/w/a", b"/w/b")
    with pytest.raises(errors.PermissionDenied):
        rw.check_read_range("alice", b"/w/", b"\x00")


def test_check_leases_put_revoke_renew() -> None:
    s = alice_on(b"/w/", PermType.WRITE)
    attached = {1: [b"/w/a"], 2: [b"/w/a", b"/secret"]}

    def lease_keys(lease: int) -> list[bytes]:
        if lease not in attached:
            raise errors.LeaseNotFound()
        return attached[lease]

    s.check("alice", PutRequest(b"/w/b", b"", lease=1), lease_keys)
    s.check("alice", PutRequest(b"/w/b", b"", lease=99), lease_keys)  # unknown lease: apply fails it
    s.check("alice", LeaseRevokeRequest(1), lease_keys)
    s.check("alice", LeaseGrantRequest(30), lease_keys)
    s.check_lease_renew("alice", attached[1])
    with pytest.raises(errors.PermissionDenied):
        s.check("alice", PutRequest(b"/w/b", b"", lease=2), lease_keys)
    with pytest.raises(errors.PermissionDenied):
        s.check("alice", LeaseRevokeRequest(2), lease_keys)
    with pytest.raises(errors.PermissionDenied):
        s.check_lease_renew("alice", attached[2])
    # admin needs no key permission
    s.check("root", LeaseRevokeRequest(2), lease_keys)
    s.check_lease_renew("root", attached[2])


def test_check_txn_compares_both_branches_and_nested_txns() -> None:
    s = alice_on(b"/w/", PermType.READWRITE)

    def txn(*ops: RequestOp, compare: tuple[Compare, ...] = (), failure: tuple[RequestOp, ...] = ()) -> TxnRequest:
        return TxnRequest(compare, ops, failure)

    ok_put = RequestOp(request_put=PutRequest(b"/w/x", b"1"))
    bad_put = RequestOp(request_put=PutRequest(b"/secret", b"1"))
    bad_range = RequestOp(request_range=RangeRequest(b"/secret"))
    bad_delete = RequestOp(request_delete_range=DeleteRangeRequest(b"/secret"))
    s.check("alice", txn(ok_put, compare=(Compare(key=b"/w/x"),), failure=(ok_put,)), no_leases)
    denied = [
        txn(ok_put, compare=(Compare(key=b"/secret"),)),
        txn(ok_put, failure=(bad_put,)),
        txn(bad_range),
        txn(bad_delete),
        # CVE-2026-33343: a forbidden op inside a nested txn, in either branch, at any depth
        txn(RequestOp(request_txn=txn(ok_put, failure=(bad_put,)))),
        txn(failure=(RequestOp(request_txn=txn(RequestOp(request_txn=txn(bad_range)))),)),
        txn(RequestOp(request_txn=txn(compare=(Compare(key=b"/secret"),)))),
    ]
    for t in denied:
        with pytest.raises(errors.PermissionDenied):
            s.check("alice", t, no_leases)
    s.check("root", denied[-1], no_leases)


def test_check_admin_only_commands() -> None:
    s = alice_on(b"/w/", PermType.READWRITE)
    admin_only: list[Command] = [
        CompactionRequest(5),
        AlarmRequest(AlarmAction.ACTIVATE, 1, AlarmType.NOSPACE),
        AlarmRequest(AlarmAction.DEACTIVATE, 1, AlarmType.NOSPACE),
        a.AuthDisableRequest(), a.UserAddRequest("x", H), a.UserDeleteRequest("x"), a.RoleAddRequest("x"),
        a.UserGrantRoleRequest("alice", "root"), a.RoleGrantPermissionRequest("app", Permission()),
    ]
    for cmd in admin_only:
        with pytest.raises(errors.PermissionDenied):
            s.check("alice", cmd, no_leases)
        s.check("root", cmd, no_leases)
    s.check("alice", AlarmRequest(AlarmAction.GET), no_leases)
    s.check("", a.AuthenticateRequest("alice", "x"), no_leases)  # the password is the check


def test_user_get_and_role_get_for_oneself() -> None:
    s = alice_on(b"/w/", PermType.READ)
    s.check_user_get("alice", "alice")
    s.check_role_get("alice", "app")
    s.check_user_get("root", "alice")
    with pytest.raises(errors.PermissionDenied):
        s.check_user_get("alice", "root")
    with pytest.raises(errors.PermissionDenied):
        s.check_role_get("alice", "root")


# ---------------------------------------------------------------------- image


def test_snapshot_restore_round_trip_is_exact() -> None:
    s = alice_on(b"/w/", PermType.READWRITE)
    s.apply(a.UserAddRequest("cn", b"", no_password=True))
    img = s.snapshot()
    back = AuthStore.restore(img)
    assert back == s and back.snapshot() == img
    assert back.enabled and back.revision == s.revision
    assert back.permitted("alice", b"/w/x", b"", PermType.WRITE)
    assert AuthStore.restore(AuthStore().snapshot()) == AuthStore()


@pytest.mark.parametrize("junk", [b"", b"\xc1", b"\x93\x01\x02\x03", b"\x95\x09\xc2\x00\x90\x90",
                                  b"\x95\x01\xc2\xff\x90\x90", b"\x95\x01\xc2\x00\x91\x91\x01\x90"])
def test_restore_rejects_junk(junk: bytes) -> None:
    with pytest.raises(errors.MalformedCommand):
        AuthStore.restore(junk)
