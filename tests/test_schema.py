"""The tables of docs/design.md ("The data model"): created on an empty database;
on the pipeline's own older tables, the two missing columns are added without
touching a row."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import datetime

import psycopg2
import psycopg2.errors
import pytest
import structlog

from service.app import create_app
from service.db import Database, SchemaBlocked
from tests.helpers import URL

# The pipeline's original tables: those of docs/design.md without directory_exists and
# updated_at.
LEGACY_TABLES = """
CREATE TABLE data_pipeline_tasks (
    task_id varchar(32) PRIMARY KEY,
    task_name varchar(255),
    task_type varchar(50) NOT NULL DEFAULT 'data_workflow',
    status varchar(20) NOT NULL DEFAULT 'pending',
    parameters jsonb NOT NULL,
    result jsonb,
    error_message text,
    created_at timestamp DEFAULT current_timestamp,
    started_at timestamp,
    completed_at timestamp,
    created_type varchar(50) DEFAULT 'api',
    by_user varchar(50),
    output_directory text,
    db_name varchar(100)
);
CREATE TABLE data_pipeline_task_steps (
    id serial PRIMARY KEY,
    task_id varchar(32) REFERENCES data_pipeline_tasks(task_id) ON DELETE CASCADE,
    execution_id varchar(100),
    step_name varchar(50) NOT NULL,
    step_status varchar(50) NOT NULL DEFAULT 'pending',
    started_at timestamp,
    completed_at timestamp,
    error_message text
);
"""
LEGACY_TASKS = [
    (
        "task_20250702_223802",
        "full workflow",
        "complete_workflow",
        "completed",
        json.dumps({"db_connection": "postgresql://x/y", "table_list_file": "t.txt"}),
        json.dumps({"tables": 12}),
        None,
        datetime(2025, 7, 2, 22, 38, 2, 123456),
        datetime(2025, 7, 2, 22, 38, 7),
        datetime(2025, 7, 2, 22, 50, 1),
        "api",
        "alice",
        "/data/task_20250702_223802",
        "sales",
    ),
    (
        "manual_20250701_101500",
        None,
        "data_workflow",
        "failed",
        "{}",
        None,
        "qa_generation timed out",
        datetime(2025, 7, 1, 10, 15),
        None,
        None,
        "manual",
        None,
        None,
        None,
    ),
]
TASK_COLUMNS = (
    "task_id, task_name, task_type, status, parameters, result, error_message, created_at,"
    " started_at, completed_at, created_type, by_user, output_directory, db_name"
)
# Every column, with (type, length, nullable, default) as docs/design.md says.
EXPECTED_COLUMNS = {
    "data_pipeline_tasks": {
        "task_id": ("character varying", 32, "NO", None),
        "task_name": ("character varying", 255, "YES", None),
        "task_type": ("character varying", 50, "NO", "'data_workflow'"),
        "status": ("character varying", 20, "NO", "'pending'"),
        "parameters": ("jsonb", None, "NO", None),
        "result": ("jsonb", None, "YES", None),
        "error_message": ("text", None, "YES", None),
        "created_at": ("timestamp without time zone", None, "YES", "CURRENT_TIMESTAMP"),
        "started_at": ("timestamp without time zone", None, "YES", None),
        "completed_at": ("timestamp without time zone", None, "YES", None),
        "created_type": ("character varying", 50, "YES", "'api'"),
        "by_user": ("character varying", 50, "YES", None),
        "output_directory": ("text", None, "YES", None),
        "db_name": ("character varying", 100, "YES", None),
        "directory_exists": ("boolean", None, "YES", "true"),
        "updated_at": ("timestamp without time zone", None, "YES", None),
    },
    "data_pipeline_task_steps": {
        "id": ("integer", None, "NO", "nextval("),
        "task_id": ("character varying", 32, "YES", None),
        "execution_id": ("character varying", 100, "YES", None),
        "step_name": ("character varying", 50, "NO", None),
        "step_status": ("character varying", 50, "NO", "'pending'"),
        "started_at": ("timestamp without time zone", None, "YES", None),
        "completed_at": ("timestamp without time zone", None, "YES", None),
        "error_message": ("text", None, "YES", None),
    },
}


def columns(pg, table):
    rows = pg.rows(
        "SELECT column_name, data_type, character_maximum_length, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_schema = 'public' AND table_name = %s",
        (table,),
    )
    return {
        r["column_name"]: (
            r["data_type"],
            r["character_maximum_length"],
            r["is_nullable"],
            r["column_default"],
        )
        for r in rows
    }


def create_legacy_tables(pg):
    pg.rows(LEGACY_TABLES)
    for task in LEGACY_TASKS:
        pg.rows(f"INSERT INTO data_pipeline_tasks ({TASK_COLUMNS}) VALUES %s", (task,))
    for task_id, step, state in [
        ("task_20250702_223802", "ddl_generation", "completed"),
        ("task_20250702_223802", "qa_generation", "completed"),
        ("manual_20250701_101500", "ddl_generation", "completed"),
        ("manual_20250701_101500", "qa_generation", "failed"),
    ]:
        pg.rows(
            "INSERT INTO data_pipeline_task_steps (task_id, execution_id, step_name, step_status)"
            " VALUES (%s, %s, %s, %s)",
            (task_id, f"{task_id}_exec", step, state),
        )


def snapshot(pg):
    """Every original row, with its physical version (xmin, ctid): a row that
    was rewritten, even with the same values, shows up as changed."""
    return (
        pg.rows(
            f"SELECT xmin::text, ctid::text, {TASK_COLUMNS} FROM data_pipeline_tasks ORDER BY 3"
        ),
        pg.rows(
            "SELECT xmin::text, ctid::text, id, task_id, execution_id, step_name, step_status,"
            " started_at, completed_at, error_message FROM data_pipeline_task_steps ORDER BY id"
        ),
    )


async def ensure_schema(url):
    db = await Database.connect(url)
    try:
        await db.ensure_schema()
    finally:
        await db.close()


def assert_expected_columns(pg):
    for table, expected in EXPECTED_COLUMNS.items():
        actual = columns(pg, table)
        assert set(actual) == set(expected), table
        for name, (data_type, length, nullable, default) in expected.items():
            got = actual[name]
            assert got[:3] == (data_type, length, nullable), (table, name, got)
            if default is None:
                assert got[3] is None, (table, name, got)
            else:
                assert got[3] is not None and got[3].startswith(default), (table, name, got)


# ---------------------------------------------------------------- an empty database


async def test_creates_the_tables_on_an_empty_database(pg, database_url):
    await ensure_schema(database_url)
    assert_expected_columns(pg)


async def test_keys_of_the_created_tables(pg, database_url):
    await ensure_schema(database_url)
    keys = pg.rows(
        "SELECT conrelid::regclass::text AS tbl, contype, confdeltype,"
        " pg_get_constraintdef(oid) AS def FROM pg_constraint"
        " WHERE conrelid IN ('data_pipeline_tasks'::regclass, 'data_pipeline_task_steps'::regclass)"
        " AND contype IN ('p', 'f')"
    )
    found = {(k["tbl"], k["contype"], k["def"], k["confdeltype"]) for k in keys}
    assert found == {
        ("data_pipeline_tasks", "p", "PRIMARY KEY (task_id)", " "),
        ("data_pipeline_task_steps", "p", "PRIMARY KEY (id)", " "),
        (
            "data_pipeline_task_steps",
            "f",
            "FOREIGN KEY (task_id) REFERENCES data_pipeline_tasks(task_id) ON DELETE CASCADE",
            "c",
        ),
    }


async def test_defaults_of_a_new_row(pg, database_url):
    await ensure_schema(database_url)
    pg.rows("INSERT INTO data_pipeline_tasks (task_id, parameters) VALUES ('task_a', '{}')")
    pg.rows(
        "INSERT INTO data_pipeline_task_steps (task_id, step_name)"
        " VALUES ('task_a', 'ddl_generation')"
    )
    task = pg.task("task_a")
    assert (task["task_type"], task["status"], task["created_type"]) == (
        "data_workflow",
        "pending",
        "api",
    )
    assert task["directory_exists"] is True and task["updated_at"] is None
    assert task["created_at"].tzinfo is None
    assert pg.steps("task_a")[0]["step_status"] == "pending"
    # Deleting a task deletes its steps.
    pg.rows("DELETE FROM data_pipeline_tasks WHERE task_id = 'task_a'")
    assert pg.steps("task_a") == []


async def test_service_processes_starting_at_once_create_the_tables_once(pg, database_url):
    await asyncio.gather(*(ensure_schema(database_url) for _ in range(4)))
    assert_expected_columns(pg)


# ---------------------------------------------------------------- the pipeline's older database


async def test_adds_the_two_columns_to_the_pipelines_tables(pg, database_url):
    create_legacy_tables(pg)
    assert "directory_exists" not in columns(pg, "data_pipeline_tasks")
    await ensure_schema(database_url)
    assert_expected_columns(pg)


async def test_migration_twice_touches_no_existing_row(pg, database_url):
    create_legacy_tables(pg)
    before = snapshot(pg)
    await ensure_schema(database_url)
    await ensure_schema(database_url)
    assert snapshot(pg) == before
    rows = pg.rows("SELECT task_id, directory_exists, updated_at FROM data_pipeline_tasks")
    assert [(r["directory_exists"], r["updated_at"]) for r in rows] == [(True, None)] * 2


async def test_existing_rows_read_directory_exists_true_in_the_api(pg, settings, aiohttp_client):
    create_legacy_tables(pg)
    before = snapshot(pg)
    await aiohttp_client(create_app(settings))  # start-up migrates
    client = await aiohttp_client(create_app(settings))  # and a second start-up

    resp = await client.get(URL)
    body = await resp.json()
    assert resp.status == 200 and body["data"]["total"] == 2
    tasks = {t["task_id"]: t for t in body["data"]["tasks"]}
    assert all(t["directory_exists"] is True for t in tasks.values())
    assert tasks["task_20250702_223802"]["created_at"] == "2025-07-02T22:38:02.123456"
    assert tasks["task_20250702_223802"]["created_by"] == "alice"
    assert tasks["manual_20250701_101500"]["status"] == "failed"

    resp = await client.get(URL, params={"directory_exists": "true"})
    assert (await resp.json())["data"]["total"] == 2
    resp = await client.get(f"{URL}/manual_20250701_101500")
    body = await resp.json()
    assert [(s["step_name"], s["step_status"]) for s in body["data"]["steps"]] == [
        ("ddl_generation", "completed"),
        ("qa_generation", "failed"),
    ]
    assert snapshot(pg) == before


async def test_migration_keeps_the_flags_this_service_wrote(pg, database_url):
    """Starting again on a database this service already set up resets nothing."""
    await ensure_schema(database_url)
    pg.rows("INSERT INTO data_pipeline_tasks (task_id, parameters) VALUES ('task_a', '{}')")
    pg.rows(
        "UPDATE data_pipeline_tasks SET directory_exists = false, updated_at = %s",
        (datetime(2025, 7, 2, 22, 57, 21),),
    )
    await ensure_schema(database_url)
    task = pg.task("task_a")
    assert task["directory_exists"] is False
    assert task["updated_at"] == datetime(2025, 7, 2, 22, 57, 21)


async def test_service_processes_starting_at_once_migrate_the_pipelines_tables_once(
    pg, database_url
):
    create_legacy_tables(pg)
    before = snapshot(pg)
    await asyncio.gather(*(ensure_schema(database_url) for _ in range(4)))
    assert_expected_columns(pg)
    assert snapshot(pg) == before


# ---------------------------------------------------------------- never stall the pipeline


def backend_pid(conn) -> int:
    return conn.info.backend_pid  # without a query: the session's last query must stay its own


def slowest_select(url: str, seconds: float) -> float:
    """The pipeline's reads, from a third session, for ``seconds``: the longest
    one took this long (a read stuck more than 20 s counts as 20 s)."""
    conn = psycopg2.connect(url)
    conn.autocommit = True
    slowest, end = 0.0, time.monotonic() + seconds
    try:
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = '20s'")
            while time.monotonic() < end:
                started = time.monotonic()
                with contextlib.suppress(psycopg2.errors.QueryCanceled):
                    cur.execute("SELECT count(*) FROM data_pipeline_tasks")
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.02)
    finally:
        conn.close()
    return slowest


async def test_migration_never_queues_the_pipelines_reads_behind_it(
    pg, database_url, pipeline_session
):
    """An older database lacks the columns; a pipeline transaction has read the
    table and stays open. Start-up waits for it without ever making the
    pipeline's other reads wait, says whom it waits for, and migrates once the
    transaction ends."""
    create_legacy_tables(pg)
    with pipeline_session.cursor() as cur:
        cur.execute("SELECT task_id FROM data_pipeline_tasks ORDER BY task_id")
    holder = backend_pid(pipeline_session)
    db = await Database.connect(database_url, lock_timeout=1)
    try:
        with structlog.testing.capture_logs() as logs:
            migration = asyncio.ensure_future(db.ensure_schema(wait=60))
            slowest = await asyncio.to_thread(slowest_select, database_url, 4)
            assert not migration.done()
            assert slowest < 1.5, f"a pipeline read waited {slowest:.1f} s"
            waits = [e for e in logs if e["event"] == "schema_migration_waiting"]
            assert waits and waits[0]["blocking_pid"] == holder, logs
            assert waits[0]["waits_for"] == "a lock on data_pipeline_tasks"
            assert waits[0]["blocking_state"] == "idle in transaction"
            assert "SELECT task_id FROM data_pipeline_tasks" in waits[0]["blocking_query"]
            pipeline_session.rollback()  # the pipeline's transaction ends
            await asyncio.wait_for(migration, 10)
    finally:
        pipeline_session.rollback()  # also when an assert failed: nothing may wait for it
        await db.close()
    assert_expected_columns(pg)


async def test_nothing_missing_runs_no_ddl_even_while_the_tables_are_locked(
    pg, database_url, pipeline_session
):
    """A second start-up on a complete schema changes nothing, so it needs no
    lock: it starts even while the pipeline holds both tables exclusively."""
    await ensure_schema(database_url)
    with pipeline_session.cursor() as cur:
        cur.execute(
            "LOCK TABLE data_pipeline_tasks, data_pipeline_task_steps IN ACCESS EXCLUSIVE MODE"
        )
    await asyncio.wait_for(ensure_schema(database_url), 10)


async def test_the_job_results_table_is_added_while_jobs_run(pg, database_url, pipeline_session):
    """A database of a version before dptask_job_results: start-up adds the
    table while a running job of an older instance is writing its row (no
    lock on dptask_jobs is needed), and that job's outcomes stay where they are."""
    await ensure_schema(database_url)
    pg.rows("DROP TABLE dptask_job_results")
    pg.rows(
        "INSERT INTO dptask_jobs (job_id, kind, actor, request_id, options, task_ids, results,"
        " created_at) VALUES ('j1', 'delete', 'x', 'r', '{}', '[\"a\"]', %s, now())",
        ('{"a": {"started": true}}',),
    )
    with pipeline_session.cursor() as cur:
        cur.execute("UPDATE dptask_jobs SET heartbeat_at = now() WHERE job_id = 'j1'")
    await asyncio.wait_for(ensure_schema(database_url), 10)
    assert pg.rows("SELECT count(*) AS n FROM dptask_job_results") == [{"n": 0}]
    pipeline_session.rollback()
    assert pg.rows("SELECT results FROM dptask_jobs") == [{"results": {"a": {"started": True}}}]


async def test_an_index_waits_for_writers_but_not_for_readers(pg, database_url, pipeline_session):
    """CREATE INDEX takes a SHARE lock: a reading transaction does not stop it,
    an open writing one does, and start-up gives up naming that session."""
    await ensure_schema(database_url)
    pg.rows("INSERT INTO data_pipeline_tasks (task_id, parameters) VALUES ('task_a', '{}')")
    pg.rows("DROP INDEX dp_tasks_created_at_idx")
    with pipeline_session.cursor() as cur:
        cur.execute("SELECT * FROM data_pipeline_tasks")
    await asyncio.wait_for(ensure_schema(database_url), 10)
    assert pg.rows("SELECT 1 FROM pg_indexes WHERE indexname = 'dp_tasks_created_at_idx'")

    pipeline_session.rollback()
    pg.rows("DROP INDEX dp_tasks_created_at_idx")
    with pipeline_session.cursor() as cur:
        cur.execute("UPDATE data_pipeline_tasks SET status = 'failed' WHERE task_id = 'task_a'")
    holder = backend_pid(pipeline_session)
    db = await Database.connect(database_url)
    try:
        with pytest.raises(SchemaBlocked) as blocked:
            await db.ensure_schema(lock_timeout=0.5, wait=2)
    finally:
        await db.close()
    assert str(blocked.value) == (
        f"schema migration waited 2 s for a lock on data_pipeline_tasks held by pid {holder}"
        " (idle in transaction: UPDATE data_pipeline_tasks SET status = 'failed'"
        " WHERE task_id = 'task_a')"
    )
    assert not pg.rows("SELECT 1 FROM pg_indexes WHERE indexname = 'dp_tasks_created_at_idx'")


def test_start_up_that_cannot_migrate_says_why_and_exits(pg, service_factory, pipeline_session):
    """A real service process: it gives up after schema_wait with the blocking
    session in its one error line, not a misleading "cannot listen"."""
    create_legacy_tables(pg)
    with pipeline_session.cursor() as cur:
        cur.execute("SELECT task_id FROM data_pipeline_tasks")
    holder = backend_pid(pipeline_session)
    with pytest.raises(RuntimeError, match="service exited") as exited:
        service_factory(settings_text="[database]\nlock_timeout = 0.5\nschema_wait = 2\n")
    assert (
        "error: database unavailable: schema migration waited 2 s for a lock on"
        f" data_pipeline_tasks held by pid {holder} (idle in transaction: SELECT task_id"
        " FROM data_pipeline_tasks)"
    ) in str(exited.value)
    assert "directory_exists" not in columns(pg, "data_pipeline_tasks")
