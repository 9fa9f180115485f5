"""Built-in directory removal: detach into the trash, then purge in threads."""

from __future__ import annotations

import asyncio
from pathlib import Path

from service import fs
from service.hookspecs import hookimpl
from service.pipeline import TaskContext


@hookimpl
async def dptask_detach_directory(task: TaskContext) -> Path:
    return await asyncio.to_thread(fs.detach, task.path, task.settings.trash_dir)


@hookimpl
async def dptask_purge_directory(task: TaskContext, path: Path) -> fs.TreeStats:
    return await asyncio.to_thread(fs.purge, path)
