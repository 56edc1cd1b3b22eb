"""Passwords: bcrypt off the event loop, etcd 3.5's pre-hashed passwords, bcrypt's 72-byte limit."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import bcrypt

from conclave.api import pb

from .test_auth_matrix import AUTH, KV, OK, AuthMember, code_of

COST = 12  # about 0.2-0.3 s per hash on this machine: a stall of the loop would show


def test_bcrypt_runs_off_the_event_loop(tmp_path: Path) -> None:
    m = AuthMember(tmp_path, "python", bcrypt_cost=COST)
    try:
        async def max_gap_while(seconds: float) -> float:
            worst, last = 0.0, time.perf_counter()
            end = last + seconds
            while time.perf_counter() < end:
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                worst, last = max(worst, now - last), now
            return worst

        probe = asyncio.run_coroutine_threadsafe(max_gap_while(3.0), m.loop)
        started = time.perf_counter()
        for i in range(3):
            m.call(AUTH, "UserAdd", pb.AuthUserAddRequest(name=f"u{i}", password="pw"), timeout=30)
        hashing = time.perf_counter() - started
        gap = probe.result(30)
        assert m.node.sm.auth.users["u0"].password_hash.startswith(b"$2b$12$")
        # Three cost-12 hashes took this long, yet the loop never waited as long as half of one
        # (on the loop, the longest gap is a whole hash).
        per_hash = hashing / 3
        assert per_hash > 0.05 and gap < per_hash / 2, (per_hash, gap)
    finally:
        m.close()


def test_prehashed_and_overlong_passwords(tmp_path: Path) -> None:
    m = AuthMember(tmp_path, "python")
    try:
        hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()
        m.call(AUTH, "UserAdd", pb.AuthUserAddRequest(name="root", hashedPassword=hashed))
        assert m.node.sm.auth.users["root"].password_hash == hashed.encode()  # stored as sent
        got = code_of(lambda: m.call(AUTH, "UserAdd", pb.AuthUserAddRequest(name="x", hashedPassword="plain")))
        assert got == ("UNKNOWN", "etcdserver: hashed password is not a bcrypt hash"), got
        got = code_of(lambda: m.call(AUTH, "UserAdd", pb.AuthUserAddRequest(name="y", password="p" * 73)))
        assert got == ("UNKNOWN", "bcrypt: password length exceeds 72 bytes"), got
        m.call(AUTH, "RoleAdd", pb.AuthRoleAddRequest(name="root"))
        m.call(AUTH, "UserGrantRole", pb.AuthUserGrantRoleRequest(user="root", role="root"))
        m.call(AUTH, "AuthEnable", pb.AuthEnableRequest())
        token = m.authenticate("root", "secret")
        assert code_of(lambda: m.call(KV, "Put", pb.PutRequest(key=b"k", value=b"v"), token)) == OK
        failed = ("INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password")
        assert code_of(lambda: m.authenticate("root", "secret" + "x" * 80)) == failed
        # A user added with no password cannot log in with one (CN auth only).
        m.call(AUTH, "UserAdd", pb.AuthUserAddRequest(name="cn-only", options=pb.UserAddOptions(no_password=True)),
               token)  # fmt: skip
        assert m.node.sm.auth.users["cn-only"].password_hash == b""
        assert code_of(lambda: m.authenticate("cn-only", "")) == failed
    finally:
        m.close()
