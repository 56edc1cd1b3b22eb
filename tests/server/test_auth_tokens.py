"""Token providers and the Authenticate limiter (server/auth_tokens.py), on virtual time."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conclave.kv import errors as kverr
from conclave.server.auth_tokens import (
    AttemptLimiter,
    JwtTokens,
    SimpleTokens,
    TokenConfigError,
    new_simple_prefix,
    provider_from_flag,
)
from conclave.server.config import ConfigError, ServerConfig


class Clock:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


def test_simple_tokens_slide_expire_and_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    tokens = SimpleTokens(300, clock)
    with caplog.at_level(logging.WARNING, "conclave.auth"):
        tokens.register("aaaaaaaaaaaaaaaa.7", "alice")
        tokens.register("bbbbbbbbbbbbbbbb.8", "alice")
        tokens.register("cccccccccccccccc.9", "bob")
    assert caplog.text.count("simple token is not cryptographically signed") == 1
    for _ in range(5):  # each use restarts the 300 s
        clock.ms += 299_000
        assert tokens.info("aaaaaaaaaaaaaaaa.7").user == "alice"
    with pytest.raises(kverr.InvalidAuthToken):
        tokens.info("bbbbbbbbbbbbbbbb.8")  # never used: expired after 300 s
    with pytest.raises(kverr.InvalidAuthToken):
        tokens.info("nosuch.1")
    tokens.register("dddddddddddddddd.10", "alice")
    tokens.invalidate_user("alice")
    for t in ("aaaaaaaaaaaaaaaa.7", "dddddddddddddddd.10"):
        with pytest.raises(kverr.InvalidAuthToken):
            tokens.info(t)
    tokens.register("eeeeeeeeeeeeeeee.11", "carol")
    tokens.invalidate_all()
    assert len(tokens) == 0


def test_expired_simple_tokens_are_swept() -> None:
    clock = Clock()
    tokens = SimpleTokens(1, clock)
    for i in range(SimpleTokens.SWEEP_EVERY - 1):
        tokens.register(f"t.{i}", "u")
    clock.ms += 2000
    tokens.register("last.0", "u")  # the SWEEP_EVERY-th registration sweeps the expired ones
    assert len(tokens) == 1


def test_simple_prefix_is_16_random_letters() -> None:
    a, b = new_simple_prefix(), new_simple_prefix()
    assert len(a) == 16 and a.isalpha() and a != b


def _rsa_keys(tmp: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv, pub = tmp / "jwt.key", tmp / "jwt.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return priv, pub


def test_jwt_tokens_sign_verify_expire_and_refuse_forgeries(tmp_path: Path) -> None:
    import jwt

    priv, pub = _rsa_keys(tmp_path)
    now = [1_700_000_000.0]
    signer = provider_from_flag(f"jwt,pub-key={pub},priv-key={priv},sign-method=RS256,ttl=5m",
                                wall_clock=lambda: now[0])  # fmt: skip
    verifier = provider_from_flag(f"jwt,pub-key={pub},sign-method=RS256", wall_clock=lambda: now[0])
    assert isinstance(signer, JwtTokens) and signer.can_sign and verifier.signed and not verifier.can_sign
    token = signer.sign("alice", 7)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["username"] == "alice" and claims["revision"] == 7 and claims["exp"] == int(now[0]) + 300
    info = verifier.info(token)  # a member with only the public key verifies
    assert (info.user, info.revision) == ("alice", 7)
    with pytest.raises(kverr.AuthFailed):
        verifier.sign("alice", 7)  # ... but cannot issue tokens
    (tmp_path / "other").mkdir()
    other_priv, _ = _rsa_keys(tmp_path / "other")
    other_key = serialization.load_pem_private_key(other_priv.read_bytes(), None)
    forged = jwt.encode({"username": "root", "revision": 7, "exp": int(now[0]) + 300}, other_key,  # type: ignore[arg-type]
                        algorithm="RS256")
    for bad in (forged, "garbage", token[:-4] + "AAAA", ""):
        with pytest.raises(kverr.InvalidAuthToken):
            verifier.info(bad)
    now[0] += 301
    with pytest.raises(kverr.InvalidAuthToken):
        verifier.info(token)


def test_jwt_es256(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    priv, pub = tmp_path / "k", tmp_path / "p"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    p = provider_from_flag(f"jwt,pub-key={pub},priv-key={priv},sign-method=ES256")
    assert p.info(p.sign("bob", 3)).user == "bob"


@pytest.mark.parametrize("flag, says", [
    ("", "must not be empty"),
    ("plain", "simple or jwt"),
    ("simple,ttl=5", "takes no options"),
    ("jwt,pub-key=/nonexistent,sign-method=RS256", "cannot read pub-key"),
    ("jwt,sign-method=RS256", "needs pub-key"),
    ("jwt,pub-key=x", "needs sign-method"),
    ("jwt,pub-key=x,sign-method=XX1", "unsupported sign-method"),
    ("jwt,color=red", "unknown jwt option"),
])  # fmt: skip
def test_bad_auth_token_flags_are_clear_errors(flag: str, says: str, tmp_path: Path) -> None:
    with pytest.raises(TokenConfigError, match=says):
        provider_from_flag(flag)


def test_jwt_ttl_durations(tmp_path: Path) -> None:
    priv, pub = _rsa_keys(tmp_path)
    for text, seconds in (("300s", 300), ("5m", 300), ("1h30m", 5400), ("90", 90), ("1500ms", 1.5)):
        p = provider_from_flag(f"jwt,pub-key={pub},priv-key={priv},sign-method=RS256,ttl={text}")
        assert isinstance(p, JwtTokens) and p.ttl_s == seconds
    with pytest.raises(TokenConfigError, match="ttl"):
        provider_from_flag(f"jwt,pub-key={pub},sign-method=RS256,ttl=5x")


def test_server_config_checks_the_auth_flags(tmp_path: Path) -> None:
    def cfg(**kw: object) -> ServerConfig:
        return ServerConfig(name="a", data_dir=str(tmp_path / "a"), **kw)  # type: ignore[arg-type]

    cfg().validate()
    bad: list[tuple[dict[str, object], str]] = [
        ({"bcrypt_cost": 3}, "--bcrypt-cost"), ({"bcrypt_cost": 32}, "--bcrypt-cost"),
        ({"auth_token_ttl": 0}, "--auth-token-ttl"), ({"auth_token": "nope"}, "--auth-token")]
    for kw, says in bad:
        with pytest.raises(ConfigError, match=says):
            cfg(**kw).validate()


def test_attempt_limiter_policy() -> None:
    clock = Clock()
    lim = AttemptLimiter(clock, free=5, base_s=1, cap_s=60, max_keys=3)
    for _ in range(4):
        lim.failed("alice", "1.2.3.4")
        assert not lim.locked("alice", "1.2.3.4")
    lim.failed("alice", "1.2.3.4")  # the 5th failure: locked 1 s
    assert lim.locked("alice", "1.2.3.4")
    assert not lim.locked("alice", "5.6.7.8") and not lim.locked("bob", "1.2.3.4")  # per (user, source)
    delays = []
    for _ in range(8):  # each further failure doubles the lock, up to 60 s
        start = clock.ms
        while lim.locked("alice", "1.2.3.4"):
            clock.ms += 100
        delays.append(clock.ms - start)
        lim.failed("alice", "1.2.3.4")
    assert delays == [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000], delays
    lim.succeeded("alice", "1.2.3.4")
    assert not lim.locked("alice", "1.2.3.4")
    # Forgotten once idle for cap_s after the lock ended; at most max_keys keys are kept.
    for _ in range(5):
        lim.failed("carol", "x")
    clock.ms += 121_000
    assert not lim.locked("carol", "x")
    lim.failed("carol", "x")
    assert not lim.locked("carol", "x")  # counting starts again
    for user in ("d", "e", "f", "g"):
        lim.failed(user, "x")
    assert len(lim._keys) == 3


def test_attempt_limiter_reports_the_lock_it_starts() -> None:
    clock = Clock()
    lim = AttemptLimiter(clock, free=2, base_s=1, cap_s=60)
    assert [lim.failed("u", "s") for _ in range(4)] == [0, 1000, 2000, 4000]
    assert lim.failures("u", "s") == 4 and lim.failures("v", "s") == 0
