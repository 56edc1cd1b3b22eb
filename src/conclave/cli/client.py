"""`conclave get/put/del/txn/watch/lease/lock/elect/member/status/compact/user/role/auth`: the client CLI.

Modelled on etcdctl (v3): the same command names, arguments and ``simple`` output lines, so
etcd users feel at home; ``-w json`` prints etcd-style JSON (keys and values base64), ``-w table``
an aligned table. Every command takes ``--endpoints`` (comma-separated host:port; the native
protocol by default, ``--protocol grpc`` for any etcd v3 endpoint) and ``--timeout``.
An error prints one line ``Error: ...`` on stderr and exits 1.

Security flags are etcdctl's, accepted before the command (``conclave --user alice:pw get k``) or
after it: ``--user name[:password]`` (no password: the ``Password: `` prompt), ``--password``,
``--cacert``, ``--cert``, ``--key``, ``--insecure-skip-tls-verify``, ``--insecure-transport``; each
also as ``CONCLAVE_<FLAG>`` (``CONCLAVE_USER=alice:pw``), like etcdctl's ``ETCDCTL_<FLAG>``.
``user``, ``role`` and ``auth`` are etcdctl's auth commands with its output lines, including
``auth enable``'s loop (role ``root`` is created and granted to user ``root`` when missing). As
etcdctl does, bad arguments of those commands exit 128, and credentials the cluster refuses exit 2.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

DEFAULT_ENDPOINTS = "127.0.0.1:2381,127.0.0.1:22381,127.0.0.1:32381"
DEFAULT_GRPC_ENDPOINTS = "127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379"
EXIT_BAD_CONNECTION = 2  # etcdctl's ExitBadConnection: the cluster refused the credentials
EXIT_BAD_ARGS = 128  # etcdctl's ExitBadArgs, for the auth commands


class UsageError(ValueError):
    """A command line that cannot be carried out (bad txn syntax, bad lease id...)."""


class BadArgs(UsageError):
    """A bad argument of an auth command (exit 128, as etcdctl)."""


def parse_bool(raw: str) -> bool:
    v = raw.strip().lower()
    if v in ("1", "t", "true", "yes", "on"):
        return True
    if v in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {raw!r}")


# etcdctl's boolean flags: ``--flag`` alone or ``--flag=true|false``; never the next word.
BOOL_FLAGS = frozenset({"--insecure-skip-tls-verify", "--insecure-transport", "--interactive", "--detail",
                        "--prefix", "--from-key"})


BOOL: dict[str, Any] = {"type": parse_bool, "nargs": "?", "const": True, "default": False, "metavar": "BOOL"}


def normalize_bool_flags(argv: Sequence[str]) -> list[str]:
    """``--prefix`` -> ``--prefix=true`` (so a bare boolean flag never takes the next argument)."""
    out: list[str] = []
    for i, word in enumerate(argv):
        if word == "--":
            return out + list(argv[i:])
        out.append(f"{word}=true" if word in BOOL_FLAGS else word)
    return out


def add_security_flags(p: argparse.ArgumentParser | Any) -> None:
    """etcdctl's global security flags; SUPPRESS defaults, so before or after the command both work."""
    s = argparse.SUPPRESS
    p.add_argument("--user", dest="auth_user", default=s, metavar="NAME[:PASSWORD]",
                   help="user name[:password] for authentication (prompts for the password when it is "
                        "missing; env CONCLAVE_USER)")
    p.add_argument("--password", dest="auth_password", default=s,
                   help="password for authentication (then --user is the name only; env CONCLAVE_PASSWORD)")
    p.add_argument("--cacert", dest="tls_cacert", default=s, metavar="FILE",
                   help="verify the members' certificates with this CA bundle (turns TLS on; env CONCLAVE_CACERT)")
    p.add_argument("--cert", dest="tls_cert", default=s, metavar="FILE",
                   help="client TLS certificate (with --key; env CONCLAVE_CERT)")
    p.add_argument("--key", dest="tls_key", default=s, metavar="FILE", help="client TLS key (env CONCLAVE_KEY)")
    p.add_argument("--insecure-skip-tls-verify", type=parse_bool, nargs="?", const=True, default=s,
                   metavar="BOOL", help="TLS without verifying the members' certificates (testing only; "
                                        "env CONCLAVE_INSECURE_SKIP_TLS_VERIFY)")
    p.add_argument("--insecure-transport", type=parse_bool, nargs="?", const=True, default=s, metavar="BOOL",
                   help="plain-text unless a TLS flag or an https:// endpoint says otherwise (default true; false: "
                        "TLS with the system's CAs; env CONCLAVE_INSECURE_TRANSPORT)")


def add_global_flags(parser: argparse.ArgumentParser) -> None:
    """The client flags ``conclave`` accepts before a client command, as etcdctl's global flags."""
    g = parser.add_argument_group("client flags (before or after a client command, as etcdctl's)")
    g.add_argument("--endpoints", default=argparse.SUPPRESS,
                   help="comma-separated host:port list of the client commands (env CONCLAVE_ENDPOINTS)")
    g.add_argument("--protocol", choices=("native", "grpc"), default=argparse.SUPPRESS,
                   help="wire protocol of the client commands (default native; env CONCLAVE_PROTOCOL)")
    add_security_flags(g)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoints", default=argparse.SUPPRESS,
                   help=f"comma-separated host:port list (default native {DEFAULT_ENDPOINTS}; "
                        f"with --protocol grpc {DEFAULT_GRPC_ENDPOINTS}; env CONCLAVE_ENDPOINTS)")
    p.add_argument("--protocol", choices=("native", "grpc"), default=argparse.SUPPRESS,
                   help="wire protocol: Conclave's native one or the etcd v3 gRPC API (default native; "
                        "env CONCLAVE_PROTOCOL)")
    p.add_argument("-w", "--write-out", choices=("simple", "json", "table"), default="simple",
                   help="output format (default %(default)s)")
    p.add_argument("--timeout", type=float, default=5.0, help="per-request timeout in seconds (default %(default)s)")
    add_security_flags(p)


def register(sub: Any) -> None:
    def add(name: str, help_text: str, handler: Callable[[Any, argparse.Namespace], int]) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
        _common(p)
        p.set_defaults(func=lambda args: _run(handler, args))
        return p

    p = add("get", "get a key or a range of keys", cmd_get)
    p.add_argument("key")
    p.add_argument("range_end", nargs="?", default="", help="end of the range [key, range_end)")
    p.add_argument("--prefix", **BOOL, help="get every key with the prefix KEY")
    p.add_argument("--from-key", **BOOL, help="get every key >= KEY")
    p.add_argument("--limit", type=int, default=0, help="maximum number of results")
    p.add_argument("--rev", type=int, default=0, help="read at this revision")
    p.add_argument("--keys-only", action="store_true", help="print keys only")
    p.add_argument("--print-value-only", action="store_true", help="print values only (simple output)")
    p.add_argument("--count-only", action="store_true", help="print only the number of keys")
    p.add_argument("--consistency", choices=("l", "s"), default="l",
                   help="l: linearizable (default), s: serializable (local, possibly stale)")
    p.add_argument("--sort-by", choices=("KEY", "VERSION", "CREATE", "MODIFY", "VALUE"), default=None)
    p.add_argument("--order", choices=("ASCEND", "DESCEND"), default=None)

    p = add("put", "put a key (value from the argument or stdin)", cmd_put)
    p.add_argument("key")
    p.add_argument("value", nargs="?", default=None)
    p.add_argument("--lease", default="0", help="attach to this lease (hex id)")
    p.add_argument("--prev-kv", action="store_true", help="print the previous key-value")

    p = add("del", "delete a key or a range of keys", cmd_del)
    p.add_argument("key")
    p.add_argument("range_end", nargs="?", default="")
    p.add_argument("--prefix", **BOOL, help="delete every key with the prefix KEY")
    p.add_argument("--from-key", **BOOL, help="delete every key >= KEY")
    p.add_argument("--prev-kv", action="store_true", help="print the deleted key-values")

    add("txn", "run a transaction read from stdin (compares, blank line, success ops, blank line, "
               "failure ops), like etcdctl txn", cmd_txn).add_argument(
        "-i", "--interactive", **BOOL, help="prompt for each part")

    p = add("watch", "print events on a key or range until interrupted", cmd_watch)
    p.add_argument("key")
    p.add_argument("range_end", nargs="?", default="")
    p.add_argument("--prefix", **BOOL)
    p.add_argument("--rev", type=int, default=0, help="start at this revision (0: from now)")
    p.add_argument("--prev-kv", action="store_true")
    p.add_argument("--max-events", type=int, default=0, help="exit after this many events (0: never)")

    p = add("lease", "lease grant|revoke|timetolive|list|keep-alive", cmd_lease)
    p.add_argument("action", choices=("grant", "revoke", "timetolive", "list", "keep-alive"))
    p.add_argument("arg", nargs="?", default=None, help="TTL in seconds (grant) or lease id in hex")
    p.add_argument("--keys", action="store_true", help="timetolive: list the attached keys")
    p.add_argument("--once", action="store_true", help="keep-alive: renew once and exit")

    p = add("lock", "acquire a named lock and hold it until interrupted (or run a command while held)", cmd_lock)
    p.add_argument("name")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="run this while holding the lock (env CONCLAVE_LOCK_KEY, CONCLAVE_FENCING_TOKEN); "
                        "options go before NAME")
    p.add_argument("--ttl", type=int, default=10, help="session TTL in seconds (default %(default)s)")

    p = add("elect", "campaign with PROPOSAL and hold leadership until interrupted; -l to observe", cmd_elect)
    p.add_argument("name")
    p.add_argument("proposal", nargs="?", default=None)
    p.add_argument("-l", "--listen", action="store_true", help="print each new leader instead of campaigning")
    p.add_argument("--ttl", type=int, default=10, help="session TTL in seconds (default %(default)s)")

    p = add("member", "member list", cmd_member)
    p.add_argument("action", choices=("list",))

    p = add("status", "status of every endpoint (like etcdctl endpoint status); --watch: a live view", cmd_status)
    p.add_argument("--watch", action="store_true",
                   help="a live view refreshed every second: members, leader, term, indexes, ops/s and fsync p99 "
                        "(from each member's /metrics) until Ctrl-C")
    p.add_argument("--interval", type=float, default=1.0, help="--watch: seconds between refreshes (default 1)")
    p.add_argument("--watch-count", type=int, default=0, help="--watch: stop after N refreshes (default 0: never)")

    p = add("compact", "compact the key-value history up to REVISION", cmd_compact)
    p.add_argument("revision", type=int)
    p.add_argument("--physical", action="store_true", help="wait until the compaction is physically applied")

    _register_auth(sub)


def _register_auth(sub: Any) -> None:
    """``user``, ``role`` and ``auth``: etcdctl's two-word auth commands."""

    def group(name: str, help_text: str) -> Any:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text, description=help_text)
        def usage(args: argparse.Namespace) -> int:
            p.print_help(sys.stderr)  # `conclave user` alone: which actions there are
            return EXIT_BAD_ARGS

        p.set_defaults(func=usage)
        return p.add_subparsers(dest="action", metavar="ACTION")

    def action(actions: Any, name: str, help_text: str,
               handler: Callable[[Any, argparse.Namespace], int]) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, help=help_text, description=help_text)
        _common(p)
        p.set_defaults(func=lambda args: _run(handler, args))
        return p

    def interactive(p: argparse.ArgumentParser) -> None:
        p.add_argument("--interactive", type=parse_bool, nargs="?", const=True, default=True, metavar="BOOL",
                       help="prompt for the password twice (default true; false: read it from stdin)")

    users = group("user", "user add|get|list|delete|passwd|grant-role|revoke-role (etcdctl user)")
    p = action(users, "add", "add a user: NAME, or NAME:PASSWORD", cmd_user_add)
    p.add_argument("name")
    p.add_argument("--new-user-password", default="", help="the new user's password (else prompted)")
    p.add_argument("--no-password", action="store_true",
                   help="a user without password, for client-certificate (CN) authentication only")
    interactive(p)
    p = action(users, "get", "print a user's roles", cmd_user_get)
    p.add_argument("name")
    p.add_argument("--detail", **BOOL, help="print the permissions of each role too")
    action(users, "list", "list the users", cmd_user_list)
    action(users, "delete", "delete a user", cmd_user_delete).add_argument("name")
    p = action(users, "passwd", "change a user's password", cmd_user_passwd)
    p.add_argument("name")
    interactive(p)
    for verb, handler in (("grant-role", cmd_user_grant_role), ("revoke-role", cmd_user_revoke_role)):
        p = action(users, verb, f"{verb.split('-')[0]} a role to/from a user", handler)
        p.add_argument("name")
        p.add_argument("role")

    roles = group("role", "role add|get|list|delete|grant-permission|revoke-permission (etcdctl role)")
    action(roles, "add", "add a role", cmd_role_add).add_argument("name")
    action(roles, "get", "print a role's key permissions", cmd_role_get).add_argument("name")
    action(roles, "list", "list the roles", cmd_role_list)
    action(roles, "delete", "delete a role", cmd_role_delete).add_argument("name")
    p = action(roles, "grant-permission", "grant read|write|readwrite on KEY [END] (or --prefix / --from-key)",
               cmd_role_grant)
    p.add_argument("name", metavar="ROLE")
    p.add_argument("perm", metavar="PERM", help="read, write or readwrite")
    p.add_argument("key")
    p.add_argument("range_end", nargs="?", default=None, metavar="END", help="end of the range [KEY, END)")
    for flag, what in (("--prefix", "KEY is a prefix"), ("--from-key", "every key from KEY on")):
        p.add_argument(flag, **BOOL, help=what)
    p = action(roles, "revoke-permission", "revoke the permission on KEY [END] (or --prefix / --from-key)",
               cmd_role_revoke)
    p.add_argument("name", metavar="ROLE")
    p.add_argument("key")
    p.add_argument("range_end", nargs="?", default=None, metavar="END", help="end of the range [KEY, END)")
    for flag, what in (("--prefix", "KEY is a prefix"), ("--from-key", "every key from KEY on")):
        p.add_argument(flag, **BOOL, help=what)

    auth = group("auth", "auth enable|disable|status (etcdctl auth)")
    action(auth, "enable", "enable authentication (adds role root to user root when missing)", cmd_auth_enable)
    action(auth, "disable", "disable authentication", cmd_auth_disable)
    action(auth, "status", "print whether authentication is enabled and the auth revision", cmd_auth_status)


# --------------------------------------------------------------------------- plumbing


# flag dest -> the environment variable that stands in for it
_ENV = {"auth_user": "CONCLAVE_USER", "auth_password": "CONCLAVE_PASSWORD", "tls_cacert": "CONCLAVE_CACERT",
        "tls_cert": "CONCLAVE_CERT", "tls_key": "CONCLAVE_KEY",
        "insecure_skip_tls_verify": "CONCLAVE_INSECURE_SKIP_TLS_VERIFY",
        "insecure_transport": "CONCLAVE_INSECURE_TRANSPORT"}


def _flag(args: argparse.Namespace, name: str) -> Any:
    """A flag given on the command line (before or after the command), else its ``CONCLAVE_<FLAG>``."""
    value = getattr(args, name, None)
    if value is not None:
        return value
    raw = os.environ.get(_ENV[name])
    return raw if raw not in (None, "") else None


def _env_bool(args: argparse.Namespace, name: str) -> bool | None:
    value = _flag(args, name)
    if value is None or isinstance(value, bool):
        return value
    try:
        return parse_bool(str(value))
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{_ENV[name]}: {exc}") from None


def credentials(args: argparse.Namespace, ask: Callable[[str], str] | None = None) -> tuple[str, str] | None:
    """(user, password) from --user/--password (or the env), as etcdctl reads them; None without a user.

    ``--user name:password`` splits at the first colon; with ``--password`` the whole ``--user`` is
    the name; ``--user name`` alone prompts ``Password: ``.
    """
    user = _flag(args, "auth_user")
    if not user:
        return None
    password = _flag(args, "auth_password")
    if password is not None:
        return str(user), str(password)
    name, sep, pw = str(user).partition(":")
    if sep:
        return name, pw
    if ask is None:
        import getpass

        ask = getpass.getpass
    return name, ask("Password: ")


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Client keyword arguments of the security flags."""
    opts: dict[str, Any] = {}
    creds = credentials(args)
    if creds is not None:
        opts["user"], opts["password"] = creds
    for flag, kw in (("tls_cacert", "ca_file"), ("tls_cert", "cert_file"), ("tls_key", "key_file")):
        value = _flag(args, flag)
        if value:
            opts[kw] = str(value)
    if _env_bool(args, "insecure_skip_tls_verify"):
        opts["insecure_skip_tls_verify"] = True
    if _env_bool(args, "insecure_transport") is False:
        opts["tls"] = True
    return opts


def _run(handler: Callable[[Any, argparse.Namespace], int], args: argparse.Namespace) -> int:
    from conclave.client import AuthFailed, Client, ClientError

    args.protocol = getattr(args, "protocol", None) or os.environ.get("CONCLAVE_PROTOCOL") or "native"
    if args.protocol not in ("native", "grpc"):
        print(f"Error: CONCLAVE_PROTOCOL must be native or grpc, not {args.protocol!r}", file=sys.stderr)
        return 1
    endpoints = getattr(args, "endpoints", None) or os.environ.get("CONCLAVE_ENDPOINTS") or (
        DEFAULT_ENDPOINTS if args.protocol == "native" else DEFAULT_GRPC_ENDPOINTS)
    try:
        options = client_options(args)
        with Client(endpoints.split(","), protocol=args.protocol, timeout=args.timeout, **options) as client:
            return handler(client, args)
    except (ClientError, UsageError, ValueError, TypeError, OSError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"Error: {text}", file=sys.stderr)
        if isinstance(exc, BadArgs):
            return EXIT_BAD_ARGS
        return EXIT_BAD_CONNECTION if isinstance(exc, AuthFailed) else 1


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _text(b: bytes) -> str:
    return b.decode(errors="replace")


def _header_json(h: Any) -> dict[str, int]:
    return {"cluster_id": h.cluster_id, "member_id": h.member_id, "revision": h.revision, "raft_term": h.raft_term}


def _kv_json(kv: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"key": _b64(kv.key), "create_revision": kv.create_revision,
                         "mod_revision": kv.mod_revision, "version": kv.version}
    if kv.value:
        d["value"] = _b64(kv.value)
    if kv.lease:
        d["lease"] = kv.lease
    return d


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def fmt(r: Sequence[str]) -> str:
        return "|" + "|".join(f" {c:^{w}} " for c, w in zip(r, widths, strict=True)) + "|"

    return "\n".join([line, fmt(list(headers)), line, *(fmt(r) for r in cells), line])


def _range_end(args: argparse.Namespace, key: bytes) -> bytes:
    from conclave.client.types import prefix_end

    if args.prefix:
        return prefix_end(key or b"\0")
    if args.from_key:
        return b"\0"
    end: bytes = args.range_end.encode()
    return end


def _print_kvs(kvs: Sequence[Any], args: argparse.Namespace) -> None:
    for kv in kvs:
        if not getattr(args, "print_value_only", False):
            print(_text(kv.key))
        print(_text(kv.value))  # empty with --keys-only: etcdctl prints the blank line too


def _lease_id(raw: str | None) -> int:
    if raw is None:
        raise UsageError("a lease id (hex) is required")
    try:
        return int(raw, 16)
    except ValueError:
        raise UsageError(f"bad lease id {raw!r} (expected hex, as printed by 'lease grant')") from None


# --------------------------------------------------------------------------- commands


def cmd_get(client: Any, args: argparse.Namespace) -> int:
    from conclave.kv.types import SortOrder, SortTarget

    key = args.key.encode()
    if args.prefix and not key:
        key = b"\0"
    targets = {"KEY": SortTarget.KEY, "VERSION": SortTarget.VERSION, "CREATE": SortTarget.CREATE,
               "MODIFY": SortTarget.MOD, "VALUE": SortTarget.VALUE}
    order = SortOrder[args.order] if args.order else (SortOrder.ASCEND if args.sort_by else SortOrder.NONE)
    r = client.range(key, _range_end(args, key), limit=args.limit, revision=args.rev,
                     serializable=args.consistency == "s", keys_only=args.keys_only, count_only=args.count_only,
                     sort_order=order, sort_target=targets[args.sort_by or "KEY"])
    if args.write_out == "json":
        out: dict[str, Any] = {"header": _header_json(r.header), "count": r.count}
        if r.kvs:
            out["kvs"] = [_kv_json(kv) for kv in r.kvs]
        if r.more:
            out["more"] = True
        print(json.dumps(out))
    elif args.write_out == "table":
        print(_table(["KEY", "VALUE", "CREATE", "MOD", "VERSION", "LEASE"],
                     [[_text(kv.key), _text(kv.value), kv.create_revision, kv.mod_revision, kv.version,
                       f"{kv.lease:x}" if kv.lease else ""] for kv in r.kvs]))
    elif args.count_only:
        print(r.count)
    else:
        _print_kvs(r.kvs, args)
    return 0


def cmd_put(client: Any, args: argparse.Namespace) -> int:
    value = args.value if args.value is not None else sys.stdin.read()
    r = client.put(args.key, value, lease=_lease_id(args.lease), prev_kv=args.prev_kv)
    if args.write_out == "json":
        out: dict[str, Any] = {"header": _header_json(r.header)}
        if r.prev_kv is not None:
            out["prev_kv"] = _kv_json(r.prev_kv)
        print(json.dumps(out))
    else:
        print("OK")
        if r.prev_kv is not None:
            _print_kvs([r.prev_kv], args)
    return 0


def cmd_del(client: Any, args: argparse.Namespace) -> int:
    key = args.key.encode()
    if (args.prefix or args.from_key) and not key:
        key = b"\0"
    r = client.delete(key, range_end=_range_end(args, key), prev_kv=args.prev_kv)
    if args.write_out == "json":
        out: dict[str, Any] = {"header": _header_json(r.header), "deleted": r.deleted}
        if r.prev_kvs:
            out["prev_kvs"] = [_kv_json(kv) for kv in r.prev_kvs]
        print(json.dumps(out))
    else:
        print(r.deleted)
        _print_kvs(r.prev_kvs, args)
    return 0


_CMP_TARGETS = {"value": "value", "val": "value", "mod": "mod_revision", "create": "create_revision",
                "ver": "version", "version": "version", "lease": "lease"}


def parse_compare(line: str) -> Any:
    """etcdctl's compare syntax: ``mod("key") > "3"``, ``value("k") = "v"``, ``create("k") = "0"``."""
    from conclave.client import types as ct

    try:
        target, rest = line.split("(", 1)
        quoted, rest = rest.split(")", 1)
        op, operand = rest.strip().split(None, 1) if " " in rest.strip() else (rest.strip()[:1], rest.strip()[1:])
        key = shlex.split(quoted)[0]
        operand = shlex.split(operand)[0]
    except (ValueError, IndexError):
        raise UsageError(f"bad compare {line!r}: expected e.g. mod(\"key\") > \"3\"") from None
    name = _CMP_TARGETS.get(target.strip().lower())
    if name is None or op not in ("=", "!=", "<", ">"):
        raise UsageError(f"bad compare {line!r}: target must be value/mod/create/version/lease, op = != < >")
    built = getattr(ct, name)(key)
    if name == "lease":
        operand = str(int(operand, 16))
    return {"=": built.__eq__, "!=": built.__ne__, "<": built.__lt__, ">": built.__gt__}[op](operand)


def parse_op(line: str) -> Any:
    """etcdctl's op syntax: ``put key value``, ``get key [range_end]``, ``del key [range_end]``."""
    from conclave.client import types as ct
    from conclave.kv import types as kvt

    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise UsageError(f"bad operation {line!r}: {exc}") from None
    if len(words) >= 3 and words[0] == "put":
        return ct.put_op(words[1], " ".join(words[2:]))
    if len(words) in (2, 3) and words[0] == "get":
        end = words[2].encode() if len(words) == 3 else b""
        return kvt.RequestOp(request_range=kvt.RangeRequest(key=words[1].encode(), range_end=end))
    if len(words) in (2, 3) and words[0] in ("del", "delete"):
        end = words[2].encode() if len(words) == 3 else b""
        return kvt.RequestOp(request_delete_range=kvt.DeleteRangeRequest(key=words[1].encode(), range_end=end))
    raise UsageError(f"bad operation {line!r}: expected 'put KEY VALUE', 'get KEY' or 'del KEY'")


def _read_section(prompt: str, interactive: bool) -> list[str]:
    if interactive:
        print(prompt)
    lines = []
    for raw in sys.stdin:
        line = raw.strip()
        if not line:
            break
        lines.append(line)
    return lines


def cmd_txn(client: Any, args: argparse.Namespace) -> int:
    compares = [parse_compare(x) for x in _read_section("compares:", args.interactive)]
    success = [parse_op(x) for x in _read_section("success requests (get, put, del):", args.interactive)]
    failure = [parse_op(x) for x in _read_section("failure requests (get, put, del):", args.interactive)]
    r = client.transaction(compares, success, failure)
    if args.write_out == "json":
        print(json.dumps({"header": _header_json(r.header), "succeeded": r.succeeded,
                          "responses": [_op_json(op) for op in r.responses]}))
        return 0
    print("SUCCESS" if r.succeeded else "FAILURE")
    for op in r.responses:
        print()
        if op.response_put is not None:
            print("OK")
        elif op.response_range is not None:
            _print_kvs(op.response_range.kvs, args)
        elif op.response_delete_range is not None:
            print(op.response_delete_range.deleted)
    return 0


def _op_json(op: Any) -> dict[str, Any]:
    if op.response_range is not None:
        return {"response_range": {"kvs": [_kv_json(kv) for kv in op.response_range.kvs],
                                   "count": op.response_range.count}}
    if op.response_delete_range is not None:
        return {"response_delete_range": {"deleted": op.response_delete_range.deleted}}
    if op.response_put is not None:
        return {"response_put": {}}
    return {"response_txn": {}}


def cmd_watch(client: Any, args: argparse.Namespace) -> int:
    key = args.key.encode()
    if args.prefix and not key:
        key = b"\0"
    from conclave.client.types import prefix_end

    end = prefix_end(key) if args.prefix else args.range_end.encode()
    w = client.watch(key, range_end=end, start_revision=args.rev, prev_kv=args.prev_kv)
    w.start()
    for count, ev in enumerate(w, 1):
        kind = "PUT" if ev.type == 0 else "DELETE"
        if args.write_out == "json":
            d: dict[str, Any] = {"type": kind, "kv": _kv_json(ev.kv)}
            if ev.prev_kv is not None:
                d["prev_kv"] = _kv_json(ev.prev_kv)
            print(json.dumps(d), flush=True)
        else:
            print(kind)
            if ev.prev_kv is not None:
                _print_kvs([ev.prev_kv], args)
            print(_text(ev.kv.key))
            print(_text(ev.kv.value), flush=True)
        if args.max_events and count >= args.max_events:
            break
    w.close()
    return 0


def cmd_lease(client: Any, args: argparse.Namespace) -> int:
    if args.action == "grant":
        if args.arg is None or not args.arg.isdigit():
            raise UsageError("lease grant needs a TTL in seconds")
        lease = client.lease(int(args.arg))
        if args.write_out == "json":
            print(json.dumps({"ID": lease.id, "TTL": lease.ttl}))
        else:
            print(f"lease {lease.id:016x} granted with TTL({lease.ttl}s)")
    elif args.action == "revoke":
        lid = _lease_id(args.arg)
        client.lease_revoke(lid)
        print(f"lease {lid:016x} revoked")
    elif args.action == "timetolive":
        lid = _lease_id(args.arg)
        info = client.lease_time_to_live(lid, keys=args.keys)
        if args.write_out == "json":
            print(json.dumps({"id": info.id, "ttl": info.ttl, "granted-ttl": info.granted_ttl,
                              "keys": [_b64(k) for k in info.keys]}))
        else:
            line = f"lease {lid:016x} granted with TTL({info.granted_ttl}s), remaining({info.ttl}s)"
            if args.keys:
                line += ", attached keys([" + " ".join(_text(k) for k in info.keys) + "])"
            print(line)
    elif args.action == "list":
        ids = client.leases()
        if args.write_out == "json":
            print(json.dumps({"leases": [{"id": i} for i in ids]}))
        else:
            print(f"found {len(ids)} leases")
            for i in ids:
                print(f"{i:016x}")
    else:
        lid = _lease_id(args.arg)
        while True:
            ttl = client.lease_keep_alive(lid)
            print(f"lease {lid:016x} keepalived with TTL({ttl})", flush=True)
            if args.once:
                break
            import time

            time.sleep(max(ttl / 3, 0.5))
    return 0


def _hold_forever() -> None:
    import threading

    threading.Event().wait()


def cmd_lock(client: Any, args: argparse.Namespace) -> int:
    with client.lock(args.name, ttl=args.ttl) as held:
        key = held.key.decode(errors="replace")
        if args.command:
            env = {**os.environ, "CONCLAVE_LOCK_KEY": key, "CONCLAVE_FENCING_TOKEN": str(held.fencing_token)}
            return subprocess.call(args.command, env=env)
        if args.write_out == "json":
            print(json.dumps({"key": key, "fencing_token": held.fencing_token}), flush=True)
        else:
            print(key)
            print(f"fencing token {held.fencing_token}", flush=True)
        _hold_forever()
    return 0


def cmd_elect(client: Any, args: argparse.Namespace) -> int:
    election = client.election(args.name, ttl=args.ttl)
    if args.listen:
        for leader in election.observe():
            if leader is not None:
                print(_text(leader.key))
                print(_text(leader.value), flush=True)
        return 0
    if args.proposal is None:
        raise UsageError("elect needs a PROPOSAL (or -l to observe)")
    election.campaign(args.proposal)
    print(election.key.decode(errors="replace"))
    print(args.proposal, flush=True)
    try:
        _hold_forever()
    finally:
        election.resign()
    return 0


def cmd_member(client: Any, args: argparse.Namespace) -> int:
    members = client.members()
    if args.write_out == "json":
        print(json.dumps({"members": [
            {"ID": m.id, "name": m.name, "peerURLs": list(m.peer_urls), "clientURLs": list(m.client_urls),
             "nativeURLs": list(m.native_urls), "isLearner": m.is_learner} for m in members]}))
        return 0
    rows = [[f"{m.id:x}", "started" if m.name else "unstarted", m.name, ",".join(m.peer_urls),
             ",".join(m.client_urls), str(m.is_learner).lower(), ",".join(m.native_urls)] for m in members]
    if args.write_out == "table":
        print(_table(["ID", "STATUS", "NAME", "PEER ADDRS", "CLIENT ADDRS", "IS LEARNER", "NATIVE ADDRS"], rows))
    else:
        for r in rows:
            print(", ".join(r))
    return 0


def cmd_status(client: Any, args: argparse.Namespace) -> int:
    if args.watch:
        from conclave.cli.status_view import watch

        return watch(client, args)
    statuses = []
    failed = 0
    for ep in client.endpoints:
        try:
            statuses.append(client.status(ep))
        except Exception as exc:  # one unreachable member must not hide the others
            failed += 1
            print(f"Error: {ep}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
    if args.write_out == "json":
        print(json.dumps([{"Endpoint": s.endpoint, "Status": {
            "header": {"cluster_id": s.cluster_id, "member_id": s.member_id, "revision": s.revision,
                       "raft_term": s.raft_term},
            "version": s.version, "dbSize": s.db_size, "leader": s.leader, "raftIndex": s.raft_index,
            "raftTerm": s.raft_term, "raftAppliedIndex": s.raft_applied_index, "isLearner": s.is_learner,
            "errors": list(s.errors)}} for s in statuses]))
    else:
        rows = [[s.endpoint, f"{s.member_id:x}", s.version, _size(s.db_size), str(s.leader == s.member_id).lower(),
                 str(s.is_learner).lower(), s.raft_term, s.raft_index, s.raft_applied_index, ", ".join(s.errors)]
                for s in statuses]
        headers = ["ENDPOINT", "ID", "VERSION", "DB SIZE", "IS LEADER", "IS LEARNER", "RAFT TERM", "RAFT INDEX",
                   "RAFT APPLIED INDEX", "ERRORS"]
        if args.write_out == "table":
            print(_table(headers, rows))
        else:
            for r in rows:
                print(", ".join(str(c) for c in r))
    return 1 if failed and not statuses else 0


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n = n / 1000  # type: ignore[assignment]
    return str(n)


def cmd_compact(client: Any, args: argparse.Namespace) -> int:
    client.compact(args.revision, physical=args.physical)
    print(f"compacted revision {args.revision}")
    return 0


# --------------------------------------------------------------------------- user / role / auth


def _new_password(name: str, args: argparse.Namespace) -> str:
    """etcdctl's password input: two prompts (``--interactive``), else one word from stdin."""
    if not args.interactive:
        words = sys.stdin.readline().split()
        return words[0] if words else ""
    import getpass

    first = getpass.getpass(f"Password of {name}: ")
    again = getpass.getpass(f"Type password of {name} again for confirmation: ")
    if first != again:
        raise BadArgs("given passwords are different")
    return first


def cmd_user_add(client: Any, args: argparse.Namespace) -> int:
    name, password = args.name, ""
    if args.no_password:
        pass
    elif args.new_user_password:
        password = args.new_user_password
    elif ":" in args.name:
        name, _, password = args.name.partition(":")
        if not name:
            raise BadArgs("empty user name is not allowed")
    else:
        password = _new_password(name, args)
    client.user_add(name, password, no_password=args.no_password)
    print(f"User {name} created")
    return 0


def _print_role(name: str, perms: Sequence[Any]) -> None:
    """etcdctl's ``role get`` lines: single keys, ``[key, end)`` ranges (with their prefix), open ends."""
    from conclave.client.types import prefix_end
    from conclave.kv.auth import PermType

    print(f"Role {name}")
    for title, kinds in (("KV Read:", (PermType.READ, PermType.READWRITE)),
                         ("KV Write:", (PermType.WRITE, PermType.READWRITE))):
        print(title)
        for p in perms:
            if p.perm_type not in kinds:
                continue
            key = _text(p.key)
            if not p.range_end:
                print(f"\t{key}")
            elif p.range_end == b"\0":
                print(f"\t[{key}, <open ended>")
            else:
                line = f"\t[{key}, {_text(p.range_end)})"
                if p.key and p.range_end == prefix_end(p.key):
                    line += f" (prefix {key})"
                print(line)


def _print_names(names: Iterable[str]) -> int:
    """One name a line (what `user list` and `role list` print); exit status 0."""
    for name in names:
        print(name)
    return 0


def cmd_user_get(client: Any, args: argparse.Namespace) -> int:
    roles = client.user_get(args.name)
    print(f"User: {args.name}")
    if not args.detail:
        print("Roles:" + "".join(f" {r}" for r in roles))
        return 0
    for role in roles:
        print()
        _print_role(role, client.role_get(role))
    return 0


def cmd_user_list(client: Any, args: argparse.Namespace) -> int:
    return _print_names(client.user_list())


def cmd_user_delete(client: Any, args: argparse.Namespace) -> int:
    client.user_delete(args.name)
    print(f"User {args.name} deleted")
    return 0


def cmd_user_passwd(client: Any, args: argparse.Namespace) -> int:
    client.user_change_password(args.name, _new_password(args.name, args))
    print("Password updated")
    return 0


def cmd_user_grant_role(client: Any, args: argparse.Namespace) -> int:
    client.user_grant_role(args.name, args.role)
    print(f"Role {args.role} is granted to user {args.name}")
    return 0


def cmd_user_revoke_role(client: Any, args: argparse.Namespace) -> int:
    client.user_revoke_role(args.name, args.role)
    print(f"Role {args.role} is revoked from user {args.name}")
    return 0


def cmd_role_add(client: Any, args: argparse.Namespace) -> int:
    client.role_add(args.name)
    print(f"Role {args.name} created")
    return 0


def cmd_role_get(client: Any, args: argparse.Namespace) -> int:
    _print_role(args.name, client.role_get(args.name))
    return 0


def cmd_role_list(client: Any, args: argparse.Namespace) -> int:
    return _print_names(client.role_list())


def cmd_role_delete(client: Any, args: argparse.Namespace) -> int:
    client.role_delete(args.name)
    print(f"Role {args.name} deleted")
    return 0


def _perm_range(args: argparse.Namespace) -> tuple[bytes, bytes]:
    """(key, range_end) of KEY [END] with --prefix / --from-key, with etcdctl's argument errors."""
    from conclave.client.types import prefix_end

    key = args.key.encode()
    if args.range_end is None:
        if args.prefix:
            if args.from_key:
                raise BadArgs("--from-key and --prefix flags are mutually exclusive")
            return key, prefix_end(key) if key else b"\0"
        return key, b"\0" if args.from_key else b""
    if args.prefix:
        raise BadArgs("unexpected endkey argument with --prefix flag")
    if args.from_key:
        raise BadArgs("unexpected endkey argument with --from-key flag")
    return key, args.range_end.encode()


def cmd_role_grant(client: Any, args: argparse.Namespace) -> int:
    from conclave.kv.auth import PermType

    name, perm = args.name, args.perm
    try:
        kind = PermType[perm.upper()]
    except KeyError:
        raise BadArgs(f"invalid permission type: {perm}") from None
    key, end = _perm_range(args)
    client.role_grant_permission(name, kind, key, end)
    print(f"Role {name} updated")
    return 0


def cmd_role_revoke(client: Any, args: argparse.Namespace) -> int:
    name = args.name
    key, end = _perm_range(args)
    client.role_revoke_permission(name, key, end)
    if not end:
        print(f"Permission of key {_text(key)} is revoked from role {name}")
    elif end == b"\0":
        print(f"Permission of range [{_text(key)}, <open ended> is revoked from role {name}")
    else:
        print(f"Permission of range [{_text(key)}, {_text(end)}) is revoked from role {name}")
    return 0


AUTH_ENABLE_ATTEMPTS_MAX = 3  # enable, add role root + grant it, enable again: never more


def cmd_auth_enable(client: Any, args: argparse.Namespace) -> int:
    """etcdctl's loop: when user root lacks role root, create the role, grant it, try again."""
    from conclave.client import ServerError

    for _ in range(AUTH_ENABLE_ATTEMPTS_MAX):
        try:
            client.auth_enable()
            break
        except ServerError as exc:
            if exc.kind != "RootRoleNotExist":
                raise
            client.role_add("root")  # any error here ends the command, as in etcdctl
            client.user_grant_role("root", "root")
    else:
        raise UsageError("authentication could not be enabled (user root still lacks role root)")
    print("Authentication Enabled")
    return 0


def cmd_auth_disable(client: Any, args: argparse.Namespace) -> int:
    client.auth_disable()
    print("Authentication Disabled")
    return 0


def cmd_auth_status(client: Any, args: argparse.Namespace) -> int:
    st = client.auth_status()
    if args.write_out == "json":
        print(json.dumps({"enabled": st.enabled, "authRevision": st.auth_revision}))
    else:
        print(f"Authentication Status: {str(st.enabled).lower()}")
        print(f"AuthRevision: {st.auth_revision}")
    return 0
