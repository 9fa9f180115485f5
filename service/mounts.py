"""Mount points, seen the two ways the kernel offers, and the two system calls
Python does not wrap that the walk needs (through ctypes). Every function
here blocks: call it from a worker thread.

A same-file-system bind mount shares ``st_dev`` with the file system it sits
on, so a device comparison cannot see it. Three things can:

- ``/proc/self/mountinfo``: every mount point of this process's namespace,
  by path. The pre-delete check looks at it for every task (a copy, read
  again whenever the kernel says the table changed) to refuse a task with a
  mount in it before anything is moved.
- ``statx``: ``STATX_ATTR_MOUNT_ROOT`` says an entry is the root of a mount,
  ``stx_mnt_id`` says which mount it is on. Its attributes also carry the
  immutable and append-only flags without opening the file (a dry run needs
  them for every entry; opening a fifo or a device to ask would have effects).
- ``openat2`` with ``RESOLVE_NO_XDEV``: the open itself fails (EXDEV) when the
  name is a mount point, so the walk never enters one even if it was mounted
  after the check. Where the kernel lacks openat2 (ENOSYS, before 5.6),
  ``open_dir`` falls back to ``openat`` plus a mount-id comparison, and says
  so with an error when it cannot tell either.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)

AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
AT_STATX_DONT_SYNC = 0x4000
STATX_BASIC_STATS = 0x7FF
STATX_MNT_ID = 0x1000
STATX_ATTR_IMMUTABLE = 0x10
STATX_ATTR_APPEND = 0x20
STATX_ATTR_MOUNT_ROOT = 0x2000

_SYS_OPENAT2 = 437  # the same number on every architecture (unified since 5.1)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_SYMLINKS = 0x04
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_statx = getattr(_libc, "statx", None)
if _statx is not None:
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    _statx.restype = ctypes.c_int
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_local = threading.local()  # one statx buffer per thread
_openat2_missing = False  # set once the kernel said ENOSYS


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


@dataclass(slots=True)
class Statx:
    mode: int
    uid: int
    gid: int
    nlink: int
    size: int
    ino: int
    dev: tuple[int, int]  # (major, minor)
    attributes: int
    attributes_mask: int
    mnt_id: int | None  # None: this kernel does not report it

    @property
    def mount_root(self) -> bool | None:
        """True/False, or None when the file system does not say."""
        if not self.attributes_mask & STATX_ATTR_MOUNT_ROOT:
            return None
        return bool(self.attributes & STATX_ATTR_MOUNT_ROOT)

    @property
    def flags_known(self) -> bool:
        return bool(self.attributes_mask & STATX_ATTR_IMMUTABLE)

    def locked(self) -> str | None:
        """Why this entry cannot be removed (nor, for a directory, anything in it)."""
        if self.attributes & STATX_ATTR_IMMUTABLE:
            return "不可修改（immutable 属性），无法删除"
        if self.attributes & STATX_ATTR_APPEND:
            return "只可追加（append-only 属性），无法删除"
        return None


def statx(dir_fd: int, name: str) -> Statx:
    """``statx`` of ``name`` below ``dir_fd`` (``""``: ``dir_fd`` itself), never
    following a symlink. Raises OSError like ``os.stat``."""
    if _statx is None:
        raise OSError(errno.ENOSYS, "statx is not available")
    _no_nul(name)
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = ctypes.create_string_buffer(256)
    flags = AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC | (AT_EMPTY_PATH if not name else 0)
    if _statx(dir_fd, os.fsencode(name), flags, STATX_BASIC_STATS | STATX_MNT_ID, buf):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), name)
    mask, _, attributes, nlink, uid, gid, mode = struct.unpack_from("<IIQIIIH", buf, 0)
    ino, size = struct.unpack_from("<QQ", buf, 32)
    (attributes_mask,) = struct.unpack_from("<Q", buf, 56)
    dev = struct.unpack_from("<II", buf, 136)
    (mnt_id,) = struct.unpack_from("<Q", buf, 0x90)
    return Statx(
        mode, uid, gid, nlink, size, ino, dev, attributes, attributes_mask,
        mnt_id if mask & STATX_MNT_ID else None,
    )  # fmt: skip


def _no_nul(name: str) -> None:
    """Refuse a NUL, as ``os`` does: a C string ends there, so ctypes would
    pass the name cut short, another entry than the one asked for."""
    if "\0" in name:
        raise ValueError(f"embedded null byte: {name!r}")


def open_dir(dir_fd: int, name: str, parent_mnt: int | None = None) -> int:
    """Open the directory ``name`` below ``dir_fd``: never through a symlink,
    never onto another mount (OSError EXDEV, also for a same-fs bind mount).

    ``parent_mnt`` is ``dir_fd``'s mount id, for the fallback without
    openat2 (read from ``dir_fd`` there when not given).
    """
    global _openat2_missing
    _no_nul(name)
    if not _openat2_missing:
        how = _OpenHow(DIR_FLAGS, 0, RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS)
        fd = _syscall(
            ctypes.c_long(_SYS_OPENAT2),
            ctypes.c_int(dir_fd),
            ctypes.c_char_p(os.fsencode(name)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err != errno.ENOSYS:
            raise OSError(err, os.strerror(err), name)
        _openat2_missing = True
    if parent_mnt is None:
        parent_mnt = mount_id(dir_fd)
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    try:
        st = statx(fd, "")
        if st.mount_root or (st.mnt_id is not None and parent_mnt is not None
                             and st.mnt_id != parent_mnt):  # fmt: skip
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), name)
        if st.mount_root is None and (st.mnt_id is None or parent_mnt is None):
            raise OSError(errno.ENOSYS, "无法确认是否为挂载点（内核不支持 openat2/statx），未进入")
    except BaseException:
        os.close(fd)
        raise
    return fd


def mount_id(fd: int) -> int | None:
    try:
        return statx(fd, "").mnt_id
    except OSError:
        return None


# ---------------------------------------------------------------- mountinfo


def _unescape(field: str) -> str:
    r"""mountinfo writes space, tab, newline and backslash as octal (``\040``)."""
    if "\\" not in field:
        return field
    raw = os.fsencode(field)
    out, i = bytearray(), 0
    while i < len(raw):
        if raw[i] == 0x5C and raw[i + 1 : i + 4].isdigit() and len(raw[i + 1 : i + 4]) == 3:
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


class _MountTable:
    """The mount points, read again only when the table has changed: an open
    ``/proc/self/mountinfo`` polls ``POLLPRI`` once a mount or unmount has
    happened in the namespace since it was last polled (proc(5)). A poll that
    says "unchanged" makes the copy as current as a read at that instant."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._points: list[str] = []

    def points(self) -> list[str]:
        with self._lock:
            if self._fd is None:
                self._fd = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
                self._points = self._read(self._fd)
                return self._points
            poller = select.poll()
            poller.register(self._fd, select.POLLPRI | select.POLLERR)
            if poller.poll(0):
                self._points = self._read(self._fd)
            return self._points

    @staticmethod
    def _read(fd: int) -> list[str]:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        lines = b"".join(chunks).decode("utf-8", "surrogateescape").splitlines()
        return [_unescape(line.split(" ", 5)[4]) for line in lines if line.count(" ") >= 5]


_mount_table = _MountTable()


def mount_points() -> list[str]:
    """Every mount point of this process's mount namespace, as absolute paths."""
    return _mount_table.points()


def mounts_below(path: Path) -> list[str]:
    """Mount points strictly inside the directory ``path`` (resolved), relative to it."""
    return mounts_inside(os.path.realpath(path))


def mounts_inside(real: str) -> list[str]:
    """``mounts_below`` for a path already resolved (``os.path.realpath``)."""
    prefix = real.rstrip("/") + "/"
    return sorted(
        {m[len(prefix) :] for m in mount_points() if m.startswith(prefix) and m != prefix}
    )


def is_mount_point(path: Path) -> bool:
    """Whether ``path`` itself (not followed if a symlink) is the root of a mount."""
    parent = os.open(os.path.dirname(os.path.abspath(path)), DIR_FLAGS & ~os.O_NOFOLLOW)
    try:
        own = statx(parent, os.path.basename(os.path.abspath(path)))
        if own.mount_root is not None:
            return own.mount_root
        above = statx(parent, "")
        if own.mnt_id is not None and above.mnt_id is not None:
            return own.mnt_id != above.mnt_id
    finally:
        os.close(parent)
    return os.path.realpath(path) in mount_points()
