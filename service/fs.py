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
import stat
import uuid
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# Large directories are split so that several threads stat and unlink in them.
_CHUNK = 2048
_WORKERS = 8
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
    os.rename(path, target)
    _fsync_dir(path.parent)
    _fsync_dir(holder)
    return target


def reattach(detached: Path, path: Path) -> None:
    """Undo ``detach``: rename the tree back, never over something that exists."""
    if os.path.lexists(path):
        raise FileExistsError(f"{path} exists again; the tree stays at {detached}")
    os.rename(detached, path)
    _fsync_dir(path.parent)
    remove_holder(detached)


def remove_holder(detached: Path) -> None:
    """Remove the (now empty) token directory that held a detached tree."""
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(detached.parent)


def _fsync_dir(path: Path) -> None:
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

    Never follows a symlink (links are removed as links) and never enters a
    directory on another device. What cannot be removed is reported in the
    returned stats; the rest is removed regardless.
    """
    total = TreeStats()
    dirs: list[str] = []  # relative paths of directories, parents before children
    root_dev = os.lstat(root).st_dev
    with ThreadPoolExecutor(_WORKERS, thread_name_prefix="purge") as pool:
        pending = {pool.submit(_scan_dir, root, "", root_dev, remove)}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                part, subdirs, chunks = future.result()
                total.add(part)
                dirs.extend(subdirs)
                pending |= {pool.submit(_scan_dir, root, d, root_dev, remove) for d in subdirs}
                pending |= {pool.submit(_files, root, rel, names, remove) for rel, names in chunks}
    if remove:
        # Children before parents: deepest paths first.
        for rel in sorted(dirs, key=lambda d: d.count("/"), reverse=True):
            _rmdir(root, rel, total)
        _rmdir(root, "", total)
    return total


def _scan_dir(
    root: Path, rel: str, root_dev: int, remove: bool
) -> tuple[TreeStats, list[str], list[tuple[str, list[str]]]]:
    """Handle one directory's non-directory entries; return its subdirectories."""
    stats, subdirs, names = TreeStats(), [], []
    try:
        fd = os.open(root / rel if rel else root, _DIR_FLAGS)
    except OSError as e:
        stats.fail(rel or ".", e.strerror or str(e))
        return stats, [], []
    try:
        if os.fstat(fd).st_dev != root_dev:
            stats.fail(rel, "另一个文件系统的挂载点，未进入")
            return stats, [], []
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(f"{rel}/{entry.name}" if rel else entry.name)
                else:
                    names.append(entry.name)
        # Small directories are done here; large ones are split across workers.
        chunks = [(rel, names[i : i + _CHUNK]) for i in range(_CHUNK, len(names), _CHUNK)]
        _files_in(fd, rel, names[:_CHUNK], remove, stats)
    finally:
        os.close(fd)
    return stats, subdirs, chunks


def _files(
    root: Path, rel: str, names: list[str], remove: bool
) -> tuple[TreeStats, list[str], list[tuple[str, list[str]]]]:
    stats = TreeStats()
    try:
        fd = os.open(root / rel if rel else root, _DIR_FLAGS)
    except OSError as e:
        stats.fail(rel or ".", e.strerror or str(e))
        return stats, [], []
    try:
        _files_in(fd, rel, names, remove, stats)
    finally:
        os.close(fd)
    return stats, [], []


def _files_in(fd: int, rel: str, names: list[str], remove: bool, stats: TreeStats) -> None:
    for name in names:
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if remove:
                os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            continue  # removed by someone else meanwhile: nothing left to count
        except OSError as e:
            stats.fail(f"{rel}/{name}" if rel else name, e.strerror or str(e))
            continue
        stats.files += 1
        if stat.S_ISREG(st.st_mode):
            stats.bytes += st.st_size


def _rmdir(root: Path, rel: str, stats: TreeStats) -> None:
    try:
        os.rmdir(root / rel if rel else root)
    except FileNotFoundError:
        pass
    except OSError as e:
        # After a failure below it, a directory cannot be empty: that failure
        # is the one worth reporting, not this consequence of it.
        if not stats.error_count:
            stats.fail(rel or ".", e.strerror or str(e))
