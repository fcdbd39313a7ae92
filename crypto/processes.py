"""Helper processes for the CKKS work of one silo: the fitting's share, the querier's encryption and
the provider's evaluation, spread over cores.

SEAL (through ``sealapi``) holds the GIL, so a second core needs a second process. A helper is a
fresh interpreter (``python -m crypto.worker``), not a fork or ``multiprocessing`` child: the silos
run inside Ray or Flower worker processes, whose threads make forking unsafe and whose main module
must not be re-imported.

Helpers are **persistent**: started on first use (about a second of imports), then kept by this
process and reused by every later computation, one job at a time each. What a job needs and a helper
can keep (a kit, a head) travels as a :class:`Shared`, named by the digest of what builds it: the
helper builds it once and keeps the last few, so a stream of requests under one context pays for
the kit once per helper, not per request. A job whose helper no longer holds an object is answered
``missing`` and sent again with it.

Jobs and replies cross the helper's stdin and stdout as length-prefixed pickles (the helper's own
prints go to stderr); nothing is written to disk. A querier's job carries its secret key to its own
helper, a child of the querier's process, through that pipe only. An exception in a helper comes
back as :class:`HelperError` with the helper's traceback; a helper that dies is dropped, and the
next job starts a fresh one. Helpers stop when this interpreter exits (their stdin closes; they
also stop by themselves when it dies, at their next read).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import itertools
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

T = TypeVar("T")

# Objects a helper keeps (and that this process assumes it keeps, in the same order): a provider
# serving one querier needs its kit and its head; a silo in a simulation also holds the querier's.
SHARED_CAPACITY = 4
_FRAME = struct.Struct("<Q")
_PIPE_BYTES = 1 << 20  # larger pipes: fewer system calls for ciphertext payloads of ~100 MiB
_STOP_SECONDS = 5.0


class HelperError(RuntimeError):
    """A job failed in a helper process (``remote_traceback``: where, in the helper)."""

    def __init__(self, message: str, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text}\n\nIn the helper process:\n{self.remote_traceback}" if self.remote_traceback \
            else text


@dataclass(frozen=True)
class Shared:
    """An object a helper builds once and keeps: ``kind`` names its builder (``crypto.worker``),
    ``payload`` is what builds it, ``digest`` names it (computed once by the caller)."""

    kind: str
    digest: bytes
    payload: Callable[[], Any]  # called only when the helper does not hold it

    @staticmethod
    def digest_of(*parts: bytes) -> bytes:
        h = hashlib.blake2b(digest_size=16, person=b"secure-align-hlp")
        for part in parts:
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        return h.digest()


def write_frame(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(data)))
    stream.write(data)
    stream.flush()


def read_frame(stream: BinaryIO) -> Any | None:
    """The next pickled object, or None at the end of the stream."""
    header = stream.read(_FRAME.size)
    if len(header) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


def _grow_pipe(fd: int) -> None:
    with contextlib.suppress(OSError):  # best effort: the limit is the system's
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)


class _Helper:
    """One persistent helper process; one job at a time."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen([sys.executable, "-m", "crypto.worker"], env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        _grow_pipe(self.process.stdin.fileno())
        _grow_pipe(self.process.stdout.fileno())
        self.known: OrderedDict[bytes, None] = OrderedDict()  # digests it holds (mirrors its cache)
        self._writer: threading.Thread | None = None
        self._write_error: BaseException | None = None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def submit(self, task: str, args: dict, shared: dict[str, Shared], *,
               resend: bool = False) -> None:
        """Send a job without waiting: a helper still starting up reads it when it is ready."""
        refs = {}
        for name, item in shared.items():
            held = item.digest in self.known and not resend
            refs[name] = (item.kind, item.digest, None if held else item.payload())
            self.known[item.digest] = None
            self.known.move_to_end(item.digest)
            while len(self.known) > SHARED_CAPACITY:
                self.known.popitem(last=False)
        message = {"task": task, "args": args, "shared": refs}
        self._write_error = None
        self._writer = threading.Thread(target=self._send, args=(message,), daemon=True)
        self._writer.start()

    def _send(self, message: dict) -> None:
        try:  # one large write: the GIL is released for all of it
            write_frame(self.process.stdin, message)
        except (BrokenPipeError, OSError) as err:
            self._write_error = err  # the helper died; receive() reports it

    def receive(self) -> tuple:
        if self._writer is not None:
            self._writer.join()
        reply = read_frame(self.process.stdout) if self._write_error is None else None
        if reply is None:
            self.kill()
            raise HelperError(f"helper process {self.process.pid} exited "
                              f"(exit code {self.process.returncode}) before replying")
        return reply

    def close(self) -> None:
        """Ask it to stop: its stdin closes, it finishes its job and exits (see :meth:`wait`)."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()

    def wait(self) -> None:
        try:
            self.process.wait(timeout=_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
        with contextlib.suppress(OSError):
            self.process.stdout.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()


class HelperPool:
    """This process's persistent helpers: idle ones are lent out, one caller each at a time."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._idle: list[_Helper] = []
        self._lock = threading.Lock()

    def _acquire(self, count: int) -> list[_Helper]:
        with self._lock:
            self._idle = [h for h in self._idle if h.alive]
            keep = max(0, len(self._idle) - count)  # the most recently used: they hold the most
            taken, self._idle = self._idle[keep:], self._idle[:keep]
        return taken + [_Helper() for _ in range(count - len(taken))]

    def _release(self, helpers: list[_Helper]) -> None:
        with self._lock:
            self._idle.extend(h for h in helpers if h.alive)

    def warm(self, count: int, shared: dict[str, Shared]) -> None:
        """Have ``count`` idle helpers hold ``shared``, started and built (waits for them): the
        first request then pays for neither."""
        self.run("ready", [{} for _ in range(count)], shared, lambda: None)

    def run(self, task: str, jobs: list[dict], shared: dict[str, Shared],
            local: Callable[[], T]) -> tuple[list[Any], T]:
        """Each job to its own helper, ``local()`` here meanwhile; the helpers' results in the
        order of ``jobs``, and ``local``'s. A failure anywhere raises once every helper is done."""
        if not jobs:
            return [], local()
        helpers = self._acquire(len(jobs))
        pending: set[int] = set()  # helpers whose reply is still to be read
        try:
            for index, (helper, args) in enumerate(zip(helpers, jobs, strict=True)):
                helper.submit(task, args, shared)
                pending.add(index)
            try:
                mine = local()
            except Exception:
                for index in sorted(pending):  # wait their replies out: they can serve again
                    with contextlib.suppress(HelperError):
                        helpers[index].receive()
                    pending.discard(index)
                raise
            results, failure = [], None
            for index, (helper, args) in enumerate(zip(helpers, jobs, strict=True)):
                try:
                    results.append(self._result(helper, task, args, shared))
                except HelperError as err:
                    failure = failure or err
                pending.discard(index)
            if failure is not None:
                raise failure
            return results, mine
        finally:
            for index in pending:  # interrupted mid-job: their replies would be out of step
                helpers[index].kill()
            self._release(helpers)

    @staticmethod
    def _result(helper: _Helper, task: str, args: dict, shared: dict[str, Shared]) -> Any:
        reply = helper.receive()
        if reply[0] == "missing":  # it dropped an object this process thought it kept
            helper.submit(task, args, shared, resend=True)
            reply = helper.receive()
        if reply[0] == "ok":
            return reply[1]
        if reply[0] == "error":
            raise HelperError(f"a helper process failed on {task!r}: {reply[1]}", reply[2])
        raise HelperError(f"unexpected reply {reply[0]!r} from a helper process")

    def close(self) -> None:
        """Stop every idle helper (at interpreter exit; tests). Lent ones stop when they return."""
        if os.getpid() != self._pid:  # a forked child: the helpers are its parent's
            return
        with self._lock:
            helpers, self._idle = self._idle, []
        for helper in helpers:  # all asked at once, then waited for
            helper.close()
        for helper in helpers:
            helper.wait()

    @property
    def pids(self) -> list[int]:
        """Process ids of the idle helpers (tests, diagnostics)."""
        with self._lock:
            return [h.process.pid for h in self._idle if h.alive]


_POOL: HelperPool | None = None
_POOL_LOCK = threading.Lock()


def pool() -> HelperPool:
    """The helpers of this process (a forked child gets its own, never its parent's)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._pid != os.getpid():
            _POOL = HelperPool()
            atexit.register(_POOL.close)
        return _POOL


def shares(units: int, workers: int) -> list[tuple[int, int]]:
    """``units`` cut into at most ``workers`` contiguous, non-empty, near-equal ranges."""
    if workers < 1 or units < 1:
        raise ValueError(f"need workers >= 1 and units >= 1, got {workers} and {units}")
    count = min(workers, units)
    bounds = [units * i // count for i in range(count + 1)]
    return list(itertools.pairwise(bounds))
