"""service.fs on a real file system: counting, removing, symlinks, devices,
undeletable entries (chattr +i), detach/reattach, the containment check."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from service import fs
from service.errors import TaskFailed
from service.fs import TreeStats
from service.trash import Trash

# ---------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry below ``root``: type, mode, and content or link target.

    Walks with descriptors, never following a link, so that it also reads
    trees deeper than PATH_MAX.
    """
    snap: dict[str, tuple] = {}

    def walk(dir_fd: int, rel: str) -> None:
        for name in sorted(os.listdir(dir_fd)):
            path = f"{rel}/{name}" if rel else name
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                snap[path] = ("link", os.readlink(name, dir_fd=dir_fd))
            elif stat.S_ISDIR(st.st_mode):
                snap[path] = ("dir", mode)
                fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
                try:
                    walk(fd, path)
                finally:
                    os.close(fd)
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
                with os.fdopen(fd, "rb") as f:
                    snap[path] = ("file", mode, f.read())
            else:
                snap[path] = ("other", stat.S_IFMT(st.st_mode), mode)

    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        walk(fd, "")
    finally:
        os.close(fd)
    return snap


def counts(stats: TreeStats) -> tuple[int, int, int]:
    return stats.files, stats.bytes, stats.error_count


def make_tree(root: Path) -> tuple[int, int]:
    """A small task-shaped tree with every kind of entry; return (files, bytes)."""
    (root / "vector_bak").mkdir(parents=True)
    (root / "file_bak_20250702_223802" / "nested").mkdir(parents=True)
    (root / "empty_dir").mkdir()
    files = {
        "task_config.json": b'{"task_id": "task_1"}',
        "data_pipeline.log": b"log line\n" * 1000,
        "orders.ddl": b"create table orders ();",
        "orders_detail.md": b"# orders\n",
        "qs_db_1_pair.json": b"[]",
        "empty.txt": b"",
        "vector_bak/embedding.csv": os.urandom(70_000),
        "file_bak_20250702_223802/orders.ddl": b"old",
        "file_bak_20250702_223802/nested/deep.md": b"deep",
    }
    for rel, data in files.items():
        (root / rel).write_bytes(data)
        (root / rel).chmod(0o640)
    os.symlink("orders.ddl", root / "link_in_tree")  # a file: counted, 0 bytes
    os.symlink("does/not/exist", root / "vector_bak/dangling")
    os.mkfifo(root / "file_bak_20250702_223802/fifo")  # a file: counted, 0 bytes
    return len(files) + 3, sum(len(d) for d in files.values())


@pytest.fixture
def chattr(tmp_path: Path) -> Iterator:
    """chattr +i: even root cannot unlink what it marks; cleared at teardown."""
    marked: list[Path] = []

    def immutable(path: Path) -> None:
        result = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"chattr +i not supported here: {result.stderr.strip()}")
        marked.append(path)

    yield immutable
    for path in marked:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


# ---------------------------------------------------------------- counting


def test_counts_files_and_bytes_of_every_kind(tmp_path: Path) -> None:
    root = tmp_path / "task_1"
    files, size = make_tree(root)

    assert counts(fs.walk_tree(root, remove=False)) == (files, size, 0)
    assert counts(fs.walk_tree(root, remove=True)) == (files, size, 0)
    assert not os.path.lexists(root)


def test_dry_run_counts_what_a_real_run_removes_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "task_1"
    make_tree(root)
    for i in range(3000):  # more than one chunk in one directory
        (root / "vector_bak" / f"e_{i}.json").write_bytes(b"z" * (i % 97))
    before = snapshot(root)
    mtime = os.stat(root).st_mtime_ns

    dry = fs.walk_tree(root, remove=False)

    assert snapshot(root) == before
    assert os.stat(root).st_mtime_ns == mtime
    real = fs.walk_tree(root, remove=True)
    assert counts(real) == counts(dry)
    assert not os.path.lexists(root)


def test_a_removing_walk_removes_the_tree_itself(tmp_path: Path) -> None:
    holder = tmp_path / "trash" / "token"
    files, size = make_tree(holder / "task_1")

    assert counts(fs.walk_tree(holder / "task_1", remove=True)) == (files, size, 0)
    assert not os.path.lexists(holder / "task_1")


@pytest.fixture
def small_pool() -> Iterator[None]:
    """A 2-thread pool and an 8-descriptor budget for the process; defaults after."""
    fs.configure(threads=2, descriptors=8)
    try:
        yield
    finally:
        fs.configure(threads=8, descriptors=256)


def test_walks_in_many_worker_threads_share_one_small_pool(tmp_path: Path, small_pool) -> None:
    # As the service calls it: each walk in a thread of its own (asyncio.to_thread),
    # all sharing the process's purge pool; no walk starts threads of its own.
    roots = [tmp_path / f"task_{i}" for i in range(6)]
    expected = [make_tree(root) for root in roots]
    with ThreadPoolExecutor(6) as callers:
        stats = list(callers.map(lambda r: fs.walk_tree(r, remove=True), roots))
    assert [counts(s) for s in stats] == [(f, b, 0) for f, b in expected]
    assert not any(os.path.lexists(root) for root in roots)
    assert len([t for t in threading.enumerate() if t.name.startswith("purge")]) <= 2


def test_purge_threads_run_at_a_lower_cpu_priority_than_their_caller(small_pool) -> None:
    # So the event loop and PostgreSQL win the CPU while a large tree is purged.
    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    caller = nice()
    if caller == 19:
        pytest.skip("already at the lowest priority")
    assert fs._get_pool().submit(nice).result(timeout=10) == min(19, caller + fs._NICE) > caller


# ---------------------------------------------------------------- symlinks and devices


def test_symlink_to_a_file_outside_is_removed_and_its_target_untouched(tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious" * 1000)
    root = tmp_path / "task_1"
    root.mkdir()
    os.symlink(outside, root / "link")
    (root / "own.txt").write_bytes(b"12345")

    stats = fs.walk_tree(root, remove=True)

    assert counts(stats) == (2, 5, 0)  # the link counts as a file of 0 bytes
    assert not os.path.lexists(root)
    assert outside.read_bytes() == b"precious" * 1000


def test_symlink_to_a_directory_outside_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "keep.txt").write_bytes(b"keep")
    before = snapshot(outside)
    root = tmp_path / "task_1"
    (root / "inner").mkdir(parents=True)
    os.symlink(outside, root / "link_abs")
    os.symlink("../../outside/sub", root / "inner" / "link_rel")

    assert counts(fs.walk_tree(root, remove=False)) == (2, 0, 0)
    assert counts(fs.walk_tree(root, remove=True)) == (2, 0, 0)
    assert not os.path.lexists(root)
    assert snapshot(outside) == before


def test_a_symlink_given_as_the_root_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "real"
    make_tree(target)
    before = snapshot(target)
    os.symlink(target, tmp_path / "task_1")

    stats = fs.walk_tree(tmp_path / "task_1", remove=True)

    assert stats.error_count == 1
    assert stats.files == 0
    assert snapshot(target) == before


@pytest.mark.parametrize("remove", [False, True], ids=["dry", "real"])
def test_walk_at_takes_a_root_that_is_no_directory_as_one_entry(
    tmp_path: Path, remove: bool
) -> None:
    """The walk opens its root as a directory: a file, or a symlink (to a
    directory or not), is one entry, never followed; a missing one is nothing."""
    target = tmp_path / "real"
    make_tree(target)
    before = snapshot(target)
    holder = tmp_path / "holder"
    holder.mkdir()
    (holder / "file").write_bytes(b"x" * 300)
    os.symlink(target, holder / "link")
    fd = os.open(holder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert counts(fs.walk_at(fd, "file", remove=remove)) == (1, 300, 0)
        assert counts(fs.walk_at(fd, "link", remove=remove)) == (1, 0, 0)
        assert counts(fs.walk_at(fd, "missing", remove=remove)) == (0, 0, 0)
    finally:
        os.close(fd)
    assert sorted(os.listdir(holder)) == ([] if remove else ["file", "link"])
    assert snapshot(target) == before


@pytest.mark.parametrize("remove", [False, True], ids=["dry", "real"])
def test_walk_at_refuses_a_name_with_a_nul(tmp_path: Path, remove: bool) -> None:
    """A C string ends at a NUL: "real\0x" must never reach "real"."""
    make_tree(tmp_path / "real")
    before = snapshot(tmp_path / "real")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ValueError, match="null byte"):
            fs.walk_at(fd, "real\0x", remove=remove)
    finally:
        os.close(fd)
    assert snapshot(tmp_path / "real") == before


def test_a_directory_on_another_device_is_not_entered(tmp_path: Path) -> None:
    root = tmp_path / "task_1"
    mnt = root / "sub" / "mnt"
    mnt.mkdir(parents=True)
    (root / "sub" / "a.txt").write_bytes(b"abc")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        (mnt / "other_fs.txt").write_bytes(b"not ours")

        dry = fs.walk_tree(root, remove=False)
        real = fs.walk_tree(root, remove=True)

        for stats in (dry, real):
            assert counts(stats) == (1, 3, 1)
            assert stats.errors[0].startswith("sub/mnt: ")
        assert (mnt / "other_fs.txt").read_bytes() == b"not ours"
        assert sorted(os.listdir(root)) == ["sub"]
        assert os.listdir(root / "sub") == ["mnt"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# ---------------------------------------------------------------- what cannot be removed


def test_an_undeletable_file_is_reported_and_everything_else_removed(
    tmp_path: Path, chattr
) -> None:
    holder = tmp_path / "trash" / "token"
    root = holder / "task_1"
    files, size = make_tree(root)
    locked = root / "file_bak_20250702_223802" / "nested" / "deep.md"
    chattr(locked)

    stats = fs.walk_tree(root, remove=True)  # must not raise

    assert stats.error_count == 1
    assert stats.errors[0].startswith("file_bak_20250702_223802/nested/deep.md: ")
    assert (stats.files, stats.bytes) == (files - 1, size - len(b"deep"))
    # Only the locked file and the directories that hold it are left.
    left = snapshot(holder)
    assert sorted(left) == [
        "task_1",
        "task_1/file_bak_20250702_223802",
        "task_1/file_bak_20250702_223802/nested",
        "task_1/file_bak_20250702_223802/nested/deep.md",
    ]
    assert left["task_1/file_bak_20250702_223802/nested/deep.md"] == ("file", 0o640, b"deep")


def test_an_undeletable_directory_reports_each_entry_and_keeps_the_first_few(
    tmp_path: Path, chattr
) -> None:
    root = tmp_path / "task_1"
    stuck = root / "vector_bak"
    stuck.mkdir(parents=True)
    for i in range(30):
        (stuck / f"e_{i:02}.json").write_bytes(b"x" * 10)
    (root / "free.txt").write_bytes(b"free")
    chattr(stuck)

    stats = fs.walk_tree(root, remove=True)

    assert (stats.files, stats.bytes, stats.error_count) == (1, 4, 30)
    assert len(stats.errors) == fs._MAX_ERRORS_KEPT
    assert all(e.startswith("vector_bak/e_") for e in stats.errors)
    assert sorted(os.listdir(root)) == ["vector_bak"]
    assert len(os.listdir(stuck)) == 30


# ---------------------------------------------------------------- shapes


def test_deep_nesting_beyond_path_max(tmp_path: Path) -> None:
    root = tmp_path / "task_1"
    root.mkdir()
    name = "file_bak_20250702_223802_x"  # 200 levels of it: ~5,400 bytes > PATH_MAX
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(200):
            f = os.open(f"f{level}.md", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(f, b"x" * level)
            os.close(f)
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    expected = (200, sum(range(200)), 0)

    assert counts(fs.walk_tree(root, remove=False)) == expected
    assert counts(fs.walk_tree(root, remove=True)) == expected
    assert not os.path.lexists(root)


def test_a_large_flat_directory_is_fully_counted_and_removed(tmp_path: Path) -> None:
    root = tmp_path / "task_1"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(5000):
            f = os.open(f"qs_db_{i}_pair.json", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(f, b"q" * (i % 10))
            os.close(f)
    finally:
        os.close(fd)
    os.symlink("qs_db_1_pair.json", root / "link")
    expected = (5001, sum(i % 10 for i in range(5000)), 0)
    assert fs._CHUNK * 4 < 5000  # several chunks, shared between threads

    assert counts(fs.walk_tree(root, remove=False)) == expected
    assert len(os.listdir(root)) == 5001
    assert counts(fs.walk_tree(root, remove=True)) == expected
    assert not os.path.lexists(root)


# ---------------------------------------------------------------- detach and reattach


def test_detach_and_reattach_preserve_the_tree_byte_for_byte(tmp_path: Path) -> None:
    base = tmp_path / "training_data"
    path = base / "task_20250702_223802"
    make_tree(path)
    before = snapshot(path)
    trash = Trash(base)

    detached = trash.detach(path.name)

    assert not os.path.lexists(path)
    assert detached.parent == base / ".trash"
    assert detached.name.split(".", 1)[1] == path.name
    assert snapshot(detached) == before

    trash.reattach(detached, path.name)

    assert snapshot(path) == before
    assert os.listdir(base / ".trash") == []


@pytest.mark.parametrize("kind", ["dir", "empty_dir", "file", "symlink"])
def test_reattach_never_overwrites_what_exists_again(tmp_path: Path, kind: str) -> None:
    base = tmp_path / "training_data"
    path = base / "task_1"
    make_tree(path)
    before = snapshot(path)
    trash = Trash(base)
    detached = trash.detach("task_1")
    if kind == "dir":
        path.mkdir()
        (path / "new.txt").write_bytes(b"new")
    elif kind == "empty_dir":
        path.mkdir()  # rename(2) alone would silently replace an empty directory
    elif kind == "file":
        path.write_bytes(b"new")
    else:
        os.symlink(tmp_path / "nowhere", path)
    everything = snapshot(base)

    with pytest.raises(FileExistsError):
        trash.reattach(detached, "task_1")

    assert snapshot(base) == everything
    assert snapshot(detached) == before


# ---------------------------------------------------------------- containment


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "training_data"
    path.mkdir()
    return path


def test_a_real_task_directory_is_accepted(base: Path) -> None:
    (base / "task_1").mkdir()
    assert fs.directory_problem(base, base / "task_1") is None


def test_a_base_reached_through_a_symlink_is_resolved(tmp_path: Path, base: Path) -> None:
    (base / "task_1").mkdir()
    os.symlink(base, tmp_path / "alias")
    assert fs.directory_problem(tmp_path / "alias", tmp_path / "alias" / "task_1") is None


def test_a_symlinked_task_directory_is_refused(tmp_path: Path, base: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", base / "task_1")
    os.symlink("task_2_real", base / "task_2")  # a link to a sibling inside base
    (base / "task_2_real").mkdir()
    for task in ("task_1", "task_2"):
        assert "符号链接" in fs.directory_problem(base, base / task)


def test_a_file_instead_of_a_directory_is_refused(base: Path) -> None:
    (base / "task_1").write_bytes(b"not a directory")
    assert "不是目录" in fs.directory_problem(base, base / "task_1")


def test_a_path_outside_the_base_is_refused(tmp_path: Path, base: Path) -> None:
    (tmp_path / "other" / "task_1").mkdir(parents=True)
    (base / "task_1" / "nested").mkdir(parents=True)
    os.symlink(tmp_path / "other", base / "linked_parent")
    for path in (
        tmp_path / "other" / "task_1",
        base / ".." / "other" / "task_1",
        base / "task_1" / "nested",  # not a direct child
        base / "linked_parent" / "task_1",  # inside base only through a link
    ):
        assert "不在任务根目录之下" in fs.directory_problem(base, path), path


def test_a_failed_detach_leaves_nothing_in_the_trash(base: Path) -> None:
    with pytest.raises(TaskFailed) as failed:
        Trash(base).detach("task_missing")
    assert failed.value.code == "DETACH_FAILED"
    assert os.listdir(base / ".trash") == []


def test_more_large_directories_than_threads(tmp_path: Path, monkeypatch, small_pool) -> None:
    # Several walks hand chunks to a 2-thread pool at once, one of them from
    # inside a pool thread: none may deadlock nor lose a chunk.
    monkeypatch.setattr(fs, "_CHUNK", 8)
    expected = (12 * 61, sum(60 * d + 1 for d in range(12)), 0)
    roots = [tmp_path / f"task_{n}" for n in range(4)]
    for root in roots:
        for d in range(12):
            (root / f"file_bak_{d}" / "inner").mkdir(parents=True)
            for i in range(60):
                (root / f"file_bak_{d}" / f"t_{i}.ddl").write_bytes(b"d" * d)
            (root / f"file_bak_{d}" / "inner" / "x").write_bytes(b"x")

    with ThreadPoolExecutor(3) as callers:
        dry = list(callers.map(lambda r: fs.walk_tree(r, remove=False), roots[:3]))
        inside = fs._get_pool().submit(fs.walk_tree, roots[3], remove=True)
        real = list(callers.map(lambda r: fs.walk_tree(r, remove=True), roots[:3]))
    assert [counts(s) for s in dry + real] == [expected] * 6
    assert counts(inside.result(timeout=60)) == expected
    assert not any(os.path.lexists(root) for root in roots)


# ---------------------------------------------------------------- what a dry run sees


@pytest.fixture
def flags(tmp_path: Path) -> Iterator:
    """``flags(path, "+i" | "+a")``: real chattr; cleared at teardown."""
    marked: list[Path] = []

    def mark(path: Path, flag: str) -> None:
        result = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"chattr {flag} not supported here: {result.stderr.strip()}")
        marked.append(path)

    yield mark
    for path in marked:
        subprocess.run(["chattr", "-i", "-a", str(path)], capture_output=True)


def test_dry_run_reports_immutable_and_append_only_entries_as_the_real_run_does(
    tmp_path: Path, flags
) -> None:
    root = tmp_path / "task_1"
    files, size = make_tree(root)
    (root / "sealed.log").write_bytes(b"s" * 11)  # +i: cannot be unlinked
    (root / "journal.log").write_bytes(b"j" * 13)  # +a: cannot be unlinked either
    (root / "append_dir").mkdir()  # +a directory: nothing in it can be removed
    for i in range(3):
        (root / "append_dir" / f"e_{i}.json").write_bytes(b"e" * 7)
    (root / "frozen_empty").mkdir()  # +i directory: empty, yet cannot be removed
    flags(root / "sealed.log", "+i")
    flags(root / "journal.log", "+a")
    flags(root / "append_dir", "+a")
    flags(root / "frozen_empty", "+i")
    stuck = {
        "sealed.log",
        "journal.log",
        "frozen_empty",
        *(f"append_dir/e_{i}.json" for i in range(3)),
    }

    dry = fs.walk_tree(root, remove=False)
    real = fs.walk_tree(root, remove=True)

    assert counts(dry) == counts(real) == (files, size, 6)
    for stats in (dry, real):
        assert {e.split(": ")[0] for e in stats.errors} == stuck
    assert sorted(os.listdir(root)) == ["append_dir", "frozen_empty", "journal.log", "sealed.log"]
    assert len(os.listdir(root / "append_dir")) == 3


def test_dry_run_reports_an_immutable_directory_s_entries_as_the_real_run_does(
    tmp_path: Path, chattr
) -> None:
    root = tmp_path / "task_1"
    (root / "vector_bak").mkdir(parents=True)
    for i in range(5):
        (root / "vector_bak" / f"e_{i}.json").write_bytes(b"x" * 10)
    (root / "free.txt").write_bytes(b"free")
    chattr(root / "vector_bak")

    dry = fs.walk_tree(root, remove=False)
    real = fs.walk_tree(root, remove=True)

    assert counts(dry) == counts(real) == (1, 4, 5)
    for stats in (dry, real):
        assert sorted(e.split(": ")[0] for e in stats.errors) == [
            f"vector_bak/e_{i}.json" for i in range(5)
        ]


_AS_NOBODY = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from service import fs  # imported as root: the interpreter's files are closed to nobody
os.setgroups([]); os.setgid(65534); os.setuid(65534)
out = {}
for remove in (False, True):
    s = fs.walk_tree(fs.Path(sys.argv[2]), remove=remove)
    out[str(remove)] = [s.files, s.bytes, s.error_count, sorted(e.split(": ")[0] for e in s.errors)]
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="switches to the user nobody (needs root)")
def test_dry_run_of_a_non_root_service_uses_permission_bits(tmp_path: Path) -> None:
    import json
    import tempfile

    top = Path(tempfile.mkdtemp(dir="/tmp"))  # tmp_path's parents are closed to nobody
    try:
        os.chmod(top, 0o755)
        root = top / "task_1"
        files, size = make_tree(root)
        (root / "readonly").mkdir()
        for i in range(4):
            (root / "readonly" / f"r_{i}.md").write_bytes(b"r" * 3)
        (root / "locked").mkdir()
        (root / "locked" / "secret.json").write_bytes(b"{}")
        subprocess.run(["chown", "-R", "65534:65534", str(top)], check=True)
        os.chmod(root / "readonly", 0o555)  # readable, not writable: its entries stay
        os.chmod(root / "locked", 0o000)  # not even readable

        result = subprocess.run(
            [sys.executable, "-c", _AS_NOBODY, str(Path(fs.__file__).parent.parent), str(root)],
            capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)

        assert out["False"] == out["True"]
        assert out["True"][:3] == [files, size, 5]
        assert out["True"][3] == ["locked", *(f"readonly/r_{i}.md" for i in range(4))]
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(top)], check=False)
        subprocess.run(["rm", "-rf", str(top)], check=False)


# ---------------------------------------------------------------- hard links: bytes actually freed


def test_a_file_hard_linked_twice_inside_the_tree_frees_its_bytes_once(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(fs, "_CHUNK", 4)  # the links land in different threads' chunks
    root = tmp_path / "task_1"
    for d in ("a", "b", "c"):
        (root / d).mkdir(parents=True)
        for i in range(20):
            (root / d / f"f_{i}.txt").write_bytes(b"f")
    (root / "a" / "model.bin").write_bytes(b"m" * 10_000)
    os.link(root / "a" / "model.bin", root / "b" / "model_link.bin")
    os.link(root / "a" / "model.bin", root / "c" / "model_link2.bin")
    expected = (60 + 3, 60 + 10_000, 0)

    dry = fs.walk_tree(root, remove=False)
    real = fs.walk_tree(root, remove=True)

    assert counts(dry) == counts(real) == expected
    assert not os.path.lexists(root)


def test_a_file_with_a_link_outside_the_tree_frees_nothing(tmp_path: Path) -> None:
    outside = tmp_path / "keep.bin"
    outside.write_bytes(b"k" * 5000)
    root = tmp_path / "task_1"
    root.mkdir()
    os.link(outside, root / "shared.bin")
    (root / "own.bin").write_bytes(b"o" * 7)

    dry = fs.walk_tree(root, remove=False)
    real = fs.walk_tree(root, remove=True)

    assert counts(dry) == counts(real) == (2, 7, 0)
    assert outside.read_bytes() == b"k" * 5000
    assert os.stat(outside).st_nlink == 1
