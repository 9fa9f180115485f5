"""The application factory: settings in, a ready ``web.Application`` out.

Resources live in ``cleanup_ctx``: the database (an embedded server when no
URL is configured), the schema, the audit file, the trash and its sweep: the
trash is opened (and verified: ``TrashUnsafe`` stops start-up) and uncommitted
trees are put back before the service listens; committed trees are purged by
a background task once it does, so no tree's size delays start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import structlog
from aiohttp import web

from service import appkeys, cleanup, fs, handlers, metrics, probes, shutdown
from service.audit import AuditLog
from service.auth import auth_middleware
from service.db import Database
from service.embedded import start_embedded
from service.jobs import JobQueue
from service.logs import request_context_middleware
from service.openapi import API
from service.pipeline import Deleter
from service.plugin_manager import create_plugin_manager
from service.responses import error_middleware
from service.settings import Settings
from service.sweep import put_back, sweep_in_background
from service.trash import Trash

MAX_BODY_BYTES = 1024 * 1024
log = structlog.get_logger("service")


@contextlib.asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    """The configured database, or the embedded one when no URL is set; with
    the schema in place. Used by the service and by the operator commands."""
    url, stop = settings.database_url, None
    if not url:
        url, stop = await asyncio.to_thread(start_embedded, settings.embedded_data_dir)
    try:
        db = await Database.connect(
            url, timeout=settings.db_timeout, lock_timeout=settings.db_lock_timeout
        )
        try:
            await db.ensure_schema(wait=settings.schema_wait)
            yield db
        finally:
            await db.close()
    finally:
        if stop:
            await asyncio.to_thread(stop)


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        middlewares=[request_context_middleware, error_middleware, auth_middleware],
        client_max_size=MAX_BODY_BYTES,
    )
    audit_log = AuditLog(settings.audit_path)
    trash = Trash(settings.base_dir)
    app[appkeys.SETTINGS] = settings
    app[appkeys.TRASH] = trash
    # Operations (probes, metrics, graceful shutdown): service/probes.py,
    # service/metrics.py, service/shutdown.py.
    app[appkeys.AUDIT] = audit_log
    app[appkeys.METRICS] = app_metrics = metrics.Metrics()
    app[appkeys.SHUTDOWN] = shutdown.Shutdown()
    app.middlewares.insert(1, metrics.middleware)  # outside error_middleware: the sent status
    app.middlewares.append(shutdown.shutdown_middleware)  # after auth: 503 once stopping
    app.router.add_get("/healthz", probes.healthz)
    app.router.add_get("/readyz", probes.readyz)
    app.router.add_get(metrics.PATH, metrics.scrape)
    app[appkeys.PLUGINS] = create_plugin_manager(settings, trash, app_metrics.observer)

    async def threads(app: web.Application) -> AsyncIterator[None]:
        # Every file-system call runs in a worker thread, and a purge holds one
        # for as long as it runs: asyncio's default pool (cores + 4 threads)
        # would leave other tasks' short calls waiting behind long purges.
        executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="dptask")
        asyncio.get_running_loop().set_default_executor(executor)
        fs.configure(threads=settings.purge_threads, descriptors=settings.walk_descriptors)
        yield

    async def database(app: web.Application) -> AsyncIterator[None]:
        async with open_database(settings) as db:
            app[appkeys.DB] = db
            app[appkeys.DELETER] = Deleter(settings, db, app[appkeys.PLUGINS], trash, audit_log)
            yield

    async def audit(app: web.Application) -> AsyncIterator[None]:
        await asyncio.to_thread(audit_log.open)
        yield
        audit_log.close()

    async def sweep(app: web.Application) -> AsyncIterator[None]:
        await asyncio.to_thread(settings.base_dir.mkdir, parents=True, exist_ok=True)
        try:
            await asyncio.to_thread(trash.open)  # TrashUnsafe: start-up stops with its line
        except OSError as e:
            # No room for a new .trash (a full disk): serve anyway; each
            # deletion tries again and says why it cannot (NO_SPACE).
            log.error("trash_unavailable", trash=str(trash.label), error=e.strerror or str(e))
            yield
            await asyncio.to_thread(trash.close)
            return
        db = app[appkeys.DB]
        report = await put_back(trash, settings, db)
        report.log("trash_put_back")
        purging = asyncio.create_task(sweep_in_background(trash, db, report.committed))
        yield
        purging.cancel()  # a purge already in its thread finishes there
        with contextlib.suppress(asyncio.CancelledError):
            await purging
        await asyncio.to_thread(trash.close)

    async def jobs(app: web.Application) -> AsyncIterator[None]:
        # Last in, first out: the runner stops before the trash, audit and database close.
        queue = JobQueue(settings, app[appkeys.DB], app[appkeys.DELETER], trash, audit_log)
        app[appkeys.JOBS] = queue
        queue.start()
        yield
        await queue.drain(settings.shutdown_grace)

    # [cleanup] schedules: each instance looks; PostgreSQL makes one of them run it.
    async def schedules(app: web.Application) -> AsyncIterator[None]:
        if not settings.cleanup_schedules:
            yield
            return
        db, queue, stop = app[appkeys.DB], app[appkeys.JOBS], asyncio.Event()
        looking = asyncio.create_task(
            cleanup.run_schedules(db, queue, settings.cleanup_schedules, stop)
        )
        yield
        stop.set()  # not cancelled: see run_schedules
        await looking

    app.cleanup_ctx.extend([threads, database, audit, sweep, jobs, schedules])
    app.router.add_get(f"{API}/tasks", handlers.list_tasks)
    app.router.add_delete(f"{API}/tasks", handlers.delete_tasks)
    app.router.add_post(f"{API}/tasks/cleanup", handlers.cleanup_tasks)
    # Not "cleanup": that path is the clean-up's alone (its 405 says Allow: POST).
    app.router.add_get(f"{API}/tasks/{{task_id:(?!cleanup$)[^{{}}/]+}}", handlers.get_task)
    app.router.add_get(f"{API}/jobs", handlers.list_jobs)
    app.router.add_get(f"{API}/jobs/{{job_id}}", handlers.get_job)
    app.router.add_post(f"{API}/jobs/{{job_id}}/cancel", handlers.cancel_job)
    app.router.add_get(f"{API}/plugins", handlers.list_plugins)
    app.router.add_get("/api/v0/openapi.json", handlers.openapi_document)
    return app
