"""Server-side clean-up selection.

PLACEHOLDER of the jobs branch: the clean-up engineer's module replaces this
file at merge. Only ``select_task_ids`` exists here, with the minimal
criteria the job runner needs to run a ``cleanup`` job.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from service.db import Database


async def select_task_ids(
    db: Database, selection: dict[str, Any], max_tasks: int
) -> tuple[list[str], bool]:
    """The matching tasks' ids, oldest first, at most ``max_tasks``; and whether more match."""
    if "older_than_days" in selection:
        cut = datetime.now() - timedelta(days=float(selection["older_than_days"]))
    else:
        cut = datetime.fromisoformat(selection["created_before"])
    statuses = list(selection.get("statuses", ["completed", "failed"]))
    rows = await db.query(
        "SELECT task_id FROM data_pipeline_tasks t"
        " WHERE created_at < %s AND status = ANY(%s) AND status <> 'in_progress'"
        " AND NOT EXISTS (SELECT 1 FROM data_pipeline_task_steps s"
        "   WHERE s.task_id = t.task_id AND s.step_status = 'running')"
        " ORDER BY created_at, task_id LIMIT %s",
        (cut, statuses, max_tasks + 1),
    )
    ids = [r["task_id"] for r in rows]
    return ids[:max_tasks], len(ids) > max_tasks
