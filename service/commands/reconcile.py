"""``python run.py reconcile [--fix [--force]]``: the command around
``service.reconcile`` (which says what is judged and why); exit 1 when the
disk and the records disagree."""

from __future__ import annotations

from service.app import open_database
from service.commands.fail import fail
from service.reconcile import BaseDirSuspect, reconcile
from service.settings import Settings
from service.trash import TrashUnsafe


async def run(settings: Settings, fix: bool, force: bool) -> int:
    try:
        async with open_database(settings) as db:
            found = await reconcile(settings, db, fix=fix, force=force)
    except (TrashUnsafe, BaseDirSuspect) as e:
        return fail(str(e))
    print("\n".join(found.lines()))
    return 0 if found.consistent else 1
