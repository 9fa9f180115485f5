"""A batch's tasks go in groups that share one transaction and one COMMIT; each
task is still whole or gone on its own, with its own outcome."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import pytest

from service import appkeys
from service.coalesce import Coalesced
from service.db import DatabaseError
from service.hookspecs import hookimpl
from tests.helpers import (
    audit_lines,
    delete_ok,
    insert_task,
    make_task_dir,
    send_in_background,
    tree_snapshot,
    wait_for,
    wait_for_empty_trash,
)
from tests.test_faults import start_paused_delete

IDS = [f"task_{c}" for c in "abcde"]
LOCK_TIMEOUT_1S = "[database]\nlock_timeout = 1\n"


def outcome(body):
    data = body["data"]
    return (
        sorted(t["task_id"] for t in data["deleted_tasks"]),
        {t["task_id"]: t["error_code"] for t in data["failed_tasks"]},
    )


@pytest.mark.parametrize("settings_text", [LOCK_TIMEOUT_1S], ids=["lock_timeout_1s"])
async def test_a_row_held_elsewhere_fails_only_its_own_task(
    client, task_factory, base_dir, pg, pipeline_session
):
    """The group cannot lock task_c's row (a pipeline worker holds it): the
    others are still deleted, and task_c waits no longer than lock_timeout."""
    for task_id in IDS:
        task_factory(task_id, files=3)
    before = tree_snapshot(base_dir / "task_c")
    with pipeline_session.cursor() as cur:
        cur.execute("SELECT * FROM data_pipeline_tasks WHERE task_id = 'task_c' FOR UPDATE")

    body = await delete_ok(client, *IDS)

    assert outcome(body) == (["task_a", "task_b", "task_d", "task_e"], {"task_c": "TASK_LOCKED"})
    assert tree_snapshot(base_dir / "task_c") == before
    pipeline_session.rollback()
    for task_id in IDS:
        assert pg.task(task_id)["directory_exists"] is (task_id == "task_c")
        assert (base_dir / task_id).exists() is (task_id == "task_c")
    assert list((base_dir / ".trash").iterdir()) == []


@pytest.mark.parametrize("settings_text", [LOCK_TIMEOUT_1S], ids=["lock_timeout_1s"])
async def test_a_step_row_held_elsewhere_fails_only_its_own_task(
    client, task_factory, base_dir, pg, pipeline_session
):
    """Deleting the group's records meets a step row of task_c that a worker
    holds: the group's COMMIT cannot happen, every tree goes back, and the
    tasks are deleted one at a time: all but task_c."""
    for task_id in IDS:
        task_factory(task_id, files=3)
    before = tree_snapshot(base_dir / "task_c")
    with pipeline_session.cursor() as cur:
        cur.execute(
            "UPDATE data_pipeline_task_steps SET error_message = 'x' WHERE task_id = 'task_c'"
        )

    body = await delete_ok(client, *IDS, delete_database_records=True)

    assert outcome(body) == (["task_a", "task_b", "task_d", "task_e"], {"task_c": "TASK_LOCKED"})
    assert tree_snapshot(base_dir / "task_c") == before
    pipeline_session.rollback()
    assert pg.task("task_c")["directory_exists"] is True
    assert len(pg.steps("task_c")) == 1
    for task_id in ("task_a", "task_b", "task_d", "task_e"):
        assert pg.task(task_id) is None
        assert pg.steps(task_id) == []
    assert list((base_dir / ".trash").iterdir()) == []


class FailsAfterAskingForAChange:
    """Asks for task_b's record change, then fails: the change must not be made."""

    @hookimpl(tryfirst=True)
    async def dptask_update_records(self, task):
        if task.task_id == "task_b":
            await task.transaction.set_directory_exists(False, task.now)
            raise RuntimeError("boom")


@pytest.mark.parametrize("plugins", [[FailsAfterAskingForAChange()]])
async def test_a_task_failing_in_its_group_is_put_back_and_left_out_of_the_commit(
    client, task_factory, base_dir, pg
):
    for task_id in IDS:
        task_factory(task_id, files=3)
    before = tree_snapshot(base_dir / "task_b")

    body = await delete_ok(client, *IDS)

    assert outcome(body) == (["task_a", "task_c", "task_d", "task_e"], {"task_b": "PLUGIN_ERROR"})
    assert tree_snapshot(base_dir / "task_b") == before
    assert pg.task("task_b")["directory_exists"] is True
    for task_id in ("task_a", "task_c", "task_d", "task_e"):
        assert pg.task(task_id)["directory_exists"] is False
        assert not (base_dir / task_id).exists()


class DetachesElsewhereThenFails:
    """task_a's tree is detached outside the trash (the hook allows it), and
    task_c's record step raises a database error: the group fails as a whole."""

    def __init__(self, where: Path) -> None:
        self.where = where

    @hookimpl(tryfirst=True)
    def dptask_detach_directory(self, task):
        if task.task_id != "task_a":
            return None
        self.where.mkdir(exist_ok=True)
        os.rename(task.path, self.where / task.task_id)
        return self.where / task.task_id

    @hookimpl(tryfirst=True)
    async def dptask_update_records(self, task):
        if task.task_id == "task_c":
            raise DatabaseError("the record step of one task failed")


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    return tmp_path / "elsewhere"


async def test_a_tree_that_cannot_go_back_fails_only_its_own_task(
    client, task_factory, base_dir, pg, settings, elsewhere
):
    """Putting task_a's tree back fails (it is not in the trash): that task says
    so, every other tree is back and its task is deleted, or fails, on its own;
    every task has its audit line, and the request is answered."""
    client.app[appkeys.PLUGINS].register(DetachesElsewhereThenFails(elsewhere))
    for task_id in IDS:
        task_factory(task_id, files=3)

    body = await delete_ok(client, *IDS)

    deleted, failed = outcome(body)
    assert deleted == ["task_b", "task_d", "task_e"]
    assert failed == {"task_a": "DATABASE_ERROR", "task_c": "DATABASE_ERROR"}
    assert os.listdir(base_dir / ".trash") == []
    assert (base_dir / "task_c").is_dir() and pg.task("task_c")["directory_exists"] is True
    assert (elsewhere / "task_a").is_dir() and pg.task("task_a")["directory_exists"] is True
    lines = [line for line in audit_lines(settings) if line["event"] == "task_delete"]
    assert sorted(line["task_id"] for line in lines) == IDS


class DetachesElsewhereThenFailsItsRecordOnce(DetachesElsewhereThenFails):
    """task_a's tree goes outside the trash, then task_a's own record step
    fails with a database error, once: its tree cannot go back, and the
    group fails as a whole."""

    def __init__(self, where: Path) -> None:
        super().__init__(where)
        self.failed = False

    @hookimpl(tryfirst=True)
    async def dptask_update_records(self, task):
        if task.task_id == "task_a" and not self.failed:
            self.failed = True
            raise DatabaseError("the record step of task_a failed")


async def test_a_task_whose_tree_did_not_go_back_is_not_run_again(
    client, task_factory, base_dir, pg, settings, elsewhere
):
    """Taken apart, the group runs its tasks again one at a time, but not
    task_a: its directory is not in its place only because its tree could not
    go back, and with allow_missing a second run would record it gone."""
    client.app[appkeys.PLUGINS].register(DetachesElsewhereThenFailsItsRecordOnce(elsewhere))
    for task_id in IDS:
        task_factory(task_id, files=3)

    body = await delete_ok(client, *IDS, allow_missing=True)

    deleted, failed = outcome(body)
    assert deleted == ["task_b", "task_c", "task_d", "task_e"]
    assert failed == {"task_a": "DATABASE_ERROR"}
    assert "未能放回原处" in body["data"]["failed_tasks"][0]["error"]
    assert (elsewhere / "task_a").is_dir() and pg.task("task_a")["directory_exists"] is True
    for task_id in deleted:
        assert not (base_dir / task_id).exists() and pg.task(task_id)["directory_exists"] is False
    assert os.listdir(base_dir / ".trash") == []
    lines = [line for line in audit_lines(settings) if line["event"] == "task_delete"]
    assert sorted(line["task_id"] for line in lines) == IDS  # one line each, task_a's once


class MovesThenFails(DetachesElsewhereThenFails):
    """task_a's detach moves its directory, then fails; task_c's record step
    fails with a database error, so the group fails as a whole."""

    @hookimpl(tryfirst=True)
    def dptask_detach_directory(self, task):
        if task.task_id == "task_a":
            super().dptask_detach_directory(task)
            raise OSError("the plugin failed after its rename")
        return None


@pytest.mark.parametrize("allow_missing", [True, False])
async def test_a_directory_moved_by_a_failing_plugin_stays_recorded_gone_when_its_group_fails(
    client, task_factory, base_dir, pg, settings, elsewhere, allow_missing
):
    """task_a's "not in place" went with the group's ROLLBACK: it is recorded
    again on its own, and task_a is not run again (a second run would report
    it deleted with no files, or missing with its record still "exists")."""
    client.app[appkeys.PLUGINS].register(MovesThenFails(elsewhere))
    for task_id in IDS:
        task_factory(task_id, files=3)

    body = await delete_ok(client, *IDS, allow_missing=allow_missing)

    deleted, failed = outcome(body)
    assert deleted == ["task_b", "task_d", "task_e"]
    assert failed == {"task_a": "DETACH_FAILED", "task_c": "DATABASE_ERROR"}
    assert (elsewhere / "task_a").is_dir() and pg.task("task_a")["directory_exists"] is False
    assert (base_dir / "task_c").is_dir() and pg.task("task_c")["directory_exists"] is True
    assert os.listdir(base_dir / ".trash") == []
    lines = [line for line in audit_lines(settings) if line["event"] == "task_delete"]
    assert sorted(line["task_id"] for line in lines) == IDS


class MovesThenFailsAlone:
    """The detach hook moves task_a's directory, then fails."""

    def __init__(self, where: Path) -> None:
        self.where = where

    @hookimpl(tryfirst=True)
    def dptask_detach_directory(self, task):
        self.where.mkdir(exist_ok=True)
        os.rename(task.path, self.where / task.task_id)
        raise OSError("the plugin failed after its rename")


@pytest.mark.parametrize("settings_text", ["[database]\ntimeout = 1\n"], ids=["timeout_1s"])
async def test_a_moved_directory_is_recorded_again_when_an_unknown_commit_did_not_happen(
    client, task_factory, pg, settings, elsewhere
):
    """The group's COMMIT outlasts database.timeout (a deferred trigger sleeps),
    then the server rolls it back: read back, task_a's record still says "in
    place" though a failing plugin moved its directory; it is recorded again."""
    client.app[appkeys.PLUGINS].register(MovesThenFailsAlone(elsewhere))
    task_factory("task_a", files=3)
    # Only the group's COMMIT is refused: nextval is not rolled back.
    pg.rows("DROP SEQUENCE IF EXISTS dptask_test_once")
    pg.rows("CREATE SEQUENCE dptask_test_once")
    pg.rows(
        "CREATE OR REPLACE FUNCTION dptask_test_refused_late() RETURNS trigger AS $$"
        " BEGIN IF nextval('dptask_test_once') = 1 THEN PERFORM pg_sleep(2);"
        " RAISE EXCEPTION 'refused at commit'; END IF; RETURN NULL; END $$ LANGUAGE plpgsql"
    )
    pg.rows(
        "CREATE CONSTRAINT TRIGGER dptask_test_refused_late AFTER UPDATE ON data_pipeline_tasks"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION dptask_test_refused_late()"
    )

    body = await delete_ok(client, "task_a")

    assert outcome(body) == ([], {"task_a": "DETACH_FAILED"})
    assert (elsewhere / "task_a").is_dir() and pg.task("task_a")["directory_exists"] is False
    lines = [line for line in audit_lines(settings) if line["event"] == "task_delete"]
    assert [line["task_id"] for line in lines] == ["task_a"]


@pytest.mark.slow
@pytest.mark.parametrize("step", ["record", "purge"])
def test_sigkill_of_a_group_settles_every_task_by_its_record(
    service_factory, workdir, base_dir, pg, step
):
    """A real service killed while a group of five is in flight: before its
    COMMIT every tree comes back and no record changed; after it, the restart
    finishes every deletion."""
    service, mark = start_paused_delete(service_factory, workdir, step, "task_a", {})
    trees = {}
    for task_id in IDS:
        insert_task(pg, task_id)
        trees[task_id] = tree_snapshot(make_task_dir(base_dir, task_id, files=20))
    send_in_background(service.url, {"task_ids": IDS, "confirm": True})
    wait_for(mark)
    assert not any((base_dir / t).exists() for t in IDS)  # all five detached together
    service.proc.send_signal(signal.SIGKILL)
    service.proc.wait()

    service_factory()  # restart, without the pausing plugin: its sweep settles the trash

    committed = step == "purge"
    for task_id in IDS:
        assert pg.task(task_id)["directory_exists"] is not committed
        if committed:
            assert not (base_dir / task_id).exists()
        else:
            assert tree_snapshot(base_dir / task_id) == trees[task_id]
    wait_for_empty_trash(base_dir)


async def test_calls_in_one_turn_share_one_thread_and_keep_their_own_outcomes():
    threads: list[int] = []

    def work(n: int) -> int:
        threads.append(threading.get_ident())
        if n == 3:
            raise ValueError(n)
        return n * 10

    coalesced = Coalesced(work)
    outcomes = await asyncio.gather(*(coalesced(n) for n in range(6)), return_exceptions=True)

    assert outcomes[:3] == [0, 10, 20] and outcomes[4:] == [40, 50]
    assert isinstance(outcomes[3], ValueError)
    assert len(threads) == 6 and len(set(threads)) == 1  # one worker thread for the turn
    assert threading.get_ident() not in threads  # never on the event loop's thread
    assert await coalesced(7) == 70  # a later turn: a new hop


async def test_calls_in_one_turn_can_be_one_call_of_many_each_with_its_own_outcome():
    batches: list[list[tuple]] = []

    def many(calls: list[tuple]) -> list:
        batches.append(calls)
        return [ValueError(n) if n == 3 else n * 10 for (n,) in calls]

    def failing(calls: list[tuple]) -> list:
        raise OSError("the whole call failed")

    coalesced = Coalesced(lambda n: n, many=many)
    outcomes = await asyncio.gather(*(coalesced(n) for n in range(6)), return_exceptions=True)

    assert batches == [[(n,) for n in range(6)]]  # one call for the turn
    assert outcomes[:3] == [0, 10, 20] and outcomes[4:] == [40, 50]
    assert isinstance(outcomes[3], ValueError)
    broken = Coalesced(lambda n: n, many=failing)
    outcomes = await asyncio.gather(broken(1), broken(2), return_exceptions=True)
    assert [type(o) for o in outcomes] == [OSError, OSError]  # each caller sees it
