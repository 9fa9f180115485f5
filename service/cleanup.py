"""Retention clean-up done by the service: which tasks a clean-up selects,
what a dry run reports, and the ``[cleanup]`` schedules.

**The selection** (``select_task_ids``) is one SQL query over all records,
never a page. A task is selected when all of these hold:

- its status is one of ``statuses`` (``in_progress`` can never be asked for)
  and none of its steps is ``running``;
- it is strictly older than the cut-off: ``created_at < created_before``, or
  ``created_at < now - older_than_days`` (now: the service's local clock, as
  the API's naive timestamps). A task created exactly at the cut-off is kept;
  a task with no ``created_at`` has no age and is never selected;
- ``db_name`` equal, ``task_id`` starting with ``task_id_prefix`` (taken
  literally: ``_`` and ``%`` are escaped), the recorded ``directory_exists``
  equal to the one asked for (default true);
- it is not one of the ``keep_last`` newest tasks that pass the filters other
  than age and running steps. With ``db_name`` given that is that database's
  N newest; without, the N newest overall (no per-database partition:
  ``db_name`` is what asks for one database).

The ids come oldest first (``created_at``, then ``task_id``), at most
``max_tasks``, with whether more match. The deletion itself is the normal
pipeline (a job of kind ``cleanup``): every check, plugin and audit line
applies, and a task that started running since it was selected is refused by
the pipeline's own check.

**Schedules** run once per period across all instances: each instance looks
every ``TICK`` seconds; a schedule is due when its last run (``dptask_schedules``,
the database's clock, so instances' clocks do not matter) is at least
``every`` ago. The look, the job's submission and the new ``last_run_at`` are
one transaction that holds a transaction-scoped advisory lock on the
schedule's name (``pg_try_advisory_xact_lock``: a second instance skips it
rather than wait) and the schedule's row ``FOR UPDATE``; the second instance
then reads the new ``last_run_at``. If the instance dies after the job was
submitted but before the commit, the period's run may be submitted again by
the next look: at least once, never twice by two live instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from service import fs
from service.errors import BadRequest

if TYPE_CHECKING:
    from service.db import Database
    from service.jobs import JobQueue
    from service.settings import Settings
    from service.trash import Trash

log = structlog.get_logger("service")

SAMPLE_SIZE = 100
# A dry run counts files and bytes for at most this long.
COUNT_BUDGET = 2.0
# How often an instance looks for a due schedule.
TICK = 1.0

# The filters other than age and running steps: what keep_last counts among.
_FILTERS = """
    status = ANY(%(statuses)s)
      AND (%(db_name)s::text IS NULL OR db_name = %(db_name)s)
      AND (%(prefix)s::text IS NULL OR task_id LIKE %(prefix)s ESCAPE '\\')
      AND COALESCE(directory_exists, true) = %(directory_exists)s
    """
# One statement, all over the list's order index (dp_tasks_list_order_idx, which
# INCLUDEs the filters' columns: index-only scans). The keep_last newest that
# pass the filters are its first rows, so a task is not one of them exactly when
# it comes after the last of them (last_kept; the row comparison is NULL, and
# nothing is selected, when fewer pass or the last has no created_at).
# selected: those old enough (a scan up to the cut-off) with no running step
# (their partial index). matched counts them in one pass (a hash anti-join);
# the ids are the oldest ``limit``, read from the index's far end (backward it
# is created_at ASC NULLS FIRST, plain ascending once the cut-off has left out
# the NULLs) through a nested-loop anti-join, which keeps that order, so the
# scan stops after ``limit`` rows. Nothing numbers, sorts or materialises every
# candidate, whatever keep_last is.
_SELECT = f"""
    WITH last_kept AS MATERIALIZED (
        SELECT created_at, task_id FROM data_pipeline_tasks
        WHERE {_FILTERS}
        ORDER BY created_at DESC NULLS LAST, task_id DESC
        OFFSET greatest(%(keep_last)s - 1, 0) LIMIT 1
    ), selected AS NOT MATERIALIZED (
        SELECT task_id, created_at FROM data_pipeline_tasks c
        WHERE {_FILTERS} AND c.created_at < %(cutoff)s
          AND (%(keep_last)s = 0
               OR (c.created_at, c.task_id) < (SELECT created_at, task_id FROM last_kept))
          AND NOT EXISTS (SELECT 1 FROM data_pipeline_task_steps s
                          WHERE s.task_id = c.task_id AND s.step_status = 'running')
    )
    SELECT (SELECT count(*) FROM selected) AS matched,
           ARRAY(SELECT task_id FROM selected ORDER BY created_at NULLS FIRST, task_id
                 LIMIT %(limit)s) AS task_ids
    """


def cutoff(selection: dict[str, Any], now: datetime | None = None) -> datetime:
    """Tasks created strictly before this are old enough."""
    if selection["created_before"] is not None:
        return datetime.fromisoformat(selection["created_before"])
    return (now or datetime.now()) - timedelta(days=selection["older_than_days"])


def _like_prefix(prefix: str) -> str:
    return re.sub(r"([\\_%])", r"\\\1", prefix) + "%"


async def matching(db: Database, selection: dict[str, Any], limit: int) -> tuple[list[str], int]:
    """Up to ``limit`` selected ids, oldest first, and how many match in all.
    What ``selection`` leaves out takes the endpoint's defaults."""
    from service.params import SELECTION_DEFAULTS  # see parse_schedules: params imports us

    selection = {**SELECTION_DEFAULTS, **selection}
    prefix = selection["task_id_prefix"]
    rows = await db.query(
        _SELECT,
        {
            "statuses": list(selection["statuses"]),
            "db_name": selection["db_name"],
            "prefix": None if prefix is None else _like_prefix(prefix),
            "directory_exists": selection["directory_exists"],
            "keep_last": selection["keep_last"],
            "cutoff": cutoff(selection),
            "limit": limit,
        },
    )
    return list(rows[0]["task_ids"]), rows[0]["matched"]


async def select_task_ids(
    db: Database, selection: dict[str, Any], max_tasks: int
) -> tuple[list[str], bool]:
    """The selected ids, oldest first, at most ``max_tasks``; and whether more match."""
    ids, matched = await matching(db, selection, max_tasks)
    return ids, matched > len(ids)


async def dry_run(
    db: Database, trash: Trash, selection: dict[str, Any], settings: Settings
) -> dict[str, Any]:
    """What a real run of ``selection`` would delete, changing nothing."""
    ids, matched = await matching(db, selection, selection["max_tasks"])
    files, size, counted = await count_files(trash, ids, settings)
    return {
        "dry_run": True,
        "matched": matched,
        "sample_task_ids": ids[:SAMPLE_SIZE],
        "more_remaining": matched > len(ids),
        "files": files if counted else None,
        "bytes": size if counted else None,
        "counted": counted,
        "selection": selection,
    }


async def count_files(
    trash: Trash, task_ids: list[str], settings: Settings
) -> tuple[int, int, bool]:
    """Files and bytes under the tasks' directories (nothing removed), walked
    one after another in one worker thread within ``COUNT_BUDGET``; False when
    the budget ran out (the counts are then those walked so far). A walk in
    flight when it does finishes in its thread, unwaited."""
    deadline = time.monotonic() + COUNT_BUDGET
    total = fs.TreeStats()
    walk = asyncio.ensure_future(
        asyncio.to_thread(_count, trash, task_ids, settings, deadline, total)
    )
    done, _ = await asyncio.wait([walk], timeout=COUNT_BUDGET)
    return total.files, total.bytes, bool(done) and walk.result()


def _count(
    trash: Trash, task_ids: list[str], settings: Settings, deadline: float, total: fs.TreeStats
) -> bool:
    from service.pipeline import id_problem  # at run time: pipeline imports settings, us

    # One lstat per id through the held descriptor (most old tasks' directories
    # are long gone), not the trash's checks per id; then the walks.
    present = trash.present([i for i in task_ids if "/" not in i and "\0" not in i])
    for task_id in task_ids:
        # An id the real run refuses (INVALID_TASK_ID) names no directory to count.
        if task_id not in present or id_problem(task_id, settings) is not None:
            continue
        if time.monotonic() > deadline:
            return False
        # An unusable trash or tree counts nothing: the real run says why, per task.
        with contextlib.suppress(Exception):
            total.add(trash.dry_run_stats(task_id))
    return True


# ---------------------------------------------------------------- schedules

_DURATION = re.compile(r"([0-9]+)(s|m|h|d)")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SCHEDULE_KEYS = {"name", "every", "delete_database_records"}
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class Schedule:
    name: str
    every: float  # seconds
    selection: dict[str, Any]
    delete_database_records: bool = False

    @property
    def actor(self) -> str:
        return f"schedule:{self.name}"


def parse_schedules(raw: Any, max_task_ids: int = 1000) -> tuple[Schedule, ...]:
    """Validate ``[cleanup] schedules``; ``ValueError`` with one line naming the key."""
    from service import params  # params imports the pipeline, which imports settings

    schedules: list[Schedule] = []
    for i, table in enumerate(raw):
        where = f"cleanup.schedules[{i}]"
        if not isinstance(table, dict):
            raise ValueError(f"{where} must be a table")
        name = table.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(f"{where}.name must be 1 to 64 letters, digits, '_', '.' or '-'")
        if name in {s.name for s in schedules}:
            raise ValueError(f"{where}.name {name!r} is used twice")
        every = table.get("every")
        match = _DURATION.fullmatch(every) if isinstance(every, str) else None
        if match is None or int(match[1]) == 0:
            raise ValueError(f'{where}.every must be a duration like "24h" (s, m, h or d)')
        if unknown := sorted(set(table) - _SCHEDULE_KEYS - set(params.SELECTION_DEFAULTS)):
            raise ValueError(f"{where}: unknown key {unknown[0]}")
        records = table.get("delete_database_records", False)
        if not isinstance(records, bool):
            raise ValueError(f"{where}.delete_database_records must be true or false")
        try:
            sel = params.selection(table, max_task_ids)
        except BadRequest as e:
            key = ",".join(e.fields.get("invalid_params", [])) or "selection"
            raise ValueError(f"{where}.{key}: {e.message}") from None
        seconds = int(match[1]) * _UNIT[match[2]]
        schedules.append(Schedule(name, seconds, sel, records))
    return tuple(schedules)


async def run_schedules(
    db: Database, jobs: JobQueue, schedules: tuple[Schedule, ...], stop: asyncio.Event
) -> None:
    """Submit each schedule's job once per period, with every other instance,
    until ``stop`` is set (it is never cancelled mid-query: aiopg can lose a
    connection whose acquire is cancelled, and the pool would never close)."""
    while not stop.is_set():
        for schedule in schedules:
            try:
                await run_if_due(db, jobs, schedule)
            except Exception:  # the database away, say: look again next tick
                log.warning("schedule_failed", schedule=schedule.name, exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), TICK)


async def run_if_due(db: Database, jobs: JobQueue, schedule: Schedule) -> str | None:
    """Submit the schedule's job when its period has passed; its id, or None."""
    from service.pipeline import DeleteOptions

    async with db.transaction() as tx:
        got = await tx(
            "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0)) AS got",
            ("dptask_schedule:" + schedule.name,),
        )
        if not got[0]["got"]:
            return None  # another instance is looking at it right now
        await tx(
            "INSERT INTO dptask_schedules (name) VALUES (%s) ON CONFLICT DO NOTHING",
            (schedule.name,),
        )
        due = await tx(
            "SELECT last_run_at IS NULL OR last_run_at <= now() - %s * interval '1 second' AS due"
            " FROM dptask_schedules WHERE name = %s FOR UPDATE",
            (schedule.every, schedule.name),
        )
        if not due[0]["due"]:
            return None
        ids, more = await select_task_ids(db, schedule.selection, schedule.selection["max_tasks"])
        job = await jobs.submit(
            kind="cleanup",
            options=DeleteOptions(delete_database_records=schedule.delete_database_records),
            actor=schedule.actor,
            request_id=f"schedule-{schedule.name}-{int(time.time())}",
            client=None,
            task_ids=None,  # chosen when the job starts
            selection={**schedule.selection, "more_remaining": more},
        )
        await tx(
            "UPDATE dptask_schedules SET last_run_at = now(), last_job_id = %s WHERE name = %s",
            (job["job_id"], schedule.name),
        )
    log.info("schedule_submitted", schedule=schedule.name, job_id=job["job_id"], tasks=len(ids))
    return str(job["job_id"])
