"""``python run.py reconcile [--fix [--force]]``: where the disk and the records disagree.

Reports records that say a directory exists when it does not (and the
reverse), directories under ``base_dir`` that no record names, and trash left
behind. ``--fix`` sets each record's ``directory_exists`` to the truth (under
the task's lock, checking the disk again there) and sweeps the trash. Nothing
is ever deleted but trash: an unrecorded directory is only reported.

A missing base is not the truth. ``--fix`` refuses, unless ``--force``, when
``base_dir`` is missing, is empty while records say their directories exist
(an unmounted share: the empty mount point), or is on another file system than
at the last fix. That file system is remembered per host in
``var/reconcile-base.json`` (not in the database: device numbers and file
system ids are one host's view, and several hosts may share the database).
"Same file system" means the same ``statvfs`` fsid (stable across reboots for
ext4, xfs, btrfs), or the same ``st_dev`` when a file system has no fsid.

Which records are judged. The service deletes and restores only
``<base_dir>/<task_id>``. A record whose ``output_directory`` is set and names
another place (compared as normalised text, never resolved: it is data, and
reconcile never follows data out of ``base_dir``) is reported as "elsewhere"
and left alone: what is or is not at that place says nothing about the
directory the service manages. A task id that could not name a directory
(``tasks.id_pattern``) is reported and left alone too.

Every look at ``base_dir`` goes through the trash's held descriptor of it.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from service.db import Database, TaskLocked
from service.pipeline import id_problem
from service.settings import Settings
from service.sweep import sweep_trash
from service.trash import Trash

IDENTITY_FILE = "reconcile-base.json"


class BaseDirSuspect(Exception):
    """``--fix`` refused: ``base_dir`` does not look like the one the records
    describe. The message is one line."""


@dataclass
class Reconciliation:
    missing_directories: list[str] = field(default_factory=list)  # recorded, not on disk
    unflagged_directories: list[str] = field(default_factory=list)  # on disk, recorded as gone
    unrecorded_directories: list[str] = field(default_factory=list)  # on disk, no record
    trash: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)  # output_directory not <base>/<id>
    invalid_ids: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        return not (
            self.missing_directories
            or self.unflagged_directories
            or self.unrecorded_directories
            or self.trash
            or self.warnings
        )

    def lines(self) -> list[str]:
        sections = [
            ("records whose directory is missing", self.missing_directories),
            ("directories recorded as deleted", self.unflagged_directories),
            ("directories with no record (left alone)", self.unrecorded_directories),
            ("trash left behind", self.trash),
            ("records whose output_directory is elsewhere (left alone)", self.elsewhere),
            ("records whose task_id names no directory (left alone)", self.invalid_ids),
            ("fixed", self.fixed),
            ("locked by a deletion in progress, not fixed", self.locked),
        ]
        out = [f"{title}: {len(ids)}" + "".join(f"\n  {i}" for i in ids) for title, ids in sections]
        warnings = [f"warning: {w}" for w in self.warnings]
        return [*warnings, *out, "consistent" if self.consistent else "inconsistent"]


# ---------------------------------------------------------------- is base_dir the right one?


def base_identity(base_dir: Path) -> dict[str, int]:
    st, vfs = os.stat(base_dir), os.statvfs(base_dir)
    return {"st_dev": st.st_dev, "fsid": vfs.f_fsid}


def _same_file_system(a: dict[str, int], b: dict[str, int]) -> bool:
    if a.get("fsid") and b.get("fsid"):
        return a["fsid"] == b["fsid"]
    return a.get("st_dev") == b.get("st_dev")


def _identities(settings: Settings) -> dict[str, Any]:
    try:
        return json.loads((settings.var_dir / IDENTITY_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}


def remember_base(settings: Settings) -> None:
    """Remember ``base_dir``'s file system for the next fix (atomically)."""
    known = _identities(settings)
    known[str(settings.base_dir)] = base_identity(settings.base_dir)
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    tmp = settings.var_dir / f".{IDENTITY_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, settings.var_dir / IDENTITY_FILE)


def base_problem(settings: Settings, recorded: int, on_disk: set[str]) -> str | None:
    """Why ``base_dir`` must not be trusted to say which directories exist:
    ``recorded`` records say theirs exists, ``on_disk`` is what it holds."""
    base = settings.base_dir
    if not base.is_dir():
        return f"任务根目录 {base} 不存在（未挂载？），拒绝修正记录"
    if recorded and not on_disk:
        return f"任务根目录 {base} 是空的，而 {recorded} 条记录说目录存在（未挂载？），拒绝修正记录"
    last = _identities(settings).get(str(base))
    now = base_identity(base)
    if last and not _same_file_system(last, now):
        return (
            f"任务根目录 {base} 所在的文件系统与上次修正时不同"
            f"（设备 {now['st_dev']}，上次 {last.get('st_dev')}），拒绝修正记录"
        )
    return None


# ---------------------------------------------------------------- the survey


@dataclass
class _Records:
    judged: dict[str, bool]  # task_id -> directory_exists
    elsewhere: list[str]
    invalid_ids: list[str]


def _sort_records(settings: Settings, rows: list[dict[str, Any]]) -> _Records:
    base = os.path.normpath(settings.base_dir)
    real_base = os.path.realpath(settings.base_dir)
    records = _Records({}, [], [])
    for row in rows:
        task_id, out = row["task_id"], row["output_directory"]
        if id_problem(task_id, settings):
            records.invalid_ids.append(task_id)
        elif out and os.path.normpath(out) not in (
            os.path.join(base, task_id),
            os.path.join(real_base, task_id),
        ):
            records.elsewhere.append(task_id)
        else:
            records.judged[task_id] = row["directory_exists"]
    records.elsewhere.sort()
    records.invalid_ids.sort()
    return records


def _task_names(settings: Settings, trash: Trash | None) -> set[str]:
    """Names under ``base_dir`` that could be tasks: not hidden, not protected.
    Through the trash's descriptor; by path only for a report on a base whose
    trash is not opened (a suspect base gets no ``.trash`` created in it)."""
    if trash is not None:
        names = trash.base_names()
    elif settings.base_dir.is_dir():
        names = os.listdir(settings.base_dir)
    else:
        names = []
    return {n for n in names if not n.startswith(".") and n not in settings.protected}


async def survey(settings: Settings, db: Database, trash: Trash | None) -> Reconciliation:
    """Where records and disk disagree now; changes nothing."""
    records = _sort_records(settings, await db.directory_records())
    flags = records.judged
    on_disk = await asyncio.to_thread(_task_names, settings, trash)
    entries = await asyncio.to_thread(trash.entries) if trash else []
    return Reconciliation(
        missing_directories=sorted(t for t, e in flags.items() if e and t not in on_disk),
        unflagged_directories=sorted(t for t, e in flags.items() if not e and t in on_disk),
        unrecorded_directories=sorted(on_disk - flags.keys() - set(records.elsewhere)),
        trash=[str(e.label.relative_to(settings.base_dir)) for e in entries],
        elsewhere=records.elsewhere,
        invalid_ids=records.invalid_ids,
    )


async def reconcile(
    settings: Settings, db: Database, *, fix: bool, force: bool = False
) -> Reconciliation:
    """Raises ``BaseDirSuspect`` (``--fix`` without ``--force`` on a suspect
    base) or ``TrashUnsafe``, each with its one line."""
    records = _sort_records(settings, await db.directory_records())
    recorded = sum(records.judged.values())
    on_disk = await asyncio.to_thread(_task_names, settings, None)
    problem = await asyncio.to_thread(base_problem, settings, recorded, on_disk)
    if problem and fix and not force:
        raise BaseDirSuspect(f"{problem}；确认无误请加 --force")
    trash: Trash | None = None
    if (not problem or fix) and await asyncio.to_thread(settings.base_dir.is_dir):
        trash = Trash(settings.base_dir)
        await asyncio.to_thread(trash.open)  # TrashUnsafe: refused, with its line
    try:
        if not fix:
            result = await survey(settings, db, trash)
        else:
            result = await _fix(settings, db, trash)
            if trash is not None:
                await asyncio.to_thread(remember_base, settings)
        result.warnings = [problem] if problem else []
        return result
    finally:
        if trash is not None:
            trash.close()


async def _fix(settings: Settings, db: Database, trash: Trash | None) -> Reconciliation:
    # The trash first: a tree whose deletion was never committed goes back
    # before any record is judged by what is on disk.
    swept = await sweep_trash(trash, settings, db) if trash else None
    found = await survey(settings, db, trash)
    in_trash = {e.task_id for e in await asyncio.to_thread(trash.entries)} if trash else set()
    fixed, locked = [], list(swept.left if swept else [])
    for task_id in found.missing_directories + found.unflagged_directories:
        if task_id not in in_trash and await _fix_flag(db, trash, task_id):  # else in flight
            fixed.append(task_id)
        else:
            locked.append(task_id)
    result = await survey(settings, db, trash)
    if swept:
        fixed += [f"trash: {t} restored" for t in swept.restored]
        fixed += [f"trash: {t} purged" for t in swept.purged]
    result.fixed, result.locked = fixed, locked
    return result


async def _fix_flag(db: Database, trash: Trash | None, task_id: str) -> bool:
    try:
        async with db.task_transaction(task_id) as tx:
            exists = trash is not None and await asyncio.to_thread(trash.exists, task_id)
            await tx.set_directory_exists(exists, datetime.now())
        return True
    except TaskLocked:
        return False
