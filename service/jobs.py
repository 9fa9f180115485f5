"""Background deletion jobs: rows in ``dptask_jobs``, run by any instance.

One ``JobQueue`` per application. ``submit`` inserts a queued row; the
runner of every instance on the database claims queued jobs, and running
jobs whose lease expired (their instance died), one at a time with
``FOR UPDATE SKIP LOCKED``, and runs at most ``jobs.concurrency`` at once.

A job runs its tasks through ``Deleter.delete_tasks``, in the groups and
with the ``continue_on_error`` rule the pipeline DELETE uses, and its result
is built by ``pipeline.batch_data`` like the DELETE response's data. Each
group's tasks are marked started in ``dptask_job_results`` before they run
(one row a group, under a key of its own: ``{"started_tasks": [...]}``), and
each task's outcome is written there too (a row a task, under its id), so
that a job taken over after its instance died never runs or reports a
finished task again. The groups go in ``limits.tasks_in_flight / limits.commit_group``
lanes; a lane writes its last group's outcomes and its next group's marks in
one statement, before that group starts (one round trip a group, not two).
Those writes are guarded by the job's row: each locks it ``FOR SHARE`` and
lands only while the row names this runner as the owner.
A claim (``FOR UPDATE SKIP LOCKED``) skips the row while a write holds it and
reads the outcomes in a later statement; a claim that came first leaves the
write nothing to land on (the runner then knows the job is lost). A drain's
requeue and a cancel wait for the write.

An instance of a version before ``dptask_job_results`` reads only the job
row's ``results``: it must not claim jobs this version ran (stop the old
instances before the new ones run jobs; before a rollback, let the jobs
under way finish, or cancel them). A task
that was started and has no outcome may have been anywhere in the protocol
when its instance died: its trees in the trash are settled first (put back
if uncommitted, purged if committed, as the start-up sweep does); a task
whose deletion turns out committed is reported deleted, any other runs again.

While a job runs, a heartbeat (every second at most, well within the lease)
writes ``heartbeat_at``, the progress (tasks done, and the files and bytes
the purges removed so far, from the walk as it goes) and reads
``cancel_requested``. A cancelled job starts no new task; a task already
started finishes; the rest are ``skipped_tasks``. A heartbeat that finds the
row no longer ours (another instance took it over) stops the job the same way.

A client waits for a job with ``wait``: answered as a job of this instance
ends, and from a read every ``PROGRESS_SECONDS`` for one elsewhere.

Finished jobs older than ``jobs.retention_days`` are deleted by the runner.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

import structlog

from service import cleanup, errors, fs
from service.audit import AuditLog, task_record
from service.db import Database, DatabaseError
from service.formatting import iso
from service.pipeline import (
    BatchContext,
    DeleteOptions,
    Deleter,
    TaskContext,
    _failure,
    _success,
    batch_data,
    batch_message,
)
from service.progress import Progress
from service.schema import JOB_RESULTS, JOBS
from service.settings import Settings
from service.trash import Trash, deletion_committed, settle

log = structlog.get_logger("service")

Rows = list[dict[str, Any]]
STATUSES = ("queued", "running", "succeeded", "partial", "failed", "cancelled")
KINDS = ("delete", "cleanup")
FINISHED = ("succeeded", "partial", "failed", "cancelled")
# What the API shows of a job (``_shape``): not its task ids, which a client
# polling a job of 1,000 tasks would otherwise have read and decoded each time.
_SHOWN = (
    "job_id, kind, status, actor, request_id, client, options, selection,"
    " cancel_requested, progress, created_at, started_at, finished_at, result"
)
_COLUMNS = f"{_SHOWN}, task_ids"  # and what running or cancelling one needs
Outcomes = dict[str, tuple[bool, dict[str, Any]]]  # task_id -> (ok, its result entry)
# How often an idle runner looks for work (a local submit wakes it at once).
POLL_SECONDS = 1.0
# The most time between two writes of a running job's progress (and lease).
PROGRESS_SECONDS = 0.25


class JobQueue:
    def __init__(
        self, settings: Settings, db: Database, deleter: Deleter, trash: Trash, audit: AuditLog
    ) -> None:
        self.settings = settings
        self.db = db
        self.deleter = deleter
        self.trash = trash
        self.audit = audit
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._draining = False
        self._runner: asyncio.Task[None] | None = None
        self._running: dict[str, _Run] = {}
        # Set, and replaced, whenever a job of this instance starts or ends (``wait``).
        self._changed = asyncio.Event()

    # ------------------------------------------------------------ the API

    async def submit(
        self,
        *,
        kind: str,
        options: DeleteOptions,
        actor: str,
        request_id: str,
        client: str | None,
        task_ids: list[str] | None = None,
        selection: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A new queued job (its API shape); ``task_ids`` for ``delete``,
        ``selection`` for ``cleanup`` (resolved when the job starts)."""
        if kind not in KINDS:
            raise ValueError(f"unknown job kind: {kind}")
        # jsonb cannot hold U+0000. An id holding it is never valid (it fails with
        # INVALID_TASK_ID's separator message either way), so it is kept escaped.
        ids = None
        if task_ids is not None:
            ids = [t.replace("\x00", "\\u0000") for t in dict.fromkeys(task_ids)]
        rows = await self.db.query(
            f"INSERT INTO {JOBS} (job_id, kind, actor, request_id, client, options, selection,"
            " task_ids, progress, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb, %s::jsonb, %s::jsonb, %s)"
            f" RETURNING {_SHOWN}",
            (
                uuid.uuid4().hex,
                kind,
                actor,
                request_id,
                client,
                json.dumps(asdict(options)),
                None if selection is None else json.dumps(selection),
                None if ids is None else json.dumps(ids),
                json.dumps(_progress(len(ids or ()), 0, 0, 0)),
                datetime.now(),
            ),
        )
        self._wake.set()
        return _shape(rows[0])

    async def get(self, job_id: str) -> dict[str, Any] | None:
        rows = await self.db.query(f"SELECT {_SHOWN} FROM {JOBS} WHERE job_id = %s", (job_id,))
        return _shape(rows[0]) if rows else None

    async def wait(self, job_id: str, seconds: float) -> dict[str, Any] | None:
        """The job once it has finished, or as it is after ``seconds`` (None
        when there is no such job). A job of this instance is answered as it
        ends; one another instance runs, or one still queued, is read again
        every ``PROGRESS_SECONDS``. A drain answers at once."""
        deadline = time.monotonic() + seconds
        while True:
            changed = self._changed  # before the read: a change after it is not missed
            job = await self.get(job_id)
            left = deadline - time.monotonic()
            if job is None or job["status"] in FINISHED or left <= 0 or self._draining:
                return job
            # This instance's jobs say when they end; any other is read again.
            pause = left if job_id in self._running else min(left, PROGRESS_SECONDS)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), pause)

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def list(
        self, *, limit: int, offset: int, status: str | None = None, kind: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """Newest first, and the number of jobs matching."""
        where, args = [], []
        for column, value in (("status", status), ("kind", kind)):
            if value is not None:
                where.append(f"{column} = %s")
                args.append(value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self.db.query(
            f"SELECT {_SHOWN}, count(*) OVER () AS total_count FROM {JOBS} {clause}"
            " ORDER BY created_at DESC, job_id DESC LIMIT %s OFFSET %s",
            (*args, limit, offset),
        )
        if rows:
            total = rows[0]["total_count"]
        else:
            total = (await self.db.query(f"SELECT count(*) AS n FROM {JOBS} {clause}", args))[0][
                "n"
            ]
        return [_shape(r) for r in rows], total

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Ask the job to stop: a queued one is cancelled at once (every task
        skipped); a running one starts no new task. A finished one is as it was."""
        async with self.db.transaction() as q:
            rows = await q(
                f"SELECT {_COLUMNS}, results FROM {JOBS} WHERE job_id = %s FOR UPDATE", (job_id,)
            )
            if not rows:
                return None
            row = rows[0]
            if row["status"] in FINISHED:
                return _shape(row)
            if row["status"] == "running":
                await q(f"UPDATE {JOBS} SET cancel_requested = true WHERE job_id = %s", (job_id,))
            else:
                ids = row["task_ids"] or []
                now = datetime.now()
                # A job a drain put back may have finished some tasks already.
                stored = await _stored(q, row)
                done = [
                    (stored[i]["ok"], stored[i]["entry"]) if "entry" in stored.get(i, {}) else None
                    for i in ids
                ]
                data = batch_data(ids, done, now, row["options"]["dry_run"])
                await q(
                    f"UPDATE {JOBS} SET cancel_requested = true, status = 'cancelled',"
                    " finished_at = %s, result = %s::jsonb WHERE job_id = %s",
                    (now, json.dumps(data), job_id),
                )
        self._signal()
        return await self.get(job_id)

    async def counts(self) -> dict[str, int]:
        """Jobs by status, every status present (0 when none)."""
        rows = await self.db.query(f"SELECT status, count(*) AS n FROM {JOBS} GROUP BY status")
        found = {r["status"]: r["n"] for r in rows}
        return {s: found.get(s, 0) for s in STATUSES}

    # ------------------------------------------------------------ the runner

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run_forever())

    async def drain(self, grace: float) -> None:
        """Claim nothing new; let the tasks in flight finish within ``grace``
        (no job starts another task); then put this instance's unfinished jobs
        back to ``queued`` for another instance. Idempotent."""
        self._draining = True
        self._wake.set()
        self._signal()  # no waiter holds up the shutdown
        for run in self._running.values():
            run.stopping = True
        runs = [r.task for r in self._running.values()]
        if runs:
            await asyncio.wait(runs, timeout=grace)
        for run in list(self._running.values()):
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await run.task
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        with contextlib.suppress(DatabaseError):
            requeued = await self.db.query(
                f"UPDATE {JOBS} SET status = 'queued', owner = NULL, heartbeat_at = NULL"
                " WHERE owner = %s AND status = 'running' RETURNING job_id",
                (self.owner,),
            )
            if requeued:
                log.info("jobs_requeued", jobs=[r["job_id"] for r in requeued])

    async def _run_forever(self) -> None:
        next_expiry = 0.0
        while not self._draining:
            try:
                if time.monotonic() >= next_expiry:
                    await self.remove_expired()
                    next_expiry = time.monotonic() + _expiry_period(self.settings)
                while len(self._running) < self.settings.job_concurrency and not self._draining:
                    row = await self._claim()
                    if row is None:
                        break
                    self._spawn(row)
            except DatabaseError:
                log.warning("jobs_claim_failed", exc_info=True)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    async def _claim(self) -> dict[str, Any] | None:
        rows = await self.db.query(
            f"UPDATE {JOBS} SET status = 'running', owner = %s, heartbeat_at = now(),"
            " started_at = COALESCE(started_at, %s)"
            f" WHERE job_id = (SELECT job_id FROM {JOBS}"
            # a queued job with cancel_requested was put back by a drain: it is
            # claimed to end as cancelled (a queued job cancelled is 'cancelled')
            "   WHERE status = 'queued'"
            "      OR status = 'running' AND heartbeat_at < now() - make_interval(secs => %s)"
            # never a job this runner still runs (its heartbeat may just be late)
            "        AND job_id <> ALL(%s)"
            "   ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)"
            f" RETURNING {_COLUMNS}, results, owner",
            (
                self.owner,
                datetime.now(),
                self.settings.job_lease_seconds,
                [*self._running],
            ),
        )
        return rows[0] if rows else None

    def _spawn(self, row: dict[str, Any]) -> None:
        run = _Run(row)
        run.task = asyncio.create_task(self._execute(run))
        self._running[run.job_id] = run
        run.task.add_done_callback(lambda _: self._running.pop(run.job_id, None))
        run.task.add_done_callback(lambda _: self._wake.set())
        run.task.add_done_callback(lambda _: self._signal())
        self._signal()

    async def remove_expired(self) -> int:
        """Delete the jobs finished more than ``jobs.retention_days`` ago."""
        cut = datetime.now() - timedelta(days=self.settings.job_retention_days)
        rows = await self.db.query(
            f"WITH gone AS (DELETE FROM {JOBS} WHERE finished_at < %s RETURNING job_id),"
            f" outcomes AS (DELETE FROM {JOB_RESULTS} WHERE job_id IN (SELECT job_id FROM gone))"
            " SELECT job_id FROM gone",
            (cut,),
        )
        if rows:
            log.info("jobs_expired", count=len(rows))
        return len(rows)

    # ------------------------------------------------------------ one job

    async def _execute(self, run: _Run) -> None:
        row = run.row
        options = DeleteOptions(**row["options"])
        try:
            stored = await _stored(self.db.query, row)
            if row["task_ids"] is None:  # a clean-up: its tasks are chosen when it starts
                selection = row["selection"] or {}
                most = min(
                    selection.get("max_tasks") or self.settings.max_task_ids,
                    self.settings.max_task_ids,
                )
                ids, _more = await cleanup.select_task_ids(self.db, selection, most)
                await self._update(run, "task_ids = %s::jsonb", json.dumps(ids))
                row["task_ids"] = ids
            ids = list(row["task_ids"])
            batch = BatchContext(
                task_ids=ids,
                options=options,
                request_id=row["request_id"],
                client=row["client"],
                actor=row["actor"],
                job_id=run.job_id,
                progress=run.progress,
            )
            await self.deleter._audit(
                "job_started",
                {
                    "job_id": run.job_id,
                    "kind": row["kind"],
                    "request_id": row["request_id"],
                    "actor": row["actor"],
                    "tasks": len(ids),
                    "resumed": bool(stored),
                },
            )
            results: dict[str, tuple[bool, dict[str, Any]]] = {
                k: (v["ok"], v["entry"]) for k, v in stored.items() if "entry" in v
            }
            run.total = len(ids)
            run.done = len(results)
            for _, entry in results.values():
                run.progress.add(entry.get("deleted_files_count", 0), entry.get("deleted_bytes", 0))
            heartbeat = asyncio.create_task(self._heartbeat(run))
            try:
                await self._run_tasks(run, batch, ids, stored, results)
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
            if run.lost:
                log.warning("job_lost", job_id=run.job_id)
                return
            ordered = [results.get(i) for i in ids]
            data = batch_data(ids, ordered, row["started_at"], options.dry_run)
            if run.stopping and not run.cancelled and any(r is None for r in ordered):
                return  # draining: drain() puts it back to queued
            await self.deleter.finish_batch(batch, data)
            status = "cancelled" if run.cancelled else batch_message(data)[0]
            if not ids:
                status = "succeeded"
            await self._update(
                run,
                "status = %s, finished_at = %s, result = %s::jsonb, progress = %s::jsonb",
                status,
                datetime.now(),
                json.dumps(data, default=str),
                json.dumps(run.progress_json()),
            )
            self._signal()  # its waiters are answered now, not after the audit line
            await self.deleter._audit(
                "job_finished",
                {"job_id": run.job_id, "kind": row["kind"], "status": status, **data["summary"]},
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            # The lease lapses and another runner (or this one) takes it over.
            log.exception("job_failed_to_run", job_id=run.job_id)

    async def _run_tasks(
        self,
        run: _Run,
        batch: BatchContext,
        ids: Sequence[str],
        stored: dict[str, Any],
        results: dict[str, tuple[bool, dict[str, Any]]],
    ) -> None:
        pending = [i for i in ids if i not in results]

        def stored_form(outcomes: Outcomes) -> dict[str, Any]:
            return {i: {"ok": ok, "entry": entry} for i, (ok, entry) in outcomes.items()}

        async def run_group(group: list[str], unstored: Outcomes) -> Outcomes:
            """Delete a group of the job's tasks (``Deleter.plan``). The outcomes
            of the lane's previous group (``unstored``) are written with this
            group's "started" marks, one write; returns those not yet stored."""
            if run.lost:
                return {}
            outcomes: Outcomes = {}
            new = []
            for task_id in group:
                # Started by an instance that died: settle first, even when
                # stopping (that starts nothing new). A dry run moved nothing,
                # so it only runs again: it must change nothing.
                if task_id in stored and not batch.options.dry_run:
                    outcome = await self._resume(task_id, batch)
                    if outcome is not None:
                        outcomes[task_id] = outcome
                        continue
                new.append(task_id)  # never committed, back in place: run it (again)
            if new and not run.stopping:
                marks = {_marks_key(): {"started_tasks": new}}
                await self._record(run, {**stored_form(unstored), **marks})
                unstored = {}
                if run.lost:  # the job is another runner's now, and so are its tasks
                    return {}
                outcomes.update(await self.deleter.delete_tasks(new, batch))
            results.update(outcomes)
            run.done += len(outcomes)
            return {**unstored, **outcomes}

        async def store(outcomes: Outcomes) -> bool:
            """Write outcomes not yet stored; False when one failed."""
            if outcomes:
                await self._record(run, stored_form(outcomes))
            return all(ok for ok, _ in outcomes.values())

        if batch.options.continue_on_error:
            groups, at_once = self.deleter.plan(pending, batch.options)
            queue = collections.deque(groups)

            async def lane() -> None:
                """Groups one after the other, ``at_once`` lanes side by side."""
                unstored: Outcomes = {}
                try:
                    while queue and not run.lost:
                        unstored = await run_group(queue.popleft(), unstored)
                except BaseException:  # an error, or cancelled (a drain out of time)
                    run.stopping = True  # no new task behind a job that gives up
                    # What this lane finished is stored all the same: a takeover
                    # must not find it started with no outcome (and run it, or
                    # report it, again). Stored twice is the same row twice.
                    with contextlib.suppress(Exception):
                        await asyncio.shield(store(unstored))
                    raise
                await store(unstored)

            # Every task ends before the job gives up on an error: none may go
            # on running behind it while another runner takes the job over.
            lanes = min(at_once, len(groups))
            done = await asyncio.gather(*(lane() for _ in range(lanes)), return_exceptions=True)
            for failure in done:
                if isinstance(failure, BaseException):
                    raise failure
        else:
            for task_id in pending:
                if run.lost or not await store(await run_group([task_id], {})):
                    break

    async def _resume(
        self, task_id: str, batch: BatchContext
    ) -> tuple[bool, dict[str, Any]] | None:
        """A task started by an instance that died: settle its trees in the
        trash by its record; a deletion found committed is reported deleted
        (None: run it again)."""
        stats = fs.TreeStats()
        for entry in await asyncio.to_thread(self.trash.entries):
            if entry.task_id != task_id:
                continue
            if await settle(self.trash, self.db, entry, purge=False) == "committed":
                stats.add(await asyncio.to_thread(self.trash.purge, entry.label, batch.progress))
        record, _ = await self.db.peek_task(task_id)
        if not deletion_committed(record):
            return None  # never committed (its tree is back in place): run it again
        task = TaskContext(task_id, self.settings.base_dir / task_id, batch, self.settings)
        if stats.error_count:  # committed, so the remains stay in the trash for the sweep
            result = _failure(
                task_id,
                errors.PURGE_FAILED,
                f"目录未能完全删除: {stats.error_count} 个条目无法删除，剩余内容留在回收区，"
                "由重启时的清理处理",
                deleted_files_count=stats.files,
                deleted_bytes=stats.bytes,
                errors=stats.errors,
            )
        else:
            result = _success(task, True, record is None, stats)
            result["resumed"] = True  # its counts are what was left to purge
        ok = not stats.error_count
        outcome = "deleted" if ok else "failed"
        await self.deleter._audit("task_delete", task_record(batch, task_id, result, outcome))
        return ok, result

    async def _heartbeat(self, run: _Run) -> None:
        pause = min(PROGRESS_SECONDS, self.settings.job_lease_seconds / 3)
        while True:
            await asyncio.sleep(pause)
            try:
                rows = await self.db.query(
                    f"UPDATE {JOBS} SET heartbeat_at = now(), progress = %s::jsonb"
                    " WHERE job_id = %s AND owner = %s AND status = 'running'"
                    " RETURNING cancel_requested",
                    (json.dumps(run.progress_json()), run.job_id, self.owner),
                )
            except DatabaseError:
                log.warning("job_heartbeat_failed", job_id=run.job_id, exc_info=True)
                continue
            if not rows:
                run.lost = True
                return
            if rows[0]["cancel_requested"]:
                run.cancelled = run.stopping = True

    async def _record(self, run: _Run, outcomes: dict[str, dict[str, Any]]) -> None:
        """Write tasks' outcomes (or ``started`` marks) while the job is ours
        (its row share-locked meanwhile); none written marks the job lost."""
        rows = await self.db.query(
            f"WITH written AS (INSERT INTO {JOB_RESULTS} (job_id, task_id, outcome)"
            f" SELECT j.job_id, o.key, o.value FROM {JOBS} j, jsonb_each(%s::jsonb) o"
            " WHERE j.job_id = %s AND j.owner = %s FOR SHARE OF j"
            " ON CONFLICT (job_id, task_id) DO UPDATE SET outcome = EXCLUDED.outcome"
            " RETURNING 1) SELECT count(*) AS n FROM written",  # a count, not a row a task
            (json.dumps(outcomes, default=str), run.job_id, self.owner),
        )
        if not rows[0]["n"]:
            run.lost = True

    async def _update(self, run: _Run, assignments: str, *args: Any) -> None:
        """Change this job's row while it is ours."""
        rows = await self.db.query(
            f"UPDATE {JOBS} SET {assignments} WHERE job_id = %s AND owner = %s RETURNING job_id",
            (*args, run.job_id, self.owner),
        )
        if not rows:
            run.lost = True


class _Run:
    """A job this instance is running."""

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row
        self.job_id: str = row["job_id"]
        self.task: asyncio.Task[None]
        self.progress = Progress()
        self.total = 0
        self.done = 0
        self.stopping = False  # start no new task (cancelled, draining, lost)
        self.cancelled = bool(row["cancel_requested"])
        self.stopping = self.cancelled
        self.lost = False  # the row is no longer ours

    def progress_json(self) -> dict[str, int]:
        files, bytes_ = self.progress.snapshot()
        return _progress(self.total, self.done, files, bytes_)


async def _stored(query: Callable[..., Awaitable[Rows]], row: dict[str, Any]) -> dict[str, Any]:
    """A job's task outcomes so far (task_id -> outcome or ``started`` mark):
    its rows, over what an earlier version kept in the job's ``results``. A
    group's mark (earlier versions wrote one a task) stands for each of its
    tasks that has no row of its own."""
    rows = await query(
        f"SELECT task_id, outcome FROM {JOB_RESULTS} WHERE job_id = %s", (row["job_id"],)
    )
    stored = dict(row["results"] or {})
    started = []
    for r in rows:
        if "started_tasks" in r["outcome"]:
            started += r["outcome"]["started_tasks"]
        else:
            stored[r["task_id"]] = r["outcome"]
    for task_id in started:
        stored.setdefault(task_id, {"started": True})
    return stored


def _marks_key() -> str:
    """The key of a group's mark: its own, never a task's (a task id may be
    any string, but none is this one)."""
    return f"(started) {uuid.uuid4().hex}"


def _progress(total: int, done: int, files: int, bytes_: int) -> dict[str, int]:
    return {"tasks_total": total, "tasks_done": done, "files": files, "bytes": bytes_}


def _expiry_period(settings: Settings) -> float:
    """How often finished jobs are looked for: often enough for short retentions."""
    return min(600.0, max(1.0, settings.job_retention_days * 86400 / 4))


def _shape(row: dict[str, Any]) -> dict[str, Any]:
    """A row in the API's shape."""
    return {
        "job_id": row["job_id"],
        "kind": row["kind"],
        "status": row["status"],
        "actor": row["actor"],
        "request_id": row["request_id"],
        "client": row["client"],
        "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "options": row["options"],
        "selection": row["selection"],
        "cancel_requested": row["cancel_requested"],
        "progress": {**_progress(0, 0, 0, 0), **(row["progress"] or {})},
        "result": row["result"],
    }
