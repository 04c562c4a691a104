"""Chunks of short work spread over forked worker processes, results streamed back as they finish.

`multiprocessing.Pool` costs more than the work when the whole job takes a fraction of a second:
importing it and starting its three helper threads take 30-40 ms of CPU, as much as signing
1,000 files with P-256, and its threads compete with the workers for two cores. A worker here
is a bare `os.fork` with two pipes. It inherits the parent's state (a loaded key, say), so the
function it runs is never pickled; chunks and results cross the pipes pickled, each message
preceded by its length.

The parent reads ahead from the items (a tree walk that streams), keeps two chunks queued on
each worker so that none waits for its next one, and once the items have run out it cuts the
remainder into smaller chunks, so that the workers finish together instead of one signing a
last full chunk alone. POSIX only (fork); a worker must not touch the parent's threads, so the
pool is started before any thread (a progress bar) is.

A caller with slow set-up work of its own (the signer checks its certificate, which costs an import
of 40 ms) can do it while the workers already run: `map(..., head=N, while_started=fn)` gives each
worker a first chunk of N items, then runs `fn` here before it hands out the rest.
"""

from __future__ import annotations

import fcntl
import gc
import os
import pickle
import selectors
import signal
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_LENGTH = struct.Struct("<Q")
_QUEUED_PER_WORKER = 2
_STOP = b""
_HEAD_PIPE_BYTES = 1 << 20  # Linux's default limit for an unprivileged process (/proc/sys/fs/pipe-max-size)


class WorkerError(RuntimeError):
    """A worker died or raised something that could not be sent back as it was."""


def _read_exactly(fd: int, size: int) -> bytes | None:
    """`size` bytes from `fd`, None at end of file before the first byte."""
    parts = []
    remaining = size
    while remaining:
        part = os.read(fd, remaining)
        if not part:
            if remaining == size:
                return None
            raise WorkerError("a worker's message was cut short")
        parts.append(part)
        remaining -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _read_message(fd: int) -> bytes | None:
    header = _read_exactly(fd, _LENGTH.size)
    if header is None:
        return None
    (size,) = _LENGTH.unpack(header)
    if size == 0:
        return _STOP
    body = _read_exactly(fd, size)
    if body is None:
        raise WorkerError("a worker's message was cut short")
    return body


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


class _Worker:
    def __init__(self, pid: int, tasks: int, results: int):
        self.pid = pid
        self.tasks = tasks  # parent writes chunks here (non-blocking, buffered in `pending`)
        self.results = results  # parent reads results here
        self.pending = bytearray()
        self.queued = 0  # chunks sent and not yet answered
        self.stopping = False


class ForkPool(Generic[T, R]):
    """`jobs` forked processes that each run `fn(chunk)` on chunks of items.

        with ForkPool(sign_chunk, jobs=2) as pool:      # the workers start here
            for result in pool.map(files, chunk=64):    # results in completion order
                ...

    With jobs <= 1 nothing is forked and `map` runs `fn` in this process. An exception raised by
    `fn` in a worker is raised again here, from `map` (a WorkerError carrying its traceback when
    it cannot be pickled); the pool then stops every worker.
    """

    def __init__(self, fn: Callable[[list[T]], R], jobs: int, *, after_fork: Callable[[], None] | None = None):
        """`after_fork` runs in each worker as it starts (to close what only the parent may hold)."""
        self.fn = fn
        self.jobs = jobs
        self.after_fork = after_fork
        self.workers: list[_Worker] = []

    def __enter__(self) -> ForkPool[T, R]:
        if self.jobs > 1:
            # what exists now is never collected in a worker: the collector would touch (and so copy)
            # every page of the parent's heap in each of them
            gc.freeze()
            for _ in range(self.jobs):
                self.workers.append(self._fork())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(kill=exc[0] is not None)

    def _fork(self) -> _Worker:
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: it never returns into the caller's code
            status = 1
            try:
                for other in self.workers:  # else a dead sibling's pipes would never report end of file
                    os.close(other.tasks)
                    os.close(other.results)
                os.close(task_w)
                os.close(result_r)
                signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C: the parent reports it, once
                if self.after_fork is not None:
                    self.after_fork()
                self._serve(task_r, result_w)
                status = 0
            finally:
                os._exit(status)
        os.close(task_r)
        os.close(result_w)
        os.set_blocking(task_w, False)
        return _Worker(pid, task_w, result_r)

    def _serve(self, tasks: int, results: int) -> None:
        while True:
            message = _read_message(tasks)
            if not message:  # stop, or the parent is gone
                return
            try:
                reply = pickle.dumps((True, self.fn(pickle.loads(message))), pickle.HIGHEST_PROTOCOL)
            except BaseException as exc:  # sent back whole: the parent raises it
                reply = _failure(exc)
            _write_all(results, _frame(reply))

    def map(self, items: Iterable[T], chunk: int = 64, *, head: int = 0,
            while_started: Callable[[], None] | None = None) -> Iterator[R]:
        """`fn` over chunks of `items`, results in completion order.

        With `while_started`, each worker first gets one chunk of `head` items (fewer when the items
        run out), then `while_started()` runs here while the workers work on them; an exception
        from it stops the workers. Without workers it runs before the first chunk.
        """
        source = iter(items)
        if not self.workers:
            if while_started is not None:
                while_started()
            while batch := _take(source, chunk):
                yield self.fn(batch)
            return
        if any(w.stopping for w in self.workers):
            raise RuntimeError("a ForkPool maps once: its workers have stopped")
        ahead: deque[T] = deque()
        head = head if while_started is not None else 0
        read_ahead = len(self.workers) * (head + 4 * chunk)
        exhausted = False

        def next_chunk(size: int = chunk) -> list[T]:
            nonlocal exhausted
            while not exhausted and len(ahead) < read_ahead:
                try:
                    ahead.append(next(source))
                except StopIteration:
                    exhausted = True
            if exhausted:  # the last items in ever smaller chunks: every worker busy until the end
                size = max(1, min(size, len(ahead) // (2 * len(self.workers))))
            return [ahead.popleft() for _ in range(min(size, len(ahead)))]

        selector = selectors.DefaultSelector()
        try:
            for worker in self.workers:
                selector.register(worker.results, selectors.EVENT_READ, worker)
            if while_started is not None:
                for worker in self.workers:
                    if head > chunk:  # the whole head must reach the worker before while_started runs
                        _grow_pipe(worker.tasks, _HEAD_PIPE_BYTES)
                    self._send(selector, worker, next_chunk(head))
                while_started()
            for worker in self.workers:
                for _ in range(_QUEUED_PER_WORKER - worker.queued):
                    self._send(selector, worker, next_chunk())
            while any(w.queued or w.pending for w in self.workers):
                for key, events in selector.select():
                    worker = key.data
                    if events & selectors.EVENT_WRITE:
                        self._flush(selector, worker)
                    if events & selectors.EVENT_READ:
                        message = _read_message(worker.results)
                        if message is None:
                            if worker.stopping and not worker.queued:  # told to stop, and it did
                                selector.unregister(worker.results)
                                continue
                            raise WorkerError(f"worker {worker.pid} exited before answering")
                        ok, value = pickle.loads(message)
                        if not ok:
                            raise value
                        worker.queued -= 1
                        self._send(selector, worker, next_chunk())
                        yield value
        finally:
            selector.close()

    def _send(self, selector: selectors.BaseSelector, worker: _Worker, batch: list[T]) -> None:
        if not batch:
            if not worker.queued and not worker.stopping:
                worker.stopping = True
                worker.pending += _LENGTH.pack(0)
                self._flush(selector, worker)
            return
        worker.queued += 1
        worker.pending += _frame(pickle.dumps(batch, pickle.HIGHEST_PROTOCOL))
        self._flush(selector, worker)

    def _flush(self, selector: selectors.BaseSelector, worker: _Worker) -> None:
        """Write what the pipe takes now, the rest once the selector says it is writable: a worker
        blocked on writing its result must never wait on a parent blocked on writing it a chunk."""
        if worker.pending:
            try:
                del worker.pending[:os.write(worker.tasks, worker.pending)]
            except BlockingIOError:
                pass
        watched = worker.tasks in selector.get_map()
        if worker.pending and not watched:
            selector.register(worker.tasks, selectors.EVENT_WRITE, worker)
        elif watched and not worker.pending:
            selector.unregister(worker.tasks)

    def close(self, *, kill: bool = False) -> None:
        """Stop the workers (killed when `kill`, or when they were never told to stop) and reap them."""
        for worker in self.workers:
            if kill or not worker.stopping or worker.pending:
                try:
                    os.kill(worker.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            os.close(worker.tasks)
            os.close(worker.results)
        for worker in self.workers:
            os.waitpid(worker.pid, 0)
        if self.workers:
            gc.unfreeze()
        self.workers = []


def _failure(exc: BaseException) -> bytes:
    """`exc` pickled for the parent to raise (a WorkerError with its traceback when it cannot be pickled)."""
    try:
        return pickle.dumps((False, exc), pickle.HIGHEST_PROTOCOL)
    except Exception:
        import traceback

        return pickle.dumps((False, WorkerError("".join(traceback.format_exception(exc)))), pickle.HIGHEST_PROTOCOL)


class ForkedCall(Generic[R]):
    """`fn()` run in a forked child while this process goes on: slow set-up (an import) on a core
    that would otherwise wait. `result()` waits for it and returns what `fn` returned, or raises
    what it raised; leaving the `with` block ends the child if it is still running.

        with ForkedCall(read_certificate) as certificate:   # the child starts here
            key = load_key()                                # meanwhile, on another core
            use(key, certificate.result())
    """

    def __init__(self, fn: Callable[[], R]):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: it never returns into the caller's code
            status = 1
            try:
                os.close(read_end)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                try:
                    reply = pickle.dumps((True, fn()), pickle.HIGHEST_PROTOCOL)
                except BaseException as exc:
                    reply = _failure(exc)
                _write_all(write_end, _frame(reply))
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        self._pid: int | None = pid
        self._read_end = read_end
        self._outcome: tuple[bool, object] | None = None

    def result(self) -> R:
        if self._outcome is None:
            message = _read_message(self._read_end)
            self._outcome = pickle.loads(message) if message else (
                False, WorkerError("a forked call exited before answering"))
            self.close()
        ok, value = self._outcome
        if not ok:
            raise value  # type: ignore[misc]
        return value  # type: ignore[return-value]

    def close(self) -> None:
        if self._pid is None:
            return
        if self._outcome is None:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.close(self._read_end)
        os.waitpid(self._pid, 0)
        self._pid = None

    def __enter__(self) -> ForkedCall[R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _grow_pipe(fd: int, size: int) -> None:
    """Ask for a larger pipe buffer (Linux); where refused, a large message just waits for the reader."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except (OSError, AttributeError):
        pass


def _take(source: Iterator[T], size: int) -> list[T]:
    batch = []
    for item in source:
        batch.append(item)
        if len(batch) == size:
            break
    return batch
