"""The database layer: the only module that imports the driver (aiopg).

Everything else sees plain dicts and the exceptions defined here, so the
driver can be swapped without touching handlers or the deletion pipeline.

Nothing here waits for the database without a bound:
- every call (pool acquire, connect, each statement, COMMIT) has the client
  timeout ``timeout`` (``[database] timeout``); a timeout is
  ``DatabaseTimeout``, a ``DatabaseUnavailable`` (the API's 503), and the
  connection it happened on is closed, never reused;
- the server enforces the same bound (``statement_timeout`` per session), so a
  statement the client gave up on does not stay queued on a lock there;
- a task's row lock is waited for ``lock_timeout`` at most (``TaskLocked``);
- a COMMIT that got no answer raises ``CommitUnknown``: it may have committed
  (the server can still run it once it wakes up). The caller reads the record
  back with ``peek_task`` once the database answers.

No ``idle_in_transaction_session_timeout``: archiving keeps a task transaction
open (idle) for as long as writing the archive takes, and must not lose it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiopg
import psycopg2
import psycopg2.errors
import psycopg2.extensions
import structlog

from service import schema

log = structlog.get_logger("service")

# A statement's parameters: positional (%s) or by name (%(name)s).
Args = Sequence[Any] | Mapping[str, Any]
# Rows from before the migration may hold NULL: the column's default says true.
DIRECTORY_EXISTS = "COALESCE(directory_exists, true)"
TASK_COLUMNS = (
    "task_id, task_name, task_type, status, error_message, created_at, started_at,"
    f" completed_at, updated_at, {DIRECTORY_EXISTS} AS directory_exists, created_type,"
    " by_user, db_name"
)
DETAIL_COLUMNS = TASK_COLUMNS + ", parameters, result, output_directory"
STEP_COLUMNS = "id, execution_id, step_name, step_status, started_at, completed_at, error_message"
RUNNING_STEPS = (
    "SELECT task_id, step_name FROM data_pipeline_task_steps"
    " WHERE task_id = ANY(%s) AND step_status = 'running' ORDER BY id"
)
# How often a blocked schema migration looks again (it queues behind nobody meanwhile).
SCHEMA_RETRY_PAUSE = 0.5
# A blocked migration logs again at least this often even when nothing changed.
SCHEMA_LOG_EVERY = 10.0


class DatabaseError(Exception):
    """A query failed."""


class DatabaseUnavailable(DatabaseError):
    """The server cannot be reached (down, restarting, refusing connections) or does
    not answer in time."""


class DatabaseTimeout(DatabaseUnavailable):
    """No answer within the timeout (a hung or overloaded server); the connection
    was closed."""


class CommitUnknown(DatabaseUnavailable):
    """COMMIT was sent and no answer came (timeout, connection lost): the
    transaction may or may not have committed. Read the record back."""


class SchemaBlocked(DatabaseError):
    """Start-up could not make a schema change within ``schema_wait``: another
    session kept a conflicting lock. The message names it."""


class TaskLocked(Exception):
    """Another request or service process holds the task's advisory lock, or a
    session holds its row lock for longer than ``lock_timeout``."""


@contextlib.contextmanager
def _translated() -> Any:
    try:
        yield
    # LockNotAvailable and QueryCanceledError are OperationalErrors: first.
    except psycopg2.errors.LockNotAvailable as e:
        raise TaskLocked(str(e).strip()) from e
    except psycopg2.extensions.QueryCanceledError as e:
        raise DatabaseTimeout(str(e).strip()) from e
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as e:
        raise DatabaseUnavailable(str(e).strip()) from e
    except psycopg2.Error as e:
        raise DatabaseError(str(e).strip()) from e
    except TimeoutError as e:  # asyncio's, from aiopg: it has closed the connection
        raise DatabaseTimeout("the database did not answer within the timeout") from e


async def _execute(
    cur: Any, sql: str, args: Args | None = None, *, bound: float | None = None
) -> None:
    """One statement, its errors translated. aiopg turns the server's
    "canceling statement due to statement timeout" into a CancelledError: that
    one is a timeout, not a cancellation of this task."""
    with _translated():
        try:
            await cur.execute(sql, args or None, timeout=bound)
        except asyncio.CancelledError as e:
            task = asyncio.current_task()
            cause = e.__context__
            if isinstance(cause, psycopg2.extensions.QueryCanceledError) and not (
                task and task.cancelling()
            ):
                raise DatabaseTimeout(str(cause).strip()) from cause
            raise


async def _fetchall(cur: Any) -> list[dict[str, Any]]:
    with _translated():
        return _dicts(cur, await cur.fetchall())


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@dataclass(frozen=True)
class _Blocker:
    """What a schema change waits for: a lock and the session that holds it."""

    lock: str  # "a lock on <table>" or "the schema lock"
    pid: int | None = None
    state: str | None = None
    query: str | None = None

    def describe(self) -> str:
        if self.pid is None:
            return (
                f"{self.lock} held by {self.state}"
                if self.state
                else f"{self.lock} (its holder has let go since)"
            )
        query = " ".join((self.query or "").split())
        query = query if len(query) <= 200 else query[:199] + "…"
        return f"{self.lock} held by pid {self.pid} ({self.state or 'unknown state'}: {query})"


class Database:
    def __init__(
        self, pool: aiopg.Pool, maxsize: int, *, timeout: float = 5.0, lock_timeout: float = 2.0
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._lock_timeout = lock_timeout
        # Task transactions stay open through archiving; they may use all
        # connections but two, so that reads (lists, the ping before a DELETE,
        # peek_task) always find one.
        self._task_slots = asyncio.Semaphore(max(1, maxsize - 2))

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        maxsize: int = 10,
        timeout: float = 5.0,  # noqa: ASYNC109 (the pool's bound for every call, not this one's)
        lock_timeout: float = 2.0,
    ) -> Database:
        """A pool on ``url``; connects lazily. ``timeout`` bounds every call,
        ``lock_timeout`` a task's row lock wait and a schema change's lock wait."""

        async def on_connect(conn: Any) -> None:
            try:
                async with conn.cursor() as cur:
                    await _execute(cur, "SET statement_timeout = %s", (_ms(timeout),))
            except BaseException:
                conn.close()  # aiopg would drop it without closing it
                raise

        with _translated():
            pool = await aiopg.create_pool(
                url, minsize=0, maxsize=maxsize, timeout=timeout, on_connect=on_connect
            )
        return cls(pool, maxsize, timeout=timeout, lock_timeout=lock_timeout)

    @property
    def connections_in_use(self) -> int:
        """Connections of the pool handed out now (for the metrics)."""
        return int(self._pool.size - self._pool.freesize)

    async def close(self) -> None:
        self._pool.close()
        await self._pool.wait_closed()

    @contextlib.asynccontextmanager
    async def _cursor(self) -> AsyncIterator[Any]:
        with _translated():
            conn = await self._pool.acquire()
        try:
            cur = await conn.cursor()
            try:
                yield cur
            finally:
                cur.close()
        except (DatabaseTimeout, asyncio.CancelledError):
            # It may still have a statement in flight: never hand it out again.
            conn.close()
            raise
        finally:
            # A connection left inside a transaction is closed by the pool too.
            await self._pool.release(conn)

    async def _rows(self, sql: str, args: Args = ()) -> list[dict[str, Any]]:
        """Run a read. After a server restart the pool still holds dead
        connections; the first use of one fails and drops it, so a read that
        fails that way is tried once more, on a fresh connection. A timeout is
        not tried again: a hung server would only double the wait."""
        for attempt in (1, 2):
            try:
                async with self._cursor() as cur:
                    await _execute(cur, sql, args)
                    return await _fetchall(cur)
            except DatabaseTimeout:
                raise
            except DatabaseUnavailable:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def ping(self) -> None:
        await self._rows("SELECT 1")

    # ------------------------------------------------------------ schema

    async def ensure_schema(self, *, lock_timeout: float | None = None, wait: float = 60.0) -> None:
        """Create or migrate the tables (see ``service.schema``).

        Reads the catalogue first and runs no DDL when nothing is missing.
        Otherwise makes each missing change when no session holds a
        conflicting lock, waiting at most ``lock_timeout`` (default: the one
        given to ``connect``) per attempt, and raises ``SchemaBlocked`` naming the blocking
        session after ``wait`` seconds.
        """
        lock_timeout = self._lock_timeout if lock_timeout is None else lock_timeout
        started = time.monotonic()
        deadline = started + wait
        logged: tuple[Any, float] = (None, 0.0)
        if not schema.missing_changes(await self._catalog()):
            return
        while True:
            outcome = await self._schema_step(lock_timeout, deadline)
            if outcome is None:
                return
            if isinstance(outcome, schema.Change):
                log.info("schema_changed", change=outcome.what)
                continue
            now = time.monotonic()
            if now >= deadline:
                raise SchemaBlocked(f"schema migration waited {wait:g} s for {outcome.describe()}")
            if outcome != logged[0] or now - logged[1] >= SCHEMA_LOG_EVERY:
                log.warning(
                    "schema_migration_waiting",
                    waits_for=outcome.lock,
                    blocking_pid=outcome.pid,
                    blocking_state=outcome.state,
                    blocking_query=outcome.query,
                    waited_s=round(now - started, 1),
                    gives_up_in_s=round(deadline - now, 1),
                )
                logged = (outcome, now)
            await asyncio.sleep(min(SCHEMA_RETRY_PAUSE, deadline - now))

    async def _catalog(self, cur: Any = None) -> dict[str, tuple[bool, list[str]]]:
        if cur is None:
            rows = await self._rows(schema.CATALOG_QUERY, (schema.CATALOG_NAMES,))
        else:
            await _execute(cur, schema.CATALOG_QUERY, (schema.CATALOG_NAMES,))
            rows = await _fetchall(cur)
        return {r["name"]: (r["present"], r["columns"]) for r in rows}

    async def _schema_step(
        self, lock_timeout: float, deadline: float
    ) -> schema.Change | _Blocker | None:
        """Make the first missing change in a transaction of its own: the change
        made, what blocks it, or None when nothing is missing."""
        # An index may take a while to build on a big table: its bound is the wait.
        bound = max(deadline - time.monotonic(), self._timeout) + lock_timeout
        change: schema.Change | None = None
        try:
            async with self._cursor() as cur, _transaction(cur):
                await _execute(cur, "SET LOCAL lock_timeout = %s", (_ms(lock_timeout),))
                await _execute(cur, "SET LOCAL statement_timeout = %s", (_ms(bound),))
                # Another process migrating: TaskLocked (lock_timeout) with change None.
                await _execute(
                    cur,
                    "SELECT pg_advisory_xact_lock(%s)",
                    (schema.SCHEMA_LOCK_KEY,),
                    bound=self._timeout + lock_timeout,
                )
                missing = schema.missing_changes(await self._catalog(cur))
                if not missing:
                    return None
                change = missing[0]
                if change.table and (blocker := await self._holder(cur, change)):
                    raise _Blocked(blocker)
                await _execute(cur, change.sql, bound=bound)
            return change
        except _Blocked as e:
            return e.blocker
        except TaskLocked:  # lock_timeout: someone took a lock since we looked
            if change is None:
                return await self._schema_lock_holder()
            async with self._cursor() as cur:
                return await self._holder(cur, change) or _Blocker(_lock_name(change))

    async def _holder(self, cur: Any, change: schema.Change) -> _Blocker | None:
        await _execute(cur, schema.HOLDERS_QUERY, (change.table, schema.CONFLICTS[change.mode]))
        rows = await _fetchall(cur)
        if not rows:
            return None
        r = rows[0]
        if r["pid"] is None:  # no session: a prepared transaction (PREPARE TRANSACTION)
            return _Blocker(_lock_name(change), None, "a prepared transaction")
        return _Blocker(_lock_name(change), r["pid"], r["state"], r["query"])

    async def _schema_lock_holder(self) -> _Blocker:
        rows = await self._rows(schema.SCHEMA_LOCK_HOLDER_QUERY, (schema.SCHEMA_LOCK_KEY,))
        if not rows:
            return _Blocker("the schema lock")
        r = rows[0]
        return _Blocker("the schema lock", r["pid"], r["state"], r["query"])

    # ------------------------------------------------------------ reads

    async def list_tasks(
        self,
        *,
        limit: int,
        offset: int,
        status: str | None = None,
        directory_exists: bool | None = None,
        created_before: datetime | None = None,
        created_after: datetime | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page, ordered ``created_at DESC NULLS LAST, task_id DESC``, and
        the number of all matching tasks.

        One statement (one snapshot), that reads the table for the page's rows
        only: the count, and the ids of the page, come from
        ``dp_tasks_list_order_idx`` (its key is the order, its INCLUDEd columns
        the filters: an index-only scan). The ids are found from the nearer end:
        a page in the second half is the same rows read backwards (``ASC NULLS
        FIRST, task_id ASC`` is that index read backwards), with the offset
        counted from the end, so that no page skips more than half the
        matching rows. The rows are then read by primary key and put back in order.
        """
        where: list[str] = []
        args: dict[str, Any] = {"limit": limit, "offset": offset}
        # Both strict: a task created at exactly the given time is in neither.
        if created_before is not None:
            where.append("created_at < %(created_before)s")
            args["created_before"] = created_before
        if created_after is not None:
            where.append("created_at > %(created_after)s")
            args["created_after"] = created_after
        if status is not None:
            where.append("status = %(status)s")
            args["status"] = status
        if directory_exists is not None:
            where.append(f"{DIRECTORY_EXISTS} = %(directory_exists)s")
            args["directory_exists"] = directory_exists

        def matching(*more: str) -> str:
            conditions = [*where, *more]
            return (
                f"FROM data_pipeline_tasks WHERE {' AND '.join(conditions)}"
                if conditions
                else ("FROM data_pipeline_tasks")
            )

        n = "(SELECT n FROM total)"
        near = f"{n} >= 2 * %(offset)s::bigint + %(limit)s"  # the page is in the first half
        rows = await self._rows(
            f"WITH total AS MATERIALIZED (SELECT count(*) AS n {matching()}),"
            " page AS MATERIALIZED ("
            f" (SELECT task_id {matching(near)}"
            "  ORDER BY created_at DESC NULLS LAST, task_id DESC"
            "  LIMIT %(limit)s OFFSET %(offset)s)"
            " UNION ALL"
            f" (SELECT task_id {matching(f'NOT ({near})')}"
            "  ORDER BY created_at ASC NULLS FIRST, task_id ASC"
            f"  LIMIT greatest(0, least(%(limit)s, {n} - %(offset)s))"
            f"  OFFSET greatest(0, {n} - %(offset)s - %(limit)s)))"
            f" SELECT {TASK_COLUMNS}, {n} AS total_count FROM data_pipeline_tasks"
            " WHERE task_id = ANY(ARRAY(SELECT task_id FROM page))"
            " ORDER BY created_at DESC NULLS LAST, task_id DESC",
            args,
        )
        if rows:
            total = rows[0]["total_count"]
        else:  # a page past the end still reports the true total
            total = (await self._rows(f"SELECT count(*) AS n {matching()}", args))[0]["n"]
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

    async def peek_task(self, task_id: str) -> tuple[dict[str, Any] | None, list[str]]:
        """The task's record (TASK_COLUMNS) and its running steps, as
        ``TaskTransaction.load`` reads them, but without any lock or task slot:
        for dry runs, and to read back the outcome of a ``CommitUnknown``."""
        rows = await self._rows(
            f"SELECT {TASK_COLUMNS} FROM data_pipeline_tasks WHERE task_id = %s", [task_id]
        )
        steps = await self._rows(RUNNING_STEPS, [[task_id]])
        return (rows[0] if rows else None), [r["step_name"] for r in steps]

    async def directory_records(self) -> list[dict[str, Any]]:
        """Every task's ``task_id``, ``directory_exists`` and ``output_directory``."""
        return await self._rows(
            f"SELECT task_id, {DIRECTORY_EXISTS} AS directory_exists, output_directory"
            " FROM data_pipeline_tasks"
        )

    async def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        """Run one statement outside a task transaction (the demo's data)."""
        async with self._cursor() as cur:
            await _execute(cur, sql, args)

    # ------------------------------------------------------------ jobs and schedules

    async def query(self, sql: str, args: Args = ()) -> list[dict[str, Any]]:
        """One statement (a write too: it commits by itself), its rows
        (RETURNING), or none. Never tried again: a write must not run twice."""
        async with self._cursor() as cur:
            return await Query(cur)(sql, args)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Query]:
        """Statements in one transaction (``await q(sql, args)``), committed
        when the block ends normally, rolled back on an exception."""
        async with self._cursor() as cur, _transaction(cur):
            yield Query(cur)

    # ------------------------------------------------------------ tasks' transactions

    @contextlib.asynccontextmanager
    async def task_transaction(self, task_id: str) -> AsyncIterator[TaskTransaction]:
        """Lock one task for deletion and yield its record in an open transaction
        (``tasks_transaction`` of one task). Raises ``TaskLocked`` at once when
        another holder has its advisory lock, and after ``lock_timeout`` when
        another session holds its row."""
        async with self.tasks_transaction([task_id]) as tasks:
            if task_id not in tasks.members:
                raise TaskLocked(task_id)
            yield tasks.members[task_id]

    @contextlib.asynccontextmanager
    async def tasks_transaction(self, task_ids: Sequence[str]) -> AsyncIterator[TasksTransaction]:
        """Lock tasks for deletion and yield their records in one open transaction.

        Each lock is a transaction-scoped advisory lock keyed on the task id,
        so it is released by COMMIT, ROLLBACK, or the server when the
        connection dies: a crashed process can never leave a task locked. A
        task whose advisory lock another holder has is left out of
        ``members`` at once. The locked tasks' rows are read ``FOR UPDATE``:
        with one task, a row another session holds is waited for
        ``lock_timeout``; with several, not at all (``TaskLocked`` at once, so
        the caller can take them one at a time rather than stall the rest).

        The record changes the members ask for are made in one round trip
        when the block ends (or at ``flush()``), then the transaction
        commits, unless ``rollback_only`` was set; ``CommitUnknown`` when the
        COMMIT got no answer.
        """
        ids = list(dict.fromkeys(task_ids))
        async with self._task_slots, self._cursor() as cur:
            tasks = TasksTransaction(cur, self._timeout + self._lock_timeout)
            async with _transaction(cur, commit=lambda: not tasks.rollback_only):
                # A pipeline worker holding a row must not stall a batch; the
                # session's statement_timeout must outlast that wait.
                await _execute(
                    cur,
                    "SET LOCAL lock_timeout = %s; SET LOCAL statement_timeout = %s",
                    (_ms(self._lock_timeout), _ms(tasks.lock_wait)),
                )
                await _execute(
                    cur,
                    "SELECT task_id FROM unnest(%s::text[]) AS task_id"
                    " WHERE pg_try_advisory_xact_lock("
                    "hashtextextended('data_pipeline_task:' || task_id, 0))",
                    (ids,),
                )
                locked = {r["task_id"] for r in await _fetchall(cur)}
                await tasks.load([i for i in ids if i in locked], wait=len(ids) == 1)
                yield tasks
                await tasks.flush()


class Query:
    """Runs statements on one cursor; each call answers its rows (or [])."""

    def __init__(self, cur: Any) -> None:
        self._cur = cur

    async def __call__(self, sql: str, args: Args = ()) -> list[dict[str, Any]]:
        await _execute(self._cur, sql, args)
        return await _fetchall(self._cur) if self._cur.description else []


class TasksTransaction:
    """Locked tasks' records, read and changed inside one transaction.

    A member's changes are kept until ``flush()``, which makes all of them
    in one round trip: the rows are locked, so what each change will do is
    known when it is asked for."""

    def __init__(self, cur: Any, lock_wait: float) -> None:
        self._cur = cur
        self.lock_wait = lock_wait  # the client bound of a statement that waits for a row lock
        self.members: dict[str, TaskTransaction] = {}
        self.rollback_only = False
        # task_id -> (present, at) to record whether the directory exists, or None to delete
        self._changes: dict[str, tuple[bool, datetime] | None] = {}

    async def load(self, task_ids: list[str], *, wait: bool) -> None:
        self.members = {i: TaskTransaction(self, i) for i in task_ids}
        if not task_ids:
            return
        await _execute(
            self._cur,
            f"SELECT {TASK_COLUMNS} FROM data_pipeline_tasks WHERE task_id = ANY(%s)"
            f" FOR UPDATE{'' if wait else ' NOWAIT'}",
            (task_ids,),
            bound=self.lock_wait,
        )
        for row in await _fetchall(self._cur):
            self.members[row["task_id"]].record = row
        await _execute(self._cur, RUNNING_STEPS, (task_ids,))
        for row in await _fetchall(self._cur):
            self.members[row["task_id"]].running_steps.append(row["step_name"])

    def change(self, task_id: str, change: tuple[bool, datetime] | None) -> None:
        if self._changes.get(task_id, ()) is not None:  # a deletion stays one
            self._changes[task_id] = change

    def discard(self, task_id: str) -> None:
        self._changes.pop(task_id, None)

    async def flush(self) -> None:
        """Make the changes asked for so far (a step row a pipeline worker
        holds is waited for ``lock_timeout`` at most)."""
        if not self._changes:
            return
        kept = [(i, c) for i, c in self._changes.items() if c is not None]
        gone = [i for i, c in self._changes.items() if c is None]
        self._changes = {}
        # Steps first: an older pipeline schema may lack ON DELETE CASCADE.
        await _execute(
            self._cur,
            "UPDATE data_pipeline_tasks AS t SET directory_exists = c.present, updated_at = c.at"
            " FROM unnest(%(ids)s::text[], %(present)s::boolean[], %(at)s::timestamp[])"
            "  AS c(task_id, present, at) WHERE t.task_id = c.task_id;"
            " DELETE FROM data_pipeline_task_steps WHERE task_id = ANY(%(gone)s::text[]);"
            " DELETE FROM data_pipeline_tasks WHERE task_id = ANY(%(gone)s::text[])",
            {
                "ids": [i for i, _ in kept],
                "present": [c[0] for _, c in kept],
                "at": [c[1] for _, c in kept],
                "gone": gone,
            },
            bound=self.lock_wait,
        )


class TaskTransaction:
    """One task's record, read and changed inside its locked transaction."""

    def __init__(self, tasks: TasksTransaction, task_id: str) -> None:
        self._tasks = tasks
        self.task_id = task_id
        self.record: dict[str, Any] | None = None
        self.running_steps: list[str] = []

    @property
    def rollback_only(self) -> bool:
        return self._tasks.rollback_only

    @rollback_only.setter
    def rollback_only(self, value: bool) -> None:
        self._tasks.rollback_only = value

    async def set_directory_exists(self, exists: bool, at: datetime) -> bool:
        """Record whether the directory exists; False when there is no record."""
        self._tasks.change(self.task_id, (exists, at))
        return self.record is not None

    async def delete_records(self) -> bool:
        """Delete the task and its steps; False when there was no record."""
        self._tasks.change(self.task_id, None)
        return self.record is not None

    def discard(self) -> None:
        """Forget the changes asked for (the task failed before the commit)."""
        self._tasks.discard(self.task_id)


class _Blocked(Exception):
    """Inside ``_schema_step``: roll back, and report what blocks the change."""

    def __init__(self, blocker: _Blocker) -> None:
        super().__init__(blocker.describe())
        self.blocker = blocker


def _lock_name(change: schema.Change) -> str:
    return f"a lock on {change.table}"


@contextlib.asynccontextmanager
async def _transaction(cur: Any, commit: Callable[[], bool] = lambda: True) -> AsyncIterator[None]:
    await _execute(cur, "BEGIN")
    try:
        yield
    except BaseException:
        if not cur.connection.closed:  # a timed-out connection is already gone
            with contextlib.suppress(DatabaseError, TaskLocked):
                await _execute(cur, "ROLLBACK")
        raise
    if not commit():
        await _execute(cur, "ROLLBACK")
        return
    if cur.connection.closed:
        raise DatabaseUnavailable("connection lost before COMMIT; nothing was committed")
    try:
        await _execute(cur, "COMMIT")
    except DatabaseUnavailable as e:
        # Sent, and no answer: the server may have committed it, or may still.
        raise CommitUnknown(f"COMMIT got no answer: {e}") from e


def _dicts(cur: Any, rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    names = [d.name for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in rows]
