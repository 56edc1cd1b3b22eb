"""Support for the compatibility and consistency tests: client subprocesses and watch recorders.

Third-party etcd clients (aetcd, python3-etcd3) carry their own copy of the etcd protos, which
cannot share a process with ``conclave.api.pb``; they run only as the scripts under
``tests/server/clients/``, each printing one JSON object as its last stdout line.

:class:`WatchRecorder` is a real client's watch loop in a thread: one gRPC Watch stream on one
member; when that stream breaks (the member was killed), it reconnects to the next endpoint from
``last revision + 1`` and carries on, so its record must still be the committed sequence.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from conclave.api import pb
from conclave.api.stubs import EtcdStub
from conclave.server.launcher import ProcessCluster

CLIENTS_DIR = Path(__file__).resolve().parent / "clients"
REPO_SRC = Path(__file__).resolve().parents[2] / "src"

# One watch event as the tests compare it: (mod revision, "PUT"/"DELETE", key, value).
Event = tuple[int, str, bytes, bytes]
EVENT_TYPE_NAMES = {0: "PUT", 1: "DELETE"}
FATAL = "FATAL"  # marks a recorder error that is not a broken connection


def client_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of a client subprocess: the project on the path, pure-Python protobuf for etcd3."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_SRC), env.get("PYTHONPATH", "")) if p)
    # python3-etcd3's generated code predates protobuf 4; only the pure-Python runtime loads it.
    env["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def client_argv(script: str, *args: str) -> list[str]:
    path = CLIENTS_DIR / script
    assert path.is_file(), f"no client script {path}"
    return [sys.executable, str(path), *args]


def spawn_client(script: str, *args: str, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """Start a client script in its own session (so SIGSTOP/SIGKILL reach only it)."""
    return subprocess.Popen(
        client_argv(script, *args), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=client_env(), start_new_session=True,
    )  # fmt: skip


def last_json(stdout: str, what: str) -> dict[str, Any]:
    lines = [ln for ln in stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        raise AssertionError(f"{what} printed no JSON result; stdout:\n{stdout[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def finish_client(proc: subprocess.Popen[str], what: str, timeout: float) -> dict[str, Any]:
    """Wait (bounded) for a client process and return its JSON result; kill it on timeout."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise AssertionError(
            f"{what} did not finish in {timeout}s; stdout:\n{out[-2000:]}\nstderr:\n{err[-3000:]}") from None
    if proc.returncode != 0:
        raise AssertionError(f"{what} exited {proc.returncode}; stdout:\n{out[-2000:]}\nstderr:\n{err[-3000:]}")
    return last_json(out, what)


def run_client(script: str, *args: str, timeout: float = 60.0) -> dict[str, Any]:
    return finish_client(spawn_client(script, *args), script, timeout)


def read_line(proc: subprocess.Popen[str], timeout: float, what: str) -> str:
    """One stdout line of a running client, bounded in time (a reader thread; pipes do not time out)."""
    box: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stream = proc.stdout
    threading.Thread(target=lambda: box.put(stream.readline()), daemon=True).start()
    try:
        line = box.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no line from {what} within {timeout}s") from None
    if not line:
        err = proc.stderr.read() if proc.stderr is not None and proc.poll() is not None else ""
        raise AssertionError(f"{what} closed its stdout (exit {proc.poll()}): {err[-3000:]}")
    return line.strip()


def stop_process(proc: subprocess.Popen[str]) -> None:
    """Kill a client we started (SIGKILL works on a SIGSTOPped process too) and reap it."""
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def event_of(ev: Any) -> Event:
    return (int(ev.kv.mod_revision), EVENT_TYPE_NAMES[int(ev.type)], bytes(ev.kv.key), bytes(ev.kv.value))


def watch_once_history(endpoint: str, prefix: bytes, start_revision: int, until_revision: int,
                       timeout: float = 15.0) -> list[Event]:
    """Every event under ``prefix`` in [start_revision, until_revision] from a fresh watch (the truth)."""
    channel = grpc.insecure_channel(endpoint)
    requests: queue.Queue[Any] = queue.Queue()
    requests.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(
        key=prefix, range_end=prefix_end(prefix), start_revision=start_revision)))

    def feed() -> Iterator[Any]:
        while True:
            item = requests.get()
            if item is None:
                return
            yield item

    stub = EtcdStub(channel, "etcdserverpb.Watch")
    call = stub.Watch(feed(), timeout=timeout)
    events: list[Event] = []
    try:
        for resp in call:
            if resp.canceled:
                raise AssertionError(f"history watch canceled: {resp.cancel_reason!r} "
                                     f"(compact_revision {resp.compact_revision})")
            events.extend(event_of(ev) for ev in resp.events)
            if events and events[-1][0] >= until_revision:
                break
    finally:
        requests.put(None)
        call.cancel()
        channel.close()
    return [e for e in events if e[0] <= until_revision]


def progress_violations(recorder: WatchRecorder) -> list[str]:
    """Progress responses that lied: an event at or below the announced revision came after it,
    or the announced revision is below an event already delivered."""
    bad = []
    for count, revision in recorder.progress:
        before, after = recorder.events[:count], recorder.events[count:]
        if before and before[-1][0] > revision:
            bad.append(f"progress {revision} after event at revision {before[-1][0]}")
        late = [e for e in after if e[0] <= revision]
        if late:
            bad.append(f"progress {revision} then {len(late)} events at or below it, first {late[0]}")
    return bad


def expected_prevs(events: list[Event]) -> list[bytes | None]:
    """The prev_kv value each event must carry: the key's value just before it (None: absent).

    Assumes no key under the watched prefix existed before the first event.
    """
    state: dict[bytes, bytes] = {}
    prevs: list[bytes | None] = []
    for _rev, kind, key, value in events:
        prevs.append(state.get(key))
        if kind == "PUT":
            state[key] = value
        else:
            state.pop(key, None)
    return prevs


@dataclass
class WatchRecorder:
    """A watcher thread that survives the death of its member by resuming elsewhere.

    ``endpoints[0]`` is its home member; on a stream error it tries the next endpoint (round robin)
    with ``start_revision = last seen revision + 1``, as clientv3 does. Every loop is bounded by
    ``deadline_s`` so a hung server fails the test instead of hanging it.
    """

    name: str
    endpoints: Sequence[str]
    prefix: bytes
    start_revision: int
    deadline_s: float = 60.0
    stall_s: float = 0.0  # do not read the first stream for this long (a slow consumer)
    # With BDP probing off the HTTP/2 window stays at 64 KiB, so a stalled reader really stalls.
    channel_options: tuple[tuple[str, Any], ...] = ()
    prev_kv: bool = False  # ask for prev_kv; ``prevs[i]`` is the previous value for ``events[i]``
    require_leader: bool = True  # send clientv3's ``hasleader`` metadata
    progress_every_s: float = 0.0  # send a WatchProgressRequest this often (0: never)
    events: list[Event] = field(default_factory=list)
    prevs: list[bytes | None] = field(default_factory=list)
    # (number of events received before it, revision) for every progress response
    progress: list[tuple[int, int]] = field(default_factory=list)
    reconnects: list[tuple[str, int]] = field(default_factory=list)  # (endpoint, resumed from)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _call: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.name}", daemon=True)
        self._thread.start()

    @property
    def last_revision(self) -> int:
        with self._lock:
            return self.events[-1][0] if self.events else self.start_revision - 1

    def wait_until(self, revision: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.last_revision >= revision:
                return True
            time.sleep(0.05)
        return self.last_revision >= revision

    def wait_progress(self, revision: int, timeout: float) -> bool:
        """Wait for a progress response announcing at least ``revision`` (needs progress_every_s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.progress and self.progress[-1][1] >= revision:
                    return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        give_up = time.monotonic() + self.deadline_s
        index = 0
        first = True
        while not self._stop.is_set() and time.monotonic() < give_up:
            endpoint = self.endpoints[index % len(self.endpoints)]
            resume_from = self.last_revision + 1
            if not first:
                self.reconnects.append((endpoint, resume_from))
            first = False
            try:
                self._stream(endpoint, resume_from, give_up)
            except grpc.RpcError as err:
                if self._stop.is_set():
                    return
                self.errors.append(f"{endpoint}: {err.code()}")
            except Exception as err:  # a broken invariant inside the stream: record it, stop
                self.errors.append(f"{FATAL} {endpoint}: {err!r}")
                return
            index += 1
            time.sleep(0.1)

    def _stream(self, endpoint: str, start_revision: int, give_up: float) -> None:
        channel = grpc.insecure_channel(endpoint, options=list(self.channel_options))
        requests: queue.Queue[Any] = queue.Queue()
        requests.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=self.prefix, range_end=prefix_end(self.prefix), start_revision=start_revision, prev_kv=self.prev_kv)))

        def feed() -> Iterator[Any]:
            next_progress = time.monotonic() + self.progress_every_s
            while not self._stop.is_set():
                try:
                    item = requests.get(timeout=min(0.2, self.progress_every_s or 0.2))
                except queue.Empty:
                    if self.progress_every_s and time.monotonic() >= next_progress:
                        next_progress = time.monotonic() + self.progress_every_s
                        yield pb.WatchRequest(progress_request=pb.WatchProgressRequest())
                    continue
                yield item

        try:
            # hasleader: a member cut off from the leader ends the stream, so we move on (as clientv3).
            metadata = (("hasleader", "true"),) if self.require_leader else ()
            call = EtcdStub(channel, "etcdserverpb.Watch").Watch(
                feed(), timeout=max(1.0, give_up - time.monotonic()), metadata=metadata)
            self._call = call
            if self.stall_s > 0:  # unread responses fill the HTTP/2 window; the server must hold back
                stall, self.stall_s = self.stall_s, 0.0
                self._stop.wait(stall)
            for resp in call:
                if resp.canceled:
                    raise RuntimeError(f"watch canceled by {endpoint}: {resp.cancel_reason!r}")
                if not resp.events and not resp.created:
                    # A progress response: every event at or below this revision was delivered.
                    with self._lock:
                        self.progress.append((len(self.events), int(resp.header.revision)))
                    continue
                batch = [event_of(ev) for ev in resp.events]
                prevs = [bytes(ev.prev_kv.value) if ev.HasField("prev_kv") else None for ev in resp.events]
                with self._lock:
                    self.events.extend(batch)
                    self.prevs.extend(prevs)
                if self._stop.is_set():
                    return
        finally:
            self._call = None
            channel.close()


def kill_cluster(cluster: ProcessCluster) -> None:
    """SIGKILL every member: for clusters whose data and shutdown a test does not care about."""
    for m in cluster.members:
        m.kill()
