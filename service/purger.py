"""Purges in a helper process, away from the service's interpreter lock.

Why. A purge of a small tree is about ten system calls, and a thread takes
the interpreter lock back after each one. In the service that lock is the
event loop's most of the time, so a purge thread mostly waits for it: a
one-file tree took 440 µs to purge in the service against 120 µs in a
process of its own, and a group's purges were half of its time. The helper
is one process, started by the first purge, that runs the same walk
(``fs.walk_at``) on the service's behalf, on the other core.

What it is given. Never a path: each request carries the descriptor of the
directory that holds the trees (the trash's, held and verified by
``service.trash``), passed over a Unix socket (SCM_RIGHTS), and the trees'
names in it. So the helper reaches exactly what the service would, through
the same checks, and is as safe as the walk itself.

Protocol, over one socket pair: a request is ``(id, names)`` followed by
the descriptor; the helper answers with ``("progress", id, index, files,
bytes)`` at most every ``_REPORT_SECONDS`` while a tree is walked, then
``("done", id, results)``, one ``TreeStats`` (or exception) per name, which
also tells the caller's progress the rest.
Requests walk one at a time, in the order they take their turn, but each
in a thread of its own: one that has waited ``_TURN_SECONDS`` goes ahead,
so a big tree does not hold up another request's small ones.

Faults. The helper exits as soon as its socket reads end of file: when the
service exits, is killed, or closes it; a tree it was walking stays in the
trash, whose sweep finishes it. When the helper dies first, the requests it
had are walked again in the caller's thread, and it is started again for
the next one; what it removed since its last report for a tree is then not
counted (at most ``_REPORT_SECONDS`` of work: a one-file tree's file, say).
When it cannot be started, the caller walks in its own thread, as before
this module existed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle
from pathlib import Path
from typing import Any

import structlog

from service import fs
from service.progress import Progress

log = structlog.get_logger("service")

# How often a tree being walked reports its progress: a job's figures move,
# and what a dead helper removed without saying so stays small.
_REPORT_SECONDS = 0.25
# After a failed start, callers walk in their own thread for this long before
# the next attempt.
_RETRY_SECONDS = 5.0
# Requests the helper holds at once (each is a group's trees; callers are
# worker threads of the service, far fewer than this).
_REQUESTS_AT_ONCE = 32
# One request walks at a time: side by side, purges queue on the trash
# directory's lock (two at once: 2,250 one-file tasks/s; one: 2,700). One
# that has waited this long goes ahead anyway: a big tree must not hold up
# another request's small ones for as long as it takes.
_TURN_SECONDS = 0.5

Purged = fs.TreeStats | BaseException


class HelperGone(Exception):
    """The helper ended before it answered."""


@dataclass
class _Request:
    names: list[str]
    progresses: Sequence[Progress | None]
    done: Future[list[Purged]] = field(default_factory=Future)
    reported: dict[int, tuple[int, int]] = field(default_factory=dict)  # index -> files, bytes


@dataclass
class _Helper:
    """One helper process and what is waiting for it."""

    proc: subprocess.Popen[bytes]
    sock: socket.socket  # to send descriptors, and to shut down
    conn: Connection  # the messages, on a descriptor of its own of the same socket
    started_at: float
    pending: dict[int, _Request] = field(default_factory=dict)
    stopped: bool = False  # by the service's close(), not on its own


class Purger:
    """The service's side of the helper: ``purge`` walks trees through it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the fields below, and one request sent at a time
        self._helper: _Helper | None = None
        self._next_id = 0
        self._retry_at = 0.0
        self._closed = False

    @property
    def pid(self) -> int | None:
        """The helper's process id while it runs."""
        helper = self._helper
        return helper.proc.pid if helper is not None and helper.proc.poll() is None else None

    def start(self) -> bool:
        """Start the helper if it is not running (again after ``close``);
        False when it cannot be (logged). Blocking. A purge starts it when
        it is not running, unless it was closed. Lazily: the service's start
        does not wait for, nor pay for, a helper that no deletion needs."""
        with self._lock:
            self._closed = False
            return self._start_locked() is not None

    def _start_locked(self) -> _Helper | None:
        if self._helper is not None:
            return self._helper
        if self._closed or time.monotonic() < self._retry_at:
            return None
        # -P: never the cwd's modules; this package, from where it is.
        root = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        ours, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "service.purger", str(theirs.fileno()),
                 str(fs.threads()), str(fs.descriptors())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": path},
            )  # fmt: skip
        except OSError as e:
            ours.close()
            self._retry_at = time.monotonic() + _RETRY_SECONDS
            log.warning("purge_helper_not_started", error=e.strerror or str(e))
            return None
        finally:
            theirs.close()
        helper = _Helper(proc, ours, Connection(os.dup(ours.fileno())), time.monotonic())
        try:
            threading.Thread(
                target=self._read, args=(helper,), name="purge-helper", daemon=True
            ).start()
        except RuntimeError as e:  # no thread to read its answers: no helper
            _stop(helper)
            helper.conn.close()
            proc.wait()
            self._retry_at = time.monotonic() + _RETRY_SECONDS
            log.warning("purge_helper_not_started", error=str(e))
            return None
        self._helper = helper
        return helper

    def close(self) -> None:
        """Stop the helper: it reads end of file and exits, and its reader
        thread reaps it (not waited for here: a helper still starting would
        hold up the service's exit for as long as its imports take)."""
        with self._lock:
            self._closed = True
            helper, self._helper = self._helper, None
            if helper is not None:
                helper.stopped = True
                _stop(helper)

    def purge(
        self, dir_fd: int, names: list[str], progresses: Sequence[Progress | None]
    ) -> list[Purged]:
        """Remove the trees ``names`` of the directory open at ``dir_fd``, as
        ``fs.walk_at(..., remove=True)`` would, each telling its ``progress``;
        one outcome per name. Blocking: in the helper when it runs, else here.
        ``dir_fd`` must stay open until this returns."""
        request = _Request(names, progresses)
        if not self._send(dir_fd, request):
            return _walk_here(dir_fd, names, progresses, {})
        try:
            return request.done.result()
        except HelperGone:
            # What it had not answered is walked here; what it said it removed counts.
            return _walk_here(dir_fd, names, progresses, request.reported)

    def _send(self, dir_fd: int, request: _Request) -> bool:
        with self._lock:
            helper = self._start_locked()
            if helper is None:
                return False
            self._next_id += 1
            rid = self._next_id
            helper.pending[rid] = request
            try:
                helper.conn.send((rid, request.names))
                socket.send_fds(helper.sock, [bytes([1])], [dir_fd])  # as recv_handle reads it
            except OSError:
                # Half a request may be in the stream: this helper is done for.
                helper.pending.pop(rid, None)
                _stop(helper)
                if self._helper is helper:
                    self._helper = None
                return False
        return True

    def _read(self, helper: _Helper) -> None:
        """The helper's answers, to their requests, until it ends; then what
        it left unanswered fails (the callers walk it), whatever ended it."""
        try:
            while True:
                message = helper.conn.recv()
                if message[0] == "progress":
                    _, rid, index, files, bytes_ = message
                    if (request := helper.pending.get(rid)) is None:
                        continue
                    seen = request.reported.get(index, (0, 0))
                    request.reported[index] = (seen[0] + files, seen[1] + bytes_)
                    if (progress := request.progresses[index]) is not None:
                        progress.add(files, bytes_)
                    continue
                _, rid, results = message
                with self._lock:
                    request = helper.pending.pop(rid, None)
                if request is None:
                    continue
                for index, result in enumerate(results):
                    # The rest of a tree's progress comes with its result.
                    progress = request.progresses[index]
                    if progress is not None and isinstance(result, fs.TreeStats):
                        files, bytes_ = request.reported.get(index, (0, 0))
                        progress.add(result.files - files, result.bytes - bytes_)
                request.done.set_result(results)
        except (EOFError, OSError):
            pass  # it ended, or was stopped
        except Exception:
            log.exception("purge_helper_unreadable")
        finally:
            with self._lock:
                if self._helper is helper:
                    self._helper = None
                ended_on_its_own = not helper.stopped
                _stop(helper)
                gone, helper.pending = helper.pending, {}
            helper.conn.close()
            for request in gone.values():  # before the wait: a hung helper may never end
                request.done.set_exception(HelperGone())
            status = helper.proc.wait()
            soon = time.monotonic() - helper.started_at < _RETRY_SECONDS
            if ended_on_its_own and status >= 0 and soon:
                # It exited on its own, and soon: it cannot run (a broken
                # install, say). Callers walk themselves for a while.
                self._retry_at = time.monotonic() + _RETRY_SECONDS
            if gone or not self._closed:
                log.warning("purge_helper_ended", status=status, requests=len(gone))


def _stop(helper: _Helper) -> None:
    """End of file for the helper, which then exits (at once, mid-tree if need
    be: the trash's sweep finishes the tree), and for its reader thread."""
    with contextlib.suppress(OSError):
        helper.sock.shutdown(socket.SHUT_RDWR)
    helper.sock.close()


def _walk_here(
    dir_fd: int,
    names: list[str],
    progresses: Sequence[Progress | None],
    reported: dict[int, tuple[int, int]],
) -> list[Purged]:
    out: list[Purged] = []
    for index, (name, progress) in enumerate(zip(names, progresses, strict=True)):
        try:
            stats = fs.walk_at(dir_fd, name, remove=True, progress=progress)
        except Exception as e:  # the caller's to see, one per name
            out.append(e)
            continue
        files, bytes_ = reported.get(index, (0, 0))
        stats.files += files
        stats.bytes += bytes_
        out.append(stats)
    return out


# ---------------------------------------------------------------- the helper


class _Reporter(Progress):
    """A tree's progress, sent to the service at most every ``_REPORT_SECONDS``."""

    def __init__(self, send: Any, rid: int, index: int) -> None:
        super().__init__()
        self._send, self._rid, self._index = send, rid, index
        self._sent_at = time.monotonic()

    def add(self, files: int, bytes_: int) -> None:
        with self._lock:
            self.files += files
            self.bytes += bytes_
            if time.monotonic() - self._sent_at < _REPORT_SECONDS:
                return
            files, bytes_, self.files, self.bytes = self.files, self.bytes, 0, 0
            self._sent_at = time.monotonic()
        self._send(("progress", self._rid, self._index, files, bytes_))


def _serve(fd: int, threads: int, descriptors: int) -> None:
    fs.configure(threads=threads, descriptors=descriptors)
    conn = Connection(fd)
    sending, turn = threading.Lock(), threading.Lock()

    def send(message: Any) -> None:
        with sending, contextlib.suppress(OSError):  # the service is gone: so are we, soon
            conn.send(message)

    def run(rid: int, dir_fd: int, names: list[str]) -> None:
        results: list[Purged] = []
        mine = turn.acquire(timeout=_TURN_SECONDS)
        try:
            for index, name in enumerate(names):
                try:
                    results.append(
                        fs.walk_at(dir_fd, name, remove=True, progress=_Reporter(send, rid, index))
                    )
                except Exception as e:  # sent back as a plain error: any type pickles
                    results.append(RuntimeError(f"{type(e).__name__}: {e}"))
        finally:
            if mine:
                turn.release()
            os.close(dir_fd)
            # Always an answer: the caller waits for it.
            results += [RuntimeError("清除未完成")] * (len(names) - len(results))
            send(("done", rid, results))

    # Its life is the service's: a Ctrl-C or a TERM sent to the whole group
    # is the service's to handle, and it closes the socket when it is done.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests = ThreadPoolExecutor(_REQUESTS_AT_ONCE, thread_name_prefix="request")
    while True:
        try:
            rid, names = conn.recv()
            dir_fd = recv_handle(conn)
        except BaseException:  # end of file: the service is gone; else a broken stream
            os._exit(0)  # stop now, mid-tree if need be: the trash's sweep finishes it
        requests.submit(run, rid, dir_fd, names)


if __name__ == "__main__":
    _serve(*(int(arg) for arg in sys.argv[1:4]))
