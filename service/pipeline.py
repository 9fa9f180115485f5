"""The deletion pipeline: one task's deletion as a sequence of hooks, and a
batch of them.

The protocol (the order of the steps, what a dry run does, what happens to an
unknown COMMIT, what ``TaskContext`` carries) is written once, in the module
docstring of ``service/hookspecs.py``; ``Deleter._delete_group`` follows it
step by step, for a group of tasks at once. Why it is so, and what it
guarantees after a crash: ``docs/design.md``, "The deletion protocol and its
crash guarantees".

The pipeline writes the audit lines itself, after the observer hooks, so that
no plugin can prevent, reorder or alter them.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pluggy
import structlog

from service import errors, fs
from service.audit import AuditLog, AuditUnavailable, batch_record, task_record
from service.coalesce import Coalesced
from service.db import (
    CommitUnknown,
    Database,
    DatabaseError,
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

# Dry runs of one batch at once (they walk, and share no transaction).
DRY_RUNS_AT_ONCE = 4
# A group's tasks ask for their lstat in the same turn of the loop: one thread hop.
_lexists = Coalesced(os.path.lexists)
# The DATABASE_ERROR message after a failed record step, by whether the tree is back.
_RECORD_FAILED = {
    True: "数据库记录更新失败，目录已恢复，任务未删除",
    False: "数据库记录更新失败，目录未能放回原处，任务未删除",
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

    def plan(self, ids: list[str], options: DeleteOptions) -> tuple[list[list[str]], int]:
        """The groups a batch's tasks go in (each group one transaction, one
        COMMIT), and how many groups run at once (``limits.commit_group``,
        ``limits.tasks_in_flight``). Dry runs share no transaction: one task
        a group, a few at once."""
        if options.dry_run:
            return [[i] for i in ids], DRY_RUNS_AT_ONCE
        size = min(self.settings.commit_group, self.settings.tasks_in_flight)
        groups = [ids[k : k + size] for k in range(0, len(ids), size)]
        return groups, max(1, self.settings.tasks_in_flight // size)

    async def delete_batch(self, batch: BatchContext) -> dict[str, Any]:
        started_at = datetime.now()
        ids = list(dict.fromkeys(batch.task_ids))  # the same id twice is processed once
        results: dict[str, tuple[bool, dict[str, Any]]] = {}

        if batch.options.continue_on_error:
            groups, at_once = self.plan(ids, batch.options)
            limit = asyncio.Semaphore(at_once)

            async def one(group: list[str]) -> None:
                async with limit:
                    results.update(await self.delete_tasks(group, batch))

            await asyncio.gather(*(one(g) for g in groups))
        else:
            for task_id in ids:
                results[task_id] = result = await self.delete_one(task_id, batch)
                if not result[0]:
                    break

        data = batch_data(ids, [results.get(i) for i in ids], started_at, batch.options.dry_run)
        await self.finish_batch(batch, data)
        return data

    async def finish_batch(self, batch: BatchContext, data: dict[str, Any]) -> None:
        """Once every task is done: the batch observers, then the request's audit line."""
        await run_observers(self.pm, "dptask_batch_finished", batch=batch, data=data)
        await self._audit("delete_request", batch_record(batch, data))

    async def delete_one(self, task_id: str, batch: BatchContext) -> tuple[bool, dict[str, Any]]:
        return (await self.delete_tasks([task_id], batch))[task_id]

    async def delete_tasks(
        self, task_ids: list[str], batch: BatchContext
    ) -> dict[str, tuple[bool, dict[str, Any]]]:
        """Delete (or dry-run) these tasks together, in one transaction: each
        still whole or gone, with its own result, observers and audit line."""
        started = time.monotonic()
        outcomes: dict[str, tuple[bool, dict[str, Any]]] = {}
        tasks: dict[str, TaskContext] = {}
        for task_id in dict.fromkeys(task_ids):
            if problem := id_problem(task_id, self.settings):
                # No path, hence no context, is built from an invalid id (base_dir /
                # "/etc" is /etc): no task hook sees it; dptask_batch_finished does,
                # under failed_tasks, and the audit line is written all the same.
                outcomes[task_id] = (False, _failure(task_id, errors.INVALID_TASK_ID, problem))
            else:
                tasks[task_id] = TaskContext(
                    task_id, self.settings.base_dir / task_id, batch, self.settings
                )
        concluded: dict[str, tuple[bool, dict[str, Any]]] = {}

        async def conclude(task_id: str, outcome: tuple[bool, dict[str, Any]]) -> None:
            """A task's outcome is final: its observers, then its audit line, at
            once (a crash later in the group never loses them)."""
            concluded[task_id] = outcome
            ok, result = outcome
            result["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
            if (context := tasks.get(task_id)) is not None:
                hook = "dptask_after_delete" if ok else "dptask_delete_failed"
                await run_observers(self.pm, hook, task=context, result=result)
            outcome_name = "deleted" if ok else "failed"
            await self._audit("task_delete", task_record(batch, task_id, result, outcome_name))

        try:
            if batch.options.dry_run:
                for task in tasks.values():
                    outcomes[task.task_id] = await _outcome(task.task_id, self._dry_run(task))
            elif tasks:
                outcomes.update(await self._delete_together(tasks, conclude))
        except Exception as e:
            # A defect, not a task's failure: each task not yet concluded fails
            # with it (the trash sweep settles any tree left there by its record),
            # rather than the whole request with a 500.
            log.exception("tasks_failed_unexpectedly", tasks=len(tasks))
            for task_id in tasks:
                outcomes.setdefault(task_id, (False, _failure_of(task_id, e)))
        for task_id, outcome in outcomes.items():
            if task_id not in concluded:
                await conclude(task_id, outcome)
        return {task_id: concluded[task_id] for task_id in dict.fromkeys(task_ids)}

    async def _check(self, task: TaskContext) -> None:
        """The pre-delete checks, then the before-removal hooks."""
        task.directory_exists = await _lexists(task.path)
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

    async def _delete_together(
        self, tasks: dict[str, TaskContext], conclude: _Conclude
    ) -> dict[str, tuple[bool, dict[str, Any]]]:
        """Real runs of a group. When the group fails as a whole before its
        COMMIT (a row another session holds, a failed record update or
        COMMIT), none of its record changes was made and every tree that
        could go back is back: its tasks are then deleted one at a time, each
        with its own outcome, except those whose directory is not in its place
        (a tree that could not go back, one a failing plugin moved): they fail."""
        try:
            return await self._delete_group(list(tasks.values()), conclude)
        except _GroupFailed as e:
            failure = e
        outcomes: dict[str, tuple[bool, dict[str, Any]]] = {}
        if len(tasks) > 1:
            log.info("group_taken_apart", tasks=len(tasks), reason=str(failure.cause))
        for task_id, task in tasks.items():
            restored = failure.restored.get(task_id)
            alone = len(tasks) == 1 and not isinstance(failure.cause, TaskLocked)
            if task_id in failure.moved:
                # Moved by a failing plugin: not run again, its record said so again.
                failed = await self._record_moved(task)
            elif restored is not None and (alone or not restored):
                # Its tree was detached when the group failed (one still in
                # the trash is not run again): say whether it is back.
                failed = _failure(task_id, errors.DATABASE_ERROR, _RECORD_FAILED[restored])
            elif len(tasks) == 1:
                failed = _failure_of(task_id, failure.cause)
            else:
                tasks[task_id] = fresh = TaskContext(task_id, task.path, task.batch, task.settings)
                outcomes.update(await self._delete_together({task_id: fresh}, conclude))
                continue
            # Final: its observers and audit line now, not after the others' re-runs.
            outcomes[task_id] = (False, failed)
            await conclude(task_id, outcomes[task_id])
        return outcomes

    async def _delete_group(
        self, tasks: list[TaskContext], conclude: _Conclude
    ) -> dict[str, tuple[bool, dict[str, Any]]]:
        """The protocol's steps 2 to 7 for a group of tasks: one transaction
        locks them all, each goes through the hooks up to its record update,
        the renames are made durable together, one COMMIT, then each purge.
        A task that fails on its own is put back and left out of the COMMIT;
        a failure of the whole group raises ``_GroupFailed`` once every tree
        is back."""
        outcomes: dict[str, tuple[bool, dict[str, Any]]] = {}
        detached: dict[str, Path] = {}  # trees in the trash whose deletion is not committed
        restored: dict[str, bool] = {}  # trees put back when the group failed
        moved: dict[str, _MovedThenFailed] = {}
        records: dict[str, bool] = {}
        committing: list[TaskContext] = []
        try:
            async with self.db.tasks_transaction([t.task_id for t in tasks]) as group:
                try:
                    live = []
                    for task in tasks:
                        if (tx := group.members.get(task.task_id)) is None:
                            outcomes[task.task_id] = _locked(task.task_id)
                            continue
                        task.transaction, task.record = tx, tx.record
                        task.running_steps = tx.running_steps
                        live.append(task)
                    live = await _each(live, self._check, outcomes)
                    if with_dirs := sum(t.directory_exists for t in live):
                        try:
                            await self._reserve_audit(with_dirs)
                        except TaskFailed as e:
                            for task in live:
                                if task.directory_exists:
                                    outcomes[task.task_id] = (False, _failure_of(task.task_id, e))
                            live = [t for t in live if not t.directory_exists]

                    async def detach(task: TaskContext) -> None:
                        if not task.directory_exists:
                            return
                        try:
                            detached[task.task_id] = await self._detach(task)
                        except _MovedThenFailed as e:
                            # Whatever moved it, the directory is not in its place: say so.
                            assert task.transaction is not None
                            await task.transaction.set_directory_exists(False, datetime.now())
                            moved[task.task_id] = e

                    live = await _each(live, detach, outcomes)
                    committing = list(live)
                    live = [t for t in live if t.task_id not in moved]

                    async def update(task: TaskContext) -> None:
                        task.now = datetime.now()
                        try:
                            hook = "dptask_update_records"
                            records[task.task_id] = bool(await run_hook(self.pm, hook, task=task))
                        except BaseException:
                            # Left out of the COMMIT, and its tree back in place.
                            assert task.transaction is not None
                            task.transaction.discard()
                            if (tree := detached.pop(task.task_id, None)) is not None:
                                # Kept: if the group then fails, a tree that is not
                                # back must not be run again as a task without one.
                                restored[task.task_id] = await self._reattach(task, tree)
                            raise

                    updated = {t.task_id for t in await _each(live, update, outcomes)}
                    committing = [t for t in committing if t.task_id in updated | moved.keys()]
                    await group.flush()
                    if detached:  # every rename durable before the COMMIT says "gone"
                        await asyncio.to_thread(self.trash.sync)
                except BaseException:
                    # Put them back while the locks are still held, before the
                    # ROLLBACK: no other request may see a task half-deleted.
                    for task_id, tree in detached.items():
                        restored[task_id] = await self._reattach(_by_id(tasks, task_id), tree)
                    detached.clear()
                    raise
        except asyncio.CancelledError:
            # Cancelled during the COMMIT (the body's own cancellation put the
            # trees back above): its outcome is unknown, so settle each tree by
            # its record once the lock is free, as for a CommitUnknown.
            for task_id, tree in detached.items():
                self._settle_later(_by_id(tasks, task_id), tree)
            raise
        except CommitUnknown:
            # The server may still carry the COMMIT out: read the records back.
            committing = await self._read_back(committing, detached, moved.keys(), outcomes)
        except Exception as e:
            if detached:  # the COMMIT itself failed
                for task_id, tree in detached.items():
                    restored[task_id] = await self._reattach(_by_id(tasks, task_id), tree)
            raise _GroupFailed(e, restored, set(moved)) from e

        # Committed: from here on each tree is the trash's, whatever happens.
        async def purged(task: TaskContext) -> dict[str, Any]:
            if (e := moved.get(task.task_id)) is not None:
                raise TaskFailed(errors.DETACH_FAILED, _MOVED_THEN_FAILED) from e.__cause__
            tree = detached.get(task.task_id)
            stats = await self._purge(task, tree)
            return _success(task, tree is not None, records.get(task.task_id, False), stats)

        async def finish(task: TaskContext) -> None:
            await conclude(task.task_id, await _outcome(task.task_id, purged(task)))

        await asyncio.gather(*(finish(t) for t in committing))
        return outcomes

    async def _record_moved(self, task: TaskContext) -> dict[str, Any]:
        """The failure of a task whose directory a failing detach hook moved, when
        its group's COMMIT did not happen: its "not in place" went with the
        ROLLBACK, so it is recorded again, in a transaction of its own (finished
        even if the request is cancelled meanwhile)."""

        async def record() -> bool:
            async with self.db.task_transaction(task.task_id) as tx:
                return await tx.set_directory_exists(False, datetime.now())

        try:
            recorded = await asyncio.shield(record())
        except (DatabaseError, TaskLocked):
            log.exception("moved_directory_not_recorded", task_id=task.task_id)
            recorded = False
        message = _MOVED_THEN_FAILED if recorded else _MOVED_NOT_RECORDED
        return _failure(task.task_id, errors.DETACH_FAILED, message)

    async def _read_back(
        self,
        tasks: list[TaskContext],
        detached: dict[str, Path],
        moved: Collection[str],
        outcomes: dict[str, tuple[bool, dict[str, Any]]],
    ) -> list[TaskContext]:
        """After a COMMIT with no answer: the tasks whose deletion turns out
        committed. The others get their failure (in ``outcomes``): a tree of
        an uncommitted one is put back (a directory a failing plugin moved is
        recorded not in place again); one whose record still cannot be read
        is settled in the background when the database answers."""
        committed = []
        deadline = time.monotonic() + _SETTLE_SECONDS
        for n, task in enumerate(tasks):
            try:
                answer = await self._committed(task, deadline)
            except BaseException:
                # Cancelled (or a defect): the trees not yet settled are settled
                # by their records once the database answers, as for no answer.
                for rest in tasks[n:]:
                    if (tree := detached.pop(rest.task_id, None)) is not None:
                        self._settle_later(rest, tree)
                raise
            tree = detached.pop(task.task_id, None)
            if answer:
                log.info("commit_confirmed", task_id=task.task_id)
                committed.append(task)
                if tree is not None:
                    detached[task.task_id] = tree
                continue
            if answer is None:
                if tree is not None:
                    self._settle_later(task, tree)
                message = _COMMIT_UNKNOWN[tree is not None]
            elif task.task_id in moved:
                outcomes[task.task_id] = (False, await self._record_moved(task))
                continue
            elif tree is not None:
                message = _RECORD_FAILED[await self._reattach(task, tree)]
            else:
                message = "数据库操作失败，任务未删除"
            outcomes[task.task_id] = (False, _failure(task.task_id, errors.DATABASE_ERROR, message))
        return committed

    async def ready_to_delete(self, lines: int = 0) -> None:
        """Raise ``AuditUnavailableError`` (503) while the audit cannot be written
        (``lines`` more lines): the request is refused whole, before any task starts."""
        try:
            await asyncio.to_thread(self.audit.reserve, lines)
        except AuditUnavailable as e:
            raise errors.AuditUnavailableError() from e

    async def _reserve_audit(self, lines: int) -> None:
        """The same check for a group's tasks, just before their renames: no
        deletion without its audit line. They fail, nothing changed."""
        try:
            await self.ready_to_delete(lines)
        except errors.AuditUnavailableError as e:
            raise TaskFailed(errors.AUDIT_UNAVAILABLE, e.message) from e

    async def _audit(self, event: str, record: dict[str, Any]) -> None:
        await self._audit_many([(event, record)])

    async def _audit_many(self, lines: list[tuple[str, dict[str, Any]]]) -> None:
        """Write audit lines (together: one write). A failure puts the audit in
        its failed state, in which no deletion starts (503) until the audit is
        writable again."""
        try:
            await self.audit.write_many(lines)
        except AuditUnavailable:
            for event, record in lines:
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
        except Exception:  # OSError, or a tree a plugin moved outside the trash
            log.exception("reattach_failed", task_id=task.task_id, trash=str(detached))
            return False

    async def _committed(self, task: TaskContext, deadline: float) -> bool | None:
        """Whether the deletion was committed, read back once the database
        answers; None when it has not answered by ``deadline``.

        It is read under the task's lock: the transaction whose COMMIT got no
        answer holds that lock until the server has carried the COMMIT out (or
        rolled it back), so a read that gets the lock sees the outcome, never
        the state before it."""
        while True:
            try:
                async with self.db.task_transaction(task.task_id) as tx:
                    tx.rollback_only = True
                    return deletion_committed(tx.record)
            except (DatabaseError, TaskLocked):  # e.g. a standby after a failover: wait
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


# Called once a task's outcome is final (its observers and audit line).
_Conclude = Callable[[str, tuple[bool, dict[str, Any]]], Awaitable[None]]


class _GroupFailed(Exception):
    """A group failed as a whole before its COMMIT: none of its record changes
    was made. ``restored``: for each tree that had been detached, whether it is
    back; ``moved``: the tasks whose directory a failing detach hook moved."""

    def __init__(self, cause: Exception, restored: dict[str, bool], moved: set[str]) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.restored = restored
        self.moved = moved


_MOVED_THEN_FAILED = "移走任务目录的插件出错，目录已不在原处，记录已标记为不存在"
_MOVED_NOT_RECORDED = "移走任务目录的插件出错，目录已不在原处，记录未能更新"


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


async def _outcome(task_id: str, step: Awaitable[dict[str, Any]]) -> tuple[bool, dict[str, Any]]:
    """A task's outcome: its result, or its failure as its ``failed_tasks`` entry."""
    try:
        return True, await step
    except Exception as e:
        return False, _failure_of(task_id, e)


async def _each(
    tasks: list[TaskContext],
    step: Callable[[TaskContext], Awaitable[None]],
    outcomes: dict[str, tuple[bool, dict[str, Any]]],
) -> list[TaskContext]:
    """Run ``step`` for every task of a group at once; the tasks that passed.
    A task whose step fails on its own gets its failure in ``outcomes``; a
    database error or a lock (the group's transaction is then unusable) is
    raised once every step has ended."""
    ended = await asyncio.gather(*(step(t) for t in tasks), return_exceptions=True)
    passed = []
    for task, error in zip(tasks, ended, strict=True):
        if isinstance(error, DatabaseError | TaskLocked) or (
            isinstance(error, BaseException) and not isinstance(error, Exception)
        ):
            raise error
        if isinstance(error, Exception):
            outcomes[task.task_id] = (False, _failure_of(task.task_id, error))
        else:
            passed.append(task)
    return passed


def _by_id(tasks: list[TaskContext], task_id: str) -> TaskContext:
    return next(t for t in tasks if t.task_id == task_id)


def _locked(task_id: str) -> tuple[bool, dict[str, Any]]:
    return False, _failure(task_id, errors.TASK_LOCKED, "任务正在被另一个请求删除")


def _failure_of(task_id: str, e: Exception) -> dict[str, Any]:
    """The ``failed_tasks`` entry of a task that failed with ``e``."""
    if isinstance(e, TaskFailed):
        return _failure(task_id, e.code, e.message, **e.details)
    if isinstance(e, TaskLocked):
        return _locked(task_id)[1]
    if isinstance(e, DatabaseError):
        log.warning("task_database_error", task_id=task_id, exc_info=e)
        return _failure(task_id, errors.DATABASE_ERROR, "数据库操作失败，任务未删除")
    log.error("task_delete_error", task_id=task_id, exc_info=e)
    return _failure(task_id, errors.DELETE_FAILED, "删除任务时发生内部错误")


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
