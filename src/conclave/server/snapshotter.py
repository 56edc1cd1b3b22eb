"""Serialise the state machine off the event loop: one bounded, timed-out child at a time.

Theory of operation
-------------------
Two things need the whole store as bytes: the periodic Raft snapshot (compacts the log) and
``Maintenance.Snapshot`` (a backup streamed to a client). Serialising a 100 MB store takes
seconds of pure Python (``StateMachine.snapshot`` walks every record), so doing it on the event
loop stops the member for that long: no heartbeats, no acks, no reads. Both paths go through
``Snapshotter.start``: the loop ``fork()``s at a moment between two loop steps (so the child's
copy of memory is the state machine exactly at one applied index), the child writes the image
(or the backup file) to a file and exits, and the loop only waits for the exit on a pidfd.
What the loop pays is the ``fork`` itself (page tables, a few ms per GB of heap; measured in
bench/snapshot_stall.py) and, afterwards, a copy-on-write page fault the first time it writes
to each page still shared with the child.

Why a child and not a thread serialising an immutable view: the key index is mutated in place
(puts insert into its sorted key list, compaction trims per-key histories), so a view would
need copy-on-write in ``conclave.kv`` or an O(keys) copy on the loop; and a thread that
serialises Python objects holds the GIL for everything but the final write, so it competes
with the loop for the one core Python code can use. ``fork`` gives an immutable view for free
(the kernel's copy-on-write) and runs the serialisation on the other core.

Why the fork is safe although the member has threads (the fsync pool, executor workers, the
gRPC edge's native threads): the child gets only the forking thread, and every lock another
thread held at the fork stays held forever in the child. The child therefore does only things
that take none of them:

* the GIL and the import lock are reinitialised by CPython in the child; the child imports
  nothing (everything it runs is imported by this module first);
* Python objects are only mutated with the GIL held, and the forking thread holds it, so
  every object (the state machine in particular) is at a bytecode boundary, consistent;
* glibc's malloc takes its arena locks around ``fork``; pymalloc runs under the GIL;
* no logging, no printing (a ``sys.stderr`` buffer lock may be held by a thread that was
  writing), no executors, no asyncio: on any error the child writes ``repr(exc)`` to a side
  file with raw ``os.write`` and leaves with ``os._exit``, which runs no finalizers;
* the cyclic GC is disabled first (no finalizer of an inherited object may run and close a
  descriptor the child reuses);
* Python-level signal handlers are reset to the default and asyncio's wakeup fd is detached
  (signals are blocked across the ``fork`` so none arrives before that): a signal sent to the
  child must not be written into the parent's wakeup pipe. Then every inherited descriptor is
  closed, so a child that outlives a crashed parent holds neither its ports nor the data
  dir's lock.

Bounded in time: the parent ``SIGKILL``s the child when its deadline passes, and the child
arms ``alarm()`` a little later as a backstop (it dies even if the parent is gone); a failed or killed periodic
snapshot is retried later with backoff (``may_start``), the member keeps serving throughout,
and a ``Maintenance.Snapshot`` whose child fails gets an error. Bounded in number: one child
at a time (``start`` refuses while one runs; ``start_when_idle`` queues behind it). Costs: the
child's memory grows to about the image's size plus the pages the parent changes meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import itertools
import logging
import math
import os
import signal
import struct
import time
import warnings
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import BinaryIO, NoReturn

import msgpack

from conclave.kv import errors as kverr
from conclave.server.backup import MAGIC as BACKUP_MAGIC

log = logging.getLogger("conclave.snapshot")

BUILDING_SUFFIX = ".building"
DEADLINE_BASE_S = 60.0
DEADLINE_PER_GB_S = 120.0
RETRY_FIRST_S = 5.0
RETRY_MAX_S = 300.0
READ_BYTES = 1 << 20
ALARM_GRACE_S = 5.0
_EXIT_ERROR = 70

Writer = Callable[[BinaryIO], None]
"""What the child runs: write the bytes to the (binary, buffered) file it is given."""


class SnapshotError(RuntimeError):
    """A snapshot child failed or missed its deadline."""


class SnapshotTimeout(SnapshotError):
    """A snapshot child missed its deadline and was killed."""


class SnapshotBusy(SnapshotError):
    """A snapshot child is already running."""


def deadline_for(db_bytes: int) -> float:
    """The time a child may take for a store of ``db_bytes`` (generous: it is a hang detector)."""
    return DEADLINE_BASE_S + DEADLINE_PER_GB_S * max(0, db_bytes) / 1e9


def write_backup(f: BinaryIO, image: bytes, index: int, term: int) -> None:
    """Write ``backup.encode_backup(image, index, term)`` to ``f`` without copying ``image``.

    The same bytes: the msgpack map is written piece by piece (its keys in the same order) and
    the SHA-256 trailer is computed while writing.
    """
    p = msgpack.Packer(use_bin_type=True)
    body_head = p.pack_map_header(3) + p.pack("state") + _bin_header(len(image))
    body_tail = p.pack("index") + p.pack(index) + p.pack("term") + p.pack(term)
    length = len(body_head) + len(image) + len(body_tail)
    head = BACKUP_MAGIC + struct.pack(">Q", length)
    digest = hashlib.sha256()
    pad = b"\0" * (-(len(head) + length) % 512)
    for piece in (head, body_head, image, body_tail, pad):
        digest.update(piece)
        f.write(piece)
    f.write(digest.digest())


def _bin_header(n: int) -> bytes:
    """msgpack's header of a bin of ``n`` bytes (the smallest form, as ``packb`` writes it)."""
    if n < 1 << 8:
        return b"\xc4" + struct.pack(">B", n)
    if n < 1 << 16:
        return b"\xc5" + struct.pack(">H", n)
    return b"\xc6" + struct.pack(">I", n)


class Job:
    """One running child; ``await wait()`` for its file."""

    def __init__(self, owner: Snapshotter, pid: int, path: Path, deadline_s: float, what: str) -> None:
        self.owner = owner
        self.pid = pid
        self.path = path
        self.what = what
        self.deadline_s = deadline_s
        self.started = time.monotonic()
        self.done = asyncio.Event()
        self._reaped = False
        self._status = 0

    async def wait(self) -> Path:
        """The finished file (the caller owns it and unlinks it); raises ``SnapshotError``."""
        try:
            remaining = self.deadline_s - (time.monotonic() - self.started)
            exited = await self._exited(max(0.0, remaining))
            if not exited:
                self.kill()
                await self._exited(5.0)
                self._reap(block=True)
                raise SnapshotTimeout(f"{self.what} child {self.pid} missed its {self.deadline_s:g} s deadline; killed")
            if os.waitstatus_to_exitcode(self._status) == -signal.SIGALRM:
                raise SnapshotTimeout(f"{self.what} child {self.pid} missed its deadline (its own alarm)")
            if os.waitstatus_to_exitcode(self._status) != 0:
                why = _read_side_file(self.path)
                raise SnapshotError(
                    f"{self.what} child {self.pid} failed (exit {os.waitstatus_to_exitcode(self._status)})"
                    + (f": {why}" if why else ""))
            return self.path
        except BaseException:
            self.kill()
            self._reap(block=True)
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.owner._finished(self, ok=False)
            raise
        finally:
            with contextlib.suppress(OSError):
                _side_path(self.path).unlink()
            if not self.done.is_set():
                self.owner._finished(self, ok=True)

    def kill(self) -> None:
        if not self._reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def _reap(self, *, block: bool) -> bool:
        if self._reaped:
            return True
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere (a SIGCHLD handler): count it as failed
            self._reaped, self._status = True, 1 << 8
            return True
        if pid == 0:
            return False
        self._reaped, self._status = True, status
        return True

    async def _exited(self, timeout_s: float) -> bool:
        """Wait until the child exits (reaped) or ``timeout_s`` passes; True if it exited."""
        if self._reap(block=False):
            return True
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        pidfd = -1
        with contextlib.suppress(OSError, AttributeError):
            pidfd = os.pidfd_open(self.pid)
        if pidfd < 0:  # no pidfd (old kernel): poll
            while loop.time() < end:
                await asyncio.sleep(0.02)
                if self._reap(block=False):
                    return True
            return self._reap(block=False)
        readable: asyncio.Future[None] = loop.create_future()

        def on_exit() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(pidfd, on_exit)
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(readable, max(0.0, end - loop.time()))
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)
        return self._reap(block=False)


class Snapshotter:
    """Runs snapshot children for one member (see the module docstring); loop-thread only."""

    def __init__(self, work_dir: str | os.PathLike[str]) -> None:
        self.work_dir = Path(work_dir)
        self.job: Job | None = None
        self.failures = 0
        self.not_before = 0.0
        self.deadline_override_s: float | None = None  # tests: a short deadline
        self._names = itertools.count(1)
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._swept = False
        # Told (what, seconds from fork to exit, ok) when a child ends: the member's metrics.
        self.on_finished: Callable[[str, float, bool], None] | None = None

    @property
    def busy(self) -> bool:
        return self.job is not None

    def may_start(self) -> bool:
        """No child running and no backoff after a failure (periodic snapshots ask this)."""
        return self.job is None and time.monotonic() >= self.not_before

    def start(self, write: Writer, *, what: str, db_bytes: int = 0) -> Job:
        """Fork a child that runs ``write`` on a new file, now (the image is of this instant)."""
        if self.job is not None:
            raise SnapshotBusy(f"a {self.job.what} child is already running")
        if not self._swept:
            # Leftovers of an earlier run (a crash mid-snapshot). Swept at the first start, not at
            # construction: by now this member holds the data dir's lock.
            self._swept = True
            for stale in self.work_dir.glob(f"snapshot-*{BUILDING_SUFFIX}*"):
                with contextlib.suppress(OSError):
                    stale.unlink()
        deadline = self.deadline_override_s if self.deadline_override_s is not None else deadline_for(db_bytes)
        path = self.work_dir / f"snapshot-{os.getpid()}-{next(self._names)}{BUILDING_SUFFIX}"
        t0 = time.perf_counter()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _CHILD_SIGNALS)
        try:
            with warnings.catch_warnings():
                # 3.12+ warns about fork in a threaded process; the module docstring says why this one is safe.
                warnings.filterwarnings("ignore", r".*multi-threaded.*fork", DeprecationWarning)
                try:
                    pid = os.fork()
                except OSError as exc:  # out of memory or processes: a later try may succeed
                    self._backoff()
                    raise SnapshotError(f"cannot fork a {what} child: {exc}") from exc
            if pid == 0:
                _child_main(write, path, deadline, blocked)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        log.info("%s child %d started (fork took %.0f ms on the loop; deadline %g s)", what, pid,
                 1000 * (time.perf_counter() - t0), deadline)
        self.job = Job(self, pid, path, deadline, what)
        return self.job

    async def start_when_idle(self, write: Writer, *, what: str, db_bytes: Callable[[], int] = lambda: 0) -> Job:
        """``start`` once no child runs (waiting behind the current one)."""
        while self.job is not None:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._idle_waiters.append(fut)
            await fut
        return self.start(write, what=what, db_bytes=db_bytes())

    def close(self) -> None:
        """Kill a running child (the member is stopping)."""
        job = self.job
        if job is not None:
            job.kill()
            job._reap(block=True)
            with contextlib.suppress(OSError):
                job.path.unlink()
            self._finished(job, ok=False)

    def _backoff(self) -> None:
        self.failures += 1
        backoff = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(self.failures - 1, 16))
        self.not_before = time.monotonic() + backoff

    def _finished(self, job: Job, *, ok: bool) -> None:
        if job.done.is_set():
            return
        job.done.set()
        if self.job is job:
            self.job = None
        if self.on_finished is not None:
            self.on_finished(job.what, time.monotonic() - job.started, ok)
        if ok:
            self.failures, self.not_before = 0, 0.0
        else:
            self._backoff()
        waiters, self._idle_waiters = self._idle_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


async def read_file(path: Path) -> bytes:
    """The file's bytes, read in a worker thread (the read releases the GIL)."""
    return await asyncio.get_running_loop().run_in_executor(None, path.read_bytes)


class FileStream:
    """An async iterator over the file a job produces, in ``chunk_bytes`` pieces; unlinks it.

    ``start`` runs on the first ``__anext__`` (so the image is of that moment). ``size`` is set
    once the first chunk is produced (the child has finished by then), so a gRPC handler can
    fill ``remaining_bytes``.
    """

    def __init__(self, start: Callable[[], Awaitable[Job]], chunk_bytes: int) -> None:
        self._start = start
        self.chunk_bytes = chunk_bytes
        self.size: int | None = None
        self._gen: AsyncGenerator[bytes, None] | None = None

    def __aiter__(self) -> FileStream:
        return self

    async def __anext__(self) -> bytes:
        if self._gen is None:
            self._gen = self._chunks()
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        job = await self._start()
        try:
            path = await job.wait()
        except SnapshotTimeout as exc:
            log.warning("%s", exc)
            raise kverr.Timeout() from exc
        loop = asyncio.get_running_loop()
        try:
            with open(path, "rb") as f:
                self.size = os.fstat(f.fileno()).st_size
                while True:
                    block = await loop.run_in_executor(None, f.read, READ_BYTES)
                    if not block:
                        return
                    for i in range(0, len(block), self.chunk_bytes):
                        yield block[i : i + self.chunk_bytes]
        finally:
            with contextlib.suppress(OSError):
                path.unlink()


# ---------------------------------------------------------------------- the child

_CHILD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                  signal.SIGALRM, signal.SIGCHLD, signal.SIGPIPE}


def _side_path(path: Path) -> Path:
    return path.with_name(path.name + ".err")


def _read_side_file(path: Path) -> str:
    try:
        return _side_path(path).read_text(errors="replace")[:500]
    except OSError:
        return ""


def _child_main(write: Writer, path: Path, deadline_s: float, parent_mask: set[int]) -> NoReturn:
    """The child: only the work, no shared locks, then ``os._exit`` (see the module docstring)."""
    code = _EXIT_ERROR
    try:
        gc.disable()
        with contextlib.suppress(ValueError):  # ValueError: not the main thread (then none are set)
            signal.set_wakeup_fd(-1)
            for sig in _CHILD_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
        signal.alarm(math.ceil(deadline_s + ALARM_GRACE_S))  # after the parent's kill: its own backstop
        signal.pthread_sigmask(signal.SIG_SETMASK, parent_mask - {signal.SIGALRM})
        os.closerange(3, _max_fd())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(fd, "wb", buffering=READ_BYTES) as f:
            write(f)
        code = 0
    except BaseException as exc:  # reported through the side file, never printed
        with contextlib.suppress(BaseException):
            efd = os.open(_side_path(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(efd, repr(exc).encode("utf-8", "replace")[:2000])
            os.close(efd)
    os._exit(code)


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 1 << 16
