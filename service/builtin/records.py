"""Built-in record update: keep the rows and mark the directory gone, or delete them."""

from __future__ import annotations

from service.hookspecs import hookimpl
from service.pipeline import TaskContext


@hookimpl
async def dptask_update_records(task: TaskContext) -> bool:
    tx = task.transaction
    assert tx is not None  # real runs only: a dry run never reaches this hook
    if task.options.delete_database_records:
        return await tx.delete_records()
    await tx.set_directory_exists(False, task.now)
    return False
