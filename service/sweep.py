"""The start-up sweep of the trash a crash left behind (DESIGN.md §3).

A detached tree whose record still says its directory exists was detached but
never committed: it goes back. Any other tree was committed as deleted (or has
no record): it is purged. Each tree is handled under its task's advisory lock,
so a tree that another service process is deleting right now is left alone.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from service import fs
from service.db import Database, TaskLocked
from service.settings import Settings

log = structlog.get_logger("service")


@dataclass
class SweepReport:
    restored: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)  # locked elsewhere, or in conflict


def trash_entries(trash_dir: Path, *, tidy: bool = False) -> list[Path]:
    """Detached trees (``<trash>/<token>/<task_id>``). With ``tidy``, empty
    token directories (a crash between creating one and the rename) go."""
    entries = []
    if not trash_dir.is_dir():
        return entries
    for holder in sorted(trash_dir.iterdir()):
        if not holder.is_dir() or holder.is_symlink():
            continue
        inner = sorted(holder.iterdir())
        if not inner and tidy:
            os.rmdir(holder)
        entries.extend(inner)
    return entries


async def sweep_trash(settings: Settings, db: Database) -> SweepReport:
    report = SweepReport()
    for detached in await asyncio.to_thread(trash_entries, settings.trash_dir, tidy=True):
        task_id, path = detached.name, settings.base_dir / detached.name
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
        except TaskLocked:
            report.left.append(task_id)
            continue
        # Committed as deleted: nobody reads this tree again, the lock is not needed.
        stats = await asyncio.to_thread(fs.purge, detached)
        (report.left if stats.error_count else report.purged).append(task_id)
    if report.restored or report.purged or report.left:
        log.info("trash_swept", restored=report.restored, purged=report.purged, left=report.left)
    return report
