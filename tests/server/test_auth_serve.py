"""`conclave serve` with the auth flags: jwt tokens end to end with etcdctl, and clear errors for
bad --auth-token / --bcrypt-cost / --auth-token-ttl values."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conclave.server.launcher import ProcessCluster

from .conftest import etcdctl_path, wait_for
from .test_auth_cluster import authenticate
from .test_server_etcdctl import ctl


def rsa_files(tmp: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    priv, pub = tmp / "jwt.key", tmp / "jwt.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))  # fmt: skip
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return priv, pub


@pytest.mark.skipif(etcdctl_path() is None and os.environ.get("CI") != "true", reason="etcdctl is not installed")
def test_jwt_tokens_with_etcdctl(tmp_path: Path) -> None:
    priv, pub = rsa_files(tmp_path)
    flag = f"jwt,pub-key={pub},priv-key={priv},sign-method=RS256,ttl=10m"
    c = ProcessCluster(tmp_path / "c", 1, extra_args=["--auth-token", flag, "--bcrypt-cost", "4"])
    c.start()
    try:
        eps = c.endpoints
        wait_for(lambda: ctl(eps, "endpoint", "health")[0] == 0, 30, "health")
        assert ctl(eps, "user", "add", "root", "--new-user-password=rootpw")[0] == 0
        rc, out = ctl(eps, "auth", "enable")
        assert rc == 0 and out.startswith("Authentication Enabled"), out
        assert ctl(eps, "--user", "root:rootpw", "put", "k", "v") == (0, "OK\n")
        assert ctl(eps, "--user", "root:rootpw", "get", "k") == (0, "k\nv\n")
        token = authenticate(eps[0], "root", "rootpw")
        claims = jwt.decode(token, pub.read_bytes(), algorithms=["RS256"])
        assert claims["username"] == "root" and claims["revision"] > 0
        assert 540 <= claims["exp"] - time.time() <= 600  # ttl=10m
        assert "simple token is not cryptographically signed" not in c.members[0].log_text()
    finally:
        c.stop()


@pytest.mark.parametrize("args, says", [
    (["--auth-token", "bogus"], "--auth-token must be simple or jwt"),
    (["--auth-token", "jwt,sign-method=RS256"], "needs pub-key"),
    (["--bcrypt-cost", "2"], "--bcrypt-cost must be between 4 and 31"),
    (["--auth-token-ttl", "0"], "--auth-token-ttl must be > 0"),
])  # fmt: skip
def test_bad_auth_flags_are_refused_clearly(args: list[str], says: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "conclave", "serve", "--data-dir", str(tmp_path / "d"), *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and says in done.stderr, done.stderr
