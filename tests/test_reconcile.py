"""python run.py reconcile [--fix]: report, then repair, where disk and records disagree."""

from __future__ import annotations

import os
import subprocess
import sys

from service.trash import Trash
from tests.conftest import ROOT, insert_task, make_task_dir, tree_snapshot


def run_reconcile(workdir, database_url, *args):
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "--config", str(workdir / "settings.toml"),
         "reconcile", *args],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


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
    assert run_reconcile(workdir, database_url).stdout.count(": 0") == 5
