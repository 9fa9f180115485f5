"""File-system work of a deletion. Every function here blocks: call it through
``asyncio.to_thread``, never on the event loop's thread.

The walk that removes a tree is the walk that counts it (``walk_at``), and a
dry run uses the same walk without removing, so its counts are those a real
run gives; what the real run could not remove (a directory it may not write,
an immutable or append-only entry, a mount point) the dry run reports as the
same errors.

Design of the walk (issue 8):

- Descriptors, not paths: every directory is opened relative to its parent's
  descriptor with openat2(RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS) (see
  ``service/mounts.py``), so no symlink is followed and no mount point, not
  even a bind mount of the same file system, is ever entered: it is reported.
  Trees deeper than PATH_MAX are no special case.
- Linear time, bounded memory: one thread drives the walk depth first, with
  a stack of frames (a name, the inode, maybe an open descriptor, the names of
  the subdirectories still to visit). Nothing holds the full path of every
  directory; a path is built only for the few errors kept.
- Bounded descriptors: all walks of the process together hold at most
  ``configure(descriptors=...)`` (and at most half of RLIMIT_NOFILE, read again
  at every walk, so a limit lowered from outside is respected). A walk needs
  two to make progress (a directory and its child, or its scandir) and takes
  them before it holds any: it may wait there, never while holding some, so
  walks cannot deadlock on the budget. More descriptors keep ancestors open;
  when none is free the topmost ancestor is closed, and the walk climbs back
  with openat(fd, "..") checked against the inode it recorded (as coreutils'
  fts does). A walk that climbs where it did not come from stops with an error.
- One pool of ``configure(threads=...)`` workers for the process: a large
  directory's non-directory entries go to it a chunk at a time while the
  driving thread reads on (unlink often waits on the disk, not the CPU). Pool
  jobs only stat and unlink: they never wait on other jobs nor take a
  descriptor, so many walks sharing the pool cannot deadlock. A walk started
  inside a pool thread does its chunks itself. The pool's threads run at a
  lower CPU priority (nice +10): a purge's cost is mostly kernel time, which
  would otherwise compete with the event loop and PostgreSQL.
- ``bytes`` counts bytes freed: a regular file's size, when its last link
  goes. A file with several links counts when the walk removes (or, dry, has
  seen) as many links as it has: once for links all in the tree, never when a
  link outside keeps the data.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import stat
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from service import mounts
from service.progress import Progress

# Opens a directory, never through a symlink at its name.
DIR_FLAGS = mounts.DIR_FLAGS
# Names handed to a thread at a time: a job's overhead is tens of microseconds,
# an unlink on the reference VM 0.2-0.5 ms (ext4 without a journal, mounted with
# discard, trims each file's blocks inside the unlink), so 64 names make a job
# worth it, and a folder of 1,000 spreads over 8 threads (with 256, three
# threads did most of such a folder while the others waited for its end).
_CHUNK = 64
# Purge threads yield the CPU to the event loop and PostgreSQL: a purge is
# background work, and its kernel time (most of its cost) otherwise competes
# with every request. 10, not 19: a thread preempted while it holds the GIL
# would hold up the event loop too.
_NICE = 10
_MAX_ERRORS_KEPT = 20
# Descriptors a walk needs to make progress: a directory and its child (or the
# duplicate scandir opens).
_RESERVE = 2
# Waiting for EMFILE that is not the walks' own doing (the rest of the process).
_EMFILE_PATIENCE = 60.0


@dataclass
class TreeStats:
    files: int = 0  # non-directory entries: regular files, symlinks, sockets, fifos
    bytes: int = 0  # sizes of regular files only; a symlink's target is never counted
    errors: list[str] = field(default_factory=list)  # "relative/path: reason", the first few
    error_count: int = 0

    def add(self, other: TreeStats) -> None:
        self.files += other.files
        self.bytes += other.bytes
        self.error_count += other.error_count
        self.errors.extend(other.errors[: _MAX_ERRORS_KEPT - len(self.errors)])

    def fail(self, where: str, reason: str) -> None:
        self.error_count += 1
        if len(self.errors) < _MAX_ERRORS_KEPT:
            self.errors.append(f"{where}: {reason}")


def directory_problem(base_dir: Path, path: Path) -> str | None:
    """Why ``path`` may not be deleted as a task directory, or None when it may.

    ``path`` must exist (lstat). It must be a real directory (not a symlink),
    a direct child of the real base directory, on the base's device, neither a
    mount point itself nor holding one anywhere inside (a bind mount of the
    same file system included: the walk would refuse to enter it, and its
    source must never be emptied).
    """
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return "任务目录是符号链接，拒绝删除"
    if not stat.S_ISDIR(st.st_mode):
        return "任务路径不是目录，拒绝删除"
    real_base = os.path.realpath(base_dir)
    # A directory (not a symlink) named in base_dir resolves to real_base/name:
    # one realpath per task, not one per component of the path again.
    real = os.path.join(real_base, path.name) if path.parent == base_dir else os.path.realpath(path)
    if os.path.dirname(real) != real_base:
        return "任务目录不在任务根目录之下，拒绝删除"
    try:
        if mounts.is_mount_point(path):
            return "任务目录本身是挂载点，拒绝删除"
        inside = mounts.mounts_inside(real)
    except OSError as e:  # fail closed: a mount we cannot rule out is a mount
        return f"无法确认任务目录内有无挂载点，拒绝删除: {_reason(e)}"
    if st.st_dev != os.stat(real_base).st_dev:
        return "任务目录不在任务根目录所在的文件系统上，拒绝删除"
    if inside:
        shown = ", ".join(inside[:5]) + (f" 等 {len(inside)} 个" if len(inside) > 5 else "")
        return f"任务目录内有挂载点，拒绝删除: {shown}"
    return None


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable: it survives a power loss, not only a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- process-wide limits


class _Budget:
    """The descriptors all walks together may hold open."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._cond = threading.Condition()

    def limit(self) -> int:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            return max(_RESERVE, self.capacity)
        # Half the process limit at most: sockets, the database and logs need the rest.
        return max(_RESERVE, min(self.capacity, soft // 2))

    def acquire(self, n: int) -> None:
        """Wait for ``n``; only ever called by a walk that holds none."""
        with self._cond:
            while self._used and self._used + n > self.limit():
                self._cond.wait(0.5)  # also notices a limit raised from outside
            self._used += n

    def try_acquire(self) -> bool:
        with self._cond:
            if self._used + 1 > self.limit():
                return False
            self._used += 1
            return True

    def release(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()


_config = threading.Lock()
_threads = 8
_budget = _Budget(256)
_pool: ThreadPoolExecutor | None = None
_local = threading.local()  # .in_pool: this thread is one of the pool's


def configure(*, threads: int, descriptors: int) -> None:
    """Size the process-wide purge pool and descriptor budget (call at start-up;
    8 and 256 apply if never called). Walks already running keep their pool."""
    global _threads, _pool
    if threads < 1 or descriptors < _RESERVE:
        raise ValueError(f"threads >= 1 and descriptors >= {_RESERVE} required")
    with _config:
        old, _threads = (_pool, threads) if threads != _threads else (None, _threads)
        if old is not None:
            _pool = None
        _budget.capacity = descriptors
    if old is not None:
        old.shutdown(wait=False)


def threads() -> int:
    """The purge pool's size, as configured."""
    return _threads


def descriptors() -> int:
    """The walks' descriptor budget, as configured."""
    return _budget.capacity


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _config:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                _threads, thread_name_prefix="purge", initializer=_mark_pool_thread
            )
        return _pool


def _mark_pool_thread() -> None:
    _local.in_pool = True
    # Linux: nice is per thread, and relative to the process's own. Raising it
    # needs no privilege; where it still fails, the pool runs at normal priority.
    with contextlib.suppress(OSError):
        me = threading.get_native_id()
        nice = min(19, os.getpriority(os.PRIO_PROCESS, me) + _NICE)
        os.setpriority(os.PRIO_PROCESS, me, nice)


# ---------------------------------------------------------------- the walk


def walk_tree(root: Path, *, remove: bool) -> TreeStats:
    """Count, and with ``remove`` delete, everything under the directory ``root``
    and root itself (``walk_at`` on its parent). A root that is gone gives empty
    stats; a root that is not a real directory (a symlink) is an error, untouched."""
    stats = TreeStats()
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return stats  # already gone (another process's sweep): nothing to count
    if not stat.S_ISDIR(st.st_mode):
        stats.fail(".", "不是目录（可能是符号链接），未处理")
        return stats
    root = Path(os.path.abspath(root))
    try:
        parent = os.open(root.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        stats.fail(".", _reason(e))
        return stats
    try:
        return walk_at(parent, root.name, remove=remove)
    finally:
        os.close(parent)


def walk_at(dir_fd: int, name: str, *, remove: bool, progress: Progress | None = None) -> TreeStats:
    """Count (and with ``remove``, delete) the entry ``name`` of the directory
    open at ``dir_fd``, the entry itself included.

    A symlink or non-directory is one entry, never followed. Never enters a
    mount point; descriptors, memory and time as described in the module
    docstring. File-system problems inside the tree are reported in the stats
    (the rest is removed regardless), never raised. A missing ``name`` gives
    empty stats. ``progress``, when given, is told of the files (and bytes)
    as each chunk of them is done, from whichever thread did them.
    """
    walk = _Walk(dir_fd, name, remove)
    walk.progress = progress
    _budget.acquire(_RESERVE)
    walk.quota = _RESERVE
    try:
        walk.run()
    finally:
        walk.close_all()
        _budget.release(walk.quota)
    return walk.stats


@dataclass(eq=False, slots=True)
class _Dir:
    parent: _Dir | None
    name: str  # in the parent; "" for the walk's root and the caller's directory
    ino: int
    dev: int
    depth: int  # its index in the walk's stack
    fd: int = -1  # -1: closed, reopened when the walk climbs back to it
    subdirs: list[str] | None = None  # still to visit; None: not read yet
    failed: bool = False  # something below stays, so this directory stays too
    mnt: int | None = None  # its mount id, when openat2 is missing
    # Dry run only: why no entry of this directory can go, and why it cannot itself.
    locked: str | None = None
    removal: str | None = None
    uid: int = 0
    sticky: bool = False


class _Walk:
    def __init__(self, dir_fd: int, name: str, remove: bool) -> None:
        self.name = name
        self.remove = remove
        self.stats = TreeStats()
        self.progress: Progress | None = None
        self.lock = threading.Lock()  # stats, links
        self.links: dict[tuple[tuple[int, int], int], int] = {}  # dry run: inode -> links seen
        self.quota = 0  # descriptors taken from the budget
        self.open = 0  # descriptors open now (ancestors, the current directory, a scandir)
        self.stack: list[_Dir] = []
        self.low = 0  # frames below this index hold no descriptor
        self.outer = _Dir(None, "", 0, 0, -1, dir_fd)  # the caller's; never closed here
        self.pool = None if getattr(_local, "in_pool", False) else _get_pool()
        # What only some walks need is had when first needed: most trees are
        # small (a one-file tree's walk took 92 µs of CPU with it all up front, 70 without).
        self.slots = threading.Semaphore(2 * _threads)  # chunks of this walk in flight
        if not remove:  # the dry run's permission checks
            self.euid = os.geteuid()
            self.groups = {os.getegid(), *os.getgroups()}
        self.root_dev = 0
        self.cap = 0  # ancestors kept open at most (set when first needed)

    # ---------------------------------------------------------------- driving

    def run(self) -> None:
        outer = self.outer
        if not self.remove:
            try:
                self._dry_directory(outer, mounts.statx(outer.fd, ""))
            except OSError as e:
                outer.locked = _reason(e)
        # Opened as a directory: one that is not (a file, a symlink) is an
        # entry, and one that is gone is nothing to do (``_enter``).
        root = self._enter(outer, self.name)
        if root is None:
            return
        self.root_dev = root.dev
        while self.stack:
            top = self.stack[-1]
            if top.subdirs is None:
                self._scan(top)
            elif top.subdirs:
                self._enter(top, top.subdirs.pop())
            elif not self._leave(top):
                return  # lost its way back up: stop, reported

    def _enter(self, parent: _Dir, name: str) -> _Dir | None:
        """Open the subdirectory ``name`` and push it; None when it is not entered."""
        self._room(keep=parent)
        try:
            fd = self._retry(lambda: mounts.open_dir(parent.fd, name, parent.mnt), parent)
        except FileNotFoundError:
            return None  # removed by someone else meanwhile
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):  # no longer a directory: an entry
                self._files(parent, [name])
            else:
                self.fail(parent, name, _MOUNT if e.errno == errno.EXDEV else _reason(e))
            return None
        self._opened()
        st = os.fstat(fd)
        child = _Dir(
            parent, "" if parent is self.outer else name, st.st_ino, st.st_dev,
            len(self.stack), fd,
        )  # fmt: skip
        self.stack.append(child)
        if self.root_dev and st.st_dev != self.root_dev:  # belt and braces: never entered
            self._close(child)
            self.stack.pop()
            self.fail(parent, name, _MOUNT)
            return None
        if mounts._openat2_missing:
            child.mnt = mounts.mount_id(fd)
        if not self.remove:
            try:
                sx = mounts.statx(fd, "")
            except OSError as e:
                child.locked = child.removal = _reason(e)
            else:
                self._dry_directory(child, sx)
                child.removal = self._blocked(parent, sx)
        return child

    def _leave(self, d: _Dir) -> bool:
        """Its subtree done: close ``d``, pop it, remove it from its parent."""
        parent = d.parent
        assert parent is not None
        if parent.fd < 0 and not self._climb(d):
            return False
        if d.fd >= 0:
            self._close(d)
        self.stack.pop()
        name = self.name if parent is self.outer else d.name
        if d.failed:  # it cannot be empty: what failed below is the error to report
            parent.failed = True
        elif not self.remove:
            if d.removal:
                self.fail(parent, name, d.removal)
        else:
            try:
                os.rmdir(name, dir_fd=parent.fd)
            except FileNotFoundError:
                pass
            except OSError as e:
                self.fail(parent, name, _reason(e))
        return True

    def _climb(self, d: _Dir) -> bool:
        """Reopen ``d``'s parent, whose descriptor was closed to save one: through
        ".." of ``d`` and, failing that, down from the nearest open ancestor."""
        parent = d.parent
        assert parent is not None and parent is not self.outer
        self._room(keep=d)
        fd = -1
        with contextlib.suppress(OSError):
            fd = self._retry(lambda: os.open("..", DIR_FLAGS, dir_fd=d.fd), d)
        if fd >= 0:
            st = os.fstat(fd)
            if (st.st_ino, st.st_dev) == (parent.ino, parent.dev):
                self._reopened(parent, fd)
                return True
            os.close(fd)
        self._close(d)  # not needed to go down again: two descriptors suffice
        return self._redescend(parent)

    def _redescend(self, target: _Dir) -> bool:
        chain = [target]
        while chain[-1].parent is not None and chain[-1].parent.fd < 0:
            chain.append(chain[-1].parent)
        for d in reversed(chain):
            up = d.parent
            assert up is not None
            name = self.name if up is self.outer else d.name
            self._room(keep=up)
            try:
                fd = self._retry(lambda: mounts.open_dir(up.fd, name, up.mnt), up)  # noqa: B023
                st = os.fstat(fd)
            except OSError as e:
                self.fail(d, None, f"无法回到该目录: {_reason(e)}")
                return False
            if (st.st_ino, st.st_dev) != (d.ino, d.dev):
                os.close(fd)
                self.fail(d, None, "目录在删除过程中被移动或替换，已停止")
                return False
            self._reopened(d, fd)
        return True

    # ---------------------------------------------------------------- descriptors

    def _opened(self) -> None:
        self.open += 1

    def _reopened(self, d: _Dir, fd: int) -> None:
        d.fd = fd
        self._opened()
        self.low = min(self.low, d.depth)

    def _close(self, d: _Dir) -> None:
        os.close(d.fd)
        d.fd = -1
        self._closed()

    def _closed(self) -> None:
        self.open -= 1
        if self.quota > max(_RESERVE, self.open + 1):  # give back what we keep no more
            self.quota -= 1
            _budget.release(1)

    def _room(self, keep: _Dir) -> None:
        """Make sure one more descriptor may be opened: from the budget, or by
        closing the topmost ancestor held (never ``keep`` nor the current one)."""
        if self.open < self.quota:
            return
        if not self.cap:  # the budget is shared fairly enough
            self.cap = max(_RESERVE, _budget.limit() // 8)
        if self.quota < self.cap and _budget.try_acquire():
            self.quota += 1
            return
        if not self._evict(keep):
            raise AssertionError("walk needs a third descriptor")  # cannot happen

    def _evict(self, keep: _Dir) -> bool:
        top = self.stack[-1] if self.stack else None
        while self.low < len(self.stack):
            d = self.stack[self.low]
            if d is keep or d is top:
                return False
            self.low += 1
            if d.fd >= 0:
                os.close(d.fd)
                d.fd = -1
                self.open -= 1  # kept in the quota: the caller opens one now
                return True
        return False

    def _retry(self, call, keep: _Dir):
        """``call()``, again after EMFILE/ENFILE caused by others: first by closing
        an ancestor of ours, then by waiting (a while, not for ever)."""
        deadline, delay = 0.0, 0.01
        while True:
            try:
                return call()
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
                if self._evict(keep):
                    continue
                now = time.monotonic()
                deadline = deadline or now + _EMFILE_PATIENCE
                if now > deadline:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 0.5)

    def close_all(self) -> None:
        for d in self.stack:
            if d.fd >= 0:
                os.close(d.fd)
                d.fd = -1
        self.stack.clear()

    # ---------------------------------------------------------------- one directory

    def _scan(self, d: _Dir) -> None:
        """Handle ``d``'s non-directory entries; note its subdirectories."""
        subdirs: list[str] = []
        chunk: list[str] = []
        handed: _Handed = []
        self._room(keep=d)  # scandir reads through a duplicate of d.fd
        self._opened()
        try:
            with self._retry(lambda: os.scandir(d.fd), d) as entries:
                for entry in entries:
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        is_dir = False  # the unlink will say why
                    if is_dir:
                        subdirs.append(entry.name)
                        continue
                    chunk.append(entry.name)
                    if len(chunk) == _CHUNK:
                        handed = self._hand_off(d, chunk, handed)
                        chunk = []
        except OSError as e:  # the directory could not be read to its end
            self.fail(d, None, _reason(e))
        finally:
            self._closed()
            # The tail is shared out too: a directory of a few hundred names is
            # common, and one thread alone on its last chunk would leave the others idle.
            piece = max(_CHUNK // 16, -(-len(chunk) // (_threads + 1)))
            while len(chunk) > piece and self.pool is not None:
                handed = self._hand_off(d, chunk[-piece:], handed)
                del chunk[-piece:]
            self._files(d, chunk)
            # They use d.fd: all must be done before it closes. Queued ones are done
            # here (never waits on queued work: the pool cannot deadlock).
            for job, names in reversed(handed):
                if job.cancel():
                    self.slots.release()
                    self._files(d, names)
            for job, _ in handed:
                if not job.cancelled():
                    job.result()
        d.subdirs = subdirs

    def _hand_off(self, d: _Dir, chunk: list[str], handed: _Handed) -> _Handed:
        """Give ``chunk`` to the pool, or do it here; return the chunks still in flight."""
        in_flight = []
        for job, names in handed:
            if job.done():
                job.result()  # a bug in a job surfaces here, not lost
            else:
                in_flight.append((job, names))
        if self.pool is not None and self.slots.acquire(blocking=False):
            in_flight.append((self.pool.submit(self._chunk, d, chunk), chunk))
        else:
            self._files(d, chunk)
        return in_flight

    def _chunk(self, d: _Dir, names: list[str]) -> None:
        try:
            self._files(d, names)
        finally:
            self.slots.release()

    def _files(self, d: _Dir, names: list[str]) -> None:
        """Remove (or, dry, check) non-directory entries of ``d``; runs in any thread."""
        files = freed = 0
        for name in names:
            try:
                size = self._unlink(d.fd, name) if self.remove else self._check(d, name)
            except FileNotFoundError:
                continue  # removed by someone else meanwhile: nothing left to count
            except OSError as e:
                self.fail(d, name, _reason(e))
                continue
            if size is None:
                continue  # reported
            files += 1
            freed += size
        with self.lock:
            self.stats.files += files
            self.stats.bytes += freed
        if self.progress is not None:
            self.progress.add(files, freed)

    def _unlink(self, fd: int, name: str) -> int:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            os.unlink(name, dir_fd=fd)
            return 0
        if st.st_nlink > 1:
            # The link count and the unlink together, one file at a time in the
            # process: whichever unlink takes the count to zero frees the data.
            with _LINKS:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                os.unlink(name, dir_fd=fd)
            return st.st_size if st.st_nlink == 1 else 0
        os.unlink(name, dir_fd=fd)
        return st.st_size

    # ---------------------------------------------------------------- dry run

    def _check(self, d: _Dir, name: str) -> int | None:
        """What removing ``name`` would free, or None when it could not be (reported)."""
        sx = mounts.statx(d.fd, name)
        if why := self._blocked(d, sx):
            self.fail(d, name, why)
            return None
        if not stat.S_ISREG(sx.mode):
            return 0
        if sx.nlink <= 1:
            return sx.size
        key = (sx.dev, sx.ino)
        with self.lock:
            seen = self.links.get(key, 0) + 1
            if seen < sx.nlink:
                self.links[key] = seen
                return 0
            self.links.pop(key, None)
        return sx.size

    def _dry_directory(self, d: _Dir, sx: mounts.Statx) -> None:
        """Note why the entries of directory ``d`` could not be removed, if so."""
        d.uid, d.sticky = sx.uid, bool(sx.mode & stat.S_ISVTX)
        if sx.attributes & mounts.STATX_ATTR_IMMUTABLE:
            d.locked = "所在目录不可修改（immutable 属性），无法删除"
        elif sx.attributes & mounts.STATX_ATTR_APPEND:
            d.locked = "所在目录只可追加（append-only 属性），无法删除"
        elif not self._may_write(sx):
            d.locked = "所在目录无写权限，无法删除"

    def _blocked(self, d: _Dir, sx: mounts.Statx) -> str | None:
        """Why the entry ``sx`` of directory ``d`` could not be removed, or None."""
        if d.locked:
            return d.locked
        if why := sx.locked():
            return why
        if d.sticky and self.euid not in (0, d.uid, sx.uid):
            return "所在目录有粘滞位且条目不属于本用户，无法删除"
        return None

    def _may_write(self, sx: mounts.Statx) -> bool:
        if self.euid == 0:
            return True  # root overrides permission bits (not the flags above)
        if sx.uid == self.euid:
            need = stat.S_IWUSR | stat.S_IXUSR
        elif sx.gid in self.groups:
            need = stat.S_IWGRP | stat.S_IXGRP
        else:
            need = stat.S_IWOTH | stat.S_IXOTH
        return sx.mode & need == need

    # ---------------------------------------------------------------- errors

    def fail(self, d: _Dir, name: str | None, reason: str) -> None:
        """Report ``name`` of ``d`` (``d`` itself when None); ``d`` then stays."""
        d.failed = True
        with self.lock:
            self.stats.error_count += 1
            if len(self.stats.errors) < _MAX_ERRORS_KEPT:  # paths only for errors kept
                self.stats.errors.append(f"{self._rel(d, name)}: {reason}")

    def _rel(self, d: _Dir, name: str | None) -> str:
        if d is self.outer:
            return "."
        parts = [name] if name else []
        node: _Dir | None = d
        while node is not None:
            if node.name:
                parts.append(node.name)
            node = node.parent
        return "/".join(reversed(parts)) or "."


_Handed = list[tuple[Future[None], list[str]]]  # chunk jobs, with their names
_LINKS = threading.Lock()
_MOUNT = "挂载点（或另一个文件系统），未进入"


def _reason(e: OSError) -> str:
    return e.strerror or str(e)
