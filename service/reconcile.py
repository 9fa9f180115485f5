"""``python run.py reconcile [--fix]``: where the disk and the records disagree.

Reports records that say a directory exists when it does not (and the
reverse), directories under ``base_dir`` that no record names, and trash left
behind. ``--fix`` sets each record's ``directory_exists`` to the truth (under
the task's lock, checking the disk again there) and sweeps the trash. Nothing
is ever deleted but trash: an unrecorded directory is only reported.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from service.db import Database, TaskLocked
from service.settings import Settings
from service.sweep import sweep_trash
from service.trash import Trash


@dataclass
class Reconciliation:
    missing_directories: list[str] = field(default_factory=list)  # recorded, not on disk
    unflagged_directories: list[str] = field(default_factory=list)  # on disk, recorded as gone
    unrecorded_directories: list[str] = field(default_factory=list)  # on disk, no record
    trash: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not (
            self.missing_directories
            or self.unflagged_directories
            or self.unrecorded_directories
            or self.trash
        )

    def lines(self) -> list[str]:
        sections = [
            ("records whose directory is missing", self.missing_directories),
            ("directories recorded as deleted", self.unflagged_directories),
            ("directories with no record (left alone)", self.unrecorded_directories),
            ("trash left behind", self.trash),
            ("fixed", self.fixed),
            ("locked by a deletion in progress, not fixed", self.locked),
        ]
        out = [f"{title}: {len(ids)}" + "".join(f"\n  {i}" for i in ids) for title, ids in sections]
        return [*out, "consistent" if self.consistent else "inconsistent"]


def task_directories(settings: Settings) -> set[str]:
    """Names under ``base_dir`` that could be tasks: not hidden, not protected."""
    if not settings.base_dir.is_dir():
        return set()
    return {
        entry.name
        for entry in os.scandir(settings.base_dir)
        if not entry.name.startswith(".") and entry.name not in settings.protected
    }


async def survey(settings: Settings, db: Database, trash: Trash) -> Reconciliation:
    """Where records and disk disagree now; changes nothing."""
    flags = await db.directory_flags()
    on_disk = await asyncio.to_thread(task_directories, settings)
    entries = await asyncio.to_thread(trash.entries)
    return Reconciliation(
        missing_directories=sorted(t for t, e in flags.items() if e and t not in on_disk),
        unflagged_directories=sorted(t for t, e in flags.items() if not e and t in on_disk),
        unrecorded_directories=sorted(on_disk - flags.keys()),
        trash=[str(e.label.relative_to(settings.base_dir)) for e in entries],
    )


async def reconcile(settings: Settings, db: Database, *, fix: bool) -> Reconciliation:
    trash = Trash(settings.base_dir)
    await asyncio.to_thread(trash.open)  # TrashUnsafe: refused, with its line
    try:
        return await _reconcile(settings, db, trash, fix=fix)
    finally:
        trash.close()


async def _reconcile(
    settings: Settings, db: Database, trash: Trash, *, fix: bool
) -> Reconciliation:
    if not fix:
        return await survey(settings, db, trash)
    # The trash first: a tree whose deletion was never committed goes back
    # before any record is judged by what is on disk.
    swept = await sweep_trash(trash, settings, db)
    found = await survey(settings, db, trash)
    in_trash = {e.task_id for e in await asyncio.to_thread(trash.entries)}  # in flight elsewhere
    fixed, locked = [], list(swept.left)
    for task_id in found.missing_directories + found.unflagged_directories:
        if task_id not in in_trash and await _fix_flag(settings, db, task_id):
            fixed.append(task_id)
        else:
            locked.append(task_id)
    result = await survey(settings, db, trash)
    result.fixed = [*fixed, *(f"trash: {t} restored" for t in swept.restored)]
    result.fixed += [f"trash: {t} purged" for t in swept.purged]
    result.locked = locked
    return result


async def _fix_flag(settings: Settings, db: Database, task_id: str) -> bool:
    try:
        async with db.task_transaction(task_id) as tx:
            path: Path = settings.base_dir / task_id
            exists = await asyncio.to_thread(os.path.lexists, path)
            await tx.set_directory_exists(exists, datetime.now())
        return True
    except TaskLocked:
        return False
