"""python run.py reconcile [--fix]: report, then repair, where disk and records disagree."""

from __future__ import annotations

import os

import pytest

from service.trash import Trash
from tests.helpers import insert_task, make_task_dir, mounted, run_py, tree_snapshot


def run_reconcile(workdir, database_url, *args):
    env = {**os.environ, "DATABASE_URL": database_url}
    return run_py("--config", str(workdir / "settings.toml"), "reconcile", *args, env=env)


def test_reconcile_reports_then_fixes_and_deletes_nothing_but_trash(
    service_factory, pg, base_dir, workdir, database_url
):
    service_factory().stop()  # the schema exists; the service is not running
    insert_task(pg, "task_lost")  # recorded as existing, no directory
    insert_task(pg, "task_back", directory_exists=False)  # recorded as gone, directory there
    make_task_dir(base_dir, "task_back")
    make_task_dir(base_dir, "task_orphan")  # no record
    make_task_dir(base_dir, "vector_bak")  # protected: never a task
    insert_task(pg, "task_done", directory_exists=False)  # committed, left in the trash
    make_task_dir(base_dir, "task_done")
    Trash(base_dir).detach("task_done")
    insert_task(pg, "task_uncommitted")  # a crash between the rename and the commit
    make_task_dir(base_dir, "task_uncommitted")
    Trash(base_dir).detach("task_uncommitted")
    insert_task(pg, "task_fine")
    make_task_dir(base_dir, "task_fine")
    kept = {
        name: tree_snapshot(base_dir / name) for name in ("task_back", "task_orphan", "task_fine")
    }

    report = run_reconcile(workdir, database_url)
    assert report.returncode == 1
    out = report.stdout
    assert "records whose directory is missing: 2\n  task_lost\n  task_uncommitted" in out
    assert "directories recorded as deleted: 1\n  task_back" in out
    assert "directories with no record (left alone): 1\n  task_orphan" in out
    assert "trash left behind: 2" in out and "task_done" in out
    assert "vector_bak" not in out and "task_fine" not in out
    assert pg.task("task_lost")["directory_exists"] is True  # a report changes nothing

    fixed = run_reconcile(workdir, database_url, "--fix")
    assert pg.task("task_lost")["directory_exists"] is False
    assert pg.task("task_back")["directory_exists"] is True
    assert pg.task("task_fine")["directory_exists"] is True
    # Never committed as deleted: put back, not purged.
    assert (base_dir / "task_uncommitted" / "task_config.json").exists()
    assert pg.task("task_uncommitted")["directory_exists"] is True
    assert os.listdir(base_dir / ".trash") == []
    for name, snapshot in kept.items():
        assert tree_snapshot(base_dir / name) == snapshot  # nothing but trash is deleted
    assert "task_orphan" in fixed.stdout and fixed.returncode == 1  # still there to look at
    assert run_reconcile(workdir, database_url).stdout.count(": 0") == 7


# ---------------------------------------------------------------- a base that is not the truth


def flags(pg, *task_ids):
    return [pg.task(t)["directory_exists"] for t in task_ids]


def test_fix_refuses_a_missing_base_dir_unless_forced(
    service_factory, pg, base_dir, workdir, database_url
):
    service_factory().stop()
    insert_task(pg, "task_a")
    insert_task(pg, "task_b")
    base_dir.rename(workdir / "moved_away")

    refused = run_reconcile(workdir, database_url, "--fix")

    assert refused.returncode == 2
    assert "不存在（未挂载？），拒绝修正记录；确认无误请加 --force" in refused.stderr
    assert flags(pg, "task_a", "task_b") == [True, True]
    report = run_reconcile(workdir, database_url)  # a report still reports, and warns
    assert report.returncode == 1 and report.stdout.startswith("warning: 任务根目录")
    assert flags(pg, "task_a", "task_b") == [True, True]

    forced = run_reconcile(workdir, database_url, "--fix", "--force")
    assert forced.returncode == 1, forced.stderr
    assert flags(pg, "task_a", "task_b") == [False, False]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs")
def test_fix_refuses_an_unmounted_share_and_another_file_system(
    service_factory, pg, base_dir, workdir, database_url
):
    service_factory().stop()
    with mounted("-t", "tmpfs", "tmpfs", at=base_dir):  # the share, mounted
        insert_task(pg, "task_a")
        insert_task(pg, "task_gone")  # recorded as existing, really gone
        make_task_dir(base_dir, "task_a")
        first = run_reconcile(workdir, database_url, "--fix")  # remembers this file system
        assert first.returncode == 0, first.stdout + first.stderr
        assert flags(pg, "task_a", "task_gone") == [True, False]

    # Unmounted: base_dir is the empty mount point.
    refused = run_reconcile(workdir, database_url, "--fix")
    assert refused.returncode == 2 and "是空的，而 1 条记录说目录存在" in refused.stderr
    assert flags(pg, "task_a") == [True]

    with mounted("-t", "tmpfs", "tmpfs", at=base_dir):  # another file system, not empty
        make_task_dir(base_dir, "task_other")
        refused = run_reconcile(workdir, database_url, "--fix")
        assert refused.returncode == 2
        assert "所在的文件系统与上次修正时不同" in refused.stderr
        assert flags(pg, "task_a") == [True]
        assert os.listdir(base_dir) == ["task_other"]  # not even a .trash was made

        forced = run_reconcile(workdir, database_url, "--fix", "--force")
        assert forced.returncode == 1 and flags(pg, "task_a") == [False]
        # Forced once, it is the file system from now on.
        again = run_reconcile(workdir, database_url, "--fix")
        assert again.returncode == 1 and "task_other" in again.stdout


def test_records_whose_output_directory_is_elsewhere_are_left_alone(
    service_factory, pg, base_dir, workdir, database_url
):
    service_factory().stop()
    insert_task(pg, "task_here")
    insert_task(pg, "task_there")
    insert_task(pg, "task_lost")
    make_task_dir(base_dir, "task_here")
    pg.rows(
        "UPDATE data_pipeline_tasks SET output_directory = %s WHERE task_id = %s",
        (str(base_dir / "task_here"), "task_here"),
    )
    pg.rows(
        "UPDATE data_pipeline_tasks SET output_directory = %s WHERE task_id = %s",
        (str(workdir / "elsewhere" / "task_there"), "task_there"),
    )

    fixed = run_reconcile(workdir, database_url, "--fix")

    out = fixed.stdout
    assert "records whose output_directory is elsewhere (left alone): 1\n  task_there" in out
    assert "fixed: 1\n  task_lost" in out
    assert flags(pg, "task_here", "task_there", "task_lost") == [True, True, False]
