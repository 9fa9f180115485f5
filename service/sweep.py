"""The sweep of the trash a crash left behind (``docs/design.md``, "The
start-up sweep"), in two halves.

``put_back``, before the service listens: a tree whose record says its
directory exists was detached but never committed (or restored and committed
but not yet renamed into place): it goes into place. That is one rename per
tree, O(1) however large, so start-up never waits on a tree's size.

``purge_committed``, in the background once the service listens: any other
tree was committed as deleted (or has no record) and is removed. Each tree is
judged again under its task's lock when its turn comes, so a tree that
another service process is deleting right now is left alone.

``sweep_trash`` does both in turn (``reconcile --fix``). What the trash holds
and how a tree is put back or purged is ``service.trash``'s; this module only
decides when.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog

from service.db import Database
from service.pipeline import id_problem
from service.settings import Settings
from service.trash import Entry, Trash, settle

log = structlog.get_logger("service")


@dataclass
class SweepReport:
    restored: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)  # locked elsewhere, in conflict, or stuck
    committed: list[Entry] = field(default_factory=list)  # to purge, once serving

    def log(self, event: str) -> None:
        if self.restored or self.purged or self.left:
            log.info(event, restored=self.restored, purged=self.purged, left=self.left)


async def put_back(trash: Trash, settings: Settings, db: Database) -> SweepReport:
    """Put every uncommitted tree into place; list the committed ones."""
    report = SweepReport()
    for entry in await asyncio.to_thread(trash.entries, tidy=True):
        if id_problem(entry.task_id, settings):  # never lock on, or put back, a non-id
            log.error("trash_entry_not_a_task", trash=str(entry.label))
            report.left.append(entry.label.name)
            continue
        try:
            outcome = await settle(trash, db, entry, purge=False)
        except OSError as e:
            log.error("trash_put_back_failed", trash=str(entry.label), error=str(e))
            outcome = "left"
        if outcome == "restored":
            report.restored.append(entry.task_id)
        elif outcome == "committed":
            report.committed.append(entry)
        else:
            report.left.append(entry.task_id)
    return report


async def purge_committed(trash: Trash, db: Database, entries: list[Entry]) -> SweepReport:
    """Purge committed trees, one at a time, each judged again under its lock."""
    report = SweepReport()
    for entry in entries:
        try:
            outcome = await settle(trash, db, entry, purge=True)
        except OSError as e:
            log.error("trash_purge_failed", trash=str(entry.label), error=str(e))
            outcome = "left"
        if outcome == "restored":
            report.restored.append(entry.task_id)
        elif outcome == "purged":
            report.purged.append(entry.task_id)
        else:
            report.left.append(entry.task_id)
    return report


async def sweep_trash(trash: Trash, settings: Settings, db: Database) -> SweepReport:
    """Both halves, in turn."""
    report = await put_back(trash, settings, db)
    purged = await purge_committed(trash, db, report.committed)
    report.restored += purged.restored
    report.purged = purged.purged
    report.left += purged.left
    report.committed = []
    report.log("trash_swept")
    return report


async def sweep_in_background(trash: Trash, db: Database, entries: list[Entry]) -> None:
    """``purge_committed`` as a background task: its failure is logged."""
    try:
        report = await purge_committed(trash, db, entries)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("trash_sweep_failed")
        return
    report.log("trash_swept")
