"""The database layer: the only module that imports the driver (aiopg).

Everything else sees plain dicts and the exceptions defined here, so the
driver can be swapped without touching handlers or the deletion pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

import aiopg
import psycopg2

from service.schema import SCHEMA_LOCK_KEY, STATEMENTS

# Rows from before the migration may hold NULL: the column's default says true.
DIRECTORY_EXISTS = "COALESCE(directory_exists, true)"
TASK_COLUMNS = (
    "task_id, task_name, task_type, status, error_message, created_at, started_at,"
    f" completed_at, updated_at, {DIRECTORY_EXISTS} AS directory_exists, created_type,"
    " by_user, db_name"
)
DETAIL_COLUMNS = TASK_COLUMNS + ", parameters, result, output_directory"
STEP_COLUMNS = "id, execution_id, step_name, step_status, started_at, completed_at, error_message"


class DatabaseError(Exception):
    """A query failed."""


class DatabaseUnavailable(DatabaseError):
    """The server cannot be reached (down, restarting, refusing connections)."""


class TaskLocked(Exception):
    """Another request or service process holds the task's advisory lock."""


@contextlib.contextmanager
def _translated() -> Any:
    try:
        yield
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
        raise DatabaseUnavailable(str(e).strip()) from e
    except psycopg2.errors.LockNotAvailable as e:
        raise TaskLocked(str(e).strip()) from e
    except psycopg2.Error as e:
        raise DatabaseError(str(e).strip()) from e


class Database:
    def __init__(self, pool: aiopg.Pool, maxsize: int) -> None:
        self._pool = pool
        # Task transactions stay open through archiving and dry-run walks; they
        # may use all connections but two, so that reads (lists, the ping
        # before a DELETE) always find one.
        self._task_slots = asyncio.Semaphore(max(1, maxsize - 2))

    @classmethod
    async def connect(cls, url: str, *, maxsize: int = 10) -> Database:
        with _translated():
            pool = await aiopg.create_pool(url, minsize=0, maxsize=maxsize, timeout=30)
        return cls(pool, maxsize)

    async def close(self) -> None:
        self._pool.close()
        await self._pool.wait_closed()

    @contextlib.asynccontextmanager
    async def _cursor(self) -> AsyncIterator[Any]:
        with _translated():
            async with self._pool.acquire() as conn, conn.cursor() as cur:
                yield cur

    async def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a read. After a server restart the pool still holds dead
        connections; the first use of one fails and drops it, so a read that
        fails that way is tried once more, on a fresh connection."""
        for attempt in (1, 2):
            try:
                async with self._cursor() as cur:
                    await cur.execute(sql, args)
                    return _dicts(cur, await cur.fetchall())
            except DatabaseUnavailable:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def ping(self) -> None:
        await self._rows("SELECT 1")

    async def ensure_schema(self) -> None:
        async with self._cursor() as cur, _transaction(cur):
            await cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            for statement in STATEMENTS:
                await cur.execute(statement)

    async def list_tasks(
        self,
        *,
        limit: int,
        offset: int,
        status: str | None = None,
        directory_exists: bool | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        where, args = [], []
        if status is not None:
            where.append("status = %s")
            args.append(status)
        if directory_exists is not None:
            where.append(f"{DIRECTORY_EXISTS} = %s")
            args.append(directory_exists)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._rows(
            f"SELECT {TASK_COLUMNS}, count(*) OVER () AS total_count"
            f" FROM data_pipeline_tasks {clause}"
            " ORDER BY created_at DESC NULLS LAST, task_id DESC LIMIT %s OFFSET %s",
            [*args, limit, offset],
        )
        if rows:
            total = rows[0]["total_count"]
        else:  # a page past the end still reports the true total
            total = (
                await self._rows(f"SELECT count(*) AS n FROM data_pipeline_tasks {clause}", args)
            )[0]["n"]
        for row in rows:
            del row["total_count"]
        return rows, total

    async def get_task(self, task_id: str) -> dict[str, Any] | None:
        rows = await self._rows(
            f"SELECT {DETAIL_COLUMNS} FROM data_pipeline_tasks WHERE task_id = %s", [task_id]
        )
        if not rows:
            return None
        task = rows[0]
        task["steps"] = await self._rows(
            f"SELECT {STEP_COLUMNS} FROM data_pipeline_task_steps WHERE task_id = %s ORDER BY id",
            [task_id],
        )
        return task

    async def directory_flags(self) -> dict[str, bool]:
        """Every task's recorded ``directory_exists``."""
        rows = await self._rows(f"SELECT task_id, {DIRECTORY_EXISTS} AS e FROM data_pipeline_tasks")
        return {row["task_id"]: row["e"] for row in rows}

    async def directory_records(self) -> list[dict[str, Any]]:
        """Every task's ``task_id``, ``directory_exists`` and ``output_directory``."""
        return await self._rows(
            f"SELECT task_id, {DIRECTORY_EXISTS} AS directory_exists, output_directory"
            " FROM data_pipeline_tasks"
        )

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        """Run one statement outside a task transaction (the demo's data)."""
        async with self._cursor() as cur:
            await cur.execute(sql, args)

    @contextlib.asynccontextmanager
    async def task_transaction(self, task_id: str) -> AsyncIterator[TaskTransaction]:
        """Lock one task for deletion and yield its record in an open transaction.

        The lock is a transaction-scoped advisory lock keyed on the task id, so
        it is released by COMMIT, ROLLBACK, or the server when the connection
        dies: a crashed process can never leave a task locked. Raises
        ``TaskLocked`` at once when another holder has it. Commits when the
        block ends normally, unless ``rollback_only`` was set (dry runs).
        """
        async with self._task_slots, self._cursor() as cur:
            tx = TaskTransaction(cur, task_id)
            async with _transaction(cur, commit=lambda: not tx.rollback_only):
                with _translated():
                    # A pipeline worker updating the row must not stall a batch.
                    await cur.execute("SET LOCAL lock_timeout = '5s'")
                    await cur.execute(
                        "SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))",
                        ("data_pipeline_task:" + task_id,),
                    )
                    if not (await cur.fetchone())[0]:
                        raise TaskLocked(task_id)
                    await tx.load()
                yield tx


class TaskTransaction:
    """One task's record, read and changed inside its locked transaction."""

    def __init__(self, cur: Any, task_id: str) -> None:
        self._cur = cur
        self.task_id = task_id
        self.record: dict[str, Any] | None = None
        self.running_steps: list[str] = []
        self.rollback_only = False

    async def load(self) -> None:
        cur = self._cur
        await cur.execute(
            f"SELECT {TASK_COLUMNS} FROM data_pipeline_tasks WHERE task_id = %s FOR UPDATE",
            (self.task_id,),
        )
        rows = _dicts(cur, await cur.fetchall())
        self.record = rows[0] if rows else None
        await cur.execute(
            "SELECT step_name FROM data_pipeline_task_steps"
            " WHERE task_id = %s AND step_status = 'running' ORDER BY id",
            (self.task_id,),
        )
        self.running_steps = [r[0] for r in await cur.fetchall()]

    async def set_directory_exists(self, exists: bool, at: datetime) -> bool:
        """Record whether the directory exists; False when there is no record."""
        with _translated():
            await self._cur.execute(
                "UPDATE data_pipeline_tasks SET directory_exists = %s, updated_at = %s"
                " WHERE task_id = %s",
                (exists, at, self.task_id),
            )
            return self._cur.rowcount > 0

    async def delete_records(self) -> bool:
        """Delete the task and its steps; False when there was no record."""
        with _translated():
            # Steps first: an older pipeline schema may lack ON DELETE CASCADE.
            await self._cur.execute(
                "DELETE FROM data_pipeline_task_steps WHERE task_id = %s", (self.task_id,)
            )
            await self._cur.execute(
                "DELETE FROM data_pipeline_tasks WHERE task_id = %s", (self.task_id,)
            )
            return self._cur.rowcount > 0


@contextlib.asynccontextmanager
async def _transaction(cur: Any, commit: Any = lambda: True) -> AsyncIterator[None]:
    with _translated():
        await cur.execute("BEGIN")
    try:
        yield
    except BaseException:
        with contextlib.suppress(psycopg2.Error):
            await cur.execute("ROLLBACK")
        raise
    with _translated():
        await cur.execute("COMMIT" if commit() else "ROLLBACK")


def _dicts(cur: Any, rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in rows]
