"""The pipeline's tables (``docs/design.md``, "The data model"), created when
missing and migrated in place.

Start-up must never stall the pipeline. So the schema is described as a list
of changes, each with the catalogue question that says whether it is needed
and the table lock its DDL takes:

- the catalogue is read first (``to_regclass``, ``pg_attribute``: no lock on
  any table); when nothing is missing no DDL runs at all;
- a change that locks an existing table runs only when no other session holds
  a conflicting lock on it (``pg_locks``), and under a short ``lock_timeout``
  for the race in between: the pipeline's queries never queue behind it for
  longer than that;
- each change is its own transaction (an ``ALTER`` must not keep its ACCESS
  EXCLUSIVE lock while an index builds), under an advisory lock so that two
  service processes starting at once make each change once.

Every statement is idempotent and adds only what is missing: on a database
that the pipeline already created, no existing row or column is changed.
Adding a column with a constant default is a catalogue-only change in
PostgreSQL 11+, so existing rows read ``directory_exists = true`` without
being rewritten. ``CREATE INDEX`` takes a SHARE lock (it blocks the
pipeline's writes while it builds): it gets the same lock check and timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

TASKS = "data_pipeline_tasks"
STEPS = "data_pipeline_task_steps"
JOBS = "dptask_jobs"  # the service's own: background deletion jobs (service/jobs.py)
JOB_RESULTS = "dptask_job_results"  # and each task's outcome in a job

CREATE_TASKS = f"""
    CREATE TABLE IF NOT EXISTS {TASKS} (
        task_id varchar(32) PRIMARY KEY,
        task_name varchar(255),
        task_type varchar(50) NOT NULL DEFAULT 'data_workflow'
            CHECK (task_type IN ('data_workflow', 'complete_workflow')),
        status varchar(20) NOT NULL DEFAULT 'pending'
            CHECK (status IN ('pending', 'in_progress', 'partial_completed',
                              'completed', 'failed')),
        parameters jsonb NOT NULL,
        result jsonb,
        error_message text,
        created_at timestamp DEFAULT current_timestamp,
        started_at timestamp,
        completed_at timestamp,
        created_type varchar(50) DEFAULT 'api'
            CHECK (created_type IN ('api', 'manual', 'system')),
        by_user varchar(50),
        output_directory text,
        db_name varchar(100),
        directory_exists boolean DEFAULT true,
        updated_at timestamp
    )
    """
CREATE_STEPS = f"""
    CREATE TABLE IF NOT EXISTS {STEPS} (
        id serial PRIMARY KEY,
        task_id varchar(32) REFERENCES {TASKS}(task_id) ON DELETE CASCADE,
        execution_id varchar(100),
        step_name varchar(50) NOT NULL
            CHECK (step_name IN ('ddl_generation', 'qa_generation',
                                 'sql_validation', 'training_load')),
        step_status varchar(50) NOT NULL DEFAULT 'pending'
            CHECK (step_status IN ('pending', 'running', 'completed', 'failed')),
        started_at timestamp,
        completed_at timestamp,
        error_message text
    )
    """
# Background jobs. task_ids is fixed when the job starts; heartbeat_at is the
# lease, on the server's clock. results is where an earlier version kept each
# task's outcome: it is read when such a job is taken over, never written.
CREATE_JOBS = f"""
    CREATE TABLE IF NOT EXISTS {JOBS} (
        job_id text PRIMARY KEY,
        kind text NOT NULL CHECK (kind IN ('delete', 'cleanup')),
        status text NOT NULL DEFAULT 'queued'
            CHECK (status IN ('queued', 'running', 'succeeded', 'partial',
                              'failed', 'cancelled')),
        actor text NOT NULL,
        request_id text NOT NULL,
        client text,
        options jsonb NOT NULL,
        selection jsonb,
        task_ids jsonb,
        results jsonb NOT NULL DEFAULT '{{}}',
        progress jsonb NOT NULL DEFAULT '{{}}',
        cancel_requested boolean NOT NULL DEFAULT false,
        owner text,
        heartbeat_at timestamptz,
        created_at timestamp NOT NULL,
        started_at timestamp,
        finished_at timestamp,
        result jsonb
    )
    """
# The two columns that deletion needs; an older pipeline database lacks them.
ADDED_COLUMNS = {"directory_exists": "boolean DEFAULT true", "updated_at": "timestamp"}
# Each index: its table and what follows ``ON <table>`` (columns, INCLUDE, WHERE).
INDEXES = {
    "dp_tasks_created_at_idx": (TASKS, "(created_at DESC)"),
    "dp_task_steps_task_id_idx": (STEPS, "(task_id)"),
    # The list's and the clean-up's order, exactly: a DESC index is NULLS FIRST,
    # so ``created_at DESC`` alone cannot give ``DESC NULLS LAST``. The INCLUDEd
    # columns are what their filters test, so that counting the matching rows and
    # skipping to an offset read this index only (an index-only scan), never the table.
    "dp_tasks_list_order_idx": (
        TASKS,
        "(created_at DESC NULLS LAST, task_id DESC) INCLUDE (status, directory_exists, db_name)",
    ),
    # The few running steps: what the clean-up's selection leaves out.
    "dp_task_steps_running_idx": (STEPS, "(task_id) WHERE step_status = 'running'"),
    # Claiming looks up the queued and running jobs, oldest first.
    "dptask_jobs_claim_idx": (JOBS, "(status, created_at)"),
    "dptask_jobs_created_at_idx": (JOBS, "(created_at DESC)"),
}

# Each task's outcome in a job, a row a task, as it completes: {"started": true}
# while it runs, then {"ok": ..., "entry": ...}. A row, not a key of one jsonb
# value in the job's row: a value rewritten whole at every group made a job's
# writes grow with the square of its tasks. No foreign key: creating one would
# lock dptask_jobs, which running jobs update; expired jobs take their rows along.
CREATE_JOB_RESULTS = f"""
    CREATE TABLE IF NOT EXISTS {JOB_RESULTS} (
        job_id text NOT NULL,
        task_id text NOT NULL,
        outcome jsonb NOT NULL,
        PRIMARY KEY (job_id, task_id)
    )
    """

# Scheduled clean-ups (service.cleanup): each schedule's last run, shared by every instance.
SCHEDULES = "dptask_schedules"
CREATE_SCHEDULES = f"""
    CREATE TABLE IF NOT EXISTS {SCHEDULES} (
        name text PRIMARY KEY,
        last_run_at timestamptz,
        last_job_id text
    )
    """

# What is there: the relations (tables and indexes) and the task table's columns.
# Catalogue reads only: this takes no lock on any of the tables.
CATALOG_QUERY = """
    SELECT name, to_regclass(name) IS NOT NULL AS present,
           ARRAY(SELECT attname::text FROM pg_attribute
                 WHERE attrelid = to_regclass(name) AND attnum > 0 AND NOT attisdropped)
               AS columns
    FROM unnest(%s::text[]) AS n(name)
    """
CATALOG_NAMES = [TASKS, STEPS, JOBS, JOB_RESULTS, SCHEDULES, *INDEXES]

# pg_locks modes that conflict with each mode a change takes (the table in
# the PostgreSQL manual, "Conflicting Lock Modes").
_ALL = [
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
]
CONFLICTS = {
    "AccessExclusiveLock": _ALL,
    "ShareRowExclusiveLock": _ALL[2:],
    "ShareLock": [m for m in _ALL[2:] if m != "ShareLock"],
}

# Who holds a lock on ``table`` in one of the modes that would block us: the
# session the migration waits for, with what it is doing.
HOLDERS_QUERY = """
    SELECT l.pid, l.mode, a.state, a.query
    FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'relation' AND l.granted AND l.relation = to_regclass(%s)
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.pid IS DISTINCT FROM pg_backend_pid() AND l.mode = ANY(%s)
    ORDER BY a.xact_start NULLS FIRST
    LIMIT 1
    """

# Serialises schema set-up between service processes starting at once on one
# database; an arbitrary constant of this service.
SCHEMA_LOCK_KEY = 0x5441534B  # "TASK"
SCHEMA_LOCK_HOLDER_QUERY = """
    SELECT l.pid, l.mode, a.state, a.query
    FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = %s
      AND l.objsubid = 1 AND l.pid IS DISTINCT FROM pg_backend_pid()
    LIMIT 1
    """


@dataclass(frozen=True)
class Change:
    """One missing piece: its DDL, and the existing table it locks (None: it
    creates a table and conflicts with nobody)."""

    what: str
    sql: str
    table: str | None = None
    mode: str = "AccessExclusiveLock"


def missing_changes(catalog: dict[str, tuple[bool, list[str]]]) -> list[Change]:
    """What is missing, in the order it must be made, from CATALOG_QUERY's rows
    (name -> (present, columns))."""
    present = {name for name, (exists, _) in catalog.items() if exists}
    changes = []
    if TASKS not in present:
        changes.append(Change(f"table {TASKS}", CREATE_TASKS))
    else:
        lacking = [c for c in ADDED_COLUMNS if c not in catalog[TASKS][1]]
        if lacking:
            adds = ", ".join(f"ADD COLUMN IF NOT EXISTS {c} {ADDED_COLUMNS[c]}" for c in lacking)
            changes.append(
                Change(f"columns {', '.join(lacking)}", f"ALTER TABLE {TASKS} {adds}", TASKS)
            )
    if STEPS not in present:
        # The foreign key takes SHARE ROW EXCLUSIVE on the (maybe existing) task table.
        table = TASKS if TASKS in present else None
        changes.append(Change(f"table {STEPS}", CREATE_STEPS, table, "ShareRowExclusiveLock"))
    # The service's own tables: nobody else's lock stands in their way.
    own = ((JOBS, CREATE_JOBS), (JOB_RESULTS, CREATE_JOB_RESULTS), (SCHEDULES, CREATE_SCHEDULES))
    for table, create in own:
        if table not in present:
            changes.append(Change(f"table {table}", create))
    for index, (table, definition) in INDEXES.items():
        if index not in present:
            sql = f"CREATE INDEX IF NOT EXISTS {index} ON {table} {definition}"
            # A table created in this start-up is empty and nobody else's yet.
            locks = table if table in present else None
            changes.append(Change(f"index {index}", sql, locks, "ShareLock"))
    return changes


TASK_STATUSES = ("pending", "in_progress", "partial_completed", "completed", "failed")
