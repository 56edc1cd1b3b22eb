"""`conclave up`: a local cluster on 127.0.0.1 in one command.

Each member is a child process running ``conclave serve``; this process supervises them
(restarts one that dies, with backoff, after saying how it died: the signal that killed it,
or its exit status and last log line), prints a line per member once it accepts
clients, and on Ctrl-C or SIGTERM stops them all gracefully.

With ``--tls`` it first makes a throw-away certificate authority and certificates in
``<data-dir>/tls`` (kept for the next ``up`` on the same directory): one per member, used on its
client, native and peer ports (mutual TLS everywhere), and one client certificate; it prints
the etcdctl flags that use them.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CLIENT_PORTS = (2379, 22379, 32379, 42379, 52379)
PEER_PORTS = (2380, 22380, 32380, 42380, 52380)
NATIVE_PORTS = (2381, 22381, 32381, 42381, 52381)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "up",
        help="start a local cluster on 127.0.0.1 (client ports 2379, 22379, 32379; Ctrl-C stops it)",
        description="Start a local Conclave cluster on 127.0.0.1. Member i listens for clients on "
        f"{', '.join(map(str, CLIENT_PORTS))} (in order), for peers on {', '.join(map(str, PEER_PORTS))} "
        f"and for the native protocol on {', '.join(map(str, NATIVE_PORTS))}.",
    )
    p.add_argument("--nodes", type=int, default=3, help="number of members, 1 to 5 (default 3)")
    p.add_argument("--data-dir", default="./conclave-data", help="parent of the members' data dirs")
    p.add_argument("--port-offset", type=int, default=0,
                   help="add this multiple of 10 to every port (run two clusters side by side)")
    p.add_argument("--heartbeat-interval", default="100", help="passed to each member (ms)")
    p.add_argument("--election-timeout", default="1000", help="passed to each member (ms)")
    p.add_argument("--snapshot-count", default="10000", help="passed to each member")
    p.add_argument("--tls", action="store_true",
                   help="TLS on every port with a throw-away CA in <data-dir>/tls (mutual TLS on client and peer "
                   "ports); prints the etcdctl flags to use")
    p.add_argument("--ready-timeout", type=float, default=30.0,
                   help="seconds a member may take to accept clients after it (re)starts before it is reported")
    p.set_defaults(func=run)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def describe_exit(returncode: int) -> str:
    """How a member process ended, in words (a negative return code is the signal that killed it)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


def last_words(log: Path, returncode: int) -> str:
    """The member's own last log line when it failed by itself (its reason), else nothing."""
    if returncode <= 0:
        return ""
    try:
        with open(log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return f" ({lines[-1][:200]})" if lines else ""


def tls_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) / "tls"


def make_certificates(args: argparse.Namespace) -> None:
    """The throw-away CA, a certificate per member (server and client use, for 127.0.0.1 and
    localhost) and a client certificate, unless a previous ``up --tls`` left them there."""
    from conclave.server.tls import Authority

    d = tls_dir(args)
    wanted = [d / "ca.pem", d / "client.pem", d / "client-key.pem"] + [
        d / f"node{i + 1}{suffix}.pem" for i in range(args.nodes) for suffix in ("", "-key")
    ]
    if all(p.is_file() for p in wanted):
        return
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = Authority("conclave up CA")
    ca.write_ca(d / "ca.pem")
    for i in range(args.nodes):
        ca.issue(d / f"node{i + 1}.pem", d / f"node{i + 1}-key.pem", f"node{i + 1}", ["127.0.0.1", "localhost"])
    ca.issue(d / "client.pem", d / "client-key.pem", "client", server=False)


def tls_args(args: argparse.Namespace, i: int) -> list[str]:
    d = tls_dir(args)
    cert, key, ca = str(d / f"node{i + 1}.pem"), str(d / f"node{i + 1}-key.pem"), str(d / "ca.pem")
    return [
        "--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth",
        "--peer-cert-file", cert, "--peer-key-file", key, "--peer-trusted-ca-file", ca, "--peer-client-cert-auth",
    ]  # fmt: skip


def etcdctl_flags(args: argparse.Namespace) -> str:
    d = tls_dir(args)
    return f"--cacert={d / 'ca.pem'} --cert={d / 'client.pem'} --key={d / 'client-key.pem'}"


def member_args(args: argparse.Namespace, i: int) -> list[str]:
    off = args.port_offset
    s = "https" if getattr(args, "tls", False) else "http"
    names = [f"node{j + 1}" for j in range(args.nodes)]
    cluster = ",".join(f"{names[j]}={s}://127.0.0.1:{PEER_PORTS[j] + off}" for j in range(args.nodes))
    return [
        sys.executable, "-m", "conclave", "serve",
        "--name", names[i],
        "--data-dir", str(Path(args.data_dir) / names[i]),
        "--listen-client-urls", f"{s}://127.0.0.1:{CLIENT_PORTS[i] + off}",
        "--listen-peer-urls", f"{s}://127.0.0.1:{PEER_PORTS[i] + off}",
        "--listen-native-urls", f"{s}://127.0.0.1:{NATIVE_PORTS[i] + off}",
        "--initial-cluster", cluster,
        "--initial-cluster-state", "new",
        "--heartbeat-interval", str(args.heartbeat_interval),
        "--election-timeout", str(args.election_timeout),
        "--snapshot-count", str(args.snapshot_count),
        *(tls_args(args, i) if getattr(args, "tls", False) else []),
    ]  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.nodes <= len(CLIENT_PORTS):
        print(f"conclave up: --nodes must be between 1 and {len(CLIENT_PORTS)}", file=sys.stderr)
        return 2
    off = args.port_offset
    if off % 10 or not 0 <= off <= 12000:
        print("conclave up: --port-offset must be a multiple of 10 between 0 and 12000", file=sys.stderr)
        return 2
    busy = [p + off for p in CLIENT_PORTS[: args.nodes] + PEER_PORTS[: args.nodes] if _port_open(p + off)]
    if busy:
        print(f"conclave up: ports already in use on 127.0.0.1: {busy} (is a cluster already running?)",
              file=sys.stderr)
        return 1
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    if args.tls:
        make_certificates(args)
    s = "https" if args.tls else "http"
    stopping = False

    def stop(_sig: int, _frm: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    procs: list[subprocess.Popen[bytes] | None] = [None] * args.nodes
    logs = [Path(args.data_dir) / f"node{i + 1}.log" for i in range(args.nodes)]
    restarts = [0] * args.nodes
    ready = [False] * args.nodes
    # Each member has its own readiness deadline, counted from its own (re)start: a member that
    # dies an hour in is reported for what happened to it, never as "not ready after 30s".
    deadlines = [0.0] * args.nodes
    ever_ready = False

    def start(i: int) -> None:
        with open(logs[i], "ab") as out:
            procs[i] = subprocess.Popen(member_args(args, i), stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        ready[i] = False
        deadlines[i] = time.monotonic() + args.ready_timeout

    for i in range(args.nodes):
        start(i)
    print(f"starting {args.nodes} member(s); logs in {args.data_dir}/nodeN.log", flush=True)
    while not stopping:
        for i, p in enumerate(procs):
            assert p is not None
            rc = p.poll()
            if rc is not None:
                print(f"node{i + 1} {describe_exit(rc)}{last_words(logs[i], rc)}; see {logs[i]}", flush=True)
                restarts[i] += 1
                if restarts[i] > 5:
                    print(f"node{i + 1} keeps failing; stopping the cluster", flush=True)
                    stopping = True
                    break
                time.sleep(min(2.0, 0.2 * 2 ** restarts[i]))
                print(f"restarting node{i + 1} (restart {restarts[i]} of 5)", flush=True)
                start(i)
            elif not ready[i] and _port_open(CLIENT_PORTS[i] + off):
                ready[i] = True
                print(f"node{i + 1} ready: clients {s}://127.0.0.1:{CLIENT_PORTS[i] + off}, "
                      f"native {s + '://' if args.tls else ''}127.0.0.1:{NATIVE_PORTS[i] + off}, "
                      f"peers {s}://127.0.0.1:{PEER_PORTS[i] + off}", flush=True)  # fmt: skip
                if all(ready):
                    eps = ",".join(f"{s + '://' if args.tls else ''}127.0.0.1:{CLIENT_PORTS[j] + off}"
                                   for j in range(args.nodes))  # fmt: skip
                    flags = f" {etcdctl_flags(args)}" if args.tls else ""
                    if ever_ready:
                        print("all members ready again", flush=True)
                    else:
                        print(f"cluster ready; try: etcdctl --endpoints={eps}{flags} put foo bar   (Ctrl-C stops)",
                              flush=True)
                    ever_ready = True
            elif not ready[i] and time.monotonic() > deadlines[i]:
                print(f"conclave up: node{i + 1} is running but not accepting clients "
                      f"{args.ready_timeout:.0f}s after it started; see {logs[i]}", file=sys.stderr, flush=True)
                deadlines[i] = float("inf")
        time.sleep(0.1)
    print("stopping...", flush=True)
    for p in procs:
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGTERM)
    end = time.monotonic() + 10
    for p in procs:
        if p is None:
            continue
        try:
            p.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    print("stopped", flush=True)
    return 0
