"""POST /api/v0/data_pipeline/tasks/cleanup and the [cleanup] schedules:
the selection at its boundaries (real records, real directories), a dry run
that changes nothing, a real run as a job, two real service processes sharing
one schedule, and a bad schedule stopping start-up."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from datetime import datetime, timedelta

import pytest
import requests

from tests.helpers import URL, insert_task, make_task_dir, run_py, tree_snapshot, write_settings

CLEANUP = f"{URL}/cleanup"
T0 = datetime(2025, 1, 1, 12, 0, 0)


async def post(client, **body):
    resp = await client.post(CLEANUP, json=body)
    return resp.status, await resp.json()


async def selected(client, **body):
    status, answer = await post(client, **body)
    assert status == 200, answer
    return answer["data"]["sample_task_ids"]


def old_tasks(pg, base_dir, count, **record):
    """task_00 .. task_NN, a minute apart from T0 on; each with a directory."""
    ids = [f"task_{i:02d}" for i in range(count)]
    for i, task_id in enumerate(ids):
        insert_task(pg, task_id, created_at=T0 + timedelta(minutes=i), **record)
        make_task_dir(base_dir, task_id, files=3, size=10)
    return ids


async def test_the_age_cut_off_is_strict(client, schema, base_dir):
    old_tasks(schema, base_dir, 3)  # 12:00, 12:01, 12:02
    cut = (T0 + timedelta(minutes=1)).isoformat()
    assert await selected(client, created_before=cut) == ["task_00"]
    # One microsecond later, the task created at the cut-off is old enough.
    later = (T0 + timedelta(minutes=1, microseconds=1)).isoformat()
    assert await selected(client, created_before=later) == ["task_00", "task_01"]
    # older_than_days: relative to now; a task of now is not selected.
    insert_task(schema, "task_new", created_at=datetime.now())
    make_task_dir(base_dir, "task_new")
    assert await selected(client, older_than_days=0.5) == ["task_00", "task_01", "task_02"]
    assert await selected(client, older_than_days=100000) == []


async def test_statuses_and_running_tasks(client, schema, base_dir):
    insert_task(schema, "t_done", status="completed", created_at=T0)
    insert_task(schema, "t_failed", status="failed", created_at=T0 + timedelta(seconds=1))
    insert_task(schema, "t_pending", status="pending", created_at=T0 + timedelta(seconds=2))
    insert_task(schema, "t_running", status="in_progress", created_at=T0 + timedelta(seconds=3))
    insert_task(
        schema,
        "t_step",
        status="completed",
        created_at=T0 + timedelta(seconds=4),
        steps={"ddl_generation": "completed", "qa_generation": "running"},
    )
    cut = "2025-06-01T00:00:00"
    assert await selected(client, created_before=cut) == ["t_done", "t_failed"]
    every = ["completed", "failed", "pending", "partial_completed"]
    assert await selected(client, created_before=cut, statuses=every) == [
        "t_done",
        "t_failed",
        "t_pending",
    ]
    for statuses in (["in_progress"], ["completed", "in_progress"]):
        status, body = await post(client, created_before=cut, statuses=statuses)
        assert status == 400 and "in_progress" in body["message"], body
        assert body["invalid_params"] == ["statuses"]
    status, body = await post(client, created_before=cut, statuses=["done"])
    assert status == 400 and body["invalid_params"] == ["statuses"]


async def test_prefix_is_literal_and_db_name_filters(client, schema, base_dir):
    for i, task_id in enumerate(["a_1", "ab1", "a%2", "aX3", "b_1"]):
        insert_task(schema, task_id, created_at=T0 + timedelta(seconds=i))
    schema.rows("UPDATE data_pipeline_tasks SET db_name = 'other' WHERE task_id = 'aX3'")
    cut = "2025-06-01"
    assert await selected(client, created_before=cut, task_id_prefix="a_") == ["a_1"]
    assert await selected(client, created_before=cut, task_id_prefix="a%") == ["a%2"]
    assert await selected(client, created_before=cut, task_id_prefix="a") == [
        "a_1",
        "ab1",
        "a%2",
        "aX3",
    ]
    assert await selected(client, created_before=cut, db_name="other") == ["aX3"]
    assert await selected(client, created_before=cut, db_name="none") == []


async def test_directory_exists_filter(client, schema, base_dir):
    insert_task(schema, "t_here", created_at=T0)
    insert_task(schema, "t_gone", created_at=T0, directory_exists=False)
    cut = "2025-06-01"
    assert await selected(client, created_before=cut) == ["t_here"]
    assert await selected(client, created_before=cut, directory_exists=False) == ["t_gone"]


async def test_keep_last_keeps_the_newest_matching(client, schema, base_dir):
    old_tasks(schema, base_dir, 5)
    schema.rows(
        "UPDATE data_pipeline_tasks SET db_name = 'x' WHERE task_id IN ('task_00', 'task_01')"
    )
    cut = "2025-06-01"
    # The two newest overall (task_04, task_03) are kept.
    assert await selected(client, created_before=cut, keep_last=2) == [
        "task_00",
        "task_01",
        "task_02",
    ]
    # Per db_name when given: x's newest (task_01) is kept.
    assert await selected(client, created_before=cut, keep_last=1, db_name="x") == ["task_00"]
    assert await selected(client, created_before=cut, keep_last=5) == []


async def test_max_tasks_says_more_remain(client, schema, base_dir):
    old_tasks(schema, base_dir, 5)
    status, body = await post(client, created_before="2025-06-01", max_tasks=2)
    data = body["data"]
    assert status == 200
    assert data["matched"] == 5 and data["sample_task_ids"] == ["task_00", "task_01"]
    assert data["more_remaining"] is True
    status, body = await post(client, created_before="2025-06-01", max_tasks=5)
    assert body["data"]["more_remaining"] is False
    status, body = await post(client, created_before="2025-06-01", max_tasks=1001)
    assert status == 400 and body["invalid_params"] == ["max_tasks"]


async def test_a_dry_run_changes_nothing_and_counts(client, schema, base_dir, settings):
    ids = old_tasks(schema, base_dir, 3)
    before_disk = tree_snapshot(base_dir)
    before_db = schema.rows("SELECT * FROM data_pipeline_tasks ORDER BY task_id")
    status, body = await post(client, older_than_days=1, delete_database_records=True)
    assert status == 200, body
    data = body["data"]
    assert data["dry_run"] is True and data["matched"] == 3 and data["counted"] is True
    assert data["sample_task_ids"] == ids
    # make_task_dir writes its files: three tasks, the same count each.
    per_task = sum(1 for p in (base_dir / "task_00").rglob("*") if p.is_file())
    assert data["files"] == 3 * per_task and data["bytes"] > 0
    assert tree_snapshot(base_dir) == before_disk
    assert schema.rows("SELECT * FROM data_pipeline_tasks ORDER BY task_id") == before_db
    assert schema.rows("SELECT to_regclass('dptask_jobs') IS NULL AS none")[0]["none"] or (
        schema.rows("SELECT count(*) AS n FROM dptask_jobs")[0]["n"] == 0
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "older_than_days"),
        ({"older_than_days": 1, "created_before": "2025-01-01"}, "older_than_days"),
        ({"older_than_days": 0}, "older_than_days"),
        ({"older_than_days": True}, "older_than_days"),
        ({"older_than_days": "30"}, "older_than_days"),
        ({"created_before": "2025-01-01T00:00:00+08:00"}, "created_before"),
        ({"created_before": "yesterday"}, "created_before"),
        ({"older_than_days": 1, "dry_run": "false"}, "dry_run"),
        ({"older_than_days": 1, "dry_run": False}, "confirm"),
        ({"older_than_days": 1, "dry_run": False, "confirm": "true"}, "confirm"),
        ({"older_than_days": 1, "keep_last": -1}, "keep_last"),
        ({"older_than_days": 1, "statuses": "completed"}, "statuses"),
    ],
)
async def test_bad_clean_up_requests(client, schema, body, field):
    status, answer = await post(client, **body)
    assert status == 400, answer
    assert field in answer["message"] and field in answer["invalid_params"]


@pytest.mark.parametrize("name", ["force", "task_ids", "olderthan_days"])
async def test_unknown_clean_up_parameters_are_refused(client, schema, name):
    status, answer = await post(client, older_than_days=1, **{name: True})
    assert status == 400 and answer["unknown_params"] == [name]
    assert answer["message"] == f"未知参数: {name}"


async def test_a_real_run_is_a_cleanup_job(client, schema, base_dir, settings):
    old_tasks(schema, base_dir, 3)
    insert_task(schema, "task_new", created_at=datetime.now())
    make_task_dir(base_dir, "task_new")
    resp = await client.post(
        CLEANUP, json={"older_than_days": 1, "dry_run": False, "confirm": True}
    )
    body = await resp.json()
    assert resp.status == 202, body
    job = body["data"]
    assert job["kind"] == "cleanup" and job["selection"]["older_than_days"] == 1
    assert resp.headers["Location"].endswith(f"/jobs/{job['job_id']}")
    for _ in range(100):
        got = await (await client.get(resp.headers["Location"])).json()
        if got["data"]["status"] not in ("queued", "running"):
            break
        await asyncio.sleep(0.1)
    assert got["data"]["status"] == "succeeded", got
    deleted = [t["task_id"] for t in got["data"]["result"]["deleted_tasks"]]
    assert sorted(deleted) == ["task_00", "task_01", "task_02"]
    assert sorted(p.name for p in base_dir.iterdir() if not p.name.startswith(".")) == ["task_new"]


# ---------------------------------------------------------------- schedules

SCHEDULE = """
[cleanup]
schedules = [{{ name = "often", every = "{every}", older_than_days = 1 }}]
"""


def test_two_instances_run_one_schedule_once_per_period(service_factory, pg, base_dir):
    every = 2
    started = time.monotonic()
    services = [service_factory(settings_text=SCHEDULE.format(every=f"{every}s")) for _ in "ab"]
    old_tasks(pg, base_dir, 2)  # the tables exist once a service has started
    time.sleep(every * 4 + 0.5)
    elapsed = time.monotonic() - started
    rows = pg.rows(
        "SELECT created_at FROM dptask_jobs WHERE actor = 'schedule:often' ORDER BY created_at"
    )
    # At least one run per period that has fully passed, and never two in one period.
    assert int(elapsed // every) - 1 <= len(rows) <= int(elapsed // every) + 1, rows
    times = [row["created_at"] for row in rows]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert all(gap >= every - 0.05 for gap in gaps), gaps
    # A run deleted the old tasks; both instances still serve.
    assert not (base_dir / "task_00").exists() and not (base_dir / "task_01").exists()
    for service in services:
        assert requests.get(f"{service.url}{URL}", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("schedule", "key"),
    [
        ('{ name = "n", every = "daily", older_than_days = 30 }', "cleanup.schedules[0].every"),
        ('{ name = "n", every = "24h" }', "cleanup.schedules[0].older_than_days"),
        (
            '{ name = "n", every = "24h", older_than_days = 3, statuses = ["in_progress"] }',
            "cleanup.schedules[0].statuses",
        ),
        ('{ every = "24h", older_than_days = 3 }', "cleanup.schedules[0].name"),
        ('{ name = "n", every = "1h", older_than_days = 3, force = true }', "force"),
    ],
)
def test_a_bad_schedule_stops_start_up_with_one_line(workdir, database_url, schedule, key):
    config = write_settings(workdir, f"[cleanup]\nschedules = [{schedule}]\n")
    env = {**os.environ, "DATABASE_URL": database_url}
    result = run_py("--config", str(config), env=env, cwd=workdir, timeout=20)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and key in lines[0] and "settings: cleanup" in lines[0], lines


# The selection numbered every candidate (row_number) before; it now takes the
# keep_last newest from the list's order index. Both must select the same ids.
REFERENCE = """
    WITH candidates AS (
        SELECT task_id, created_at,
               row_number() OVER (ORDER BY created_at DESC NULLS LAST, task_id DESC) AS newest
        FROM data_pipeline_tasks
        WHERE status = ANY(%(statuses)s)
          AND (%(db_name)s::text IS NULL OR db_name = %(db_name)s)
          AND COALESCE(directory_exists, true) = %(directory_exists)s
    )
    SELECT task_id FROM candidates c
    WHERE c.newest > %(keep_last)s AND c.created_at < %(cutoff)s
      AND NOT EXISTS (SELECT 1 FROM data_pipeline_task_steps s
                      WHERE s.task_id = c.task_id AND s.step_status = 'running')
    ORDER BY c.created_at, c.task_id
    """


# How many of the 150 rows below pass the default filters and have a created_at.
NON_NULL = sum(1 for i in range(1, 151) if (i % 7 == 0 or i % 4 != 0) and i % 11 != 0)


@pytest.mark.parametrize(
    "selection",
    [
        {"keep_last": 0},
        {"keep_last": 7},
        {"keep_last": 7, "db_name": "db_1"},
        {"keep_last": 1000},
        # The last kept is one of the tasks with no created_at (NULLS LAST):
        # every task with one is kept.
        {"keep_last": NON_NULL + 2},
        {"keep_last": 3, "statuses": ["completed"], "directory_exists": False},
    ],
)
async def test_the_selection_is_the_numbered_querys(client, schema, selection):
    schema.rows(
        "INSERT INTO data_pipeline_tasks (task_id, status, parameters, created_at, db_name,"
        " directory_exists)"
        " SELECT 'task_' || lpad(i::text, 3, '0'), (ARRAY['completed', 'failed'])[1 + i %% 2],"
        "  '{}', CASE WHEN i %% 11 = 0 THEN NULL ELSE %s + (i / 3) * interval '1 hour' END,"
        "  'db_' || (i %% 3), CASE WHEN i %% 7 = 0 THEN NULL ELSE i %% 4 <> 0 END"
        " FROM generate_series(1, 150) AS i",
        (T0,),
    )
    schema.rows(
        "INSERT INTO data_pipeline_task_steps (task_id, step_name, step_status)"
        " SELECT task_id, 'training_load', 'running' FROM data_pipeline_tasks"
        " WHERE right(task_id, 1) = '5'"
    )
    body = {"created_before": (T0 + timedelta(hours=40)).isoformat(), **selection}
    status, answer = await post(client, **body)
    assert status == 200, answer
    args = {
        "statuses": ["completed", "failed"],
        "db_name": None,
        "directory_exists": True,
        **selection,
        "cutoff": T0 + timedelta(hours=40),
    }
    want = [r["task_id"] for r in schema.rows(REFERENCE, args)]
    assert want or selection["keep_last"] > NON_NULL
    assert answer["data"]["matched"] == len(want)
    assert answer["data"]["sample_task_ids"] == want[:100]


async def test_a_dry_run_counts_only_what_a_real_run_could_delete(client, schema, base_dir):
    """The pipeline's table may hold ids the service refuses (INVALID_TASK_ID
    in a real run): a clean-up dry run neither fails on them nor counts a
    directory the real run would never touch."""
    ids = old_tasks(schema, base_dir, 2)
    for odd in (".hidden", "a\\b", "Has space"):
        insert_task(schema, odd, created_at=T0)
        make_task_dir(base_dir, odd, files=3, size=10)
    status, body = await post(client, older_than_days=1)
    assert status == 200, body
    per_task = sum(1 for p in (base_dir / ids[0]).rglob("*") if p.is_file())
    assert body["data"]["files"] == 2 * per_task, body["data"]


def _files_and_bytes(path):
    files = [p for p in path.rglob("*") if not p.is_dir()]
    return len(files), sum(p.lstat().st_size for p in files)


async def test_a_dry_run_counts_exactly_the_selected_directories(client, schema, base_dir):
    """Only the directories of the tasks it selects (within max_tasks), each
    walked whole; nothing for a selected task whose directory is gone, nor for
    any other entry of base_dir: a task kept, too new, running, beyond
    max_tasks, or one with no record."""
    ids = old_tasks(schema, base_dir, 6)  # task_00 .. task_05, 3 files each
    make_task_dir(base_dir / "task_01", "deeper", files=4, size=7)  # inside a selected tree
    for gone in ("task_02", "task_03"):  # recorded as present, no directory left
        for p in sorted((base_dir / gone).rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        (base_dir / gone).rmdir()
    insert_task(schema, "task_run", created_at=T0, steps={"training_load": "running"})
    make_task_dir(base_dir, "task_run", files=11)
    insert_task(schema, "task_new", created_at=datetime.now())
    make_task_dir(base_dir, "task_new", files=13)
    make_task_dir(base_dir, "no_record", files=17)
    # keep_last=1 keeps task_new (the newest); max_tasks=5 leaves task_05 out.
    status, body = await post(client, older_than_days=1, keep_last=1, max_tasks=5)
    assert status == 200, body
    data = body["data"]
    assert data["sample_task_ids"] == ids[:5] and data["matched"] == 6, data
    assert data["more_remaining"] is True and data["counted"] is True
    counted = [_files_and_bytes(base_dir / i) for i in ("task_00", "task_01", "task_04")]
    assert (data["files"], data["bytes"]) == tuple(map(sum, zip(*counted, strict=True)))
