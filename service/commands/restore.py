"""``python run.py restore ARCHIVE``: the archive plugin's command. The core
does not know its plugins: the plugin is found by its enabled name through
the plugin manager, and does its part (reading its archive format) inside
the service's ``restore_tree`` (``service/restore.py``)."""

from __future__ import annotations

from pathlib import Path

from service.commands.fail import fail
from service.plugin_manager import create_plugin_manager
from service.restore import RestoreFailed
from service.settings import Settings
from service.trash import TrashUnsafe

PLUGIN = "archive"


async def run(settings: Settings, archive: Path) -> int:
    plugin = create_plugin_manager(settings).get_plugin(PLUGIN)
    if plugin is None or not hasattr(plugin, "restore"):
        return fail(f'restore needs the {PLUGIN} plugin: [plugins] enabled = ["{PLUGIN}"]')
    try:
        print(await plugin.restore(archive))
        return 0
    except (RestoreFailed, TrashUnsafe) as e:
        return fail(str(e))
