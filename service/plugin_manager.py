"""One plugin manager per application (never a module global).

Order of registration: the built-ins first, then the plugins that
``[plugins] enabled`` names, then installed packages' entry points (group
``ENTRY_POINT_GROUP``) unless ``[plugins] entry_points = false``.

A plugin is a module. It may declare ``OPTIONS``, a dict of its settings
with their defaults (the defaults' types are enforced), read from the table
``[plugins.<name>]``; and ``create_plugin(options, settings)``, which returns
the object to register. Without ``create_plugin`` the module itself is
registered. Every problem stops start-up with one ``SettingsError`` line.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType
from typing import Any

import pluggy

from service import hookspecs
from service.builtin import checks, directory, records
from service.settings import Settings, SettingsError, plugin_options
from service.trash import Trash

ENTRY_POINT_GROUP = "dptask.plugins"


def create_plugin_manager(
    settings: Settings, trash: Trash | None = None, metrics: object | None = None
) -> pluggy.PluginManager:
    """``trash``: the application's; without one (tests, tools) a fresh
    ``Trash`` of ``base_dir``, opened at its first use. ``metrics``: the
    application's task-outcome observer (``service.metrics.TaskOutcomes``)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(checks, name="builtin.checks")
    pm.register(
        directory.DirectoryRemoval(trash or Trash(settings.base_dir)), name="builtin.directory"
    )
    pm.register(records, name="builtin.records")
    if metrics is not None:
        pm.register(metrics, name="builtin.metrics")

    modules = [(name, _load_plugin(name)) for name in settings.plugins_enabled]
    if settings.plugins_entry_points:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name not in settings.plugins_enabled:
                modules.append((ep.name, ep.load()))
    for name, module in modules:
        _register(pm, name, module, settings)

    if stray := set(settings.plugin_options) - {name for name, _ in modules}:
        raise SettingsError(f"settings: [plugins.{min(stray)}] configures a plugin not loaded")
    try:
        pm.check_pending()  # an implementation of a hook that does not exist is a typo
    except pluggy.PluginValidationError as e:
        raise SettingsError(f"settings: plugin {e.plugin!r}: {e}") from None
    return pm


def _load_plugin(name: str) -> ModuleType:
    """A bare name is ``plugins/<name>.py``; a dotted path names any module."""
    module_name = name if "." in name else f"plugins.{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise SettingsError(f"settings: plugins.enabled: no plugin named {name!r}") from None
        raise


def _register(pm: pluggy.PluginManager, name: str, module: Any, settings: Settings) -> None:
    table = settings.plugin_options.get(name, {})
    options = plugin_options(name, table, getattr(module, "OPTIONS", {}))
    create = getattr(module, "create_plugin", None)
    plugin = create(options, settings) if create else module
    try:
        pm.register(plugin, name=name)
    except (ValueError, pluggy.PluginValidationError) as e:
        raise SettingsError(f"settings: plugin {name!r} cannot be registered: {e}") from None
    for impl in pm.get_hookcallers(plugin) or []:
        for hookimpl in impl.get_hookimpls():
            if hookimpl.plugin is plugin and (hookimpl.hookwrapper or hookimpl.wrapper):
                raise SettingsError(f"settings: plugin {name!r}: hook wrappers are not supported")


def describe(pm: pluggy.PluginManager) -> dict[str, Any]:
    """``plugins``: the loaded plugins in registration order, each with the
    hooks it implements and its ``position`` in each hook's call order;
    ``hooks``: for each hook, the plugins in the order they are called."""
    order = {
        caller.name: [i.plugin_name for i in reversed(caller.get_hookimpls())]
        for caller in pm.hook.__dict__.values()
        if isinstance(caller, pluggy.HookCaller) and caller.get_hookimpls()
    }
    plugins = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or [])
        plugins.append(
            {
                "name": name,
                "hooks": [{"hook": h, "position": order[h].index(name) + 1} for h in hooks],
            }
        )
    return {"plugins": plugins, "hooks": order}
