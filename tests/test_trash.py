"""service/trash.py: the service's own trash, on real file systems and real faults.

Every fault here is real: a symlink planted by whoever can write base_dir, a
foreign owner, loose permissions, another file system mounted at ``.trash``, a
bind mount (EBUSY, EXDEV), an immutable base (EPERM), a full ext4 and a tmpfs
out of inodes (ENOSPC), a process out of descriptors (EMFILE).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service import appkeys
from service.app import create_app
from service.errors import TaskFailed
from service.hookspecs import hookimpl
from service.settings import load_settings
from service.trash import Trash, TrashUnsafe
from tests.helpers import (
    ROOT,
    URL,
    delete_ok,
    insert_task,
    make_task_dir,
    mounted,
    run_py,
    tree_snapshot,
    write_settings,
)

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: mounts, chown, chattr")


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def decoy(outside: Path) -> dict[str, bytes | str]:
    """A folder that looks like a trash (both layouts) but is someone's home."""
    (outside / "0123456789abcdef0123456789abcdef.task_a").mkdir(parents=True)
    (outside / "0123456789abcdef0123456789abcdef.task_a" / "thesis.tex").write_text("mine")
    (outside / "fedcba9876543210fedcba9876543210" / "task_b").mkdir(parents=True)
    (outside / "fedcba9876543210fedcba9876543210" / "task_b" / "photo.jpg").write_text("mine")
    return tree_snapshot(outside)


# ---------------------------------------------------------------- an unsafe trash (item 2)


def make_unsafe(kind: str, base: Path, tmp: Path) -> contextlib.AbstractContextManager:
    trash = base / ".trash"
    if kind == "symlink":
        (tmp / "home").mkdir()
        trash.symlink_to(tmp / "home")
    elif kind == "file":
        trash.write_text("not a directory")
    elif kind == "foreign_owner":
        trash.mkdir(mode=0o700)
        os.chown(trash, 4321, 4321)
    elif kind == "group_bits":
        trash.mkdir()
        trash.chmod(0o750)
    elif kind == "other_device":
        trash.mkdir(mode=0o700)
        return mounted("-t", "tmpfs", "-o", "mode=0700", "tmpfs", at=trash)
    return contextlib.nullcontext()


UNSAFE = {
    "symlink": "回收区 .trash 是符号链接，拒绝使用",
    "file": "回收区 .trash 不是目录，拒绝使用",
    "foreign_owner": "回收区 .trash 属于用户 4321",
    "group_bits": "回收区 .trash 的权限是 750",
    "other_device": "回收区 .trash 不在任务根目录所在的文件系统上，拒绝使用",
}


@root_only
@pytest.mark.parametrize("kind", sorted(UNSAFE))
def test_an_unsafe_trash_is_refused_and_the_task_stays(tmp_path: Path, kind: str) -> None:
    base = tmp_path / "training_data"
    base.mkdir()
    task = make_task_dir(base, "task_a")
    before = tree_snapshot(task)
    with make_unsafe(kind, base, tmp_path):
        trash = Trash(base)
        with pytest.raises(TrashUnsafe) as unsafe:
            trash.open()
        assert UNSAFE[kind] in str(unsafe.value) and "\n" not in str(unsafe.value)
        with pytest.raises(TaskFailed) as failed:
            trash.detach("task_a")
        assert failed.value.code == "TRASH_UNSAFE" and UNSAFE[kind] in failed.value.message
        with pytest.raises(TrashUnsafe):
            trash.entries()
        assert tree_snapshot(task) == before


@root_only
async def test_start_up_refuses_a_trash_symlink_and_touches_nothing_through_it(
    aiohttp_client, settings, base_dir, workdir, pg
):
    outside = workdir / "home"
    before = decoy(outside)
    (base_dir / ".trash").symlink_to(outside)

    with pytest.raises(TrashUnsafe, match=r"回收区 \.trash 是符号链接，拒绝使用"):
        await aiohttp_client(create_app(settings))

    assert tree_snapshot(outside) == before


def test_the_service_process_says_why_in_one_line(pg, base_dir, workdir, database_url):
    outside = workdir / "home"
    before = decoy(outside)
    (base_dir / ".trash").symlink_to(outside)
    env = {**os.environ, "DATABASE_URL": database_url}
    result = run_py("--config", str(workdir / "settings.toml"), "--port", "0", env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: 回收区 .trash 是符号链接，拒绝使用"
    assert tree_snapshot(outside) == before


@root_only
def test_reconcile_refuses_a_trash_symlink_and_touches_nothing_through_it(
    service_factory, pg, base_dir, workdir, database_url
):
    service_factory().stop()  # the schema exists
    insert_task(pg, "task_a", directory_exists=False)  # a committed deletion: would be purged
    insert_task(pg, "task_c")  # recorded, no directory: --fix would flip it
    insert_task(pg, "task_d")
    make_task_dir(base_dir, "task_d")
    outside = workdir / "home"
    before = decoy(outside)
    os.rmdir(base_dir / ".trash")
    (base_dir / ".trash").symlink_to(outside)

    for args in ([], ["--fix"]):
        env = {**os.environ, "DATABASE_URL": database_url}
        result = run_py("--config", str(workdir / "settings.toml"), "reconcile", *args, env=env)
        assert result.returncode == 2
        assert result.stderr.strip() == "error: 回收区 .trash 是符号链接，拒绝使用"
    assert tree_snapshot(outside) == before
    assert pg.task("task_c")["directory_exists"] is True


async def test_a_trash_swapped_for_a_symlink_while_serving_fails_deletions(
    client, task_factory, base_dir, workdir, pg
):
    task = task_factory("task_a")
    before = tree_snapshot(task)
    outside = workdir / "home"
    home = decoy(outside)
    # Whoever can write base_dir renames the real trash away and plants a link.
    (base_dir / ".trash").rename(base_dir / "old_trash")
    (base_dir / ".trash").symlink_to(outside)

    for dry_run in (True, False):  # a dry run says what the real run would
        body = await delete_ok(client, "task_a", dry_run=dry_run)
        (failed,) = body["data"]["failed_tasks"]
        assert failed["error_code"] == "TRASH_UNSAFE"
        assert failed["error"] == "回收区 .trash 是符号链接，拒绝使用"
    assert tree_snapshot(task) == before
    assert tree_snapshot(outside) == home
    assert os.listdir(base_dir / "old_trash") == []
    assert pg.task("task_a")["directory_exists"] is True


async def test_the_trash_is_the_services_own(client, base_dir):
    st = os.lstat(base_dir / ".trash")
    assert (st.st_mode & 0o777, st.st_uid, st.st_dev) == (
        0o700,
        os.geteuid(),
        base_dir.stat().st_dev,
    )


# ---------------------------------------------------------------- a full disk (item 4)


def fill_blocks(directory: Path) -> None:
    """Write until the file system has no block left (for root too: -m 0)."""
    fd = os.open(directory / ".filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1024 * 1024, 4096, 512):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def fill_inodes(directory: Path) -> None:
    (directory / ".fill").mkdir()
    try:
        for i in range(100_000):
            (directory / ".fill" / str(i)).touch()
    except OSError as e:
        assert e.errno == errno.ENOSPC


def assert_full(base: Path) -> None:
    """What the old detach did first (a new directory) fails here."""
    with pytest.raises(OSError) as full:
        os.mkdir(base / ".trash" / "0123456789abcdef0123456789abcdef")
    assert full.value.errno == errno.ENOSPC


@contextlib.contextmanager
def full_ext4(workdir: Path) -> Iterator[Path]:
    image, mount = workdir / "disk.img", workdir / "full"
    mount.mkdir()
    with open(image, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    sh("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
    with mounted("-o", "loop", str(image), at=mount):
        yield mount


async def app_on(aiohttp_client, workdir: Path, database_url: str, base: str):
    path = write_settings(workdir, f'[tasks]\nbase_dir = "{base}"\n')
    settings = load_settings(path, environ={**os.environ, "DATABASE_URL": database_url})
    return await aiohttp_client(create_app(settings))


@root_only
async def test_deleting_on_a_file_system_out_of_blocks(aiohttp_client, workdir, database_url, pg):
    with full_ext4(workdir) as base:
        client = await app_on(aiohttp_client, workdir, database_url, "full")
        insert_task(pg, "task_a")
        task = make_task_dir(base, "task_a", files=12, size=200_000)
        fill_blocks(base)
        assert_full(base)
        free_before = os.statvfs(base).f_bfree

        body = await delete_ok(client, "task_a")

        (deleted,) = body["data"]["deleted_tasks"]
        assert deleted["deleted_bytes"] == 11 * 200_000 + len(json.dumps({"task_id": "task_a"}))
        assert not task.exists() and os.listdir(base / ".trash") == []
        assert (os.statvfs(base).f_bfree - free_before) * os.statvfs(base).f_frsize >= 2_000_000
        assert pg.task("task_a")["directory_exists"] is False
        await client.close()


@root_only
async def test_deleting_on_a_file_system_out_of_inodes(aiohttp_client, workdir, database_url, pg):
    mount = workdir / "few_inodes"
    mount.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=4m,nr_inodes=64", "tmpfs", at=mount) as base:
        client = await app_on(aiohttp_client, workdir, database_url, "few_inodes")
        insert_task(pg, "task_a")
        task = make_task_dir(base, "task_a", files=8)
        fill_inodes(base)
        assert_full(base)
        assert os.statvfs(base).f_ffree == 0

        body = await delete_ok(client, "task_a")

        assert body["data"]["deleted_tasks"][0]["deleted_files_count"] == 8
        assert not task.exists() and os.listdir(base / ".trash") == []
        assert os.statvfs(base).f_ffree >= 10  # 8 files and 2 directories
        assert pg.task("task_a")["directory_exists"] is False
        await client.close()


@root_only
def test_no_space_for_a_new_trash_is_no_space(tmp_path: Path) -> None:
    with mounted("-t", "tmpfs", "-o", "size=4m,nr_inodes=16", "tmpfs", at=tmp_path) as base:
        task = make_task_dir(base, "task_a", files=3)
        fill_inodes(base)
        with pytest.raises(TaskFailed) as failed:
            Trash(base).detach("task_a")
        assert failed.value.code == "NO_SPACE"
        assert failed.value.message == (
            "打开回收区失败：磁盘空间或 inode 已满（No space left on device），任务未删除"
        )
        assert (task / "task_config.json").exists()


@root_only
async def test_no_room_for_a_trash_at_start_up_still_serves(
    aiohttp_client, workdir, database_url, pg
):
    mount = workdir / "full"
    mount.mkdir()
    with mounted("-t", "tmpfs", "-o", "size=4m,nr_inodes=32", "tmpfs", at=mount) as base:
        task = make_task_dir(base, "task_a", files=3)
        fill_inodes(base)  # before the first start: no .trash, and no inode for one
        client = await app_on(aiohttp_client, workdir, database_url, "full")
        insert_task(pg, "task_a")

        body = await delete_ok(client, "task_a")

        assert body["data"]["failed_tasks"][0]["error_code"] == "NO_SPACE"
        assert (task / "task_config.json").exists()
        assert pg.task("task_a")["directory_exists"] is True
        await client.close()


# ---------------------------------------------------------------- each detach failure (item 13)


@root_only
async def test_an_immutable_base_is_permission_denied(client, task_factory, base_dir, pg):
    task = task_factory("task_a")
    before = tree_snapshot(task)
    sh("chattr", "+i", str(base_dir))  # even root cannot rename out of it
    try:
        body = await delete_ok(client, "task_a")
    finally:
        sh("chattr", "-i", str(base_dir))
    (failed,) = body["data"]["failed_tasks"]
    assert failed["error_code"] == "PERMISSION_DENIED" and failed["error"].startswith(
        "任务目录移入回收区失败：操作不被允许"
    )
    assert tree_snapshot(task) == before
    assert pg.task("task_a")["directory_exists"] is True


@root_only
def test_a_task_directory_that_is_a_mount_point_is_busy(tmp_path: Path) -> None:
    base = tmp_path / "training_data"
    task = make_task_dir(base, "task_a")
    before = tree_snapshot(task)
    with mounted("--bind", str(task), at=task):
        with pytest.raises(TaskFailed) as failed:
            Trash(base).detach("task_a")
        assert failed.value.code == "DIRECTORY_BUSY"
        assert failed.value.message == (
            "任务目录移入回收区失败：任务目录正被占用，可能是挂载点"
            "（Device or resource busy），任务未删除"
        )
    assert tree_snapshot(task) == before and os.listdir(base / ".trash") == []


@root_only
def test_a_trash_on_another_mount_of_the_same_file_system_is_unsafe(tmp_path: Path) -> None:
    base = tmp_path / "training_data"
    task = make_task_dir(base, "task_a")
    (base / ".trash").mkdir(mode=0o700)
    with (
        mounted("--bind", str(base / ".trash"), at=base / ".trash"),  # same device: EXDEV
        pytest.raises(TaskFailed) as failed,
    ):
        Trash(base).detach("task_a")
    assert failed.value.code == "TRASH_UNSAFE" and "挂载点" in failed.value.message
    assert (task / "task_config.json").exists()


OUT_OF_DESCRIPTORS = """
import errno, json, os, resource, sys
from pathlib import Path
from service.errors import TaskFailed
from service.hookspecs import hookimpl
from service.trash import Trash

base, opened_first = Path(sys.argv[1]), sys.argv[2] == "opened"
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
trash = Trash(base)
if opened_first:
    trash.open()
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError as e:
    assert e.errno == errno.EMFILE
try:
    print(json.dumps({"detached": str(trash.detach("task_a"))}))
except TaskFailed as e:
    print(json.dumps({"code": e.code, "message": e.message}))
"""


@pytest.mark.parametrize("opened", ["opened", "not_opened"])
def test_out_of_descriptors(tmp_path: Path, opened: str) -> None:
    """Item 3: with the trash open, a detach needs no new descriptor, and
    reports where the tree is; without, it fails as RESOURCE_EXHAUSTED."""
    base = tmp_path / "training_data"
    task = make_task_dir(base, "task_a")
    before = tree_snapshot(task)
    run = subprocess.run(
        [sys.executable, "-c", OUT_OF_DESCRIPTORS, str(base), opened],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])  # after the log line
    if opened == "opened":
        detached = Path(result["detached"])
        assert not task.exists() and tree_snapshot(detached) == before  # where it says
        Trash(base).reattach(detached, "task_a")
        assert tree_snapshot(task) == before
    else:
        assert result["code"] == "RESOURCE_EXHAUSTED" and "描述符" in result["message"]
        assert tree_snapshot(task) == before


# ---------------------------------------------------------------- the sweep


async def eventually(done: Callable[[], bool], within: float = 120) -> None:
    """The background sweep's work, awaited without a tight margin."""
    deadline = time.monotonic() + within
    while not done():
        assert time.monotonic() < deadline, "the background sweep never finished"
        await asyncio.sleep(0.05)


async def wait_until_empty(directory: Path) -> None:
    await eventually(lambda: not any(directory.iterdir()))


TOKEN = "0123456789abcdef0123456789abcdef"


async def test_start_up_puts_back_before_listening_and_purges_in_the_background(
    aiohttp_client, settings, base_dir, pg
):
    # Two trees a crash left: one never committed, one committed and large.
    trash = base_dir / ".trash"
    trash.mkdir(mode=0o700)
    await (await aiohttp_client(create_app(settings))).close()  # the schema, an empty trash
    insert_task(pg, "task_kept")
    insert_task(pg, "task_gone", directory_exists=False)
    kept = make_task_dir(base_dir, "task_kept", files=20)
    before = tree_snapshot(kept)
    kept.rename(trash / f"{TOKEN}.task_kept")
    gone = trash / f"{TOKEN[::-1]}.task_gone"
    gone.mkdir()
    for d in range(30):
        (gone / f"d{d}").mkdir()
        for i in range(1000):
            (gone / f"d{d}" / f"t_{i}.ddl").touch()

    client = await aiohttp_client(create_app(settings))

    # Serving: the uncommitted tree is already back, the large purge not done.
    assert tree_snapshot(kept) == before
    assert gone.exists()
    resp = await client.get(f"{URL}?limit=5")
    assert resp.status == 200
    await wait_until_empty(trash)
    assert pg.task("task_gone")["directory_exists"] is False
    assert pg.task("task_kept")["directory_exists"] is True


@root_only
async def test_the_sweep_understands_the_layouts_earlier_versions_left(
    aiohttp_client, settings, base_dir, workdir, pg
):
    await (await aiohttp_client(create_app(settings))).close()  # the schema
    trash = base_dir / ".trash"
    layout = {
        # .trash/<token>/<task_id>: a deletion never committed, and one committed
        trash / ("a" * 32) / "task_old_kept": True,
        trash / ("b" * 32) / "task_old_gone": False,
        # .restore-<token>/<task_id>: a restore committed, and one not
        base_dir / f".restore-{'c' * 32}" / "task_restored": True,
        base_dir / f".restore-{'d' * 32}" / "task_not_restored": False,
    }
    snapshots = {}
    for path, exists in layout.items():
        insert_task(pg, path.name, directory_exists=exists)
        make_task_dir(path.parent, path.name)
        snapshots[path.name] = tree_snapshot(path)
    # Whoever can write base_dir plants a holder that leads out of it.
    outside = workdir / "home"
    decoy(outside)
    (base_dir / f".restore-{'e' * 32}").symlink_to(outside)
    (outside / "task_not_restored").mkdir()
    home = tree_snapshot(outside)

    await aiohttp_client(create_app(settings))
    await eventually(lambda: not any(trash.iterdir()) and len(list(base_dir.iterdir())) == 4)

    for name in ("task_old_kept", "task_restored"):
        assert tree_snapshot(base_dir / name) == snapshots[name]
    for name in ("task_old_gone", "task_not_restored"):
        assert not (base_dir / name).exists()
    assert sorted(p.name for p in base_dir.iterdir()) == [
        ".restore-" + "e" * 32, ".trash", "task_old_kept", "task_restored"
    ]  # fmt: skip
    assert tree_snapshot(outside) == home


class SwapsTrashThenFails:
    """Between the detach and the commit, whoever can write base_dir swaps
    the trash for a symlink; then the record step fails."""

    def __init__(self, outside: Path) -> None:
        self.outside = outside

    @hookimpl(tryfirst=True)
    def dptask_update_records(self, task):
        base = task.settings.base_dir
        (base / ".trash").rename(base / "old_trash")
        (base / ".trash").symlink_to(self.outside)
        raise TaskFailed("RECORD_REFUSED", "记录步骤失败")


async def test_a_tree_goes_back_even_if_the_trash_was_swapped_meanwhile(
    aiohttp_client, settings, base_dir, workdir, pg
):
    outside = workdir / "home"
    home = decoy(outside)
    app = create_app(settings)
    app[appkeys.PLUGINS].register(SwapsTrashThenFails(outside))
    client = await aiohttp_client(app)
    insert_task(pg, "task_a")
    task = make_task_dir(base_dir, "task_a", files=9)
    before = tree_snapshot(task)

    body = await delete_ok(client, "task_a")

    (failed,) = body["data"]["failed_tasks"]
    assert failed["error_code"] == "RECORD_REFUSED"
    assert tree_snapshot(task) == before  # back, through the descriptors held
    assert os.listdir(base_dir / "old_trash") == []
    assert tree_snapshot(outside) == home
    assert pg.task("task_a")["directory_exists"] is True
