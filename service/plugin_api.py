"""The whole public surface for plugins: a plugin takes what it needs of the
service from here alone, so the service's modules can move and change behind
it (tests/test_plugin_api.py checks every module of ``plugins/``).

    from service.plugin_api import hookimpl, Veto, TaskContext

The hooks themselves, their order and their contracts: ``service/hookspecs.py``.
"""

from __future__ import annotations

from service.errors import TaskFailed, Veto
from service.fs import TreeStats, fsync_dir
from service.hookspecs import hookimpl
from service.pipeline import BatchContext, DeleteOptions, TaskContext
from service.restore import RestoreFailed, restore_tree
from service.settings import Settings, SettingsError

__all__ = [
    "BatchContext",
    "DeleteOptions",
    "RestoreFailed",
    "Settings",
    "SettingsError",
    "TaskContext",
    "TaskFailed",
    "TreeStats",
    "Veto",
    "fsync_dir",
    "hookimpl",
    "restore_tree",
]
