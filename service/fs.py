"""File-system work of a deletion. Every function here blocks: call it through
``asyncio.to_thread``, never on the event loop's thread.

The walk that removes a tree is the walk that counts it (``walk_tree``), and a
dry run uses the same walk without removing, so its counts are those a real
run gives. Directories are opened with O_NOFOLLOW relative to their parent's
descriptor, so a symlink is never followed out of the tree, and a directory on
another device (a mount point) is never entered.
"""

from __future__ import annotations

import contextlib
import os
import queue
import stat
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

# Opens a directory, never through a symlink at its name.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Unlinking a file that has data often waits on the disk, not the CPU (on ext4
# mounted with `discard`, ~0.1 ms per file for a synchronous discard): more
# threads than cores keep the disk busy. See bench/bench_purge.py.
_WORKERS = 16
# Names handed to a thread at a time: enough to make a job worth its overhead,
# few enough that the threads share a large directory evenly.
_CHUNK = 256
_MAX_ERRORS_KEPT = 20


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
    a direct child of the real base directory, and on the base's device.
    """
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return "任务目录是符号链接，拒绝删除"
    if not stat.S_ISDIR(st.st_mode):
        return "任务路径不是目录，拒绝删除"
    real_base = os.path.realpath(base_dir)
    if os.path.dirname(os.path.realpath(path)) != real_base:
        return "任务目录不在任务根目录之下，拒绝删除"
    if st.st_dev != os.stat(real_base).st_dev:
        return "任务目录不在任务根目录所在的文件系统上，拒绝删除"
    return None


def detach(path: Path, trash_dir: Path) -> Path:
    """Rename ``path`` into ``trash_dir/<token>/<name>`` and return the new path.

    One rename: readers see the task gone at once. The token directory keeps
    the task id as the inner name, so a crash sweep can read it back.
    """
    trash_dir.mkdir(mode=0o700, exist_ok=True)
    holder = trash_dir / uuid.uuid4().hex
    holder.mkdir(mode=0o700)
    target = holder / path.name
    try:
        os.rename(path, target)
    except OSError:
        os.rmdir(holder)
        raise
    fsync_dir(path.parent)
    fsync_dir(holder)
    return target


def reattach(detached: Path, path: Path) -> None:
    """Undo ``detach``: rename the tree back, never over something that exists."""
    if os.path.lexists(path):
        raise FileExistsError(f"{path} exists again; the tree stays at {detached}")
    os.rename(detached, path)
    fsync_dir(path.parent)
    remove_holder(detached)


def remove_holder(detached: Path) -> None:
    """Remove the (now empty) token directory that held a detached tree."""
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(detached.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable: it survives a power loss, not only a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def purge(detached: Path) -> TreeStats:
    """Remove a detached tree and, when it is all gone, its token directory."""
    stats = walk_tree(detached, remove=True)
    if not stats.error_count:
        remove_holder(detached)
    return stats


def walk_tree(root: Path, *, remove: bool) -> TreeStats:
    """Count, and with ``remove`` delete, everything under ``root`` and root itself.

    ``root`` must exist (lstat). Never follows a symlink (links are removed as
    links) and never enters a directory on another device. What cannot be
    removed is reported in the returned stats; the rest is removed regardless.

    A pool of threads handles the directories, a large one's names a chunk at
    a time, so several threads work in it and memory does not grow with it.
    Empty directories are removed at the end, children before parents.
    """
    total = TreeStats()
    try:
        root_dev = os.lstat(root).st_dev
    except FileNotFoundError:
        return total  # already gone (another process's sweep): nothing to count
    try:
        root_fd = os.open(root, DIR_FLAGS)
    except OSError as e:
        total.fail(".", _reason(e))
        return total
    dirs: list[str] = []  # relative paths of the directories below root
    try:
        with ThreadPoolExecutor(_WORKERS, thread_name_prefix="purge") as pool:
            walk = _Walk(pool, root_fd, root_dev, remove)
            # Directory jobs report here as they finish: O(1) per job, however many.
            done: queue.SimpleQueue[Future[tuple[TreeStats, list[str]]]] = queue.SimpleQueue()

            def scan(rel: str) -> None:
                pool.submit(walk.scan_dir, rel).add_done_callback(done.put)

            scan("")
            left = 1
            while left:
                stats, subdirs = done.get().result()
                total.add(stats)
                dirs.extend(subdirs)
                for rel in subdirs:
                    scan(rel)
                left += len(subdirs) - 1
        if remove:
            # Children before parents: deepest paths first.
            for rel in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
                _rmdir(root_fd, rel, total)
    finally:
        os.close(root_fd)
    if remove:
        try:
            os.rmdir(root)
        except OSError as e:
            _rmdir_failed(".", e, total)
    return total


_Handed = list[tuple[Future[TreeStats], list[str]]]  # chunk jobs, with their names


@dataclass
class _Walk:
    pool: ThreadPoolExecutor
    root_fd: int
    root_dev: int
    remove: bool
    slots: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(2 * _WORKERS))

    def scan_dir(self, rel: str) -> tuple[TreeStats, list[str]]:
        """Handle one directory's non-directory entries; return its subdirectories."""
        stats, subdirs = TreeStats(), []
        try:
            fd = _open_dir(self.root_fd, rel)
        except FileNotFoundError:
            return stats, subdirs  # removed by someone else meanwhile
        except OSError as e:
            stats.fail(rel or ".", _reason(e))
            return stats, subdirs
        try:
            if os.fstat(fd).st_dev != self.root_dev:
                stats.fail(rel, "另一个文件系统的挂载点，未进入")
            else:
                self._scan(fd, rel, stats, subdirs)
        finally:
            os.close(fd)
        return stats, subdirs

    def _scan(self, fd: int, rel: str, stats: TreeStats, subdirs: list[str]) -> None:
        # Names go to idle threads a chunk at a time while this thread reads on.
        # When 2 * _WORKERS chunks already wait in the whole walk, this thread
        # does the chunk itself: memory stays flat however large the directory.
        handed: _Handed = []
        chunk: list[str] = []
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(f"{rel}/{entry.name}" if rel else entry.name)
                        continue
                    chunk.append(entry.name)
                    if len(chunk) == _CHUNK:
                        handed = self._hand_off(fd, rel, chunk, handed, stats)
                        chunk = []
        except OSError as e:  # the directory could not be read to its end
            stats.fail(rel or ".", _reason(e))
        finally:
            stats.add(_files(fd, rel, chunk, self.remove))
            for job, names in handed:  # they use fd: all must be done before it is closed
                if job.cancel():  # never waits on queued work: the pool cannot deadlock
                    self.slots.release()
                    stats.add(_files(fd, rel, names, self.remove))
                else:
                    stats.add(job.result())

    def _hand_off(
        self, fd: int, rel: str, chunk: list[str], handed: _Handed, stats: TreeStats
    ) -> _Handed:
        """Give ``chunk`` to the pool, or do it here; return the chunks still in flight."""
        in_flight: _Handed = []
        for job, names in handed:
            if job.done():
                stats.add(job.result())
            else:
                in_flight.append((job, names))
        if self.slots.acquire(blocking=False):
            in_flight.append((self.pool.submit(self._chunk, fd, rel, chunk), chunk))
        else:
            stats.add(_files(fd, rel, chunk, self.remove))
        return in_flight

    def _chunk(self, fd: int, rel: str, names: list[str]) -> TreeStats:
        try:
            return _files(fd, rel, names, self.remove)
        finally:
            self.slots.release()


def _open_dir(root_fd: int, rel: str) -> int:
    """Open ``rel`` below ``root_fd`` one name at a time, each with O_NOFOLLOW:
    no symlink anywhere on the way is followed, and no depth is too deep."""
    fd = os.open(".", DIR_FLAGS, dir_fd=root_fd)
    for name in rel.split("/") if rel else ():
        try:
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        fd = child
    return fd


def _files(fd: int, rel: str, names: list[str], remove: bool) -> TreeStats:
    stats = TreeStats()
    for name in names:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if remove:
                os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            continue  # removed by someone else meanwhile: nothing left to count
        except OSError as e:
            stats.fail(f"{rel}/{name}" if rel else name, _reason(e))
            continue
        stats.files += 1
        if stat.S_ISREG(st.st_mode):
            stats.bytes += st.st_size
    return stats


def _rmdir(root_fd: int, rel: str, stats: TreeStats) -> None:
    parent, _, name = rel.rpartition("/")
    try:
        fd = _open_dir(root_fd, parent)
        try:
            os.rmdir(name, dir_fd=fd)
        finally:
            os.close(fd)
    except OSError as e:
        _rmdir_failed(rel, e, stats)


def _rmdir_failed(rel: str, e: OSError, stats: TreeStats) -> None:
    # After a failure below it, a directory cannot be empty: that failure is
    # the one worth reporting, not this consequence of it.
    if not isinstance(e, FileNotFoundError) and not stats.error_count:
        stats.fail(rel, _reason(e))


def _reason(e: OSError) -> str:
    return e.strerror or str(e)
