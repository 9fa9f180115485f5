"""Prometheus metrics (``GET /metrics``, the text format, with ``prometheus-client``).

One ``CollectorRegistry`` per application, never the library's global one:
two apps in one process (the tests) never share a counter.

Where each number comes from:

- task outcomes: ``TaskOutcomes``, an observer plugin registered as
  ``builtin.metrics`` (``dptask_after_delete`` / ``dptask_delete_failed``),
  so it sees every task of every DELETE and job, whichever way it ended.
  Dry runs change nothing and are not counted;
- request time: ``middleware``, outside the error middleware so it sees the
  status the client got;
- jobs by status and queue depth, database connections in use, the trash's
  entries: read when Prometheus scrapes (``refresh``), from the database,
  the pool and the trash (in a worker thread), so they are true for the
  whole service (jobs are in PostgreSQL, shared by every instance) or for
  this process (pool, trash), never a tally that drifts.

Label values come only from fixed sets: ``error_code`` is one of the codes
in ``service.errors`` (a plugin's own veto codes are folded into ``OTHER``),
``route`` the route's template (``/api/v0/data_pipeline/tasks/{task_id}``,
or ``unmatched``), ``method`` one of the HTTP methods (else ``OTHER``),
``status`` the HTTP status. A task id or a raw path never becomes a label.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from service import appkeys, errors
from service.db import DatabaseError
from service.hookspecs import hookimpl
from service.trash import TrashUnsafe

log = structlog.get_logger("metrics")

PATH = "/metrics"
OTHER = "OTHER"
# The contract's codes: every constant of service.errors whose value is its name.
ERROR_CODES = frozenset(
    value for name, value in vars(errors).items() if name.isupper() and value == name
) | {OTHER}
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
JOB_STATUSES = ("queued", "running", "succeeded", "partial", "failed", "cancelled")
UNMATCHED = "unmatched"
# One task's deletion: from a few milliseconds to minutes for a huge tree.
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """The application's registry and its metrics."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)  # process_open_fds, memory, CPU of this process
        self.tasks_deleted = Counter(
            "dptask_tasks_deleted", "Tasks deleted (not dry runs)", registry=r
        )
        self.tasks_failed = Counter(
            "dptask_tasks_failed",
            "Tasks whose deletion failed (not dry runs), by error code",
            ["error_code"],
            registry=r,
        )
        for code in ERROR_CODES:  # every series exists from the start, at 0
            self.tasks_failed.labels(code)
        self.files_removed = Counter(
            "dptask_files_removed", "Files (non-directories) removed by deletions", registry=r
        )
        self.bytes_removed = Counter("dptask_bytes_removed", "Bytes freed by deletions", registry=r)
        self.task_seconds = Histogram(
            "dptask_task_deletion_seconds",
            "Time to delete one task, checks to purge (not dry runs)",
            buckets=TASK_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "dptask_http_request_duration_seconds",
            "HTTP request time, by route template, method and status",
            ["route", "method", "status"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.jobs = Gauge("dptask_jobs", "Jobs by status (all instances)", ["status"], registry=r)
        self.queue_depth = Gauge(
            "dptask_job_queue_depth", "Jobs waiting to run (all instances)", registry=r
        )
        self.db_in_use = Gauge(
            "dptask_db_pool_connections_in_use",
            "Database connections of this process's pool in use",
            registry=r,
        )
        self.trash_entries = Gauge(
            "dptask_trash_entries",
            "Trees in the service's trash (awaiting purge or settlement)",
            registry=r,
        )
        self.source_up = Gauge(
            "dptask_metrics_source_up",
            "Whether a scrape-time source answered (1) or not (0) at the last scrape",
            ["source"],
            registry=r,
        )
        self.observer = TaskOutcomes(self)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else OTHER
        self.request_seconds.labels(route, method, str(status)).observe(seconds)

    async def refresh(self, app: web.Application) -> None:
        """The values read at scrape time."""
        db = app.get(appkeys.DB)
        if db is not None:
            self.db_in_use.set(db.connections_in_use)
        await asyncio.gather(self._jobs(app), self._trash(app))

    async def _jobs(self, app: web.Application) -> None:
        queue = app.get(appkeys.JOBS)
        if queue is None:  # not started yet
            return
        try:
            counts = await queue.counts()
        except DatabaseError as e:
            log.warning("metrics_source_failed", source="jobs", error=str(e))
            self.source_up.labels("jobs").set(0)
            return
        for status in JOB_STATUSES:
            self.jobs.labels(status).set(counts.get(status, 0))
        self.queue_depth.set(counts.get("queued", 0))
        self.source_up.labels("jobs").set(1)

    async def _trash(self, app: web.Application) -> None:
        try:
            entries = await asyncio.to_thread(app[appkeys.TRASH].entries)
        except (TrashUnsafe, OSError) as e:
            log.warning("metrics_source_failed", source="trash", error=str(e))
            self.source_up.labels("trash").set(0)
            return
        self.trash_entries.set(len(entries))
        self.source_up.labels("trash").set(1)


class TaskOutcomes:
    """The ``builtin.metrics`` observer plugin: counts every task's outcome."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    @hookimpl
    def dptask_after_delete(self, task: Any, result: dict[str, Any]) -> None:
        if task.options.dry_run:
            return
        self.m.tasks_deleted.inc()
        self.m.files_removed.inc(result.get("deleted_files_count") or 0)
        self.m.bytes_removed.inc(result.get("deleted_bytes") or 0)
        self._took(result)

    @hookimpl
    def dptask_delete_failed(self, task: Any, result: dict[str, Any]) -> None:
        if task.options.dry_run:
            return
        code = result.get("error_code")
        self.m.tasks_failed.labels(code if code in ERROR_CODES else OTHER).inc()
        # A purge that failed part-way still removed what it counted.
        self.m.files_removed.inc(result.get("deleted_files_count") or 0)
        self.m.bytes_removed.inc(result.get("deleted_bytes") or 0)
        self._took(result)

    def _took(self, result: dict[str, Any]) -> None:
        if (ms := result.get("duration_ms")) is not None:
            self.m.task_seconds.observe(ms / 1000)


@web.middleware
async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else UNMATCHED
        request.app[appkeys.METRICS].observe_request(
            route, request.method, status, time.monotonic() - started
        )


async def scrape(request: web.Request) -> web.Response:
    metrics = request.app[appkeys.METRICS]
    await metrics.refresh(request.app)
    body = generate_latest(metrics.registry)
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
