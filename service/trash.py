"""The service's own trash: the one module that knows its layout on disk.

Layout. ``<base_dir>/.trash`` is a directory the service creates, mode 0700,
owned by the service's user, on ``base_dir``'s file system. A detached task is
one entry directly in it, ``<token>.<task_id>``: a token is 32 hex digits and
has no dot, so the id is what follows the first dot. Detaching is one
``renameat`` into a directory that already exists: it needs no new inode and
no new block, so it works on a full disk, which is when operators delete.
Earlier versions left ``.trash/<token>/<task_id>`` and restore holders
``<base_dir>/.restore-<token>/<task_id>``; both are still listed, put back and
purged here, never created.

Safety. Whoever can write ``base_dir`` (the pipeline's user) can put a symlink
at ``.trash``, or rename the real one away and put a symlink in its place at
any time. So the trash is reached only through descriptors: ``base_dir`` is
opened once, ``.trash`` is opened relative to it with O_NOFOLLOW, checked
(a real directory, ours, 0700, same device), and every later operation is a
``*at`` call on those descriptors, never a path resolved again. Before each
detach and each sweep the held descriptors are checked against what the names
say now (two ``fstatat``, no new descriptor); a mismatch re-opens, and an
unsafe trash refuses with ``TrashUnsafe`` (``TRASH_UNSAFE`` for a deletion).

After the rename nothing can strand a tree: the fsyncs that make it durable
use the descriptors already held (no new descriptor when they are exhausted),
and their failure is logged, not raised, so the caller always learns where
the tree is.

Labels. ``detach`` returns ``<base_dir>/.trash/<entry>`` as a label for logs,
results and ``reattach``/``purge``; only the label's last components are used,
relative to the held descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import platform
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from service import errors, fs
from service.db import Database, TaskLocked
from service.errors import TaskFailed
from service.progress import Progress
from service.purger import Purged, Purger

log = structlog.get_logger("service")

TRASH_NAME = ".trash"
RESTORE_PREFIX = ".restore-"  # holders of interrupted restores of earlier versions
# base_dir itself is the operator's setting: it may be reached through a symlink.
_BASE_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# An empty holder of the old layouts younger than this may be an older
# process's, about to receive its tree: it is not tidied away.
_YOUNG_SECONDS = 60


class TrashUnsafe(Exception):
    """The trash cannot be used; the message is one line saying why."""


@dataclass(frozen=True)
class Entry:
    """A tree in the trash (or an old restore holder): its task id and label."""

    task_id: str
    label: Path


Outcome = Literal["restored", "purged", "committed", "left"]


class Trash:
    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.label = base_dir / TRASH_NAME
        self._lock = threading.Lock()
        # (base_fd, trash_fd): replaced whole, so a reader never sees half of it.
        self._held: tuple[int, int] | None = None
        self._retired: list[int] = []  # descriptors a running walk may still use
        self.purger = Purger()  # the walks of purges, in a helper process

    # ------------------------------------------------------------ opening

    def open(self) -> None:
        """Create ``.trash`` (0700) if missing, verify it, hold its descriptors.

        Blocking. Raises ``TrashUnsafe`` (one line) when it is unsafe, OSError
        when ``base_dir`` cannot be opened. Cheap to call again: it re-verifies.
        """
        with self._lock:
            base_fd = os.open(self.base_dir, _BASE_FLAGS)
            try:
                trash_fd = _open_trash(base_fd)
            except BaseException:
                os.close(base_fd)
                raise
            if self._held is not None:
                # A walk in another thread may still use them: closed at close().
                self._retired.extend(self._held)
            self._held = (base_fd, trash_fd)

    def close(self) -> None:
        """Close the held descriptors and stop the purge helper. Blocking."""
        self.purger.close()
        with self._lock:
            for fd in [*(self._held or ()), *self._retired]:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._held, self._retired = None, []

    def verify(self) -> None:
        """Check, as before a deletion, that the names still lead to the held
        descriptors and the trash is safe (re-opening when they do not).
        Blocking; raises ``TrashUnsafe`` or OSError. For the readiness probe:
        unlike ``open()`` it takes no new descriptor while all is well."""
        self._fds()

    def _fds_for_a_deletion(self) -> tuple[int, int]:
        """``_fds``, with its failures in a deletion's terms (``TaskFailed``)."""
        try:
            return self._fds()
        except TrashUnsafe as e:
            raise TaskFailed(errors.TRASH_UNSAFE, str(e)) from e
        except OSError as e:
            raise _detach_failed(e, "打开回收区") from e

    def _current(self) -> tuple[int, int]:
        """The held descriptors as they are (a tree detached through them is
        in the directory they lead to); opened and verified when none are."""
        return self._held or self._fds()

    def _fds(self) -> tuple[int, int]:
        """The held descriptors, after checking that the names still lead to
        them; re-opens (and so re-verifies) when they do not."""
        held = self._held
        if held is not None:
            base_fd, trash_fd = held
            try:
                base_now = os.stat(self.base_dir)
                trash_now = os.stat(TRASH_NAME, dir_fd=base_fd, follow_symlinks=False)
                base_st, trash_st = os.fstat(base_fd), os.fstat(trash_fd)
            except FileNotFoundError:
                pass
            else:
                if (
                    _same(base_now, base_st)
                    and _same(trash_now, trash_st)
                    and _trash_problem(trash_st, base_st.st_dev) is None
                ):
                    return held
            log.warning("trash_reopened", trash=str(self.label))
        self.open()
        assert self._held is not None
        return self._held

    # ------------------------------------------------------------ a deletion

    def detach(self, task_id: str, *, sync: bool = True) -> Path:
        """Rename ``base_dir/<task_id>`` into the trash; return its label.

        One ``renameat`` between held descriptors: no new inode, block or
        descriptor. Raises ``TaskFailed`` with a code that names the cause.
        With ``sync=False`` the rename is made durable by a later ``sync()``
        (the pipeline's, once for all the tasks it commits together).
        """
        base_fd, trash_fd = self._fds_for_a_deletion()
        entry = f"{uuid.uuid4().hex}.{_plain(task_id)}"
        try:
            os.rename(task_id, entry, src_dir_fd=base_fd, dst_dir_fd=trash_fd)
        except OSError as e:
            raise _detach_failed(e, "任务目录移入回收区") from e
        # From here on the tree is in the trash: report that, whatever follows.
        if sync:
            _fsync_quietly(base_fd, trash_fd, task_id=task_id)
        return self.label / entry

    def sync(self) -> None:
        """Make every rename done so far between the base and the trash durable
        (it survives a power loss): before a COMMIT that records trees gone.
        The descriptors retired by a re-open too: a rename may have gone
        through them."""
        held = self._current()
        with self._lock:
            fds = [*held, *self._retired]
        _fsync_quietly(*fds, task_id=None)

    def reattach(self, detached: Path, task_id: str) -> None:
        """Put a detached tree back as ``base_dir/<task_id>``; never replaces
        an existing entry (FileExistsError). Raises OSError when it cannot.

        Through the descriptors already held, even if ``.trash`` has been
        swapped since: the tree is in the directory they lead to."""
        base_fd, _ = self._current()
        with self._located(detached) as (parent_fd, name):
            _rename_noreplace(parent_fd, name, base_fd, _plain(task_id))
            _fsync_quietly(base_fd, parent_fd, task_id=task_id)

    def purge(self, detached: Path, progress: Progress | None = None) -> fs.TreeStats:
        """Remove a detached tree, counting it (and telling ``progress`` as it
        goes); never follows a symlink."""
        outcome = self.purge_many([(detached, progress)])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def purge_many(self, trees: list[tuple[Path, Progress | None]]) -> list[Purged]:
        """``purge`` for several trees, in one request to the purge helper for
        each directory holding some: one outcome (stats or exception) each."""
        outcomes: dict[int, Purged] = {}
        by_parent: dict[int, list[tuple[int, str, Progress | None]]] = {}
        with contextlib.ExitStack() as located:
            own: dict[int, int] = {}  # a held descriptor -> this call's duplicate of it
            for index, (detached, progress) in enumerate(trees):
                try:
                    parent_fd, name = located.enter_context(self._located(detached))
                    if parent_fd not in own:
                        own[parent_fd] = _own_copy(parent_fd, located)
                except Exception as e:  # not a label of ours, or its holder unusable
                    outcomes[index] = e
                    continue
                by_parent.setdefault(own[parent_fd], []).append((index, name, progress))
            for parent_fd, items in by_parent.items():
                indexes, names, progresses = zip(*items, strict=True)
                done = self.purger.purge(parent_fd, list(names), progresses)
                for index, outcome in zip(indexes, done, strict=True):
                    outcomes[index] = outcome
        return [outcomes[index] for index in range(len(trees))]

    def dry_run_stats(self, task_id: str) -> fs.TreeStats:
        """What deleting ``base_dir/<task_id>`` would remove; changes nothing.
        Fails as ``detach`` would (``TaskFailed``) when the trash is unusable."""
        base_fd, _ = self._fds_for_a_deletion()
        return fs.walk_at(base_fd, _plain(task_id), remove=False)

    def exists(self, task_id: str) -> bool:
        """Whether ``base_dir/<task_id>`` exists (as anything, a link too)."""
        base_fd, _ = self._fds()
        try:
            os.stat(_plain(task_id), dir_fd=base_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def present(self, names: list[str]) -> set[str]:
        """Those of ``names`` that exist in ``base_dir`` (lstat through the held
        descriptor): one call a name, whatever the size of ``base_dir``."""
        base_fd, _ = self._fds()
        found = set()
        for name in names:
            with contextlib.suppress(OSError):
                os.stat(name, dir_fd=base_fd, follow_symlinks=False)
                found.add(name)
        return found

    def base_names(self) -> list[str]:
        """The names in ``base_dir``, listed through the held descriptor."""
        base_fd, _ = self._fds()
        return _names(base_fd)

    def create(self, task_id: str) -> tuple[Path, int]:
        """A new empty directory in the trash for a tree being built (a
        restore's extraction): its label and an open descriptor (the caller
        closes it). A crash leaves it where the sweep judges it by its record."""
        _, trash_fd = self._fds()
        entry = f"{uuid.uuid4().hex}.{_plain(task_id)}"
        os.mkdir(entry, 0o700, dir_fd=trash_fd)
        return self.label / entry, os.open(entry, fs.DIR_FLAGS, dir_fd=trash_fd)

    # ------------------------------------------------------------ listing

    def entries(self, *, tidy: bool = False) -> list[Entry]:
        """Every tree in the trash, the old layouts' included. With ``tidy``,
        empty holders of the old layouts go once they are old enough."""
        base_fd, trash_fd = self._fds()
        found: list[Entry] = []
        for name in _names(trash_fd):
            token, dot, task_id = name.partition(".")
            if not _is_token(token):
                log.error("trash_entry_unknown", trash=str(self.label / name))
            elif dot:
                found.append(Entry(task_id, self.label / name))
            else:  # the old layout: .trash/<token>/<task_id>
                found += self._held_in(trash_fd, name, self.label / name, tidy)
        for name in _names(base_fd):
            if name.startswith(RESTORE_PREFIX):
                found += self._held_in(base_fd, name, self.base_dir / name, tidy)
        return found

    def _held_in(self, parent_fd: int, name: str, label: Path, tidy: bool) -> list[Entry]:
        try:
            fd = _open_holder(parent_fd, name)
        except (OSError, TrashUnsafe) as e:
            log.warning("trash_holder_skipped", holder=str(label), reason=str(e))
            return []
        try:
            inner = _names(fd)
            if not inner and tidy and time.time() - os.fstat(fd).st_mtime > _YOUNG_SECONDS:
                with contextlib.suppress(OSError):
                    os.rmdir(name, dir_fd=parent_fd)
            return [Entry(task_id, label / task_id) for task_id in inner]
        finally:
            os.close(fd)

    def owns(self, path: Path) -> bool:
        """Whether ``path`` is a label of this trash (the built-in purges
        only those: a plugin that detaches elsewhere purges its own)."""
        try:
            parts = path.relative_to(self.base_dir).parts
        except ValueError:
            return False
        return _parse(parts) is not None

    @contextlib.contextmanager
    def _located(self, label: Path) -> Iterator[tuple[int, str]]:
        """The descriptor of the directory holding ``label``'s tree, and its
        name there; an old layout's holder is removed once empty."""
        base_fd, trash_fd = self._current()
        match _parse(label.relative_to(self.base_dir).parts):
            case (None, entry):
                yield trash_fd, entry
                return
            case (holder, task_id) if holder.startswith(RESTORE_PREFIX):
                parent_fd = base_fd
            case (holder, task_id):
                parent_fd = trash_fd
            case _:
                raise ValueError(f"not a trash label: {label}")
        fd = _open_holder(parent_fd, holder)
        try:
            yield fd, task_id
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):  # not empty, or gone: left as it is
                os.rmdir(holder, dir_fd=parent_fd)


# ---------------------------------------------------------------- the sweep's step


def deletion_committed(record: dict[str, Any] | None) -> bool:
    """Whether a task's record says its deletion was committed: the record is
    gone, or says the directory does not exist. A tree in the trash whose
    record says otherwise was never committed (or its restore was)."""
    return record is None or record["directory_exists"] is not True


async def settle(
    trash: Trash, db: Database, entry: Entry, *, purge: bool, wait_for_lock: bool = False
) -> Outcome:
    """Under the task's lock, decide a tree's fate by its record.

    A record that says the directory exists means the tree's deletion was
    never committed (or its restore was): it goes into place, unless
    something already is there (``left``). Any other tree is committed as
    gone: purged when ``purge`` (outside the lock: nobody reads it again),
    else ``committed``. ``left`` also when another process holds the lock
    (``TaskLocked`` instead with ``wait_for_lock``: the caller tries again).
    """
    try:
        async with db.task_transaction(entry.task_id) as tx:
            if not deletion_committed(tx.record):
                await asyncio.to_thread(trash.reattach, entry.label, entry.task_id)
                return "restored"
    except TaskLocked:
        if wait_for_lock:
            raise
        return "left"
    except FileExistsError:
        log.error("trash_conflict", task_id=entry.task_id, trash=str(entry.label))
        return "left"
    if not purge:
        return "committed"
    stats = await asyncio.to_thread(trash.purge, entry.label)
    if stats.error_count:
        log.error("trash_purge_incomplete", task_id=entry.task_id, errors=stats.errors)
        return "left"
    return "purged"


# ---------------------------------------------------------------- helpers


def _own_copy(fd: int, stack: contextlib.ExitStack) -> int:
    """A duplicate of ``fd``, closed with ``stack``: a close() meanwhile (at
    shutdown) must not take the directory from a walk that falls back to the
    caller's thread. Out of descriptors, ``fd`` itself, as before."""
    try:
        copy = os.dup(fd)
    except OSError:
        return fd
    stack.callback(os.close, copy)
    return copy


def _open_trash(base_fd: int) -> int:
    base_st = os.fstat(base_fd)
    with contextlib.suppress(FileExistsError):
        os.mkdir(TRASH_NAME, 0o700, dir_fd=base_fd)
    st = os.stat(TRASH_NAME, dir_fd=base_fd, follow_symlinks=False)
    if problem := _trash_problem(st, base_st.st_dev):
        raise TrashUnsafe(problem)
    try:
        fd = os.open(TRASH_NAME, fs.DIR_FLAGS, dir_fd=base_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):  # swapped since the lstat
            raise TrashUnsafe("回收区 .trash 在检查期间被替换，拒绝使用") from e
        raise
    if not _same(os.fstat(fd), st):
        os.close(fd)
        raise TrashUnsafe("回收区 .trash 在检查期间被替换，拒绝使用")
    return fd


def _trash_problem(st: os.stat_result, base_dev: int) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "回收区 .trash 是符号链接，拒绝使用"
    if not stat.S_ISDIR(st.st_mode):
        return "回收区 .trash 不是目录，拒绝使用"
    if st.st_dev != base_dev:
        return "回收区 .trash 不在任务根目录所在的文件系统上，拒绝使用"
    if st.st_uid != os.geteuid():
        return f"回收区 .trash 属于用户 {st.st_uid}，不是服务的用户 {os.geteuid()}，拒绝使用"
    if st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        return f"回收区 .trash 的权限是 {mode:o}，组或其他用户可以访问（应为 700），拒绝使用"
    return None


def _open_holder(parent_fd: int, name: str) -> int:
    """An old layout's holder: a real directory of ours, opened without
    following a symlink, and the one that was checked."""
    st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise TrashUnsafe(f"{name} 不是服务自己的目录，未使用")
    fd = os.open(name, fs.DIR_FLAGS, dir_fd=parent_fd)
    if not _same(os.fstat(fd), st) or st.st_dev != os.fstat(parent_fd).st_dev:
        os.close(fd)
        raise TrashUnsafe(f"{name} 在检查期间被替换，未使用")
    return fd


def _plain(task_id: str) -> str:
    """A task id is one plain name in base_dir, whatever the caller checked."""
    if not task_id or task_id.startswith(".") or any(c in task_id for c in "/\\\0"):
        raise ValueError(f"not a task id: {task_id!r}")
    return task_id


def _parse(parts: tuple[str, ...]) -> tuple[str | None, str] | None:
    """A label's parts below base_dir: (None, entry) for ``.trash/<entry>``,
    (holder, task_id) for the old layouts; None for anything else."""
    match parts:
        case (".trash", entry) if _is_token(entry.partition(".")[0]) and "." in entry:
            return None, entry
        case (".trash", holder, task_id) if _is_token(holder):
            return holder, task_id
        case (holder, task_id) if holder.startswith(RESTORE_PREFIX):
            return holder, task_id
    return None


def _is_token(name: str) -> bool:
    return len(name) == 32 and all(c in "0123456789abcdef" for c in name)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _names(fd: int) -> list[str]:
    with os.scandir(fd) as entries:
        return sorted(e.name for e in entries)


def _fsync_quietly(*fds: int, task_id: str | None) -> None:
    """Make a rename durable through descriptors already held; a failure is
    logged: the rename happened, and the caller must hear where the tree is."""
    for fd in fds:
        try:
            os.fsync(fd)
        except OSError as e:
            log.warning("trash_fsync_failed", task_id=task_id, error=e.strerror or str(e))


# What a failed detach says, by errno: the code and the cause, in the client's words.
_DETACH_ERRORS: dict[int, tuple[str, str]] = {
    errno.EACCES: (errors.PERMISSION_DENIED, "没有权限"),
    errno.EPERM: (errors.PERMISSION_DENIED, "操作不被允许，目录可能带有不可变属性"),
    errno.EROFS: (errors.PERMISSION_DENIED, "文件系统是只读的"),
    errno.EBUSY: (errors.DIRECTORY_BUSY, "任务目录正被占用，可能是挂载点"),
    errno.ENOSPC: (errors.NO_SPACE, "磁盘空间或 inode 已满"),
    errno.EDQUOT: (errors.NO_SPACE, "磁盘配额已用完"),
    errno.EMFILE: (errors.RESOURCE_EXHAUSTED, "服务进程的文件描述符已用完"),
    errno.ENFILE: (errors.RESOURCE_EXHAUSTED, "系统的文件描述符已用完"),
    errno.EXDEV: (errors.TRASH_UNSAFE, "回收区与任务目录不在同一文件系统或挂载点"),
    errno.ENOTDIR: (errors.TRASH_UNSAFE, "回收区 .trash 不是目录"),
    errno.ENOENT: (errors.DETACH_FAILED, "任务目录或回收区不存在"),
}


def _detach_failed(e: OSError, step: str) -> TaskFailed:
    """``step``: what failed, e.g. ``任务目录移入回收区``."""
    code, cause = _DETACH_ERRORS.get(e.errno or 0, (errors.DETACH_FAILED, "出错"))
    log.warning("detach_failed", step=step, errno=e.errno, error=e.strerror or str(e))
    return TaskFailed(code, f"{step}失败：{cause}（{e.strerror or e}），任务未删除")


# renameat2(2) with RENAME_NOREPLACE: the check and the rename in one step.
_RENAME_NOREPLACE = 1
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}
_libc = ctypes.CDLL(None, use_errno=True)


def _rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    args = (
        ctypes.c_int(src_fd),
        ctypes.c_char_p(os.fsencode(src)),
        ctypes.c_int(dst_fd),
        ctypes.c_char_p(os.fsencode(dst)),
        ctypes.c_uint(_RENAME_NOREPLACE),
    )
    if hasattr(_libc, "renameat2"):
        rc = _libc.renameat2(*args)
    else:
        rc = _libc.syscall(ctypes.c_long(_SYS_RENAMEAT2[platform.machine()]), *args)
    if rc != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), dst)
