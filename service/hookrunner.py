"""The one way the service calls hooks.

pluggy calls implementations synchronously: an ``async def`` implementation
returns a coroutine, which pluggy would take for its result (ending a
``firstresult`` chain with a never-awaited coroutine). So the service never
calls ``pm.hook.<name>()``; ``run_hook`` walks the implementations in
pluggy's own call order (``reversed(get_hookimpls())``: tryfirst first,
trylast last, later registrations before earlier ones) and awaits each
awaitable result before calling the next.
"""

from __future__ import annotations

import inspect
from typing import Any

import pluggy
import structlog

from service.db import DatabaseError, TaskLocked
from service.errors import PLUGIN_ERROR, TaskFailed

log = structlog.get_logger("service")


class PluginError(TaskFailed):
    """A hook implementation raised something other than ``TaskFailed``."""

    def __init__(self, plugin: str, hook: str) -> None:
        super().__init__(PLUGIN_ERROR, f"插件 {plugin} 在 {hook} 中出错", plugin=plugin, hook=hook)


def _label(impl: pluggy.HookImpl) -> str:
    """The plugin's registered name, or its class or module name when pluggy made one up."""
    if not impl.plugin_name.isdigit():
        return impl.plugin_name
    plugin = impl.plugin
    return getattr(plugin, "__name__", None) or type(plugin).__name__


async def run_hook(pm: pluggy.PluginManager, name: str, /, **kwargs: Any) -> Any:
    """Call hook ``name`` with ``kwargs``.

    Returns the list of non-None results, or for a ``firstresult`` hook the
    first non-None result (None when there is none). ``TaskFailed``,
    ``DatabaseError`` and ``TaskLocked`` propagate as they are; any other
    exception becomes
    ``PluginError`` naming the plugin, logged with its traceback.
    """
    caller = getattr(pm.hook, name)
    firstresult = bool(caller.spec and caller.spec.opts.get("firstresult"))
    results = []
    for impl in reversed(caller.get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:
            raise TypeError(f"plugin {impl.plugin_name}: hook wrappers are not supported ({name})")
        try:
            result = impl.function(*(kwargs[arg] for arg in impl.argnames))
            if inspect.isawaitable(result):
                result = await result
        except (TaskFailed, DatabaseError, TaskLocked):
            raise  # the service's own failures keep their meaning (and code)
        except Exception as e:
            plugin = _label(impl)
            log.exception("plugin_error", plugin=plugin, hook=name)
            raise PluginError(plugin, name) from e
        if result is not None:
            if firstresult:
                return result
            results.append(result)
    return None if firstresult else results


async def run_observers(pm: pluggy.PluginManager, name: str, /, **kwargs: Any) -> None:
    """Call every implementation of observer hook ``name``: one that raises
    (anything at all) is logged with its plugin's name, and the next one still
    runs. An observer can never change an outcome, nor silence another."""
    caller = getattr(pm.hook, name)
    for impl in reversed(caller.get_hookimpls()):
        try:
            result = impl.function(*(kwargs[arg] for arg in impl.argnames))
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("observer_error", plugin=_label(impl), hook=name)
