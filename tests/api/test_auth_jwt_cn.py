"""JWT tokens (``--auth-token jwt,...``) and client-certificate (CN) auth on an in-process member,
on both gRPC engines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conclave.api import pb
from conclave.server.auth_tokens import provider_from_flag
from tests.edge.tls_support import make_pki

from .test_auth_matrix import AUTH, IT, KV, OK, PD, UE, AuthMember, code_of, engines, setup_users


def rsa_pair(tmp: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv, pub = tmp / "jwt.key", tmp / "jwt.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return priv, pub


@pytest.fixture(params=engines())
def jwt_member(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[AuthMember, Path]]:
    priv, pub = rsa_pair(tmp_path)
    m = AuthMember(tmp_path, request.param, auth_token=f"jwt,pub-key={pub},priv-key={priv},sign-method=RS256,ttl=5m")
    try:
        m.tokens = setup_users(m)
        yield m, pub
    finally:
        m.close()


def test_jwt_tokens_carry_the_auth_revision(jwt_member: tuple[AuthMember, Path]) -> None:
    m, pub = jwt_member
    tok = m.tokens["ro"]
    claims = jwt.decode(tok, pub.read_bytes(), algorithms=["RS256"])
    status = m.call(AUTH, "AuthStatus", pb.AuthStatusRequest(), m.tokens["root"])
    assert claims["username"] == "ro" and claims["revision"] == status.authRevision and claims["exp"] > 0
    range_app = pb.RangeRequest(key=b"/app/k")
    assert code_of(lambda: m.call(KV, "Range", range_app, tok)) == OK
    assert code_of(lambda: m.call(KV, "Put", pb.PutRequest(key=b"/app/k", value=b"1"), tok)) == PD
    # A token signed by another key, or a garbled one, is refused.
    other = jwt.encode({"username": "root", "revision": claims["revision"], "exp": claims["exp"]},
                       rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256")
    assert code_of(lambda: m.call(KV, "Range", range_app, other)) == IT
    assert code_of(lambda: m.call(KV, "Range", range_app, tok[:-3] + "abc")) == IT
    # Any change of the auth store makes older tokens stale: the client must authenticate again.
    m.call(AUTH, "RoleAdd", pb.AuthRoleAddRequest(name="another"), m.tokens["root"])
    stale = ("INVALID_ARGUMENT", "etcdserver: revision of auth store is old")
    assert code_of(lambda: m.call(KV, "Range", range_app, tok)) == stale
    assert code_of(lambda: m.call(KV, "Put", pb.PutRequest(key=b"/other/k", value=b"1"), m.tokens["rwo"])) == stale
    fresh = m.authenticate("ro", "ropw")
    assert code_of(lambda: m.call(KV, "Range", range_app, fresh)) == OK


def test_a_member_with_only_the_public_key_verifies_but_cannot_issue(jwt_member: tuple[AuthMember, Path]) -> None:
    m, pub = jwt_member
    verifier = provider_from_flag(f"jwt,pub-key={pub},sign-method=RS256")
    info = verifier.info(m.tokens["ro"])
    assert (info.user, info.revision is not None) == ("ro", True)
    m.node.tokens = verifier  # this member now holds only the public key
    assert code_of(lambda: m.call(KV, "Range", pb.RangeRequest(key=b"/app/k"), m.tokens["ro"])) == OK
    got = code_of(lambda: m.authenticate("ro", "ropw"))
    assert got == ("INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password"), got


@pytest.fixture(params=engines())
def cn_member(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AuthMember]:
    pki = make_pki(tmp_path / "pki")  # its client certificate's CN is "root"
    m = AuthMember(tmp_path, request.param, tls=pki, client_cert_auth=True, trusted_ca_file=str(pki.ca))
    try:
        m.tokens = setup_users(m)
        yield m
    finally:
        m.close()


def test_the_client_certificate_cn_is_the_user_without_a_token(cn_member: AuthMember) -> None:
    m = cn_member
    # No token: the verified certificate's CN ("root") is the user, so root-only calls pass.
    assert code_of(lambda: m.call(KV, "Put", pb.PutRequest(key=b"/app/k", value=b"1"))) == OK
    assert code_of(lambda: m.call(AUTH, "UserList", pb.AuthUserListRequest())) == OK
    # A token wins over the CN.
    assert code_of(lambda: m.call(KV, "Put", pb.PutRequest(key=b"/app/k", value=b"1"), m.tokens["ro"])) == PD
    # Through the gateway the CN is ignored, as etcd ignores it.
    gw = (("grpcgateway-accept", "application/json"),)
    got = code_of(lambda: m.stub(KV).Range(pb.RangeRequest(key=b"/app/k"), metadata=gw, timeout=10))
    assert got == UE
    # Streams use the CN too: a watch created as root.
    stream = m.stub("etcdserverpb.Watch").Watch(iter([pb.WatchRequest(create_request=pb.WatchCreateRequest(
        key=b"/app/"))]), timeout=10)  # fmt: skip
    first = next(stream)
    stream.cancel()
    assert first.created and not first.canceled
