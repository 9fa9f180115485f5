"""The probes: ``GET /healthz`` (liveness) and ``GET /readyz`` (readiness).

Both answer in the envelope, need no token (``service.auth`` lets them
through) and are logged at debug (``service.logs``).

- ``/healthz`` only proves that the event loop answers: no database call,
  no file-system call. A liveness probe that failed with the database would
  restart every instance during a database outage, which cures nothing.
- ``/readyz`` checks, all at once and each within its own bound, what a
  deletion needs: the database answers (``min(1 s, database.timeout)``),
  ``base_dir`` exists and is writable, the trash is the service's own
  (re-verified through the held descriptors, as before a deletion), the
  audit can be written (``AuditLog.reserve()``, which also ends a failed
  state once the file is writable again), and the process is not shutting
  down. 503 names every problem; ``data.checks`` has one entry per check,
  ``"ok"`` or the problem.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from typing import Any

from aiohttp import web

from service import appkeys
from service.audit import AuditUnavailable
from service.db import DatabaseError
from service.responses import envelope
from service.trash import TrashUnsafe

PATHS = ("/healthz", "/readyz")
DB_PROBE_SECONDS = 1.0
OK = "ok"


async def healthz(request: web.Request) -> web.Response:
    return envelope(200, "服务运行中", {"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    settings = app[appkeys.SETTINGS]
    names = ("database", "base_dir", "trash", "audit", "shutdown")
    checks: list[Awaitable[str]] = [
        _database(app, min(DB_PROBE_SECONDS, settings.db_timeout)),
        asyncio.to_thread(_base_dir, settings.base_dir),
        asyncio.to_thread(_trash, app),
        asyncio.to_thread(_audit, app),
        _shutdown(app),
    ]
    results = dict(zip(names, await asyncio.gather(*checks), strict=True))
    problems = [problem for problem in results.values() if problem != OK]
    if problems:
        message = "服务未就绪: " + "；".join(problems)
        return envelope(503, message, {"ready": False, "checks": results})
    return envelope(200, "服务已就绪", {"ready": True, "checks": results})


async def _database(app: web.Application, bound: float) -> str:
    db = app.get(appkeys.DB)
    if db is None:
        return "数据库未连接"
    try:
        async with asyncio.timeout(bound):
            await db.ping()
    except TimeoutError:
        return f"数据库在 {bound:g} 秒内没有应答"
    except DatabaseError as e:
        return f"数据库不可用: {_first_line(e)}"
    return OK


def _base_dir(base_dir: Any) -> str:
    if not os.path.isdir(base_dir):
        return f"任务根目录不存在: {base_dir}"
    if not os.access(base_dir, os.W_OK | os.X_OK):
        return f"任务根目录不可写: {base_dir}"
    return OK


def _trash(app: web.Application) -> str:
    try:
        app[appkeys.TRASH].verify()
    except TrashUnsafe as e:
        return str(e)
    except OSError as e:
        return f"回收区不可用: {e.strerror or e}"
    return OK


def _audit(app: web.Application) -> str:
    audit = app[appkeys.AUDIT]
    try:
        audit.reserve()
    except AuditUnavailable as e:
        return e.message
    return OK


async def _shutdown(app: web.Application) -> str:
    return "服务正在停止" if app[appkeys.SHUTDOWN].stopping else OK


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
