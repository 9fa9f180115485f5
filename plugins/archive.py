"""Archive before delete: each task's directory is written to one compressed
tar archive before the directory is touched; only a verified archive lets the
deletion go on.

Format: tar with gzip (``format = "tar.gz"``, or ``"tar"`` uncompressed).
gzip rather than zstd because it is in the standard library (no new
dependency) and every operator's ``tar xzf`` opens it; the bottleneck for
pipeline output (text, JSON, CSV) is the disk more than the compressor, and
``compression_level`` trades speed for size (1 is fast, 9 small).

The archive is written under a temporary name, fsynced, read back in full
(member count and bytes must equal what was written, and gzip's CRC must
check), and only then renamed into place. Any failure, the disk falling below
``min_free_bytes`` included, removes the temporary file and fails the task
with ``ARCHIVE_FAILED``: the directory and the record stay as they were.

Members are streamed one at a time and forgotten once written, so memory
stays flat however many files a tree holds. Symlinks are stored as links and
never followed. ``python run.py restore ARCHIVE`` puts a tree back.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import grp
import os
import pwd
import shutil
import stat
import tarfile
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from service.plugin_api import (
    RestoreFailed,
    Settings,
    SettingsError,
    TaskContext,
    TaskFailed,
    fsync_dir,
    hookimpl,
    restore_tree,
)

ARCHIVE_FAILED = "ARCHIVE_FAILED"
OPTIONS = {
    "dir": "var/archives",
    "format": "tar.gz",
    "compression_level": 6,
    "min_free_bytes": 1024**3,
}
_MODES = {"tar.gz": "w:gz", "tar": "w"}
_FREE_CHECK_EVERY = 16 * 1024**2  # bytes written between two free-space checks
# Every directory of a tree is opened with these: a symlink is never gone through.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class ArchiveError(Exception):
    """The archive could not be written or verified; the message says why."""


def create_plugin(options: dict[str, Any], settings: Settings) -> Archiver:
    if options["format"] not in _MODES:
        raise SettingsError(f"settings: plugins.archive.format must be one of {sorted(_MODES)}")
    if not 0 <= options["compression_level"] <= 9:
        raise SettingsError("settings: plugins.archive.compression_level must be 0..9")
    directory = Path(options["dir"]).expanduser()
    return Archiver(
        settings,
        directory if directory.is_absolute() else settings.root / directory,
        options["format"],
        options["compression_level"],
        options["min_free_bytes"],
    )


class Archiver:
    def __init__(
        self, settings: Settings, directory: Path, fmt: str, level: int, min_free_bytes: int
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.format = fmt
        self.level = level
        self.min_free_bytes = min_free_bytes

    async def restore(self, archive: Path) -> str:
        """``python run.py restore ARCHIVE``: see ``restore`` below."""
        return await restore(self, archive)

    def path_for(self, task_id: str) -> Path:
        return self.directory / f"{task_id}-{datetime.now():%Y%m%dT%H%M%S%f}.{self.format}"

    @hookimpl
    async def dptask_before_removal(self, task: TaskContext) -> dict[str, Any] | None:
        if not task.directory_exists:
            return None
        path = self.path_for(task.task_id)
        if task.options.dry_run:
            return {"archive_path": str(path), "archive_bytes": None}
        try:
            size = await asyncio.to_thread(
                write_archive, task.path, path, self.format, self.level, self.min_free_bytes
            )
        except ArchiveError as e:
            raise TaskFailed(ARCHIVE_FAILED, f"归档失败，任务未删除: {e}") from e
        return {"archive_path": str(path), "archive_bytes": size}


class _FreeSpaceGuard:
    """A file wrapper that stops the write before the disk falls below a floor."""

    def __init__(self, raw: BinaryIO, min_free_bytes: int) -> None:
        self.raw = raw
        self.min_free_bytes = min_free_bytes
        self.unchecked = 0

    def write(self, data: bytes) -> int:
        self.unchecked += len(data)
        if self.unchecked >= _FREE_CHECK_EVERY:
            self.unchecked = 0
            check_free_space(self.raw.fileno(), self.min_free_bytes)
        return self.raw.write(data)

    def tell(self) -> int:
        return self.raw.tell()


def check_free_space(fd: int, min_free_bytes: int) -> None:
    vfs = os.fstatvfs(fd)
    free = vfs.f_bavail * vfs.f_frsize
    if free < min_free_bytes:
        raise ArchiveError(f"归档磁盘剩余空间 {free} 字节，低于 min_free_bytes={min_free_bytes}")


def write_archive(src: Path, dest: Path, fmt: str, level: int, min_free_bytes: int) -> int:
    """Write ``src`` to ``dest`` as a verified archive; return its size in bytes."""
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.partial")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as raw:
            check_free_space(raw.fileno(), min_free_bytes)
            guard = _FreeSpaceGuard(raw, min_free_bytes)
            kwargs = {"compresslevel": level} if fmt == "tar.gz" else {}
            with tarfile.open(fileobj=guard, mode=_MODES[fmt], **kwargs) as tar:  # type: ignore[call-overload]
                written = _add_tree(tar, src)
            raw.flush()
            check_free_space(raw.fileno(), min_free_bytes)
            os.fsync(raw.fileno())
        found = archive_counts(tmp)
        if found != written:
            raise ArchiveError(f"校验不符: 写入 {written}，读回 {found}（成员数, 字节数）")
        os.rename(tmp, dest)
        fsync_dir(dest.parent)
        return dest.stat().st_size
    except (OSError, tarfile.TarError, EOFError) as e:
        raise ArchiveError(getattr(e, "strerror", None) or str(e)) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _add_tree(tar: tarfile.TarFile, src: Path) -> tuple[int, int]:
    """Add ``src`` under its own name; return (members, bytes of regular files).

    Every entry is opened relative to its directory's descriptor, with
    O_NOFOLLOW and an inode check against its lstat: a symlink swapped in
    while the tree is archived is never followed. One descriptor is open per
    level of depth; a directory's names are the only list held.
    """
    root = os.open(src, _DIR_FLAGS)
    stack = [(root, src.name, iter(_names(root)))]
    members, size = 1, 0
    try:
        _add(tar, _member(os.fstat(root), src.name, ""), None)
        while stack:
            fd, prefix, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(fd)
                stack.pop()
                continue
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            link = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else ""
            info = _member(st, f"{prefix}/{name}", link)
            members += 1
            if info.isreg():
                size += info.size
                _add(tar, info, _open_same(name, fd, st, os.O_RDONLY | os.O_NOFOLLOW))
            else:
                _add(tar, info, None)
            if info.isdir():
                child = _open_same(name, fd, st, _DIR_FLAGS)
                stack.append((child, info.name, iter(_names(child))))
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    return members, size


def _names(fd: int) -> list[str]:
    with os.scandir(fd) as entries:
        return sorted(e.name for e in entries)


def _open_same(name: str, dir_fd: int, st: os.stat_result, flags: int) -> int:
    """Open the entry that was just lstat-ed, and nothing swapped in since."""
    fd = os.open(name, flags | os.O_CLOEXEC, dir_fd=dir_fd)
    now = os.fstat(fd)
    if (now.st_ino, now.st_dev) != (st.st_ino, st.st_dev):
        os.close(fd)
        raise ArchiveError(f"{name} 在归档期间被替换")
    return fd


def _add(tar: tarfile.TarFile, info: tarfile.TarInfo, fd: int | None) -> None:
    if fd is None:
        tar.addfile(info)
    else:
        with os.fdopen(fd, "rb") as f:
            tar.addfile(info, f)
    tar.members.clear()  # type: ignore[attr-defined]  # tarfile keeps every member otherwise: memory would grow


def _member(st: os.stat_result, arcname: str, linkname: str) -> tarfile.TarInfo:
    """A member from one lstat. Not ``TarFile.gettarinfo``: that looks up the
    owner's name per file and remembers every inode (for hard links), which
    costs time and memory in proportion to the tree. Hard-linked files are
    stored as copies; restoring gives the same bytes."""
    info = tarfile.TarInfo(arcname)
    info.mode = stat.S_IMODE(st.st_mode)
    # Whole seconds, as tar keeps them: a fractional mtime costs a PAX header per member.
    info.uid, info.gid, info.mtime = st.st_uid, st.st_gid, int(st.st_mtime)
    info.uname, info.gname = _user(st.st_uid), _group(st.st_gid)
    if stat.S_ISREG(st.st_mode):
        info.size = st.st_size
    elif stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, linkname
    else:  # sockets, fifos, devices have no place in pipeline output
        raise ArchiveError(f"{arcname} 不是普通文件、目录或符号链接，无法归档")
    return info


@functools.lru_cache(maxsize=64)
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@functools.lru_cache(maxsize=64)
def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def archive_counts(path: Path) -> tuple[int, int]:
    """Read an archive through to the end: (members, bytes of regular files)."""
    members = size = 0
    with tarfile.open(path, "r|*") as tar:
        for info in tar:
            members += 1
            if info.isreg():
                size += info.size
            tar.members.clear()  # type: ignore[attr-defined]
    return members, size


# ---------------------------------------------------------------- restore


def task_id_of(archive: Path) -> str:
    """The task id an archive holds: the first component of its members."""
    with tarfile.open(archive, "r:*") as tar:
        first = tar.next()
        if first is None:
            raise ArchiveError("归档为空")
        return first.name.split("/", 1)[0]


def extract_into(archive: Path, task_id: str, root_fd: int) -> None:
    """Extract the archive's tree below ``root_fd`` (the empty directory
    ``restore_tree`` made for it in the service's trash), refusing any member
    that would land outside the task's directory. Raises ``RestoreFailed``;
    ``restore_tree`` then leaves nothing behind."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            extractor = _Extractor(root_fd)
            for i, info in enumerate(tar):
                _check_member(info, task_id, first=i == 0)
                extractor.add(tar, info)
                tar.members.clear()  # type: ignore[attr-defined]
            extractor.finish()
    except ArchiveError as e:
        raise RestoreFailed(str(e)) from e
    except (OSError, tarfile.TarError) as e:
        raise RestoreFailed(getattr(e, "strerror", None) or str(e)) from e


class _Extractor:
    """Members created relative to their parent's descriptor, never by path:
    every directory on the way is opened with O_NOFOLLOW (a symlink member is
    never gone through, whatever it points at), and every file is created with
    O_EXCL|O_NOFOLLOW (nothing existing is written through or over). Modes,
    owners and times as tar's ``tar`` filter keeps them; directories' last,
    deepest first, once their content is in."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.dirs: list[tuple[tuple[str, ...], tarfile.TarInfo]] = []
        self._open: tuple[tuple[str, ...], int] | None = None  # the last parent, kept open

    def add(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        parts = tuple(info.name.split("/")[1:])  # below the task directory
        if not parts:
            self.dirs.append((parts, info))
            return
        fd, leaf = self._parent(parts[:-1], info), parts[-1]
        try:
            if info.isdir():
                self._mkdir(fd, leaf, info)
                self.dirs.append((parts, info))
            elif info.issym():
                os.symlink(info.linkname, leaf, dir_fd=fd)
                _set_owner(leaf, info, dir_fd=fd)
                os.utime(leaf, (info.mtime, info.mtime), dir_fd=fd, follow_symlinks=False)
            else:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                with os.fdopen(os.open(leaf, flags, 0o600, dir_fd=fd), "wb") as out:
                    source = tar.extractfile(info)
                    assert source is not None  # a regular file
                    shutil.copyfileobj(source, out, 1024 * 1024)
                    _set_attributes(out.fileno(), info)
        except FileExistsError:
            raise ArchiveError(f"成员 {info.name!r} 重复或与已恢复的条目冲突，拒绝恢复") from None

    def finish(self) -> None:
        self._close()
        for parts, info in sorted(self.dirs, key=lambda d: len(d[0]), reverse=True):
            fd = self._walk(parts, info, create=False)
            try:
                _set_attributes(fd, info)
            finally:
                if fd != self.root_fd:
                    os.close(fd)

    def _mkdir(self, fd: int, leaf: str, info: tarfile.TarInfo) -> None:
        try:
            os.mkdir(leaf, 0o700, dir_fd=fd)
        except FileExistsError:  # made for an earlier member, or a member repeated
            if not stat.S_ISDIR(os.stat(leaf, dir_fd=fd, follow_symlinks=False).st_mode):
                raise

    def _parent(self, parts: tuple[str, ...], info: tarfile.TarInfo) -> int:
        if self._open is not None and self._open[0] == parts:
            return self._open[1]
        self._close()
        fd = self._walk(parts, info, create=True)
        if fd != self.root_fd:
            self._open = (parts, fd)
        return fd

    def _walk(self, parts: tuple[str, ...], info: tarfile.TarInfo, *, create: bool) -> int:
        fd = self.root_fd
        for name in parts:
            try:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o700, dir_fd=fd)  # tar may omit a directory's member
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise ArchiveError(
                    f"成员 {info.name!r} 要经过符号链接或文件 {name}，拒绝恢复"
                ) from None
            finally:
                if fd != self.root_fd:
                    os.close(fd)
            fd = child
        return fd

    def _close(self) -> None:
        if self._open is not None:
            os.close(self._open[1])
            self._open = None


def _set_attributes(fd: int, info: tarfile.TarInfo) -> None:
    # The "tar" filter's modes: no setuid/setgid/sticky, no group/other write.
    os.fchmod(fd, info.mode & 0o755)
    _set_owner(fd, info)
    os.utime(fd, (info.mtime, info.mtime))


def _set_owner(target: int | str, info: tarfile.TarInfo, *, dir_fd: int | None = None) -> None:
    if os.geteuid() != 0:  # only root can give a file away; others keep it as theirs
        return
    if isinstance(target, int):
        os.fchown(target, info.uid, info.gid)
    else:
        os.chown(target, info.uid, info.gid, dir_fd=dir_fd, follow_symlinks=False)


def _check_member(info: tarfile.TarInfo, task_id: str, *, first: bool) -> None:
    parts = info.name.split("/")
    if parts[0] != task_id or any(p in ("", ".", "..") for p in parts[1:]):
        raise ArchiveError(f"成员 {info.name!r} 不在任务目录 {task_id}/ 之内，拒绝恢复")
    if first and not (info.name == task_id and info.isdir()):
        # The task directory itself comes first, as a directory: a link or a
        # file in its place would make an undeletable task.
        raise ArchiveError(f"成员 {info.name!r} 不是任务目录 {task_id}/，拒绝恢复")
    if not (info.isreg() or info.isdir() or info.issym()):
        raise ArchiveError(f"成员 {info.name!r} 的类型不允许恢复")


async def restore(archiver: Archiver, archive: Path) -> str:
    """Put an archived task back under ``base_dir`` (``python run.py restore``):
    the archive format is this plugin's, the rest (the lock, the trash, the
    record, the rename into place) is the service's ``restore_tree``."""
    try:
        task_id = await asyncio.to_thread(task_id_of, archive)
    except ArchiveError as e:
        raise RestoreFailed(str(e)) from e
    fill = functools.partial(extract_into, archive, task_id)
    return await restore_tree(archiver.settings, task_id, fill)
