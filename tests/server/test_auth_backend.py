"""The member's own proposals and races with auth on: the NOSPACE alarm the member raises itself
is checked at the current auth revision (unwrapped it would be refused as stale), and an
Authenticate whose password check raced a change of the auth store is checked again."""

from __future__ import annotations

from pathlib import Path

from conclave.api import pb
from conclave.kv import auth as kvauth
from conclave.kv.command import Checked
from tests.api.test_auth_matrix import KV, LEASE, MAINT, AuthMember, _root_lease, setup_users


def test_the_nospace_alarm_is_raised_with_auth_on(tmp_path: Path) -> None:
    m = AuthMember(tmp_path, "python", quota_backend_bytes=64 * 1024)
    try:
        tokens = setup_users(m)
        big = b"x" * 16 * 1024
        for i in range(8):
            try:
                m.call(KV, "Put", pb.PutRequest(key=b"/k%d" % i, value=big), tokens["root"])
            except Exception:  # once the alarm is raised: "database space exceeded"
                break
        alarms = m.call(MAINT, "Alarm", pb.AlarmRequest(action=0), tokens["root"]).alarms
        assert [a.alarm for a in alarms] == [pb.ALARM_NOSPACE], alarms
    finally:
        m.close()


def test_authenticate_retries_when_the_store_changes_under_it(tmp_path: Path) -> None:
    m = AuthMember(tmp_path, "python")
    try:
        setup_users(m)
        backend = m.backend
        assert backend is not None
        real = backend.node.propose_kv
        raced: list[object] = []

        async def change_first(cmd: object) -> object:
            # The first Authenticate proposal finds the store changed meanwhile (a role added).
            if not raced and isinstance(cmd, Checked) and isinstance(cmd.command, kvauth.AuthenticateRequest):
                raced.append(cmd)
                await real(Checked(backend.node.sm.auth.revision, kvauth.RoleAddRequest("racer")))
            return await real(cmd)

        backend.node.propose_kv = change_first  # type: ignore[method-assign]
        token, _ = m.run(backend.authenticate("ro", "ropw"))
        assert len(raced) == 1 and "racer" in backend.node.sm.auth.roles
        assert m.call(KV, "Range", pb.RangeRequest(key=b"/app/k"), token).header.revision > 0
    finally:
        m.close()


def test_lease_leases_lists_only_the_leases_the_caller_could_renew(tmp_path: Path) -> None:
    m = AuthMember(tmp_path, "python")
    try:
        tokens = m.tokens = setup_users(m)
        app = _root_lease(m, b"/app/held")
        other = _root_lease(m, b"/other/held")

        def listed(who: str) -> set[int]:
            return {s.ID for s in m.call(LEASE, "LeaseLeases", pb.LeaseLeasesRequest(), tokens[who]).leases}

        assert {app, other} <= listed("root")
        assert other in listed("rwo") and app not in listed("rwo")  # rwo may write /other/ only
        assert not {app, other} & listed("ro")  # ro writes nothing
    finally:
        m.close()
