"""One plugin manager per application (never a module global): built-ins
registered first, then the plugins that ``[plugins] enabled`` names."""

from __future__ import annotations

import importlib
from types import ModuleType

import pluggy

from service import hookspecs
from service.builtin import audit, checks, directory, records
from service.settings import Settings, SettingsError


def create_plugin_manager(settings: Settings, audit_log: audit.AuditLog) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for module in (checks, directory, records):
        pm.register(module, name=f"builtin.{module.__name__.rsplit('.', 1)[-1]}")
    pm.register(audit_log, name="builtin.audit")
    for name in settings.plugins_enabled:
        pm.register(_import_plugin(name), name=name)
    pm.check_pending()  # an implementation of a hook that does not exist is a typo
    return pm


def _import_plugin(name: str) -> ModuleType:
    """A bare name is ``plugins/<name>.py``; a dotted path is any importable module."""
    module_name = name if "." in name else f"plugins.{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise SettingsError(f"settings: plugins.enabled: no plugin named {name!r}") from None
        raise
