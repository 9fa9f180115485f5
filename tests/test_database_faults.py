"""The database layer never hangs: a hung (SIGSTOPped) PostgreSQL, a COMMIT
that gets no answer, a row another session holds with FOR UPDATE."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from service.app import create_app
from service.db import CommitUnknown, Database, DatabaseTimeout
from service.settings import load_settings
from tests.helpers import (
    URL,
    OwnServer,
    Pg,
    children,
    insert_task,
    make_task_dir,
    postmaster_pid,
    signal_all,
    tree_snapshot,
    with_database,
    write_settings,
)

# A load or fault test: .ci/run runs it once, not again on the embedded server.
pytestmark = pytest.mark.slow


class Frozen:
    """Every process of an embedded PostgreSQL stopped with SIGSTOP: the server
    is there (its port accepts connections) but never answers, as a hung host."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        self.pids: list[int] = []

    def stop(self) -> None:
        postmaster = postmaster_pid(self.pgdata)
        os.kill(postmaster, signal.SIGSTOP)  # first: it can fork no new child after this
        self.pids = [postmaster, *children(postmaster)]
        for pid in self.pids[1:]:
            os.kill(pid, signal.SIGSTOP)

    def cont(self) -> None:
        signal_all(self.pids, signal.SIGCONT)
        self.pids = []


@pytest.fixture(scope="module")
def hung_server():
    """An embedded PostgreSQL of this module's own (the shared server must never
    be stopped), and the means to freeze it; always thawed and stopped at the end.
    Its data lives outside pytest's temporary folder, which another pytest run
    on this machine may make private (0700) again while the server runs."""
    server = OwnServer(Path(tempfile.mkdtemp(prefix="dptask-hung-")) / "pgdata")
    frozen = Frozen(server.pgdata)
    try:
        server.start()
        yield server, frozen
    finally:
        frozen.cont()
        server.stop()
        shutil.rmtree(server.pgdata.parent, ignore_errors=True)


@pytest.fixture
def freezable(hung_server):
    """A fresh database on that server, its URL, and the freezer (thawed after the test)."""
    server, frozen = hung_server
    name = f"hung_{uuid.uuid4().hex[:8]}"
    admin = Pg(server.url)
    admin.rows(f"CREATE DATABASE {name}")
    try:
        yield with_database(server.url, name), frozen
    finally:
        frozen.cont()
        admin.rows(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


async def timed(coro, limit: float = 20):
    started = time.monotonic()
    result = await asyncio.wait_for(coro, limit)
    return result, time.monotonic() - started


# ---------------------------------------------------------------- a hung database


async def test_hung_database_gives_503_within_seconds_touches_nothing_then_recovers(
    aiohttp_client, freezable, workdir, base_dir
):
    url, frozen = freezable
    settings = load_settings(
        write_settings(workdir, "[database]\ntimeout = 1\n"), environ={"DATABASE_URL": url}
    )
    client = await aiohttp_client(create_app(settings))
    pg = Pg(url)
    insert_task(pg, "task_a")
    pg.close()
    task_dir = make_task_dir(base_dir, "task_a", files=20)
    before = tree_snapshot(base_dir)
    assert (await client.get(URL)).status == 200  # the pool now holds a connection

    frozen.stop()
    try:
        # A pooled connection, then a new one (the port accepts; nobody answers).
        for _ in range(2):
            resp, took = await timed(client.get(URL))
            body = await resp.json()
            assert resp.status == 503 and body["code"] == 503, body
            assert body["message"] == "数据库暂时不可用，请稍后重试"
            assert took < 6, took
        resp, took = await timed(
            client.request("DELETE", URL, json={"task_ids": ["task_a"], "confirm": True})
        )
        body = await resp.json()
        assert resp.status == 503 and body["success"] is False, body
        assert took < 6, took
        resp, took = await timed(client.get(f"{URL}/task_a"))
        assert resp.status == 503 and took < 6
        assert tree_snapshot(base_dir) == before
    finally:
        frozen.cont()

    # Back by itself: no restart of the service.
    resp = await client.get(URL)
    assert resp.status == 200
    assert [t["task_id"] for t in (await resp.json())["data"]["tasks"]] == ["task_a"]
    resp = await client.request("DELETE", URL, json={"task_ids": ["task_a"], "confirm": True})
    assert (await resp.json())["message"] == "任务目录删除成功"
    assert not task_dir.exists()


async def test_commit_without_an_answer_is_commit_unknown_and_may_still_commit(freezable):
    url, frozen = freezable
    db = await Database.connect(url, timeout=1)
    try:
        await db.ensure_schema()
        pg = Pg(url)
        insert_task(pg, "task_a")
        with pytest.raises(CommitUnknown):
            async with db.tasks_transaction(["task_a"]) as tasks:
                tx = tasks.members["task_a"]
                assert tx.record["directory_exists"] is True
                await tx.set_directory_exists(False, tx.record["created_at"])
                await tasks.flush()  # the UPDATE is made; then
                frozen.stop()  # the COMMIT is sent into a server that never answers
        assert db._pool.freesize == 0  # that connection was closed, not pooled
        frozen.cont()
        # The server ran the COMMIT once it woke up: "unknown" meant exactly that.
        # peek_task reads it back, with no lock, as the pipeline does to resolve it.
        deadline = time.monotonic() + 10
        while (record := (await db.peek_task("task_a"))[0])["directory_exists"]:
            assert time.monotonic() < deadline, record
            await asyncio.sleep(0.1)
        assert pg.task("task_a")["directory_exists"] is False
        pg.close()
    finally:
        frozen.cont()
        await db.close()


async def test_a_statement_the_server_cancels_is_a_timeout_not_a_cancellation(database_url):
    """aiopg turns the server's statement_timeout into a CancelledError; it must
    reach the API as a database timeout (503), and the request must go on."""
    db = await Database.connect(database_url, timeout=5)
    try:
        with pytest.raises(DatabaseTimeout, match="statement timeout"):
            await db.execute("SET LOCAL statement_timeout = 100; SELECT pg_sleep(3)")
        await db.ping()  # this task was not cancelled, and the pool still works
    finally:
        await db.close()


async def test_peek_task_takes_no_lock(database_url, pg):
    db = await Database.connect(database_url, timeout=2, lock_timeout=0.5)
    try:
        await db.ensure_schema()
        insert_task(pg, "task_a", steps={"ddl_generation": "completed", "qa_generation": "running"})
        async with db.task_transaction("task_a"):  # the task's advisory and row locks are held
            record, running = await asyncio.wait_for(db.peek_task("task_a"), 3)
        assert record["task_id"] == "task_a" and record["directory_exists"] is True
        assert running == ["qa_generation"]
        assert await db.peek_task("no_such_task") == (None, [])
    finally:
        await db.close()


# ---------------------------------------------------------------- a row held by the pipeline


LOCK_TIMEOUT_1S = "[database]\nlock_timeout = 1\n"


@pytest.mark.parametrize("settings_text", [LOCK_TIMEOUT_1S], ids=["lock_timeout_1s"])
async def test_row_held_for_update_by_the_pipeline_is_task_locked_within_seconds(
    client, task_factory, pg, base_dir, pipeline_session
):
    task_dir = task_factory("task_a", files=10)
    before = tree_snapshot(task_dir)
    with pipeline_session.cursor() as cur:
        cur.execute("SELECT * FROM data_pipeline_tasks WHERE task_id = 'task_a' FOR UPDATE")

    resp, took = await timed(
        client.request(
            "DELETE",
            URL,
            json={"task_ids": ["task_a"], "confirm": True, "delete_database_records": True},
        )
    )
    body = await resp.json()
    (failed,) = body["data"]["failed_tasks"]
    assert failed["error_code"] == "TASK_LOCKED", failed
    assert failed["error"] == "任务正在被另一个请求删除"
    assert took < 4.5, took  # lock_timeout is 1 s (it was 5 s before)
    assert tree_snapshot(task_dir) == before
    pipeline_session.rollback()
    assert pg.task("task_a")["directory_exists"] is True
    assert len(pg.steps("task_a")) == 1


@pytest.mark.parametrize("settings_text", [LOCK_TIMEOUT_1S], ids=["lock_timeout_1s"])
async def test_step_row_held_by_the_pipeline_is_task_locked_and_the_directory_is_back(
    client, task_factory, pg, base_dir, pipeline_session
):
    """The task row is free, but deleting the records waits for a step row."""
    task_dir = task_factory("task_a", files=10)
    before = tree_snapshot(task_dir)
    with pipeline_session.cursor() as cur:
        cur.execute(
            "UPDATE data_pipeline_task_steps SET error_message = 'x' WHERE task_id = 'task_a'"
        )

    resp, took = await timed(
        client.request(
            "DELETE",
            URL,
            json={"task_ids": ["task_a"], "confirm": True, "delete_database_records": True},
        )
    )
    (failed,) = (await resp.json())["data"]["failed_tasks"]
    assert failed["error_code"] == "TASK_LOCKED", failed
    assert took < 4.5, took
    assert tree_snapshot(task_dir) == before
    assert list((base_dir / ".trash").iterdir()) == []
    pipeline_session.rollback()
    assert pg.task("task_a")["directory_exists"] is True
