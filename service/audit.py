"""The audit: one JSON line per task outcome and one per request, appended
to ``audit.path`` and emitted on the service log. The deletion pipeline
writes them itself, after the observer hooks, so that no plugin can prevent,
reorder or alter a deletion's audit line.

The audit fails closed. No task may be deleted unless its line can be written,
so the pipeline calls ``AuditLog.reserve()`` (blocking, in a worker thread)
just before it detaches each task's directory:

- ``reserve()`` keeps ``reserve_bytes`` allocated beyond the end of the file
  with ``fallocate(FALLOC_FL_KEEP_SIZE)``: appends then land in blocks that
  are already the file's, and a file system that fills up meanwhile cannot
  make them fail (ext4 and tmpfs both honour it; ``tests/test_audit.py``
  checks it on a real full file system). When it cannot top the reservation
  up, it still succeeds while at least ``min_headroom`` bytes of the old one
  are left (enough for the lines of the deletions in flight), and raises
  ``AuditUnavailable`` below that. On a file system without ``fallocate``
  (EOPNOTSUPP) it falls back to checking the free space, which another writer
  can use up before our line comes: there, the all-or-nothing write below
  (and the failed state) is the only guard.
- ``write_line()`` writes a line completely or not at all: one ``os.write`` on
  the O_APPEND descriptor (so lines of several service processes sharing the
  file do not interleave); a short write (ENOSPC part-way) is cut off again
  with ``ftruncate`` back to where it began, so no truncated line is left for
  the next record to be glued onto. Writers hold ``flock`` on the file around
  the write and the cut, so the cut never removes another process's line.
- A failed write puts the log in a failed state (``failed`` says why): every
  ``reserve()`` raises until one finds the file writable again (it reopens the
  file if it was deleted or moved, reserves anew, and writes an
  ``audit_resumed`` line, which proves it and marks the gap); so deletions
  stop until the audit can record them.

Rotation: ``reopen()`` (on SIGHUP, ``service.server``) opens the path anew,
so logrotate can rename the file and signal, without ``copytruncate``;
``reserve()`` also reopens a path whose file was moved or deleted.

The lines are JSON with non-ASCII text as it is, except the characters that
line-based readers take for line breaks (``str.splitlines`` splits on
U+0085, U+2028 and U+2029 besides the ASCII ones, which JSON escapes
anyway): those are written as their ``\\uXXXX`` escapes, so one record is
always one line.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from service.coalesce import Coalesced
from service.formatting import iso

if TYPE_CHECKING:
    from service.pipeline import BatchContext

log = structlog.get_logger("audit")

_FALLOC_FL_KEEP_SIZE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int

# Line breaks to ``str.splitlines`` that ``json.dumps`` leaves raw with ensure_ascii=False.
# (It escapes every control character below U+0020 itself: \v, \f, \x1c..\x1e.) A
# str.translate table: the service log's JSON renderer can use it too.
LINE_BREAKS = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"})


class AuditUnavailable(Exception):
    """The audit line cannot be written (or reserved): no deletion may proceed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _fallocate_keep_size(fd: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def encode_line(record: dict[str, Any]) -> bytes:
    """One record as one line of UTF-8 JSON, whatever its strings hold."""
    text = json.dumps(record, ensure_ascii=False, default=str).translate(LINE_BREAKS)
    # A lone surrogate cannot be UTF-8: written as its JSON escape, it stays valid JSON.
    return (text + "\n").encode("utf-8", "backslashreplace")


def task_record(
    batch: BatchContext, task_id: str, result: dict[str, Any], outcome: str
) -> dict[str, Any]:
    """The fields of a ``task_delete`` line (``outcome``: "deleted" or "failed");
    from the batch and the id, so an invalid id (which has no TaskContext) has one too."""
    return {
        "request_id": batch.request_id,
        "client": batch.client,
        "actor": batch.actor,
        "task_id": task_id,
        "outcome": outcome,
        "error_code": result.get("error_code"),
        "error": result.get("error"),
        "files": result.get("deleted_files_count", 0),
        "bytes": result.get("deleted_bytes", 0),
        "directory_deleted": result.get("directory_deleted", False),
        "database_records_deleted": result.get("database_records_deleted", False),
        "dry_run": batch.options.dry_run,
        "force": batch.options.force,
        "duration_ms": result.get("duration_ms"),
        **_job(batch),
    }


def batch_record(batch: BatchContext, data: dict[str, Any]) -> dict[str, Any]:
    """The fields of a ``delete_request`` line: the request and its summary."""
    return {
        "request_id": batch.request_id,
        "client": batch.client,
        "actor": batch.actor,
        "dry_run": batch.options.dry_run,
        "options": vars(batch.options),
        **data["summary"],
        **_job(batch),
    }


def _job(batch: BatchContext) -> dict[str, Any]:
    """A job's lines carry its id; a synchronous request's lines are as they were."""
    return {"job_id": batch.job_id} if batch.job_id is not None else {}


class AuditLog:
    # Space kept allocated beyond the end of the file, and the least of it that
    # lets a deletion go on when the reservation cannot be topped up; on top of
    # that, room for every line promised (reserved and not yet written): a
    # task's line is about 400 bytes, more with a list of errors.
    reserve_bytes = 256 * 1024
    min_headroom = 32 * 1024
    line_room = 2 * 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failed: str | None = None  # why the last write failed, until a reserve() succeeds
        self._fd: int | None = None
        # flock does not exclude the threads of one process; reentrant for reserve()'s probe line
        self._lock = threading.RLock()
        self._promised = 0  # lines reserved and not yet written
        self._write = Coalesced(self.write_lines)  # lines of one turn share a thread hop

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def reopen(self) -> None:
        """Open the path anew and write there from now on (SIGHUP, after
        logrotate renamed the file). Raises OSError when it cannot: then the
        old descriptor stays. Blocking."""
        with self._lock:
            old = self._fd
            self.open()
            if old is not None:
                os.close(old)
        log.info("audit_reopened", path=str(self.path), reason="sighup")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def reserve(self, lines: int = 0) -> None:
        """Make sure ``lines`` more lines can be written, on top of those
        promised already (0: only check), or raise ``AuditUnavailable``.

        Blocking: call it in a worker thread, before a group's directories are
        detached. It also ends the failed state once the file is writable again.
        """
        with self._lock:
            try:
                self._reopen_if_replaced()
                self._reserve((self._promised + lines) * self.line_room)
            except OSError as e:
                reason = f"{self.path}: {e.strerror or e}"
                log.error("audit_unavailable", path=str(self.path), reason=reason)
                raise AuditUnavailable(f"审计日志不可写: {reason}") from e
            if self.failed is not None:
                # Space is not all a write needs (a file size limit, a read-only file system,
                # EIO): only a real line proves the file writable again, and it marks the gap.
                self.write_line(
                    {
                        "timestamp": iso(datetime.now()),
                        "event": "audit_resumed",
                        "after": self.failed,
                    }
                )
                log.warning("audit_resumed", path=str(self.path), after=self.failed)
                self.failed = None
            self._promised += lines

    def _reopen_if_replaced(self) -> None:
        """Reopen the path when the file under it is not ours (deleted, moved, rotated)."""
        fd = self._fd
        if fd is None:
            raise OSError(errno.EBADF, "审计日志未打开")
        mine = os.fstat(fd)
        try:
            there = os.stat(self.path)
            same = (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino)
        except FileNotFoundError:
            same = False
        if not same:
            self.open()  # raises when it cannot: then the old descriptor stays
            os.close(fd)
            log.warning("audit_reopened", path=str(self.path))

    def _reserve(self, promised: int) -> None:
        """Room past the end for ``promised`` bytes of lines and the headroom."""
        assert self._fd is not None
        st = os.fstat(self._fd)
        need = self.min_headroom + promised
        try:
            _fallocate_keep_size(self._fd, st.st_size, max(self.reserve_bytes, need))
            return
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOSYS):
                free = os.statvfs(self._fd)
                available = free.f_bavail * free.f_frsize
                if available < need:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from e
                return
            if e.errno != errno.ENOSPC:
                raise
        # The file system is full: what is left of the earlier reservation may do.
        st = os.fstat(self._fd)
        if st.st_blocks * 512 - st.st_size < need:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write_line(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one whole line, or nothing and raise ``AuditUnavailable``.

        Blocking: call it in a worker thread.
        """
        self.write_lines([record])

    def write_lines(self, records: list[dict[str, Any]]) -> None:
        """Append ``records``, one line each, in one write: all of them whole,
        or none and raise ``AuditUnavailable``. Blocking."""
        line = b"".join(map(encode_line, records))
        with self._lock:
            self._promised = max(0, self._promised - len(records))
            fd = self._fd
            if fd is None:
                raise RuntimeError("audit log is not open")
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                error: OSError | None = None
                try:
                    written = os.write(fd, line)
                except OSError as e:
                    written, error = 0, e
                if written == len(line):
                    return
                if written:
                    self._cut(fd, written)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            reason = (error and error.strerror) or f"只写入了 {written}/{len(line)} 字节"
            self.failed = reason
            log.error("audit_write_failed", path=str(self.path), reason=reason, written=written)
            raise AuditUnavailable(f"审计日志不可写: {reason}") from error

    def _cut(self, fd: int, written: int) -> None:
        """Remove the ``written`` bytes of a short write, when they are still the file's end."""
        end = os.lseek(fd, 0, os.SEEK_CUR)  # an O_APPEND write leaves the offset after its bytes
        if os.fstat(fd).st_size == end:
            os.ftruncate(fd, end - written)
        else:  # a writer that does not take the lock appended after it: never cut its line
            log.error("audit_partial_line_left", path=str(self.path), offset=end - written)

    async def write(self, event: str, **fields: Any) -> None:
        await self.write_many([(event, fields)])

    async def write_many(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Lines written together (a group of tasks'): one write, one worker thread."""
        now = iso(datetime.now())
        for event, fields in events:
            log.info(event, **fields)
        records = [{"timestamp": now, "event": event, **fields} for event, fields in events]
        await self._write(records)
