"""Mount points inside a task (issue 8, finding 1), with real bind mounts of the
same file system: the pre-delete check refuses the task, and the walk itself
never enters a mount point even when the check was passed (mounted later).

Needs root (mount); every mount is undone in a fixture teardown."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from service import fs, mounts
from tests.helpers import URL, insert_task, make_task_dir, tree_snapshot

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")


@pytest.fixture
def bind() -> Iterator:
    """``bind(src, dst)``: a real ``mount --bind``; every one unmounted at teardown."""
    done: list[Path] = []

    def mount(src: Path, dst: Path) -> None:
        subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
        done.append(dst)

    yield mount
    for dst in reversed(done):
        if subprocess.run(["umount", str(dst)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(dst)], check=False)


def precious(tmp_path: Path) -> Path:
    """A directory on the same file system as the task (the case st_dev misses)."""
    src = tmp_path / "srv" / "x"
    (src / "models").mkdir(parents=True)
    (src / "models" / "weights.bin").write_bytes(b"w" * 5000)
    (src / "index.json").write_bytes(b"{}")
    return src


# ---------------------------------------------------------------- the pre-delete check


def test_a_bind_mount_inside_the_task_is_refused_naming_it(tmp_path: Path, bind) -> None:
    base = tmp_path / "training_data"
    task = make_task_dir(base, "t1")
    (task / "cache").mkdir()
    bind(precious(tmp_path), task / "cache")
    assert os.stat(task / "cache").st_dev == os.stat(task).st_dev  # what fooled the old check

    assert fs.directory_problem(base, task) == "任务目录内有挂载点，拒绝删除: cache"


def test_a_mount_point_deep_inside_with_a_space_in_its_name(tmp_path: Path, bind) -> None:
    # mountinfo writes the space as \040: the message must name the real directory.
    base = tmp_path / "training_data"
    task = make_task_dir(base, "t1")
    (task / "vector_bak" / "my cache").mkdir()
    bind(precious(tmp_path), task / "vector_bak" / "my cache")

    assert fs.directory_problem(base, task) == "任务目录内有挂载点，拒绝删除: vector_bak/my cache"


def test_a_task_directory_that_is_itself_a_mount_point_is_refused(tmp_path: Path, bind) -> None:
    base = tmp_path / "training_data"
    task = make_task_dir(base, "t1")
    bind(precious(tmp_path), task)

    assert mounts.is_mount_point(task)
    assert fs.directory_problem(base, task) == "任务目录本身是挂载点，拒绝删除"


def test_a_task_without_mounts_is_accepted(tmp_path: Path, bind) -> None:
    base = tmp_path / "training_data"
    task = make_task_dir(base, "t1")
    other = make_task_dir(base, "t2")
    bind(precious(tmp_path), other / "vector_bak")  # a sibling's mount is not ours

    assert not mounts.is_mount_point(task)
    assert mounts.mounts_below(task) == []
    assert fs.directory_problem(base, task) is None


async def test_delete_of_a_task_holding_a_bind_mount_is_refused(
    client, base_dir: Path, workdir: Path, schema, bind
) -> None:
    src = precious(workdir)
    before_src = tree_snapshot(src)
    insert_task(schema, "t1")
    task = make_task_dir(base_dir, "t1")
    (task / "cache").mkdir()
    bind(src, task / "cache")
    before_task = tree_snapshot(task)

    resp = await client.request("DELETE", URL, json={"task_ids": ["t1"], "confirm": True})
    body = await resp.json()

    (failed,) = body["data"]["failed_tasks"]
    assert failed["error_code"] == "UNSAFE_PATH"
    assert failed["error"] == "任务目录内有挂载点，拒绝删除: cache"
    assert tree_snapshot(src) == before_src
    assert tree_snapshot(task) == before_task
    assert schema.task("t1")["directory_exists"] is True


# ---------------------------------------------------------------- the walk itself


@pytest.fixture(params=[True, False], ids=["openat2", "mount-id-fallback"])
def opening(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The walk with openat2, and with the fallback a kernel before 5.6 gets."""
    if not request.param:
        monkeypatch.setattr(mounts, "_openat2_missing", True)


@pytest.mark.usefixtures("opening")
def test_the_walk_never_enters_a_bind_mount_met_after_the_check(tmp_path: Path, bind) -> None:
    # The check passed, then something mounted: purge must stop at the mount point.
    src = precious(tmp_path)
    before = tree_snapshot(src)
    holder = tmp_path / "trash" / "token"
    task = make_task_dir(holder, "t1")
    (task / "vector_bak" / "cache").mkdir()
    bind(src, task / "vector_bak" / "cache")
    size = 4 * 100 + len((task / "task_config.json").read_bytes())

    dry = fs.walk_tree(task, remove=False)
    real = fs.walk_tree(task, remove=True)

    for stats in (dry, real):
        assert (stats.files, stats.bytes, stats.error_count) == (5, size, 1)
        assert stats.errors[0].startswith("vector_bak/cache: 挂载点")
    assert tree_snapshot(src) == before
    assert tree_snapshot(holder) == {
        "t1": "dir",
        "t1/vector_bak": "dir",
        "t1/vector_bak/cache": "dir",
        **{f"t1/vector_bak/cache/{k}": v for k, v in before.items()},
    }


@pytest.mark.usefixtures("opening")
def test_the_walk_refuses_a_root_that_is_a_mount_point(tmp_path: Path, bind) -> None:
    src = precious(tmp_path)
    before = tree_snapshot(src)
    task = tmp_path / "base" / "t1"
    task.mkdir(parents=True)
    bind(src, task)

    stats = fs.walk_tree(task, remove=True)

    assert (stats.files, stats.error_count) == (0, 1)
    assert stats.errors[0].startswith(".: 挂载点")
    assert tree_snapshot(src) == before


def test_mountinfo_unescapes_octal() -> None:
    assert mounts._unescape(r"/srv/my\040cache\011x\134y") == "/srv/my cache\tx\\y"


def test_the_mount_table_is_read_again_after_every_change(tmp_path: Path, bind) -> None:
    """The check keeps a copy of the mount table: a mount or unmount made after
    a check is seen by the very next one, never a stale copy."""
    task = make_task_dir(tmp_path, "task_a", files=1)
    source = tmp_path / "source"
    source.mkdir()
    (task / "mnt").mkdir()
    assert fs.directory_problem(tmp_path, task) is None  # the copy is taken here
    for _ in range(3):
        bind(source, task / "mnt")
        assert "mnt" in (fs.directory_problem(tmp_path, task) or "")
        subprocess.run(["umount", str(task / "mnt")], check=True)
        assert fs.directory_problem(tmp_path, task) is None
