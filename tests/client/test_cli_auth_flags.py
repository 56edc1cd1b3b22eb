"""The CLI's etcdctl-style security flags, without a server: where they may go, how --user and
--password combine, the Password: prompt, the CONCLAVE_* environment, boolean flags."""

from __future__ import annotations

import argparse

import pytest

from conclave.cli import client as cli
from conclave.cli.main import build_parser, main


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(cli.normalize_bool_flags(list(argv)))


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONCLAVE_USER", "CONCLAVE_PASSWORD", "CONCLAVE_CACERT", "CONCLAVE_CERT", "CONCLAVE_KEY",
                 "CONCLAVE_INSECURE_SKIP_TLS_VERIFY", "CONCLAVE_INSECURE_TRANSPORT", "CONCLAVE_PROTOCOL"):
        monkeypatch.delenv(name, raising=False)


def test_flags_before_or_after_the_command() -> None:
    before = parse("--user=alice:pw", "--cacert", "ca.pem", "--endpoints", "h:1", "get", "k")
    after = parse("get", "k", "--user=alice:pw", "--cacert", "ca.pem", "--endpoints", "h:1")
    for args in (before, after):
        assert args.key == "k"  # --key the flag does not clobber KEY the argument
        assert cli.client_options(args) == {"user": "alice", "password": "pw", "ca_file": "ca.pem"}
        assert args.endpoints == "h:1"
    both = parse("--user=a:1", "get", "k", "--user=b:2")
    assert cli.client_options(both)["user"] == "b"  # the later one wins, as in etcdctl


def test_user_and_password_as_etcdctl_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        return "typed"

    assert cli.credentials(parse("get", "k", "--user", "alice:p:w"), ask) == ("alice", "p:w")
    assert cli.credentials(parse("get", "k", "--user", "a:b", "--password", "pw"), ask) == ("a:b", "pw")
    assert cli.credentials(parse("get", "k", "--user", "alice"), ask) == ("alice", "typed")
    assert asked == ["Password: "]
    assert cli.credentials(parse("get", "k"), ask) is None
    monkeypatch.setenv("CONCLAVE_USER", "env:pw")
    assert cli.credentials(parse("get", "k"), ask) == ("env", "pw")
    assert cli.credentials(parse("get", "k", "--user=flag:x"), ask) == ("flag", "x")  # a flag beats the env


def test_tls_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.client_options(parse("get", "k")) == {}
    assert cli.client_options(parse("--insecure-skip-tls-verify", "get", "k")) == {"insecure_skip_tls_verify": True}
    assert cli.client_options(parse("get", "k", "--insecure-skip-tls-verify=false")) == {}
    assert cli.client_options(parse("--insecure-transport=false", "get", "k")) == {"tls": True}
    assert cli.client_options(parse("get", "k", "--cert", "c.pem", "--key", "k.pem")) == {
        "cert_file": "c.pem", "key_file": "k.pem"}
    monkeypatch.setenv("CONCLAVE_INSECURE_SKIP_TLS_VERIFY", "true")
    monkeypatch.setenv("CONCLAVE_KEY", "k.pem")
    assert cli.client_options(parse("get", "k")) == {"insecure_skip_tls_verify": True, "key_file": "k.pem"}
    monkeypatch.setenv("CONCLAVE_INSECURE_SKIP_TLS_VERIFY", "maybe")
    with pytest.raises(cli.UsageError, match="CONCLAVE_INSECURE_SKIP_TLS_VERIFY"):
        cli.client_options(parse("get", "k"))


def test_boolean_flags_never_take_the_next_word() -> None:
    args = parse("role", "grant-permission", "app", "--prefix", "readwrite", "/service/")
    assert (args.name, args.perm, args.key, args.prefix, args.range_end) == ("app", "readwrite", "/service/", True,
                                                                              None)
    args = parse("get", "--prefix=false", "k")
    assert args.prefix is False and args.key == "k"
    assert parse("get", "--", "--prefix").key == "--prefix"  # after --, words are arguments


def test_bad_arguments_exit_128_with_etcdctls_message(capsys: pytest.CaptureFixture[str]) -> None:
    # No member is contacted: the arguments are refused first.
    assert main(["--endpoints=127.0.0.1:1", "role", "grant-permission", "app", "--prefix", "--from-key", "read",
                 "/z"]) == 128
    assert capsys.readouterr().err == "Error: --from-key and --prefix flags are mutually exclusive\n"
    assert main(["--endpoints=127.0.0.1:1", "role", "grant-permission", "app", "bogus", "/z"]) == 128
    assert capsys.readouterr().err == "Error: invalid permission type: bogus\n"
    assert main(["--endpoints=127.0.0.1:1", "user", "add", ":x"]) == 128
    assert capsys.readouterr().err == "Error: empty user name is not allowed\n"
    assert main(["--endpoints=127.0.0.1:1", "role", "revoke-permission", "app", "/a", "/b", "--prefix"]) == 128
    assert capsys.readouterr().err == "Error: unexpected endkey argument with --prefix flag\n"


def test_the_client_gets_the_options(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, object] = {}

    class FakeClient:
        def __init__(self, endpoints: list[str], **kw: object) -> None:
            seen.update(kw, endpoints=endpoints)

        def __enter__(self) -> FakeClient:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def auth_disable(self) -> None:
            seen["called"] = True

    import conclave.client

    monkeypatch.setattr(conclave.client, "Client", FakeClient)
    monkeypatch.setenv("CONCLAVE_PROTOCOL", "grpc")
    assert main(["--user", "root", "--password", "pw", "--cacert", "ca.pem", "auth", "disable",
                 "--endpoints", "h:1,h:2"]) == 0
    assert capsys.readouterr().out == "Authentication Disabled\n"
    assert seen == {"endpoints": ["h:1", "h:2"], "protocol": "grpc", "timeout": 5.0, "user": "root",
                    "password": "pw", "ca_file": "ca.pem", "called": True}


def test_every_normalized_flag_accepts_a_value() -> None:
    """normalize_bool_flags rewrites these words for every command: each must take ``=true``."""
    for argv in (["txn", "--interactive"], ["txn", "-i"], ["get", "k", "--from-key"], ["del", "k", "--prefix"],
                 ["watch", "k", "--prefix"], ["user", "add", "u", "--interactive"], ["user", "get", "u", "--detail"]):
        parse(*argv)
    assert parse("txn", "--interactive").interactive is True


def test_password_prompts_of_user_add_and_passwd(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import getpass

    answers = iter(["s3cret", "s3cret", "one", "two"])
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    calls: list[tuple[object, ...]] = []

    class FakeClient:
        def user_add(self, name: str, password: str, no_password: bool = False) -> None:
            calls.append(("add", name, password, no_password))

        def user_change_password(self, name: str, password: str) -> None:
            calls.append(("passwd", name, password))

    assert cli.cmd_user_add(FakeClient(), parse("user", "add", "carol")) == 0
    assert prompts == ["Password of carol: ", "Type password of carol again for confirmation: "]
    assert calls == [("add", "carol", "s3cret", False)] and capsys.readouterr().out == "User carol created\n"
    with pytest.raises(cli.BadArgs, match=r"^given passwords are different$"):
        cli.cmd_user_passwd(FakeClient(), parse("user", "passwd", "carol"))
    assert cli.cmd_user_add(FakeClient(), parse("user", "add", "dave", "--no-password")) == 0
    assert calls[-1] == ("add", "dave", "", True)
