"""Built-in audit: one JSON line per task outcome and one per request, appended
to ``audit.path`` and emitted on the service log.

Each line is one ``write`` on an O_APPEND descriptor, so lines from several
service processes sharing the file do not interleave.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from service.formatting import iso
from service.hookspecs import hookimpl
from service.pipeline import BatchContext, TaskContext

log = structlog.get_logger("audit")


class AuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def write(self, event: str, **fields: Any) -> None:
        record = {"timestamp": iso(datetime.now()), "event": event, **fields}
        log.info(event, **fields)
        if self._fd is None:
            raise RuntimeError("audit log is not open")
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        await asyncio.to_thread(os.write, self._fd, line.encode("utf-8", "backslashreplace"))

    async def _task(self, task: TaskContext, result: dict[str, Any], outcome: str) -> None:
        await self.write(
            "task_delete",
            request_id=task.request_id,
            client=task.client,
            actor=task.actor,
            task_id=task.task_id,
            outcome=outcome,
            error_code=result.get("error_code"),
            error=result.get("error"),
            files=result.get("deleted_files_count", 0),
            bytes=result.get("deleted_bytes", 0),
            directory_deleted=result.get("directory_deleted", False),
            database_records_deleted=result.get("database_records_deleted", False),
            dry_run=task.options.dry_run,
            force=task.options.force,
            duration_ms=result.get("duration_ms"),
        )

    @hookimpl
    async def dptask_after_delete(self, task: TaskContext, result: dict[str, Any]) -> None:
        await self._task(task, result, "deleted")

    @hookimpl
    async def dptask_delete_failed(self, task: TaskContext, result: dict[str, Any]) -> None:
        await self._task(task, result, "failed")

    @hookimpl
    async def dptask_batch_finished(self, batch: BatchContext, data: dict[str, Any]) -> None:
        await self.write(
            "delete_request",
            request_id=batch.request_id,
            client=batch.client,
            actor=batch.actor,
            dry_run=batch.options.dry_run,
            options=vars(batch.options),
            **data["summary"],
        )
