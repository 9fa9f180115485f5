"""TEMPORARY (docs branch only): the api engineer's ``service/plugin_api.py``
replaces this at merge. It re-exports the current names so that the guide's
worked example, which imports only from here, runs before that merge."""

from service.errors import TaskFailed, Veto
from service.fs import TreeStats
from service.hookspecs import hookimpl
from service.pipeline import BatchContext, DeleteOptions, TaskContext
from service.settings import Settings, SettingsError

__all__ = [
    "BatchContext",
    "DeleteOptions",
    "Settings",
    "SettingsError",
    "TaskContext",
    "TaskFailed",
    "TreeStats",
    "Veto",
    "hookimpl",
]
