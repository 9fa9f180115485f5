"""The deletion pipeline: one task's deletion as a sequence of hooks, and a
batch of them.

The protocol (the order of the steps, what a dry run does, what happens to an
unknown COMMIT, what ``TaskContext`` carries) is written once, in the module
docstring of ``service/hookspecs.py``; ``Deleter.delete_one`` follows it step
by step. Why it is so, and what it guarantees after a crash:
``docs/design.md``, "The deletion protocol and its crash guarantees".

The pipeline writes the audit lines itself, after the observer hooks, so that
no plugin can prevent, reorder or alter them.
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
from service.audit import AuditLog, AuditUnavailable, batch_record, task_record
from service.db import (
    CommitUnknown,
    Database,
    DatabaseError,
    DatabaseUnavailable,
    TaskLocked,
    TaskTransaction,
)
from service.errors import TaskFailed, Veto
from service.formatting import format_size, iso
from service.hookrunner import run_hook, run_observers
from service.progress import Progress
from service.settings import Settings
from service.trash import Entry, Trash, deletion_committed, settle

log = structlog.get_logger("service")

# Tasks of one batch deleted at once when continue_on_error allows it.
BATCH_CONCURRENCY = 4
# The DATABASE_ERROR message after a failed record step, by whether the tree is back.
_RECORD_FAILED = {
    True: "数据库记录更新失败，目录已恢复，任务未删除",
    False: "数据库记录更新失败，目录暂留回收区，重启服务时放回，任务未删除",
}
# The DATABASE_ERROR message when a COMMIT's outcome stays unknown, by whether a tree waits.
_COMMIT_UNKNOWN = {
    True: "数据库提交结果未知，目录暂留回收区，数据库恢复后按记录放回或清除",
    False: "数据库提交结果未知，任务记录可能未更新",
}
# How long a task waits for an answer about an unknown COMMIT, or for the
# lock before putting a failed purge's remains back, before it gives up.
_SETTLE_SECONDS = 30.0


@dataclass(frozen=True)
class DeleteOptions:
    delete_database_records: bool = False
    continue_on_error: bool = True
    force: bool = False
    dry_run: bool = False
    allow_missing: bool = False


@dataclass
class BatchContext:
    """One DELETE request: what every task of it shares."""

    task_ids: list[str]
    options: DeleteOptions
    request_id: str
    client: str | None
    actor: str = "anonymous"
    job_id: str | None = None  # set when a background job runs the batch
    progress: Progress | None = None  # what the purges removed so far (jobs)


@dataclass
class TaskContext:
    """One task's deletion, as every hook sees it. Built only for a valid id:
    ``path`` is ``base_dir / task_id`` and never leaves the base directory."""

    task_id: str
    path: Path
    batch: BatchContext
    settings: Settings
    transaction: TaskTransaction | None = None  # None in dry runs: they take no lock
    record: dict[str, Any] | None = None
    running_steps: list[str] = field(default_factory=list)
    directory_exists: bool = False
    now: datetime = field(default_factory=datetime.now)
    extra: dict[str, Any] = field(default_factory=dict)

    # The batch's fields, read through: a task never has its own copy of them.
    @property
    def options(self) -> DeleteOptions:
        return self.batch.options

    @property
    def request_id(self) -> str:
        return self.batch.request_id

    @property
    def client(self) -> str | None:
        return self.batch.client

    @property
    def actor(self) -> str:
        return self.batch.actor


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
    """Deletes tasks for one application: its settings, database, trash, audit and plugins."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        pm: pluggy.PluginManager,
        trash: Trash,
        audit: AuditLog,
    ) -> None:
        self.settings = settings
        self.db = db
        self.pm = pm
        self.trash = trash
        self.audit = audit
        self._settling: set[asyncio.Task[None]] = set()  # trees left for an unknown COMMIT

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
                results[i] = result = await self.delete_one(task_id, batch)
                if not result[0]:
                    break

        data = batch_data(ids, results, started_at, batch.options.dry_run)
        await self.finish_batch(batch, data)
        return data

    async def finish_batch(self, batch: BatchContext, data: dict[str, Any]) -> None:
        """Once every task is done: the batch observers, then the request's audit line."""
        await run_observers(self.pm, "dptask_batch_finished", batch=batch, data=data)
        await self._audit("delete_request", batch_record(batch, data))

    async def delete_one(self, task_id: str, batch: BatchContext) -> tuple[bool, dict[str, Any]]:
        started = time.monotonic()
        task: TaskContext | None = None
        if problem := id_problem(task_id, self.settings):
            # No path, hence no context, is built from an invalid id (base_dir /
            # "/etc" is /etc): no task hook sees it; dptask_batch_finished does,
            # under failed_tasks, and the audit line is written all the same.
            ok, result = False, _failure(task_id, errors.INVALID_TASK_ID, problem)
        else:
            task = TaskContext(task_id, self.settings.base_dir / task_id, batch, self.settings)
            ok, result = await self._run(task)
        result["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        if task is not None:
            hook = "dptask_after_delete" if ok else "dptask_delete_failed"
            await run_observers(self.pm, hook, task=task, result=result)
        outcome = "deleted" if ok else "failed"
        await self._audit("task_delete", task_record(batch, task_id, result, outcome))
        return ok, result

    async def _run(self, task: TaskContext) -> tuple[bool, dict[str, Any]]:
        """Delete (or dry-run) one task; its failure becomes its ``failed_tasks`` entry."""
        task_id = task.task_id
        try:
            run = self._dry_run if task.options.dry_run else self._delete
            return True, await run(task)
        except TaskFailed as e:
            return False, _failure(task_id, e.code, e.message, **e.details)
        except TaskLocked:
            return False, _failure(task_id, errors.TASK_LOCKED, "任务正在被另一个请求删除")
        except DatabaseError:
            log.warning("task_database_error", task_id=task_id, exc_info=True)
            return False, _failure(task_id, errors.DATABASE_ERROR, "数据库操作失败，任务未删除")
        except Exception:
            log.exception("task_delete_error", task_id=task_id)
            return False, _failure(task_id, errors.DELETE_FAILED, "删除任务时发生内部错误")

    async def _check(self, task: TaskContext) -> None:
        """The pre-delete checks, then the before-removal hooks."""
        task.directory_exists = await asyncio.to_thread(os.path.lexists, task.path)
        vetoes = _flatten(await run_hook(self.pm, "dptask_check_delete", task=task))
        if vetoes:
            raise TaskFailed(
                vetoes[0].code,
                vetoes[0].message,
                vetoes=[{"code": v.code, "message": v.message} for v in vetoes],
            )
        for extra in await run_hook(self.pm, "dptask_before_removal", task=task):
            task.extra.update(extra)

    async def _dry_run(self, task: TaskContext) -> dict[str, Any]:
        """What a real run would do, with no lock and no task slot held while walking."""
        task.record, task.running_steps = await self.db.peek_task(task.task_id)
        await self._check(task)
        stats = fs.TreeStats()
        if task.directory_exists:
            stats = await asyncio.to_thread(self.trash.dry_run_stats, task.task_id)
            if stats.error_count:
                raise _purge_failed(stats, "目录无法完全删除: {n} 个条目无法删除")
        records = task.options.delete_database_records and task.record is not None
        return _success(task, task.directory_exists, records, stats)

    async def _delete(self, task: TaskContext) -> dict[str, Any]:
        pm = self.pm
        detached: Path | None = None  # the tree, while it is in the trash and not committed
        restored: bool | None = None  # whether a detached tree went back after a failure
        moved: _MovedThenFailed | None = None
        try:
            async with self.db.task_transaction(task.task_id) as tx:
                task.transaction = tx
                task.record, task.running_steps = tx.record, tx.running_steps
                await self._check(task)
                try:
                    if task.directory_exists:
                        await self._reserve_audit()
                        detached = await self._detach(task)
                    task.now = datetime.now()
                    records_deleted = bool(await run_hook(pm, "dptask_update_records", task=task))
                except _MovedThenFailed as e:
                    # Whatever moved it, the directory is not in its place: say so.
                    await tx.set_directory_exists(False, datetime.now())
                    moved = e
                except BaseException:
                    # Put it back while the lock is still held, before the ROLLBACK:
                    # no other request may see the task half-deleted.
                    if detached is not None:
                        restored, detached = await self._reattach(task, detached), None
                    raise
        except asyncio.CancelledError:
            # Cancelled during the COMMIT (the body's own cancellation put the
            # tree back above): its outcome is unknown, so settle the tree by
            # its record once the lock is free, as for a CommitUnknown.
            if detached is not None:
                self._settle_later(task, detached)
            raise
        except CommitUnknown as e:
            # The server may still carry the COMMIT out: read the record back.
            committed = await self._committed(task)
            if committed is None:  # still no answer: settle the tree when it comes
                if detached is not None:
                    self._settle_later(task, detached)
                message = _COMMIT_UNKNOWN[detached is not None]
                raise TaskFailed(errors.DATABASE_ERROR, message) from e
            if not committed:
                if detached is not None:
                    restored = await self._reattach(task, detached)
                    raise TaskFailed(errors.DATABASE_ERROR, _RECORD_FAILED[restored]) from e
                raise
            log.info("commit_confirmed", task_id=task.task_id)
        except DatabaseError as e:
            if detached is not None:  # the COMMIT itself failed
                restored = await self._reattach(task, detached)
            if restored is not None:
                raise TaskFailed(errors.DATABASE_ERROR, _RECORD_FAILED[restored]) from e
            raise
        if moved is not None:
            raise TaskFailed(errors.DETACH_FAILED, _MOVED_THEN_FAILED) from moved.__cause__
        # Committed: from here on the tree is the trash's, whatever happens.
        return _success(
            task, detached is not None, records_deleted, await self._purge(task, detached)
        )

    async def ready_to_delete(self) -> None:
        """Raise ``AuditUnavailableError`` (503) while the audit cannot be written:
        the request is refused whole, before any task starts."""
        try:
            await asyncio.to_thread(self.audit.reserve)
        except AuditUnavailable as e:
            raise errors.AuditUnavailableError() from e

    async def _reserve_audit(self) -> None:
        """The same check for one task, just before its rename: no deletion
        without its audit line. The task fails, nothing changed."""
        try:
            await self.ready_to_delete()
        except errors.AuditUnavailableError as e:
            raise TaskFailed(errors.AUDIT_UNAVAILABLE, e.message) from e

    async def _audit(self, event: str, record: dict[str, Any]) -> None:
        """Write an audit line. A failure puts the audit in its failed state, in
        which no deletion starts (503) until the audit is writable again."""
        try:
            await self.audit.write(event, **record)
        except AuditUnavailable:
            log.error("audit_write_failed", audit_event=event, task_id=record.get("task_id"))

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
        except Exception as e:
            # A detach that fails may fail after its rename (the built-in does
            # not, but a plugin may): the record must not then say "in place".
            if not await asyncio.to_thread(os.path.lexists, task.path):
                log.error("detach_failed_after_move", task_id=task.task_id)
                raise _MovedThenFailed() from e
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

    async def _committed(self, task: TaskContext) -> bool | None:
        """Whether the deletion was committed, read back once the database
        answers; None when it has not answered within the bound.

        It is read under the task's lock: the transaction whose COMMIT got no
        answer holds that lock until the server has carried the COMMIT out (or
        rolled it back), so a read that gets the lock sees the outcome, never
        the state before it."""
        deadline = time.monotonic() + _SETTLE_SECONDS
        while True:
            try:
                async with self.db.task_transaction(task.task_id) as tx:
                    tx.rollback_only = True
                    return deletion_committed(tx.record)
            except (DatabaseUnavailable, TaskLocked):
                if time.monotonic() > deadline:
                    return None
                await asyncio.sleep(0.5)

    def _settle_later(self, task: TaskContext, detached: Path) -> None:
        """Once the database answers, put the tree back or purge it, by its record,
        as the start-up sweep would (and will, if the process ends first)."""
        entry = Entry(task.task_id, detached)

        async def settle_when_answered() -> None:
            while True:
                try:
                    outcome = await settle(
                        self.trash, self.db, entry, purge=True, wait_for_lock=True
                    )
                    log.info("commit_settled", task_id=task.task_id, outcome=outcome)
                    return
                except (DatabaseError, TaskLocked):  # the COMMIT's session may still hold it
                    await asyncio.sleep(5)

        job = asyncio.create_task(settle_when_answered())
        self._settling.add(job)
        job.add_done_callback(self._settling.discard)

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
            restored = await self._keep_remains(task, detached)
            where = "已放回任务目录" if restored else "留在回收区，由重启时的清理处理"
            raise _purge_failed(stats, f"目录未能完全删除: {{n}} 个条目无法删除，剩余内容{where}")
        return stats

    async def _keep_remains(self, task: TaskContext, detached: Path) -> bool:
        """Put a tree that is not (wholly) deleted back: record that the
        directory exists, then rename it back; True when it is back. A crash
        between the two leaves a tree in the trash whose record says it exists,
        which the start-up sweep puts back. With the records deleted there is
        nothing to say it exists: the remains stay in the trash, for the sweep
        to purge again. While another request holds the task's lock, wait for
        it (within a bound) rather than leave the tree in the trash."""
        deadline = time.monotonic() + _SETTLE_SECONDS
        while True:
            try:
                async with self.db.task_transaction(task.task_id) as tx:
                    recorded = await tx.set_directory_exists(True, datetime.now())
                break
            except TaskLocked:
                if time.monotonic() > deadline:
                    log.error("purge_remains_locked", task_id=task.task_id)
                    return False
                await asyncio.sleep(0.2)
            except DatabaseError:
                log.exception("purge_remains_not_recorded", task_id=task.task_id)
                return False
        return recorded and await self._reattach(task, detached)


class _MovedThenFailed(Exception):
    """A detach hook failed after the directory had left its place."""


_MOVED_THEN_FAILED = "移走任务目录的插件出错，目录已不在原处，记录已标记为不存在"


def batch_data(
    ids: list[str],
    results: list[tuple[bool, dict[str, Any]] | None],
    started_at: datetime,
    dry_run: bool,
) -> dict[str, Any]:
    """A batch's ``data`` (the DELETE response's, a job's ``result``): each id's
    result in order, None for a task that never started (skipped)."""
    done = [r for r in results if r is not None]
    deleted = [result for ok, result in done if ok]
    failed = [result for ok, result in done if not ok]
    skipped = [task_id for task_id, r in zip(ids, results, strict=True) if r is None]
    return {
        "deleted_at": iso(started_at),
        "dry_run": dry_run,
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


def batch_message(data: dict[str, Any]) -> tuple[str, str]:
    """The outcome of a finished batch: (job status, the DELETE response's message)."""
    summary = data["summary"]
    if summary["successfully_deleted"] == 0:
        return "failed", "任务删除失败"
    if summary["failed"] or summary["skipped"]:
        return "partial", "批量删除部分完成"
    return "succeeded", "任务目录删除成功"


def _purge_failed(stats: fs.TreeStats, message: str) -> TaskFailed:
    """PURGE_FAILED with what was removed and what was not (``{n}``: how many)."""
    return TaskFailed(
        errors.PURGE_FAILED,
        message.format(n=stats.error_count),
        deleted_files_count=stats.files,
        deleted_bytes=stats.bytes,
        errors=stats.errors,
    )


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
