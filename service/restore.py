"""Restoring a task's tree: a deletion in reverse, as a service operation.

A plugin that keeps copies of deleted trees (``plugins/archive.py``) supplies
only their content: ``fill(root_fd)`` writes the tree below the descriptor of
an empty directory. The service does the rest, in the order that keeps the
record and the disk in agreement across a crash:

  1. lock the task (the advisory lock a deletion takes);
  2. refuse when the task's directory exists;
  3. create an empty entry in the trash (``Trash.create``) and let ``fill``
     write into it, in a worker thread, through the entry's descriptor: the
     trash is the service's own (0700, reached through descriptors), so
     nobody who can write ``base_dir`` can rename the tree being written or
     plant a link in it; and it is on ``base_dir``'s file system, so going
     into place is one rename;
  4. commit ``directory_exists = true``;
  5. rename the tree into place.

A crash before 4 leaves a tree the sweep removes (its record says it is
gone); after it, one the sweep renames into place. A failing ``fill`` leaves
nothing behind. Every refusal raises ``RestoreFailed`` saying what happened,
and only what happened.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from service.db import Database, DatabaseError
from service.pipeline import id_problem
from service.settings import Settings
from service.trash import Trash

# Writes the task's tree below the directory descriptor it is given; runs in a worker thread.
Fill = Callable[[int], None]


class RestoreFailed(Exception):
    """A restore was refused or failed; the message is one line for the operator."""


async def restore_tree(
    settings: Settings, task_id: str, fill: Fill, *, db: Database | None = None
) -> str:
    """Put task ``task_id``'s tree back under ``base_dir``, written by ``fill``,
    and record that its directory exists; return a line saying what was done.
    Without ``db`` (an operator command) the configured database is opened for
    it. Raises ``RestoreFailed`` (or ``TrashUnsafe``, ``DatabaseError``, or
    whatever ``fill`` raised)."""
    if problem := id_problem(task_id, settings):
        raise RestoreFailed(f"任务ID {task_id!r} 无效: {problem}")
    if db is None:
        from service.app import open_database  # the request path never gets here

        async with open_database(settings) as opened:
            return await restore_tree(settings, task_id, fill, db=opened)
    trash = Trash(settings.base_dir)
    await asyncio.to_thread(trash.open)
    try:
        return await _restore(trash, settings, db, task_id, fill)
    finally:
        trash.close()


async def _restore(trash: Trash, settings: Settings, db: Database, task_id: str, fill: Fill) -> str:
    target = settings.base_dir / task_id
    filled: Path | None = None
    try:
        async with db.task_transaction(task_id) as tx:
            if await asyncio.to_thread(trash.exists, task_id):
                raise RestoreFailed(f"{target} 已存在，拒绝覆盖")
            filled = await asyncio.to_thread(_create_filled, trash, task_id, fill)
            found = await tx.set_directory_exists(True, datetime.now())
    except DatabaseError as e:
        if filled is None:
            raise
        # Committed or not, the record decides: the sweep puts the tree into
        # place if it says the directory exists, and removes it if not.
        raise RestoreFailed(
            f"数据库操作失败，归档内容留在回收区 {filled.name}，由重启时的清理按记录处理"
        ) from e
    try:
        await asyncio.to_thread(trash.reattach, filled, task_id)
    except FileNotFoundError:
        # Another process's sweep took the lock after our commit and put it
        # into place: restored all the same.
        if not await asyncio.to_thread(trash.exists, task_id):
            raise
    except FileExistsError as e:
        raise RestoreFailed(
            f"{target} 已存在，拒绝覆盖；记录已标为目录存在，归档内容留在回收区 {filled.name}"
        ) from e
    except OSError as e:
        raise RestoreFailed(
            f"无法放入 {target}（{e.strerror or e}）；记录已标为目录存在，"
            f"归档内容留在回收区 {filled.name}，由重启时的清理放回"
        ) from e
    return f"restored {task_id} to {target}" + ("" if found else " (no record for this task)")


def _create_filled(trash: Trash, task_id: str, fill: Fill) -> Path:
    """A new trash entry for ``task_id``, filled; on any failure nothing is left."""
    label, root_fd = trash.create(task_id)
    try:
        fill(root_fd)
        return label
    except BaseException:
        trash.purge(label)
        raise
    finally:
        os.close(root_fd)
