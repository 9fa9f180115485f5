"""The start-up sweep of the trash a crash left behind (DESIGN.md §3).

A detached tree whose record still says its directory exists was detached but
never committed: it goes back. Any other tree was committed as deleted (or has
no record): it is purged. Each tree is handled under its task's advisory lock,
so a tree that another service process is deleting right now is left alone.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from service import fs
from service.db import Database, TaskLocked
from service.pipeline import id_problem
from service.settings import Settings

log = structlog.get_logger("service")


@dataclass
class SweepReport:
    restored: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)  # locked elsewhere, or in conflict


# A token directory younger than this may be another process's, about to
# receive its tree: it is not tidied away.
_YOUNG_SECONDS = 60
RESTORE_PREFIX = ".restore-"


def trash_entries(trash_dir: Path, *, tidy: bool = False) -> list[Path]:
    """Detached trees (``<trash>/<token>/<task_id>``). With ``tidy``, empty
    token directories left by a crash (between creating one and the rename)
    go, once they are old enough not to be another process's."""
    return _held(trash_dir, lambda name: True, tidy)


def restore_leftovers(base_dir: Path) -> list[Path]:
    """Trees of interrupted restores (``<base>/.restore-<token>/<task_id>``)."""
    return _held(base_dir, lambda name: name.startswith(RESTORE_PREFIX), tidy=True)


def _held(parent: Path, is_holder: Callable[[str], bool], tidy: bool) -> list[Path]:
    entries: list[Path] = []
    if not parent.is_dir():
        return entries
    for holder in sorted(parent.iterdir()):
        try:
            if not is_holder(holder.name) or holder.is_symlink() or not holder.is_dir():
                continue
            inner = sorted(holder.iterdir())
            if not inner and tidy and time.time() - holder.stat().st_mtime > _YOUNG_SECONDS:
                os.rmdir(holder)
            entries.extend(inner)
        except FileNotFoundError:
            continue  # another process's sweep or purge took it meanwhile
    return entries


async def sweep_trash(settings: Settings, db: Database) -> SweepReport:
    report = SweepReport()
    for detached in await asyncio.to_thread(trash_entries, settings.trash_dir, tidy=True):
        task_id, path = detached.name, settings.base_dir / detached.name
        if id_problem(task_id, settings):  # never put back or lock on a name no id has
            log.error("trash_entry_not_a_task", trash=str(detached))
            report.left.append(task_id)
            continue
        try:
            async with db.task_transaction(task_id) as tx:
                committed = tx.record is None or tx.record["directory_exists"] is False
                if not committed:
                    if await asyncio.to_thread(os.path.lexists, path):
                        log.error("trash_conflict", task_id=task_id, trash=str(detached))
                        report.left.append(task_id)
                        continue
                    await asyncio.to_thread(fs.reattach, detached, path)
                    report.restored.append(task_id)
                    continue
            # Committed as deleted: nobody reads this tree again, the lock is not needed.
            stats = await asyncio.to_thread(fs.purge, detached)
        except (TaskLocked, OSError):
            report.left.append(task_id)
            continue
        (report.left if stats.error_count else report.purged).append(task_id)
    for extracted in await asyncio.to_thread(restore_leftovers, settings.base_dir):
        # A restore holds its task's lock from extraction to commit, then
        # renames into place: with the lock free, the restore is gone. Its
        # tree goes into place if the record says so, and is removed if not.
        task_id, path = extracted.name, settings.base_dir / extracted.name
        if id_problem(task_id, settings):
            continue
        try:
            async with db.task_transaction(task_id) as tx:
                committed = tx.record is not None and tx.record["directory_exists"] is True
                if committed and not await asyncio.to_thread(os.path.lexists, path):
                    await asyncio.to_thread(fs.reattach, extracted, path)
                else:
                    await asyncio.to_thread(fs.purge, extracted)
        except (TaskLocked, OSError):
            continue
    if report.restored or report.purged or report.left:
        log.info("trash_swept", restored=report.restored, purged=report.purged, left=report.left)
    return report
