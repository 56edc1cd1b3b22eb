"""TLS flags: start-up errors in one sentence, the contexts they build, reload, auto-TLS (no server processes
except the one that checks `conclave serve`'s exit status)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from conclave.cli import serve
from conclave.server import tls
from conclave.server.config import ConfigError, ServerConfig
from conclave.server.launcher import free_ports

from .tls_pki import Leaf, Pki, replace_files


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path / "pki")


def parse(argv: list[str], tmp: Path) -> ServerConfig:
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--data-dir", str(tmp / "d"), *argv])
    return serve.config_from_args(args)


def peer_flags(pki: Pki, leaf: Leaf, port: int) -> list[str]:
    return ["--listen-peer-urls", f"https://127.0.0.1:{port}", "--peer-cert-file", str(leaf.cert),
            "--peer-key-file", str(leaf.key), "--peer-trusted-ca-file", str(pki.ca_file)]  # fmt: skip


def test_every_tls_flag_parses_and_reaches_the_config(pki: Pki, tmp_path: Path) -> None:
    leaf = pki.leaf("m1")
    crl = pki.crl(tmp_path / "crl.pem", [])
    cfg = parse([*peer_flags(pki, leaf, 2380), "--peer-client-cert-auth", "--peer-cert-allowed-cn", "m1, m2",
                 "--peer-crl-file", str(crl), "--listen-client-urls", "https://127.0.0.1:2379",
                 "--cert-file", str(leaf.cert), "--key-file", str(leaf.key), "--trusted-ca-file", str(pki.ca_file),
                 "--client-cert-auth", "--client-crl-file", str(crl), "--client-cert-allowed-hostname", "a.b,c.d",
                 "--cipher-suites", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "--tls-max-version", "TLS1.3",
                 "--self-signed-cert-validity", "3"], tmp_path)  # fmt: skip
    assert cfg.peer_cert_allowed_cn == ["m1", "m2"] and cfg.client_cert_allowed_hostname == ["a.b", "c.d"]
    assert cfg.peer_client_cert_auth and cfg.peer_crl_file == str(crl) and cfg.self_signed_cert_validity == 3
    assert cfg.cipher_suites == ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"] and cfg.tls_max_version == "TLS1.3"
    peer = tls.peer_settings(cfg)
    assert peer.allowed_cn == ("m1", "m2") and peer.crl_file == str(crl) and peer.client_cert_auth


def test_flags_come_from_the_environment_too(pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    leaf = pki.leaf("m1")
    monkeypatch.setenv("CONCLAVE_PEER_CERT_FILE", str(leaf.cert))
    monkeypatch.setenv("CONCLAVE_PEER_KEY_FILE", str(leaf.key))
    monkeypatch.setenv("CONCLAVE_PEER_CLIENT_CERT_AUTH", "true")
    monkeypatch.setenv("CONCLAVE_PEER_TRUSTED_CA_FILE", str(pki.ca_file))
    monkeypatch.setenv("CONCLAVE_TLS_MIN_VERSION", "TLS1.3")
    cfg = parse(["--listen-peer-urls", "https://127.0.0.1:2380"], tmp_path)
    assert cfg.peer_cert_file == str(leaf.cert) and cfg.peer_client_cert_auth and cfg.tls_min_version == "TLS1.3"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unreadable", "--peer-cert-file: cannot read"),
        ("mismatch", "does not match the certificate"),
        ("expired", "expired at"),
        ("ca-not-pem", "--peer-trusted-ca-file: "),
        ("crl-garbage", "--peer-crl-file: "),
        ("min-over-max", "--tls-min-version TLS1.3 is greater than --tls-max-version TLS1.2"),
        ("bad-version", "--tls-min-version must be TLS1.2 or TLS1.3"),
        ("unknown-cipher", "unexpected TLS cipher suite 'TLS_NOPE'"),
        ("cipher-with-tls13", "cannot be configured when only TLS1.3"),
        ("https-without-cert", "needs TLS: give --peer-cert-file and --peer-key-file"),
        ("cn-and-hostname", "mutually exclusive"),
        ("auth-without-ca", "--peer-client-cert-auth needs --peer-trusted-ca-file"),
        ("crl-without-auth", "--client-crl-file needs --client-cert-auth"),
    ],
)
def test_bad_tls_input_is_one_clear_config_error(pki: Pki, tmp_path: Path, case: str, expected: str) -> None:
    leaf, other = pki.leaf("m1"), pki.leaf("m2")
    flags = peer_flags(pki, leaf, 2380)
    junk = tmp_path / "junk.txt"
    junk.write_text("hello\n")
    if case == "unreadable":
        flags[flags.index("--peer-cert-file") + 1] = str(tmp_path / "missing.pem")
    elif case == "mismatch":
        flags[flags.index("--peer-key-file") + 1] = str(other.key)
    elif case == "expired":
        old = pki.expired("old")
        flags[flags.index("--peer-cert-file") + 1] = str(old.cert)
        flags[flags.index("--peer-key-file") + 1] = str(old.key)
    elif case == "ca-not-pem":
        flags[flags.index("--peer-trusted-ca-file") + 1] = str(junk)
    elif case == "crl-garbage":
        flags += ["--peer-crl-file", str(junk)]
    elif case == "min-over-max":
        flags += ["--tls-min-version", "TLS1.3", "--tls-max-version", "TLS1.2"]
    elif case == "bad-version":
        flags += ["--tls-min-version", "TLS1.1"]
    elif case == "unknown-cipher":
        flags += ["--cipher-suites", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_NOPE"]
    elif case == "cipher-with-tls13":
        flags += ["--cipher-suites", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "--tls-min-version", "TLS1.3"]
    elif case == "https-without-cert":
        flags = ["--listen-peer-urls", "https://127.0.0.1:2380"]
    elif case == "cn-and-hostname":
        flags += ["--peer-client-cert-auth", "--peer-cert-allowed-cn", "a", "--peer-cert-allowed-hostname", "b"]
    elif case == "crl-without-auth":
        flags += ["--client-crl-file", str(pki.crl(tmp_path / "crl.pem", []))]
    elif case == "auth-without-ca":
        flags = [*flags[:-2], "--peer-client-cert-auth"]
    with pytest.raises(ConfigError) as err:
        parse(flags, tmp_path)
    assert expected in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_serve_exits_2_and_names_the_expiry(pki: Pki, tmp_path: Path) -> None:
    old = pki.expired("old")
    client, peer = free_ports(2)
    done = subprocess.run(
        [sys.executable, "-m", "conclave", "serve", "--data-dir", str(tmp_path / "d"),
         "--listen-client-urls", f"https://127.0.0.1:{client}", "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--cert-file", str(old.cert), "--key-file", str(old.key)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"--cert-file: the certificate in {old.cert} expired at" in done.stderr and "UTC" in done.stderr


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> ssl.SSLObject:
    """Run a TLS handshake in memory (no sockets); returns the server side, raises its error."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
    done = {"s": False, "c": False}
    for _ in range(20):
        for side, obj in (("c", cli), ("s", srv)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        if all(done.values()):
            # TLS1.3: the client learns of a refused certificate only when it reads.
            srv.write(b"x")
            c_in.write(s_out.read())
            cli.read(1)
            return srv
    raise AssertionError("handshake did not finish")


def _client(pki: Pki, leaf: Leaf | None = None, **kw: object) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    if leaf is not None:
        ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
    for k, v in kw.items():
        setattr(ctx, k, v)
    return ctx


def _settings(pki: Pki, leaf: Leaf, **kw: object) -> tls.TlsSettings:
    return tls.TlsSettings(prefix="peer-", cert_file=str(leaf.cert), key_file=str(leaf.key),
                           trusted_ca_file=str(pki.ca_file), **kw)  # type: ignore[arg-type]  # fmt: skip


def test_client_cert_auth_crl_versions_and_ciphers_are_enforced_by_the_context(pki: Pki, tmp_path: Path) -> None:
    server, good, revoked = pki.leaf("server"), pki.leaf("good"), pki.leaf("revoked")
    s = _settings(pki, server, client_cert_auth=True, crl_file=str(pki.crl(tmp_path / "crl.pem", [revoked.serial])))
    ctx = tls.server_context(s)
    assert _handshake(ctx, _client(pki, good)).getpeercert() is not None
    with pytest.raises(ssl.SSLError):
        _handshake(ctx, _client(pki, revoked))
    with pytest.raises(ssl.SSLError):
        _handshake(ctx, _client(pki))  # no client certificate
    only13 = tls.server_context(_settings(pki, server, min_version="TLS1.3"))
    assert _handshake(only13, _client(pki)).version() == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        _handshake(only13, _client(pki, maximum_version=ssl.TLSVersion.TLSv1_2))
    one = tls.server_context(_settings(pki, server, max_version="TLS1.2",
                                       cipher_suites=("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",)))  # fmt: skip
    assert _handshake(one, _client(pki)).cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"  # type: ignore[index]


def test_every_mapped_cipher_suite_is_known_to_openssl() -> None:
    for go, name in tls.CIPHER_SUITES.items():
        if "3DES" in go:
            continue  # disabled at OpenSSL 3's default security level: refused at start-up instead
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.set_ciphers(name)
        assert any(c["name"] == name for c in ctx.get_ciphers()), go


def test_allowed_cn_and_hostname(pki: Pki) -> None:
    a = pki.leaf("a", cn="m1", hosts=("10.0.0.1", "node1.example.com"))
    der = ssl.PEM_cert_to_DER_cert(a.cert.read_text())
    cn = _settings(pki, a, allowed_cn=("m1", "m2"))
    assert tls.refusal(cn, der) is None
    why = tls.refusal(_settings(pki, a, allowed_cn=("m9",)), der)
    assert "common name 'm1' is not in --peer-cert-allowed-cn m9" in str(why)
    assert tls.refusal(cn, None) == "no verified certificate was presented"
    for ok in ("10.0.0.1", "node1.example.com", "NODE1.example.com"):
        assert tls.refusal(_settings(pki, a, allowed_hostnames=("x", ok)), der) is None, ok
    wild = pki.leaf("w", hosts=("*.example.com",))
    wder = ssl.PEM_cert_to_DER_cert(wild.cert.read_text())
    assert tls.hostname_matches(wder, "node7.example.com") and not tls.hostname_matches(wder, "a.b.example.com")
    for bad in ("10.0.0.2", "node2.example.com", "example.com"):
        assert tls.refusal(_settings(pki, a, allowed_hostnames=(bad,)), der) is not None, bad


def test_context_source_reloads_changed_files_at_most_once_a_second(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    served, renewed, other = pki.leaf("served"), pki.leaf("renewed"), pki.leaf("other")
    now = [100.0]
    src = tls.ContextSource(_settings(pki, served), server=True, clock=lambda: now[0])
    listening = src.listening_context()

    def cert_in_use() -> int:
        from cryptography import x509

        cli_in, cli_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        cli = _client(pki).wrap_bio(cli_in, cli_out, server_hostname="127.0.0.1")
        srv = listening.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):
            for obj in (cli, srv):
                with contextlib.suppress(ssl.SSLWantReadError):
                    obj.do_handshake()
            s_in.write(cli_out.read())
            cli_in.write(s_out.read())
        der = cli.getpeercert(binary_form=True)
        assert der is not None
        return int(x509.load_der_x509_certificate(der).serial_number)

    assert cert_in_use() == served.serial
    replace_files(renewed, served)
    now[0] += 0.5
    assert cert_in_use() == served.serial  # not looked at yet: at most one stat per second
    now[0] += 0.6
    assert cert_in_use() == renewed.serial and src.reloads == 1
    # A renewal caught half-way (new key, old cert) cannot be used: the last good context serves on.
    other_key = other.key.read_bytes()
    served.key.write_bytes(other_key)
    now[0] += 1.1
    with caplog.at_level(logging.WARNING, logger="conclave.tls"):
        assert cert_in_use() == renewed.serial
    assert "cannot be used yet" in caplog.text and src.reloads == 1
    served.cert.write_bytes(other.cert.read_bytes())
    now[0] += 1.1
    assert cert_in_use() == other.serial and src.reloads == 2


def test_auto_tls_makes_self_signed_certificates_once(tmp_path: Path) -> None:
    c, p = free_ports(2)
    cfg = ServerConfig(name="a", data_dir=str(tmp_path / "a"), listen_client_urls=[f"https://127.0.0.1:{c}"],
                       listen_peer_urls=[f"https://127.0.0.1:{p}"], auto_tls=True, peer_auto_tls=True,
                       self_signed_cert_validity=2)  # fmt: skip
    cfg.validate()
    tls.prepare_auto_tls(cfg)
    assert cfg.cert_file == str(tmp_path / "a" / "fixtures" / "client" / "cert.pem")
    assert cfg.peer_cert_file == str(tmp_path / "a" / "fixtures" / "peer" / "cert.pem")
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(Path(cfg.cert_file).read_bytes())
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 729 <= days <= 731
    tls.check_settings(tls.client_settings(cfg))
    first = Path(cfg.peer_cert_file).read_bytes()
    again = ServerConfig(name="a", data_dir=str(tmp_path / "a"), listen_peer_urls=[f"https://127.0.0.1:{p}"],
                         peer_auto_tls=True)  # fmt: skip
    tls.prepare_auto_tls(again)
    assert Path(again.peer_cert_file).read_bytes() == first  # reused across restarts, as etcd
    peer = tls.peer_settings(again)
    assert peer.self_signed and tls.client_context(peer).verify_mode == ssl.CERT_NONE
