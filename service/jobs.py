"""PLACEHOLDER for the h-cleanup branch only: the lead replaces this whole
module by the jobs engineer's ``service/jobs.py`` at merge.

It implements just enough of the shared ``JobQueue`` interface (common3.md)
for the jobs API and the clean-up to be tested: rows in ``dptask_jobs``
(created here on first use, not by the schema step), a naive runner that
claims queued jobs with ``FOR UPDATE SKIP LOCKED`` and runs them through
``Deleter.delete_batch``. No lease, no takeover after a crash, no progress
while a job runs, no cancel of a running job, no retention.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import asdict
from typing import Any

import structlog

from service.db import Database, DatabaseError
from service.formatting import jsonable
from service.pipeline import BatchContext, DeleteOptions, Deleter

log = structlog.get_logger("service")

_TABLE = """
    CREATE TABLE IF NOT EXISTS dptask_jobs (
        job_id text PRIMARY KEY, kind text NOT NULL, status text NOT NULL DEFAULT 'queued',
        actor text, request_id text, client text,
        created_at timestamp NOT NULL DEFAULT localtimestamp, started_at timestamp,
        finished_at timestamp, options jsonb NOT NULL, selection jsonb, task_ids jsonb NOT NULL,
        cancel_requested boolean NOT NULL DEFAULT false, progress jsonb NOT NULL, result jsonb
    )
    """
_COLUMNS = (
    "job_id, kind, status, actor, request_id, client, created_at, started_at, finished_at,"
    " options, selection, cancel_requested, progress, result"
)


def _api(row: dict[str, Any]) -> dict[str, Any]:
    return jsonable(row)


class JobQueue:
    def __init__(self, db: Database, deleter: Deleter, concurrency: int = 2) -> None:
        self.db, self.deleter, self.concurrency = db, deleter, concurrency
        self._ready = False
        self._lock = asyncio.Lock()

    async def _table(self) -> None:
        async with self._lock:
            if not self._ready:
                try:
                    await self.db.execute(_TABLE)
                except DatabaseError:  # another instance created it at the same moment
                    await self.db.execute(_TABLE)
                self._ready = True

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
        await self._table()
        ids = list(dict.fromkeys(task_ids or []))
        progress = {"tasks_total": len(ids), "tasks_done": 0, "files": 0, "bytes": 0}
        rows = await self.db.rows(
            "INSERT INTO dptask_jobs (job_id, kind, actor, request_id, client, options,"
            " selection, task_ids, progress) VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s::jsonb,"
            f" %s::jsonb, %s::jsonb) RETURNING {_COLUMNS}",
            (
                uuid.uuid4().hex,
                kind,
                actor,
                request_id,
                client,
                json.dumps(asdict(options)),
                None if selection is None else json.dumps(selection),
                json.dumps(ids),
                json.dumps(progress),
            ),
        )
        return _api(rows[0])

    async def get(self, job_id: str) -> dict[str, Any] | None:
        await self._table()
        rows = await self.db.rows(f"SELECT {_COLUMNS} FROM dptask_jobs WHERE job_id = %s", [job_id])
        return _api(rows[0]) if rows else None

    async def list(
        self, *, limit: int, offset: int, status: str | None = None, kind: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        await self._table()
        rows = await self.db.rows(
            f"SELECT {_COLUMNS}, count(*) OVER () AS total FROM dptask_jobs"
            " WHERE (%s::text IS NULL OR status = %s) AND (%s::text IS NULL OR kind = %s)"
            " ORDER BY created_at DESC, job_id DESC LIMIT %s OFFSET %s",
            (status, status, kind, kind, limit, offset),
        )
        total = rows[0].pop("total") if rows else 0
        for row in rows[1:]:
            del row["total"]
        return [_api(r) for r in rows], total

    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        await self._table()
        await self.db.rows(
            "UPDATE dptask_jobs SET cancel_requested = true WHERE job_id = %s"
            " AND status IN ('queued', 'running') RETURNING job_id",
            [job_id],
        )
        return await self.get(job_id)

    async def counts(self) -> dict[str, int]:
        await self._table()
        rows = await self.db.rows("SELECT status, count(*) AS n FROM dptask_jobs GROUP BY status")
        return {r["status"]: r["n"] for r in rows}

    async def drain(self, grace: float) -> None:
        return None

    async def run(self, stop: asyncio.Event) -> None:
        """Claim and run queued jobs until ``stop`` is set (never cancelled
        mid-query: aiopg can lose a connection cancelled in its acquire)."""
        while not stop.is_set():
            try:
                if await self._run_one():
                    continue
            except Exception:
                log.warning("placeholder_job_failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    async def _run_one(self) -> bool:
        await self._table()
        rows = await self.db.rows(
            "UPDATE dptask_jobs SET status = 'running', started_at = localtimestamp"
            " WHERE job_id = (SELECT job_id FROM dptask_jobs WHERE status = 'queued'"
            " ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1)"
            " RETURNING job_id, actor, request_id, client, options, task_ids, cancel_requested"
        )
        if not rows:
            return False
        job = rows[0]
        options = DeleteOptions(**job["options"])
        if job["cancel_requested"]:
            ids = job["task_ids"]
            result: dict[str, Any] = {
                "deleted_at": None,
                "dry_run": options.dry_run,
                "deleted_tasks": [],
                "failed_tasks": [],
                "skipped_tasks": ids,
                "summary": {
                    "total_requested": len(ids),
                    "successfully_deleted": 0,
                    "failed": 0,
                    "skipped": len(ids),
                },
            }
            status = "cancelled"
        else:
            batch = BatchContext(
                job["task_ids"], options, job["request_id"], job["client"], job["actor"]
            )
            result = await self.deleter.delete_batch(batch)
            s = result["summary"]
            status = (
                "succeeded"
                if s["successfully_deleted"] == s["total_requested"]
                else "failed"
                if s["successfully_deleted"] == 0
                else "partial"
            )
        done = result["deleted_tasks"]
        progress = {
            "tasks_total": len(job["task_ids"]),
            "tasks_done": len(done) + len(result["failed_tasks"]),
            "files": sum(t["deleted_files_count"] for t in done),
            "bytes": sum(t["deleted_bytes"] for t in done),
        }
        await self.db.rows(
            "UPDATE dptask_jobs SET status = %s, finished_at = localtimestamp,"
            " result = %s::jsonb, progress = %s::jsonb WHERE job_id = %s RETURNING job_id",
            (status, json.dumps(result), json.dumps(progress), job["job_id"]),
        )
        return True
