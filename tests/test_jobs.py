"""Background deletion jobs (service/jobs.py): real PostgreSQL, real files,
real service processes.

Until the HTTP 202 path is merged, jobs are submitted through the app's own
``JobQueue`` (in-process tests) or inserted as rows with SQL (the SIGKILL
test: the service processes' runners claim them from the shared database).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service import appkeys, jobs
from service.jobs import JobQueue
from service.pipeline import DeleteOptions
from service.plugin_api import TaskContext, hookimpl
from tests.helpers import Pg, audit_lines, delete_ok, insert_task, make_task_dir

FINISHED = ("succeeded", "partial", "failed", "cancelled")


async def submit(client: Any, task_ids: list[str], **options: Any) -> dict[str, Any]:
    queue: JobQueue = client.app[appkeys.JOBS]
    return await queue.submit(
        kind="delete",
        options=DeleteOptions(**options),
        actor="tester",
        request_id=uuid.uuid4().hex,
        client="127.0.0.1",
        task_ids=task_ids,
    )


async def finished(client: Any, job_id: str) -> dict[str, Any]:
    queue: JobQueue = client.app[appkeys.JOBS]
    job = await queue.wait(job_id, 60)
    assert job is not None and job["status"] in FINISHED, job
    return job


def _normal(data: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    """A batch's data with ids by position and no times, to compare two batches."""
    text = json.dumps(data)
    for i, task_id in enumerate(ids):
        text = text.replace(f'"{task_id}"', f'"#{i}"')
    out = json.loads(text)
    out.pop("deleted_at")
    for entry in out["deleted_tasks"] + out["failed_tasks"]:
        entry.pop("duration_ms")
        entry.pop("deleted_at", None)
    return out


async def test_job_result_equals_the_synchronous_result(client: Any, task_factory, settings):
    for prefix in ("s", "b"):
        task_factory(f"{prefix}1", files=7, size=10)
        task_factory(f"{prefix}2", files=3, size=1000)
    sync_ids, job_ids = ["s1", "s2", "s-missing"], ["b1", "b2", "b-missing"]

    sync = (await delete_ok(client, *sync_ids))["data"]
    job = await submit(client, job_ids)
    assert job["status"] == "queued" and job["result"] is None
    done = await finished(client, job["job_id"])

    assert done["status"] == "partial"  # as the synchronous message "批量删除部分完成"
    assert _normal(done["result"], job_ids) == _normal(sync, sync_ids)
    assert done["progress"] == {
        "tasks_total": 3,
        "tasks_done": 3,
        "files": 10,
        "bytes": sync["deleted_tasks"][0]["deleted_bytes"]
        + sync["deleted_tasks"][1]["deleted_bytes"],
    }
    assert done["actor"] == "tester" and done["started_at"] and done["finished_at"]
    assert not (settings.base_dir / "b1").exists()

    # Every audit line of the job carries its id; the job starts and ends in the audit.
    lines = audit_lines(settings)
    mine = [line for line in lines if line.get("job_id") == job["job_id"]]
    assert [line["event"] for line in mine].count("task_delete") == 3
    events = [line["event"] for line in mine]
    assert events[0] == "job_started" and events[-1] == "job_finished"
    assert "delete_request" in events
    assert all("job_id" not in line for line in lines if line.get("task_id") in sync_ids)


# One purge thread: the purge takes long enough here to be watched.
@pytest.mark.slow
@pytest.mark.parametrize("settings_text", ["[limits]\npurge_threads = 1\n"])
async def test_progress_moves_during_a_large_purge(client: Any, schema: Pg, base_dir: Path):
    insert_task(schema, "big")
    root = base_dir / "big"
    for d in range(100):
        os.makedirs(root / f"d{d}")
        for f in range(1000):
            os.close(os.open(root / f"d{d}" / f"f{f}", os.O_CREAT | os.O_WRONLY, 0o644))
    job = await submit(client, ["big"])
    queue: JobQueue = client.app[appkeys.JOBS]
    seen: list[int] = []
    deadline = time.monotonic() + 60
    while (current := await queue.get(job["job_id"]))["status"] not in FINISHED:
        seen.append(current["progress"]["files"])
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert current["status"] == "succeeded"
    assert current["progress"]["files"] == 100_000
    moving = sorted(set(f for f in seen if 0 < f < 100_000))
    assert len(moving) >= 2, seen  # a progress bar moved at least twice before the end
    assert seen == sorted(seen)


async def test_a_cleanup_job_chooses_its_tasks_when_it_starts(client: Any, task_factory, base_dir):
    now = datetime.now()
    task_factory("old1", created_at=now - timedelta(days=40))
    task_factory("old2", created_at=now - timedelta(days=35))
    task_factory("young", created_at=now - timedelta(days=2))
    task_factory("running", created_at=now - timedelta(days=50), status="in_progress")
    queue: JobQueue = client.app[appkeys.JOBS]
    job = await queue.submit(
        kind="cleanup",
        options=DeleteOptions(),
        actor="schedule:nightly",
        request_id=uuid.uuid4().hex,
        client=None,
        selection={"older_than_days": 30, "statuses": ["completed", "failed"]},
    )
    assert job["kind"] == "cleanup" and job["selection"]["older_than_days"] == 30
    done = await finished(client, job["job_id"])
    assert done["status"] == "succeeded"
    assert [t["task_id"] for t in done["result"]["deleted_tasks"]] == ["old1", "old2"]
    assert (base_dir / "young").exists() and (base_dir / "running").exists()
    listed, total = await queue.list(limit=10, offset=0, kind="cleanup")
    assert total == 1 and listed[0]["job_id"] == job["job_id"]
    assert (await queue.counts())["succeeded"] == 1


class Slow:
    """Each task takes a while before its directory is touched."""

    @hookimpl
    async def dptask_before_removal(self, task: TaskContext) -> None:
        await asyncio.sleep(0.4)


@pytest.mark.parametrize("plugins", [[Slow()]])
async def test_cancel_skips_the_tasks_not_started(client: Any, task_factory, base_dir: Path):
    ids = [f"c{i}" for i in range(6)]
    for task_id in ids:
        task_factory(task_id)
    job = await submit(client, ids, continue_on_error=False)
    queue: JobQueue = client.app[appkeys.JOBS]
    while (await queue.get(job["job_id"]))["progress"]["tasks_done"] < 1:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # a client polls the job
    cancelled = await queue.cancel(job["job_id"])
    assert cancelled is not None and cancelled["cancel_requested"] is True
    done = await finished(client, job["job_id"])

    assert done["status"] == "cancelled"
    result = done["result"]
    deleted = [t["task_id"] for t in result["deleted_tasks"]]
    assert result["skipped_tasks"] and not result["failed_tasks"]
    assert deleted + result["skipped_tasks"] == ids  # in order, each once
    assert all(not (base_dir / t).exists() for t in deleted)
    assert all((base_dir / t).exists() for t in result["skipped_tasks"])
    assert result["summary"]["skipped"] == len(result["skipped_tasks"])
    # Cancelling a finished job changes nothing.
    assert (await queue.cancel(job["job_id"]))["status"] == "cancelled"
    assert await queue.cancel("no-such-job") is None


def insert_job(pg: Pg, task_ids: list[str], **options: Any) -> str:
    """A queued delete job, as ``JobQueue.submit`` writes it."""
    job_id = uuid.uuid4().hex
    pg.rows(
        "INSERT INTO dptask_jobs (job_id, kind, actor, request_id, client, options, task_ids,"
        " progress, created_at) VALUES (%s, 'delete', 'tester', %s, NULL, %s, %s, %s, %s)",
        (
            job_id,
            uuid.uuid4().hex,
            json.dumps({**vars(DeleteOptions()), **options}),
            json.dumps(task_ids),
            json.dumps({"tasks_total": len(task_ids), "tasks_done": 0, "files": 0, "bytes": 0}),
            datetime.now(),
        ),
    )
    return job_id


def stored(pg: Pg, job_id: str) -> dict[str, Any]:
    """A job's task outcomes so far, as its runners wrote them: a task's own
    row, else ``{"started": True}`` when a group's mark names it."""
    rows = pg.rows("SELECT task_id, outcome FROM dptask_job_results WHERE job_id = %s", (job_id,))
    outcomes = {r["task_id"]: r["outcome"] for r in rows if "started_tasks" not in r["outcome"]}
    for r in rows:
        for task_id in r["outcome"].get("started_tasks", []):
            outcomes.setdefault(task_id, {"started": True})
    return outcomes


def store(pg: Pg, job_id: str, outcomes: dict[str, Any], *, legacy: bool = False) -> None:
    """Task outcomes as a runner that died wrote them: rows of
    dptask_job_results, or (``legacy``) the job row's ``results``, where a
    version before that table kept them."""
    if legacy:
        pg.rows(
            "UPDATE dptask_jobs SET results = %s::jsonb WHERE job_id = %s",
            (json.dumps(outcomes), job_id),
        )
    for task_id, outcome in ({} if legacy else outcomes).items():
        pg.rows(
            "INSERT INTO dptask_job_results (job_id, task_id, outcome) VALUES (%s, %s, %s::jsonb)",
            (job_id, task_id, json.dumps(outcome)),
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("how", "groups"),
    [("SIGKILL", False), ("SIGTERM", False), ("SIGKILL", True)],
    ids=["SIGKILL", "SIGTERM", "SIGKILL-groups"],
)
def test_an_instance_ends_then_another_finishes_the_job(
    how: str, groups: bool, service_factory, pg: Pg, base_dir: Path, workdir: Path
):
    """SIGKILL: the lease expires and the second instance takes the job over
    (settling the task that was in flight). SIGTERM: the first instance
    finishes the task in flight and puts the job back to queued at once.
    With groups (of two, one at a time), the tasks in flight are those a
    group's mark names."""
    config = "[jobs]\nlease_seconds = 2\n"
    if groups:
        config += "[limits]\ncommit_group = 2\ntasks_in_flight = 2\n"
    first = service_factory(settings_text=config)
    ids = [f"k{i}" for i in range(10)]
    for task_id in ids:
        insert_task(pg, task_id)
        make_task_dir(base_dir, task_id, files=4000, size=10)
    job_id = insert_job(pg, ids, continue_on_error=groups)

    deadline = time.monotonic() + 60
    while True:  # kill it in the middle of the job
        row = pg.rows("SELECT status FROM dptask_jobs WHERE job_id = %s", (job_id,))[0]
        done = [t for t, r in stored(pg, job_id).items() if "entry" in r]
        if len(done) >= 2:
            break
        assert row["status"] != "succeeded" and time.monotonic() < deadline, row
        time.sleep(0.01)
    if how == "SIGKILL":
        first.kill()
    else:
        first.stop()  # SIGTERM, then waits for the process to end
    row = pg.rows("SELECT * FROM dptask_jobs WHERE job_id = %s", (job_id,))[0]
    outcomes = stored(pg, job_id)
    assert len(outcomes) < len(ids)
    if how == "SIGKILL":
        assert row["status"] == "running"
    else:
        assert row["status"] == "queued" and row["owner"] is None
        assert all("entry" in r for r in outcomes.values())  # nothing left in flight

    second = service_factory(settings_text=config)
    deadline = time.monotonic() + 60
    while (row := pg.rows("SELECT * FROM dptask_jobs WHERE job_id = %s", (job_id,))[0])[
        "status"
    ] not in FINISHED:
        assert time.monotonic() < deadline, row
        time.sleep(0.1)
    assert row["status"] == "succeeded", row
    result = row["result"]
    assert sorted(t["task_id"] for t in result["deleted_tasks"]) == sorted(ids)  # each once
    assert result["failed_tasks"] == [] and result["skipped_tasks"] == []
    assert all(not (base_dir / t).exists() for t in ids)
    assert list((base_dir / ".trash").iterdir()) == []
    assert all(pg.task(t)["directory_exists"] is False for t in ids)
    lines = [json.loads(line) for line in (workdir / "var" / "audit.log").read_text().splitlines()]
    deletes = [x["task_id"] for x in lines if x["event"] == "task_delete"]
    assert all(deletes.count(t) == 1 for t in ids), deletes  # each task deleted once
    starts = [x for x in lines if x["event"] == "job_started" and x["job_id"] == job_id]
    assert [s["resumed"] for s in starts] == [False, True]
    second.stop()


def test_finished_jobs_are_removed_after_the_retention(service_factory, pg: Pg):
    """With their task outcomes: nothing of an expired job is left."""
    first = service_factory(settings_text="[jobs]\nretention_days = 7\n")  # creates the table
    first.stop()
    old, recent, queued = insert_job(pg, ["a"]), insert_job(pg, ["b"]), insert_job(pg, ["c"])
    store(pg, old, {"a": {"ok": True, "entry": {"task_id": "a"}}})
    store(pg, recent, {"b": {"ok": True, "entry": {"task_id": "b"}}})
    pg.rows(
        "UPDATE dptask_jobs SET status = 'succeeded', finished_at = now() - interval '8 days',"
        " created_at = now() - interval '8 days' WHERE job_id = %s",
        (old,),
    )
    pg.rows(
        "UPDATE dptask_jobs SET status = 'succeeded', finished_at = now() - interval '6 days'"
        " WHERE job_id = %s",
        (recent,),
    )
    service_factory(settings_text="[jobs]\nretention_days = 7\n")  # its runner looks at once
    deadline = time.monotonic() + 20
    while pg.rows("SELECT 1 FROM dptask_jobs WHERE job_id = %s", (old,)):
        assert time.monotonic() < deadline, "the expired job was never removed"
        time.sleep(0.1)
    left = {r["job_id"] for r in pg.rows("SELECT job_id FROM dptask_jobs")}
    assert left == {recent, queued}
    assert stored(pg, old) == {} and list(stored(pg, recent)) == ["b"]


@pytest.mark.parametrize("settings_text", ["[jobs]\nconcurrency = 1\n"])
@pytest.mark.parametrize("plugins", [[Slow()]])
async def test_a_queued_job_cancelled_skips_every_task(client: Any, task_factory, base_dir):
    for task_id in ("q1", "q2", "w1", "w2", "w3"):
        task_factory(task_id)
    queue: JobQueue = client.app[appkeys.JOBS]
    busy = await submit(client, ["w1", "w2", "w3"], continue_on_error=False)
    waiting = await submit(client, ["q1", "q2"])  # one job at a time: this one waits
    assert (await queue.get(waiting["job_id"]))["status"] == "queued"

    cancelled = await queue.cancel(waiting["job_id"])
    assert cancelled is not None and cancelled["status"] == "cancelled"
    assert cancelled["result"]["skipped_tasks"] == ["q1", "q2"]
    assert cancelled["result"]["summary"]["skipped"] == 2
    await finished(client, busy["job_id"])
    assert (base_dir / "q1").exists() and (base_dir / "q2").exists()
    assert (await queue.get(waiting["job_id"]))["status"] == "cancelled"  # never claimed
    assert (await queue.counts())["cancelled"] == 1


async def test_a_dry_run_job_taken_over_changes_nothing(client: Any, schema: Pg, base_dir: Path):
    """A dry-run job whose instance died mid-task is taken over: the task is
    dry-run again, never settled as a real deletion would be. Its record says
    the directory is gone (a deletion committed long ago) and a tree of it
    waits in the trash: the dry run must neither purge that tree nor report
    the task deleted."""
    insert_task(schema, "dr1", directory_exists=False)
    leftover = base_dir / ".trash" / f"{uuid.uuid4().hex}.dr1"
    make_task_dir(leftover.parent, leftover.name, files=3)
    job_id = insert_job(schema, ["dr1"], dry_run=True)
    schema.rows(
        "UPDATE dptask_jobs SET status = 'running', owner = 'gone:1:dead',"
        " heartbeat_at = now() - interval '1 hour', started_at = %s WHERE job_id = %s",
        (datetime.now(), job_id),
    )
    store(schema, job_id, {"dr1": {"started": True}})
    job = await finished(client, job_id)
    assert [t["task_id"] for t in job["result"]["failed_tasks"]] == ["dr1"], job["result"]
    assert job["result"]["failed_tasks"][0]["error_code"] == "DELETE_FAILED"
    assert job["result"]["deleted_tasks"] == []
    assert leftover.is_dir() and len(list(leftover.iterdir())) == 3  # untouched


async def test_a_cancelled_job_taken_over_settles_its_tasks_in_flight(
    client: Any, schema: Pg, base_dir: Path, settings
):
    """A job cancelled after its instance died mid-task: the tasks that were
    in flight are settled all the same (cancelling starts no new task; it
    does not forget one under way). One had committed: it is reported
    deleted, with its audit line, and its tree purged. The other had not:
    its tree goes back into place and it is skipped."""
    insert_task(schema, "cx1", directory_exists=False)  # committed when the instance died
    insert_task(schema, "cx2")  # detached, not committed
    trash = base_dir / ".trash"
    committed = trash / f"{uuid.uuid4().hex}.cx1"
    uncommitted = trash / f"{uuid.uuid4().hex}.cx2"
    make_task_dir(trash, committed.name, files=3)
    make_task_dir(trash, uncommitted.name, files=3)
    job_id = insert_job(schema, ["cx1", "cx2", "cx3"])
    schema.rows(
        "UPDATE dptask_jobs SET status = 'running', owner = 'gone:1:dead', cancel_requested = true,"
        " heartbeat_at = now() - interval '1 hour', started_at = %s WHERE job_id = %s",
        (datetime.now(), job_id),
    )
    store(schema, job_id, {"cx1": {"started": True}, "cx2": {"started": True}})
    job = await finished(client, job_id)
    result = job["result"]
    assert job["status"] == "cancelled"
    assert [t["task_id"] for t in result["deleted_tasks"]] == ["cx1"], result
    assert sorted(result["skipped_tasks"]) == ["cx2", "cx3"], result
    assert not committed.exists()
    assert (base_dir / "cx2").is_dir() and not uncommitted.exists()
    deletes = [x for x in audit_lines(settings) if x["event"] == "task_delete"]
    assert [x["task_id"] for x in deletes] == ["cx1"]


class SlowFirst:
    """The first task of the job takes a while, the others do not."""

    @hookimpl
    async def dptask_before_removal(self, task: TaskContext) -> None:
        if task.task_id == "o1":
            await asyncio.sleep(4)


@pytest.mark.parametrize("settings_text", ["[jobs]\nlease_seconds = 1\n"])
@pytest.mark.parametrize("plugins", [[SlowFirst()]])
async def test_a_failed_result_write_leaves_no_task_running_behind_the_job(
    client: Any, task_factory, base_dir: Path, settings
):
    """Writing one task's outcome into the job's results fails once (a real
    database error). The job is abandoned and taken over after its lease,
    but the tasks it had in flight must not go on running behind it: each
    task is deleted by one runner, and none fails TASK_LOCKED against the
    job's own orphan."""
    ids = ["o1", "o2", "o3", "o4", "o5", "o6"]
    for task_id in ids:
        task_factory(task_id)
    pg = Pg(settings.database_url)
    pg.rows("CREATE SEQUENCE IF NOT EXISTS dptask_test_once")
    pg.rows("SELECT setval('dptask_test_once', 1, false)")
    pg.rows(
        "CREATE OR REPLACE FUNCTION dptask_test_fail_once() RETURNS trigger AS $$ BEGIN"
        " IF NEW.task_id = 'o2' AND NEW.outcome ? 'entry' THEN IF nextval('dptask_test_once') = 1"
        " THEN"
        " RAISE EXCEPTION 'refused once'; END IF; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
    )
    pg.rows(
        "CREATE TRIGGER dptask_test_fail_once BEFORE INSERT OR UPDATE ON dptask_job_results"
        " FOR EACH ROW EXECUTE FUNCTION dptask_test_fail_once()"
    )
    job = await submit(client, ids)
    done = await finished(client, job["job_id"])
    result = done["result"]
    assert result["failed_tasks"] == [], result["failed_tasks"]
    assert sorted(t["task_id"] for t in result["deleted_tasks"]) == ids
    assert all(not (base_dir / t).exists() for t in ids)
    deletes = [x for x in audit_lines(settings) if x["event"] == "task_delete"]
    assert all(x["outcome"] == "deleted" for x in deletes), deletes
    pg.close()


@pytest.mark.parametrize("settings_text", ["[jobs]\nconcurrency = 1\n"])
@pytest.mark.parametrize("plugins", [[Slow()]])
@pytest.mark.parametrize("legacy", [False, True], ids=["rows", "earlier-version"])
async def test_a_requeued_job_cancelled_keeps_the_tasks_it_finished(
    client: Any, task_factory, schema: Pg, legacy: bool
):
    """A job a drain put back to queued has finished some tasks; cancelling it
    before another runner takes it must report those as they ended, not as
    skipped (they were deleted). So too when a version before the results
    table ran it (its outcomes are in the job row's ``results``)."""
    for task_id in ("w1", "w2", "w3"):
        task_factory(task_id)
    queue: JobQueue = client.app[appkeys.JOBS]
    busy = await submit(client, ["w1", "w2", "w3"], continue_on_error=False)
    job_id = insert_job(schema, ["d1", "d2"])
    entry = {"success": True, "task_id": "d1", "directory_deleted": True}
    schema.rows(
        "UPDATE dptask_jobs SET started_at = %s WHERE job_id = %s", (datetime.now(), job_id)
    )
    store(schema, job_id, {"d1": {"ok": True, "entry": entry}}, legacy=legacy)
    assert (await queue.get(job_id))["status"] == "queued"  # the busy job holds the runner
    cancelled = await queue.cancel(job_id)
    assert cancelled is not None and cancelled["status"] == "cancelled"
    result = cancelled["result"]
    assert [t["task_id"] for t in result["deleted_tasks"]] == ["d1"], result
    assert result["skipped_tasks"] == ["d2"]
    await finished(client, busy["job_id"])


@pytest.mark.parametrize("plugins", [[Slow()]])
async def test_cancelling_a_requeued_job_keeps_what_it_did(client: Any, task_factory, base_dir):
    """SIGTERM puts a job back in the queue with the results of the tasks it
    finished; cancelling it then must report those as deleted, not skipped."""
    ids = [f"r{i}" for i in range(6)]
    for task_id in ids:
        task_factory(task_id)
    queue: JobQueue = client.app[appkeys.JOBS]
    job = await submit(client, ids, continue_on_error=False)
    while (await queue.get(job["job_id"]))["progress"]["tasks_done"] < 1:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    await queue.drain(30)  # what SIGTERM does: the job goes back to the queue
    requeued = await queue.get(job["job_id"])
    assert requeued is not None and requeued["status"] == "queued"
    gone = [t for t in ids if not (base_dir / t).exists()]
    assert gone

    resp = await client.post(f"/api/v0/data_pipeline/jobs/{job['job_id']}/cancel")
    assert resp.status == 200
    result = (await resp.json())["data"]["result"]
    assert [t["task_id"] for t in result["deleted_tasks"]] == gone
    assert result["skipped_tasks"] == [t for t in ids if t not in gone]
    assert result["summary"]["successfully_deleted"] == len(gone)


async def test_a_requeued_job_whose_cancel_was_requested_still_ends(
    client: Any, task_factory, pg: Pg
):
    """A cancel asked while the instance drains (cancel is allowed while
    stopping) leaves the job queued with ``cancel_requested``: a runner must
    still finish it as cancelled, not leave it queued for ever."""
    for task_id in ("s1", "s2"):
        task_factory(task_id)
    job_id = insert_job(pg, ["s1", "s2"])
    pg.rows("UPDATE dptask_jobs SET cancel_requested = true WHERE job_id = %s", (job_id,))
    queue: JobQueue = client.app[appkeys.JOBS]
    deadline = time.monotonic() + 10
    while (job := await queue.get(job_id))["status"] not in FINISHED:  # type: ignore[index]
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.05)
    assert job is not None and job["status"] == "cancelled"
    assert job["result"]["skipped_tasks"] == ["s1", "s2"]


@pytest.mark.parametrize("plugins", [[Slow()]])
@pytest.mark.parametrize("settings_text", ["[jobs]\nconcurrency = 1\n"])
async def test_a_cleanup_queued_behind_another_selects_when_it_starts(
    client: Any, task_factory, base_dir: Path
):
    """Two clean-ups asked one after the other (an operator's and the nightly
    schedule's, say): the second waits for the first, and must then select
    what is still there, not fail on what the first already deleted."""
    old = datetime.now() - timedelta(days=40)
    for task_id in ("old1", "old2"):
        task_factory(task_id, created_at=old)
    body = {"older_than_days": 30, "dry_run": False, "confirm": True}
    jobs = []
    for _ in range(2):
        resp = await client.post("/api/v0/data_pipeline/tasks/cleanup", json=body)
        assert resp.status == 202
        jobs.append((await resp.json())["data"]["job_id"])
    first, second = [await finished(client, job_id) for job_id in jobs]
    assert first["status"] == "succeeded"
    assert second["result"]["failed_tasks"] == [], second["result"]
    assert second["status"] == "succeeded"


async def test_a_tasks_outcome_wins_over_its_groups_mark(client: Any, schema: Pg):
    """What a runner reads back of a job: its tasks' outcomes, each group's
    mark, and the marks a task that earlier versions wrote."""
    job_id = insert_job(schema, ["a", "b", "c", "d"])
    done = {"ok": True, "entry": {"task_id": "a"}}
    failed = {"ok": False, "entry": {"task_id": "c"}}
    store(
        schema,
        job_id,
        {
            "a": done,
            "(started) 2": {"started_tasks": ["a", "b"]},
            "c": failed,
            "d": {"started": True},
        },
    )
    read = await jobs._stored(client.app[appkeys.DB].query, {"job_id": job_id, "results": None})
    assert read == {"a": done, "b": {"started": True}, "c": failed, "d": {"started": True}}
