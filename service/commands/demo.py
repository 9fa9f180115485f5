"""``python run.py demo``: sample tasks to try the API on at once: records,
steps, and directories of realistic pipeline output under ``base_dir``."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import datetime, timedelta
from pathlib import Path

from service.db import Database
from service.settings import Settings

_TABLES = ("orders", "customers", "products", "payments", "shipments", "reviews")
_STEPS = ("ddl_generation", "qa_generation", "sql_validation", "training_load")
# (status, step states) pairs that a pipeline really produces.
_STATES = (
    ("completed", ("completed",) * 4),
    ("completed", ("completed",) * 4),
    ("failed", ("completed", "failed", "pending", "pending")),
    ("partial_completed", ("completed", "completed", "failed", "pending")),
    ("pending", ("pending",) * 4),
    ("in_progress", ("completed", "running", "pending", "pending")),
)


def _write_task_dir(path: Path, task_id: str, rng: random.Random) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "task_config.json").write_text(json.dumps({"task_id": task_id, "db_name": "demo"}))
    log_lines = (f"{i:05d} INFO step progress for {task_id}\n" for i in range(rng.randint(50, 400)))
    (path / "data_pipeline.log").write_text("".join(log_lines))
    for table in rng.sample(_TABLES, rng.randint(2, len(_TABLES))):
        (path / f"{table}.ddl").write_text(f"CREATE TABLE {table} (id bigint primary key);\n")
        (path / f"{table}_detail.md").write_text(
            f"# {table}\n\n" + "column notes\n" * rng.randint(5, 60)
        )
    pairs = [{"question": f"q{i}", "sql": f"SELECT {i}"} for i in range(rng.randint(10, 200))]
    (path / f"qs_demo_{task_id[-6:]}_pair.json").write_text(json.dumps(pairs))
    (path / "sql_validation_result.json").write_text(json.dumps({"valid": len(pairs)}))
    vector_bak = path / "vector_bak"
    vector_bak.mkdir(exist_ok=True)
    (vector_bak / "langchain_pg_embedding.csv").write_bytes(
        rng.randbytes(rng.randint(1_000, 200_000))
    )
    backup = path / f"file_bak_{task_id[-15:]}"
    backup.mkdir(exist_ok=True)
    (backup / "qs_old_pair.json").write_text(json.dumps(pairs[:5]))


async def create_demo_tasks(settings: Settings, db: Database, count: int) -> list[str]:
    rng = random.Random()
    now = datetime.now().replace(microsecond=0)
    global_bak = settings.base_dir / "vector_bak"  # the protected, non-task folder
    await asyncio.to_thread(global_bak.mkdir, parents=True, exist_ok=True)
    task_ids: list[str] = []
    for i in range(count):
        created = now - timedelta(days=rng.uniform(0, 60), seconds=i)
        task_id = f"task_{created:%Y%m%d_%H%M%S}"
        while task_id in task_ids:  # two draws in the same second: the next free one
            created -= timedelta(seconds=1)
            task_id = f"task_{created:%Y%m%d_%H%M%S}"
        status, steps = _STATES[i % len(_STATES)]
        await db.execute(
            "INSERT INTO data_pipeline_tasks (task_id, task_name, task_type, status, parameters,"
            " created_at, started_at, completed_at, created_type, by_user, output_directory,"
            " db_name, directory_exists, updated_at)"
            " VALUES (%s, %s, 'data_workflow', %s, %s, %s, %s, %s, 'api', 'demo', %s, 'demo',"
            " true, %s) ON CONFLICT (task_id) DO NOTHING",
            (
                task_id,
                f"Demo task {i + 1}",
                status,
                json.dumps({"db_connection": "postgresql://demo", "table_list_file": "tables.txt"}),
                created,
                None if status == "pending" else created + timedelta(seconds=5),
                created + timedelta(minutes=12) if status in ("completed", "failed") else None,
                str(settings.base_dir / task_id),
                created,
            ),
        )
        for step, state in zip(_STEPS, steps, strict=True):
            await db.execute(
                "INSERT INTO data_pipeline_task_steps"
                " (task_id, execution_id, step_name, step_status) VALUES (%s, %s, %s, %s)",
                (task_id, f"{task_id}_exec", step, state),
            )
        await asyncio.to_thread(_write_task_dir, settings.base_dir / task_id, task_id, rng)
        task_ids.append(task_id)
    return task_ids


async def run(settings: Settings, count: int) -> int:
    """The command: create ``count`` demo tasks and list them."""
    from service.app import open_database

    async with open_database(settings) as db:
        task_ids = await create_demo_tasks(settings, db, count)
    print(f"created {len(task_ids)} demo tasks under {settings.base_dir}:")
    for task_id in task_ids:
        print(f"  {task_id}")
    return 0
