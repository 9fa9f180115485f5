"""The deletion pipeline under real faults of its own steps: observers that
raise, a dry run beside a lock, a lock held while a failed purge's remains go
back, a detach plugin that fails after moving, a COMMIT whose outcome is lost
to a hung (SIGSTOPped) database."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path

import psycopg2
import pytest

from service import appkeys, fs
from service.app import create_app
from service.hookspecs import hookimpl
from service.settings import load_settings
from tests.helpers import (
    Pg,
    audit_lines,
    delete_ok,
    insert_task,
    make_task_dir,
    server_pids,
    signal_all,
    tree_snapshot,
    write_settings,
)

LOCK_KEY = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"


def trash_is_empty(base_dir: Path) -> bool:
    return not (base_dir / ".trash").exists() or not any((base_dir / ".trash").iterdir())


# ---------------------------------------------------------------- observers and the audit


class RaisingObserver:
    @hookimpl(tryfirst=True)
    def dptask_after_delete(self, task, result):
        raise RuntimeError("observer broke")

    @hookimpl(tryfirst=True)
    def dptask_batch_finished(self, batch, data):
        raise RuntimeError("observer broke")


class CountingObserver:
    def __init__(self):
        self.seen = []

    @hookimpl(trylast=True)
    async def dptask_after_delete(self, task, result):
        self.seen.append(task.task_id)


COUNTING = CountingObserver()


@pytest.mark.parametrize("plugins", [[RaisingObserver(), COUNTING]])
async def test_a_raising_observer_silences_neither_the_audit_nor_other_observers(
    client, task_factory, base_dir, settings
):
    task_factory("task_a")
    body = await delete_ok(client, "task_a")
    assert body["message"] == "任务目录删除成功"
    assert not (base_dir / "task_a").exists()
    lines = audit_lines(settings)
    (line,) = [line for line in lines if line.get("task_id") == "task_a"]
    assert line["event"] == "task_delete" and line["outcome"] == "deleted"
    assert [line for line in lines if line["event"] == "delete_request"]
    assert COUNTING.seen == ["task_a"]


# ---------------------------------------------------------------- dry runs


async def test_a_dry_run_takes_no_lock(client, task_factory, database_url, base_dir):
    """Another session holds the task's advisory lock and its row: a dry run
    still answers, with the real counts, and changes nothing."""
    task_factory("task_a", files=6, size=10)
    before = tree_snapshot(base_dir / "task_a")
    other = psycopg2.connect(database_url)
    try:
        with other.cursor() as cur:
            cur.execute(LOCK_KEY, ("data_pipeline_task:task_a",))
            cur.execute("SELECT 1 FROM data_pipeline_tasks WHERE task_id = 'task_a' FOR UPDATE")
        body = await delete_ok(client, "task_a", dry_run=True)
        (done,) = body["data"]["deleted_tasks"]
        assert (done["deleted_files_count"], done["deleted_bytes"]) == (6, 71)  # config: 21 B
        body = await delete_ok(client, "task_a")  # a real run still respects the lock
        assert body["data"]["failed_tasks"][0]["error_code"] == "TASK_LOCKED"
    finally:
        other.rollback()
        other.close()
    assert tree_snapshot(base_dir / "task_a") == before


@pytest.mark.skipif(os.geteuid() != 0, reason="chattr +i needs root")
async def test_a_dry_run_reports_what_the_real_run_cannot_remove(
    client, task_factory, base_dir, pg, immutable
):
    task_dir = task_factory("task_a", files=5)
    immutable(task_dir / "table_0.ddl")
    before = tree_snapshot(task_dir)

    dry = await delete_ok(client, "task_a", dry_run=True)
    (failed,) = dry["data"]["failed_tasks"]
    assert failed["error_code"] == "PURGE_FAILED"
    assert any("table_0.ddl" in error for error in failed["errors"])
    assert tree_snapshot(task_dir) == before

    real = await delete_ok(client, "task_a")
    assert real["data"]["failed_tasks"][0]["error_code"] == "PURGE_FAILED"
    assert pg.task("task_a")["directory_exists"] is True


# ---------------------------------------------------------------- a failed purge beside a lock


class PurgeFailsWhileAnotherSessionLocks:
    """Another session takes the task's lock for a second just as the purge
    fails: the remains must still go back, once the lock is free."""

    def __init__(self, url: str) -> None:
        self.url = url

    @hookimpl(tryfirst=True)
    async def dptask_purge_directory(self, task, path):
        locked = threading.Event()

        def hold() -> None:
            conn = psycopg2.connect(self.url)
            with conn.cursor() as cur:
                cur.execute("BEGIN")
                cur.execute(LOCK_KEY, ("data_pipeline_task:" + task.task_id,))
                locked.set()
                time.sleep(1.0)
            conn.rollback()
            conn.close()

        threading.Thread(target=hold, daemon=True).start()
        await asyncio.to_thread(locked.wait, 10)
        stats = fs.TreeStats()
        stats.fail("table_0.ddl", "cannot remove")
        return stats


async def test_the_remains_of_a_failed_purge_go_back_once_the_lock_is_free(
    aiohttp_client, settings, database_url, task_factory, base_dir, pg
):
    app = create_app(settings)
    app[appkeys.PLUGINS].register(PurgeFailsWhileAnotherSessionLocks(database_url))
    client = await aiohttp_client(app)
    task_dir = task_factory("task_a", files=5)
    before = tree_snapshot(task_dir)
    body = await delete_ok(client, "task_a")
    (failed,) = body["data"]["failed_tasks"]
    assert failed["error_code"] == "PURGE_FAILED"
    assert "已放回任务目录" in failed["error"]
    assert tree_snapshot(task_dir) == before
    assert pg.task("task_a")["directory_exists"] is True
    assert trash_is_empty(base_dir)


# ---------------------------------------------------------------- a detach that fails after moving


class MovesThenFails:
    def __init__(self, elsewhere: Path) -> None:
        self.elsewhere = elsewhere

    @hookimpl(tryfirst=True)
    def dptask_detach_directory(self, task):
        os.rename(task.path, self.elsewhere / task.task_id)
        raise OSError("fsync failed after the rename")


async def test_a_detach_that_fails_after_moving_is_recorded_truthfully(
    aiohttp_client, settings, task_factory, workdir, base_dir, pg
):
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    app = create_app(settings)
    app[appkeys.PLUGINS].register(MovesThenFails(elsewhere))
    client = await aiohttp_client(app)
    task_factory("task_a")
    body = await delete_ok(client, "task_a")
    (failed,) = body["data"]["failed_tasks"]
    assert failed["error_code"] == "DETACH_FAILED"
    assert not (base_dir / "task_a").exists()
    assert pg.task("task_a")["directory_exists"] is False  # the record says what is true


# ---------------------------------------------------------------- a COMMIT lost to a hung database


class HangsTheDatabaseBeforeCommit:
    """Does the record step itself, then SIGSTOPs every server process, so
    that the COMMIT gets no answer; the server resumes a few seconds later."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.pids: list[int] = []

    @hookimpl(tryfirst=True)
    async def dptask_update_records(self, task):
        await task.transaction.set_directory_exists(False, task.now)
        self.pids = server_pids(self.pgdata)
        signal_all(self.pids, signal.SIGSTOP)
        threading.Timer(4.0, signal_all, (self.pids, signal.SIGCONT)).start()
        return False


async def test_a_commit_lost_to_a_hung_database_is_read_back(
    aiohttp_client, own_server, workdir, base_dir
):
    pgdata, url = own_server.pgdata, own_server.url
    config = write_settings(workdir, "[database]\ntimeout = 1\n")
    settings = load_settings(config, environ={"DATABASE_URL": url})
    hang = HangsTheDatabaseBeforeCommit(pgdata)
    app = create_app(settings)
    app[appkeys.PLUGINS].register(hang)
    client = await aiohttp_client(app)
    pg = Pg(url)
    insert_task(pg, "task_a")
    task_dir = make_task_dir(base_dir, "task_a", files=12)
    before = tree_snapshot(task_dir)

    body = await delete_ok(client, "task_a")

    signal_all(hang.pids, signal.SIGCONT)
    record = pg.task("task_a")
    pg.close()
    # Whatever the server did with the COMMIT, the answer and the disk follow it.
    if record["directory_exists"] is False:
        assert body["data"]["deleted_tasks"][0]["task_id"] == "task_a"
        assert not task_dir.exists()
    else:
        assert body["data"]["failed_tasks"][0]["error_code"] == "DATABASE_ERROR"
        assert tree_snapshot(task_dir) == before
    assert trash_is_empty(base_dir)
    assert "内部错误" not in json.dumps(body, ensure_ascii=False)


async def test_a_deletion_cancelled_during_its_commit_leaves_no_tree_stranded(
    client, task_factory, base_dir: Path, pg: Pg
):
    """A deletion cancelled (a drain's grace over, a shutdown) while its
    COMMIT is under way cannot know the outcome: the connection is closed and
    the server rolls back here (a deferred trigger fails after a pause). The
    tree must not stay in the trash with a record that says it is in place:
    once the lock is free it goes back, as for any unknown COMMIT."""
    from service.pipeline import BatchContext, DeleteOptions

    task_factory("cc1", files=4)
    before = tree_snapshot(base_dir / "cc1")
    pg.rows(
        "CREATE OR REPLACE FUNCTION dptask_test_slow_fail() RETURNS trigger AS $$"
        " BEGIN PERFORM pg_sleep(2); RAISE EXCEPTION 'refused at commit'; END $$"
        " LANGUAGE plpgsql"
    )
    pg.rows(
        "CREATE CONSTRAINT TRIGGER dptask_test_slow_commit AFTER UPDATE ON data_pipeline_tasks"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION dptask_test_slow_fail()"
    )
    deleter = client.app[appkeys.DELETER]
    batch = BatchContext(["cc1"], DeleteOptions(), "req-cancel", "127.0.0.1")
    deleting = asyncio.create_task(deleter.delete_one("cc1", batch))
    deadline = time.monotonic() + 10
    while (base_dir / "cc1").exists():  # detached: the COMMIT follows at once
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.7)  # inside the COMMIT's two seconds
    deleting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await deleting
    deadline = time.monotonic() + 20
    while not (base_dir / "cc1").exists():
        assert time.monotonic() < deadline, "the tree stayed in the trash"
        await asyncio.sleep(0.1)
    assert pg.task("cc1")["directory_exists"] is True
    assert tree_snapshot(base_dir / "cc1") == before
    assert trash_is_empty(base_dir)
