"""Built-in directory removal: detach into the service's trash, then purge in
threads. An object holding the application's ``Trash`` (registered as
``builtin.directory``): the trash's layout and safety are ``service.trash``'s.

The detach's failures are ``TaskFailed`` with codes that name the cause
(``PERMISSION_DENIED``, ``DIRECTORY_BUSY``, ``NO_SPACE``, ``RESOURCE_EXHAUSTED``,
``TRASH_UNSAFE``, ``DETACH_FAILED``), never a generic plugin error.
"""

from __future__ import annotations

import functools
from pathlib import Path

from service import fs
from service.coalesce import Coalesced
from service.hookspecs import hookimpl
from service.pipeline import TaskContext
from service.trash import Trash


class DirectoryRemoval:
    def __init__(self, trash: Trash) -> None:
        self.trash = trash
        # The pipeline makes the renames durable before the COMMIT, once for
        # all the tasks it commits together; their renames share a thread hop.
        self._detach = Coalesced(functools.partial(trash.detach, sync=False))
        # A group's purges, one request to the purge helper (service/purger.py),
        # which walks them one after the other: side by side they only queue on
        # the trash directory's lock (measured: four threads were slower than
        # one, for one-file trees and 500-file trees alike); each walk still
        # shares out a big tree's files to the helper's purge pool.
        self._purge = Coalesced(trash.purge, many=trash.purge_many)

    @hookimpl
    async def dptask_detach_directory(self, task: TaskContext) -> Path:
        return await self._detach(task.task_id)

    @hookimpl
    async def dptask_purge_directory(self, task: TaskContext, path: Path) -> fs.TreeStats | None:
        if not self.trash.owns(path):
            return None  # detached elsewhere by a plugin: that plugin purges it
        return await self._purge(path, task.batch.progress)
