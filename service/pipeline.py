"""The deletion pipeline: one task's deletion as a sequence of hooks, and a
batch of them (DESIGN.md §3).

For one task:
  0. the id is validated before anything else: no hook ever sees a path built
     from an id that could leave the base directory;
  1. lock: a transaction-scoped advisory lock on the id (TASK_LOCKED if held);
  2. dptask_check_delete: every check runs, every veto is reported;
  3. dptask_before_removal: archiving and the like;
  4. dptask_detach_directory: one rename into the trash;
  5. dptask_update_records, then COMMIT: on any failure up to the commit the
     directory is renamed back and the task fails;
  6. dptask_purge_directory: removal and counting in worker threads;
  7. dptask_after_delete / dptask_delete_failed: the audit line.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pluggy
import structlog

from service import errors, fs
from service.db import Database, DatabaseError, TaskLocked, TaskTransaction
from service.errors import TaskFailed, Veto
from service.formatting import format_size, iso
from service.hookrunner import run_hook
from service.settings import Settings
from service.trash import Trash

log = structlog.get_logger("service")

# Tasks of one batch deleted at once when continue_on_error allows it.
BATCH_CONCURRENCY = 4
# The DATABASE_ERROR message after a failed record step, by whether the tree is back.
_RECORD_FAILED = {
    True: "数据库记录更新失败，目录已恢复，任务未删除",
    False: "数据库记录更新失败，目录暂留回收区，重启服务时放回，任务未删除",
}


@dataclass(frozen=True)
class DeleteOptions:
    delete_database_records: bool = False
    continue_on_error: bool = True
    force: bool = False
    dry_run: bool = False
    allow_missing: bool = False


@dataclass
class BatchContext:
    task_ids: list[str]
    options: DeleteOptions
    request_id: str
    client: str | None
    actor: str = "anonymous"


@dataclass
class TaskContext:
    task_id: str
    path: Path | None  # None only for an invalid id, which fails before any other hook
    options: DeleteOptions
    settings: Settings
    request_id: str
    client: str | None
    actor: str = "anonymous"
    transaction: TaskTransaction | None = None
    directory_exists: bool = False
    now: datetime = field(default_factory=datetime.now)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def record(self) -> dict[str, Any] | None:
        return self.transaction.record if self.transaction else None

    @property
    def running_steps(self) -> list[str]:
        return self.transaction.running_steps if self.transaction else []


def id_problem(task_id: Any, settings: Settings) -> str | None:
    """Why ``task_id`` can never name a task directory, or None."""
    if not isinstance(task_id, str) or not task_id:
        return "任务ID不能为空"
    # These hold whatever tasks.id_pattern says: an id is one plain path component.
    if task_id in (".", "..") or task_id.startswith(".") or any(c in task_id for c in "/\\\0"):
        return "任务ID格式无效: 不能包含路径分隔符或以点开头"
    if not settings.id_pattern.fullmatch(task_id):
        return "任务ID格式无效: 不符合 tasks.id_pattern"
    return None


class Deleter:
    """Deletes tasks for one application: its settings, database and plugins."""

    def __init__(self, settings: Settings, db: Database, pm: pluggy.PluginManager) -> None:
        self.settings = settings
        self.db = db
        self.pm = pm
        # TODO(lead): the app's Trash, set by create_app until Deleter takes it.
        self.trash: Trash = Trash(settings.base_dir)

    async def delete_batch(self, batch: BatchContext) -> dict[str, Any]:
        started_at = datetime.now()
        ids = list(dict.fromkeys(batch.task_ids))  # the same id twice is processed once
        results: list[tuple[bool, dict[str, Any]] | None] = [None] * len(ids)

        if batch.options.continue_on_error:
            limit = asyncio.Semaphore(BATCH_CONCURRENCY)

            async def one(i: int) -> None:
                async with limit:
                    results[i] = await self.delete_one(ids[i], batch)

            await asyncio.gather(*(one(i) for i in range(len(ids))))
        else:
            for i, task_id in enumerate(ids):
                results[i] = await self.delete_one(task_id, batch)
                if not results[i][0]:
                    break

        done = [r for r in results if r is not None]
        deleted = [result for ok, result in done if ok]
        failed = [result for ok, result in done if not ok]
        skipped = [task_id for task_id, r in zip(ids, results, strict=True) if r is None]
        data = {
            "deleted_at": iso(started_at),
            "dry_run": batch.options.dry_run,
            "deleted_tasks": deleted,
            "failed_tasks": failed,
            "skipped_tasks": skipped,
            "summary": {
                "total_requested": len(ids),
                "successfully_deleted": len(deleted),
                "failed": len(failed),
                "skipped": len(skipped),
            },
        }
        await self._notify("dptask_batch_finished", batch=batch, data=data)
        return data

    async def delete_one(self, task_id: str, batch: BatchContext) -> tuple[bool, dict[str, Any]]:
        started = time.monotonic()
        problem = id_problem(task_id, self.settings)
        task = TaskContext(
            task_id=task_id,
            # A path is built only from a valid id: base_dir / "/etc" is /etc.
            path=None if problem else self.settings.base_dir / task_id,
            options=batch.options,
            settings=self.settings,
            request_id=batch.request_id,
            client=batch.client,
            actor=batch.actor,
        )
        try:
            if problem:
                raise TaskFailed(errors.INVALID_TASK_ID, problem)
            ok, result = True, await self._delete(task)
        except TaskFailed as e:
            ok, result = False, _failure(task_id, e.code, e.message, **e.details)
        except TaskLocked:
            ok, result = False, _failure(task_id, errors.TASK_LOCKED, "任务正在被另一个请求删除")
        except DatabaseError:
            log.warning("task_database_error", task_id=task_id, exc_info=True)
            ok, result = (
                False,
                _failure(task_id, errors.DATABASE_ERROR, "数据库操作失败，任务未删除"),
            )
        except Exception:
            log.exception("task_delete_error", task_id=task_id)
            ok, result = False, _failure(task_id, errors.DELETE_FAILED, "删除任务时发生内部错误")
        result["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        hook = "dptask_after_delete" if ok else "dptask_delete_failed"
        await self._notify(hook, task=task, result=result)
        return ok, result

    async def _delete(self, task: TaskContext) -> dict[str, Any]:
        pm, opts = self.pm, task.options
        detached: Path | None = None  # the tree, while it is in the trash and not committed
        restored: bool | None = None  # whether a detached tree went back after a failure
        try:
            async with self.db.task_transaction(task.task_id) as tx:
                task.transaction = tx
                task.directory_exists = await asyncio.to_thread(os.path.lexists, task.path)
                vetoes = _flatten(await run_hook(pm, "dptask_check_delete", task=task))
                if vetoes:
                    raise TaskFailed(
                        vetoes[0].code,
                        vetoes[0].message,
                        vetoes=[{"code": v.code, "message": v.message} for v in vetoes],
                    )
                for extra in await run_hook(pm, "dptask_before_removal", task=task):
                    task.extra.update(extra)
                if opts.dry_run:
                    tx.rollback_only = True
                    stats = fs.TreeStats()
                    if task.directory_exists:
                        stats = await asyncio.to_thread(self.trash.dry_run_stats, task.task_id)
                    records = opts.delete_database_records and tx.record is not None
                    return _success(task, task.directory_exists, records, stats)
                try:
                    if task.directory_exists:
                        detached = await self._detach(task)
                    task.now = datetime.now()
                    records_deleted = bool(await run_hook(pm, "dptask_update_records", task=task))
                except BaseException:
                    # Put it back while the lock is still held, before the ROLLBACK:
                    # no other request may see the task half-deleted.
                    if detached is not None:
                        restored, detached = await self._reattach(task, detached), None
                    raise
        except DatabaseError as e:
            if detached is not None:  # the COMMIT itself failed
                restored = await self._reattach(task, detached)
            if restored is not None:
                raise TaskFailed(errors.DATABASE_ERROR, _RECORD_FAILED[restored]) from e
            raise
        # Committed: from here on the tree is the trash's, whatever happens.
        return _success(
            task, detached is not None, records_deleted, await self._purge(task, detached)
        )

    async def _detach(self, task: TaskContext) -> Path:
        # The rename finishes in its thread even if this request is cancelled:
        # wait for it then too, so the tree's whereabouts are never lost.
        detach = asyncio.ensure_future(run_hook(self.pm, "dptask_detach_directory", task=task))
        try:
            detached = await asyncio.shield(detach)
        except asyncio.CancelledError:
            if (detached := await detach) is not None:
                await self._reattach(task, detached)
            raise
        if detached is None:  # the record must not say "gone" while it is not
            raise TaskFailed(errors.DELETE_FAILED, "没有插件移走任务目录，任务未删除")
        return detached

    async def _reattach(self, task: TaskContext, detached: Path) -> bool:
        """Rename the tree back; False when it could not be (it stays in the trash,
        and the start-up sweep puts it back: its record still says it exists)."""
        try:
            await asyncio.to_thread(self.trash.reattach, detached, task.task_id)
            return True
        except OSError:
            log.exception("reattach_failed", task_id=task.task_id, trash=str(detached))
            return False

    async def _purge(self, task: TaskContext, detached: Path | None) -> fs.TreeStats:
        if detached is None:
            return fs.TreeStats()
        try:
            stats = await run_hook(self.pm, "dptask_purge_directory", task=task, path=detached)
        except (TaskFailed, DatabaseError, TaskLocked) as e:
            stats = fs.TreeStats()
            stats.fail(".", getattr(e, "message", None) or "清除目录时出错")
        if stats is None:
            stats = fs.TreeStats()
            stats.fail(".", "没有插件清除目录")
        if stats.error_count:
            await self._keep_remains(task, detached, stats)
        return stats

    async def _keep_remains(self, task: TaskContext, detached: Path, stats: fs.TreeStats) -> None:
        """Purge failed part-way. Record that the directory exists, then put
        what is left back: a crash between the two leaves a tree in the trash
        whose record says it exists, which the start-up sweep puts back. With
        the records deleted there is nothing to say it exists: the remains stay
        in the trash, for the sweep to purge again."""
        restored = False
        try:
            async with self.db.task_transaction(task.task_id) as tx:
                recorded = await tx.set_directory_exists(True, datetime.now())
            if recorded:
                restored = await self._reattach(task, detached)
        except (DatabaseError, TaskLocked):
            log.exception("purge_remains_not_recorded", task_id=task.task_id)
        where = "已放回任务目录" if restored else "留在回收区，由重启时的清理处理"
        raise TaskFailed(
            errors.PURGE_FAILED,
            f"目录未能完全删除: {stats.error_count} 个条目无法删除，剩余内容{where}",
            deleted_files_count=stats.files,
            deleted_bytes=stats.bytes,
            errors=stats.errors,
        )

    async def _notify(self, hook: str, **kwargs: Any) -> None:
        """Call an observer hook; its failure is logged, never the outcome."""
        try:
            await run_hook(self.pm, hook, **kwargs)
        except TaskFailed:
            pass  # run_hook logged it with the traceback
        except (DatabaseError, TaskLocked):
            log.exception("observer_database_error", hook=hook)


def _flatten(results: list[Veto | list[Veto]]) -> list[Veto]:
    vetoes: list[Veto] = []
    for r in results:
        vetoes.extend(r if isinstance(r, list) else [r])
    return vetoes


def _success(
    task: TaskContext, directory_deleted: bool, records_deleted: bool, stats: fs.TreeStats
) -> dict[str, Any]:
    return {
        "success": True,
        "task_id": task.task_id,
        "directory_deleted": directory_deleted,
        "database_records_deleted": records_deleted,
        "deleted_files_count": stats.files,
        "deleted_size": format_size(stats.bytes),
        "deleted_bytes": stats.bytes,
        "deleted_at": iso(task.now),
        "dry_run": task.options.dry_run,
        **task.extra,
    }


def _failure(task_id: Any, code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"success": False, "task_id": task_id, "error": message, "error_code": code, **details}
