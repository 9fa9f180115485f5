"""The deletion hooks. Every step of deleting one task is one of these hooks;
the service's own behaviour is implemented by the in-tree plugins in
``service/builtin``, registered first, so that any plugin can add to it or,
for the ``firstresult`` hooks, replace it (``tryfirst=True``).

Implementations may be ``def`` or ``async def``: the service calls hooks only
through ``service.hookrunner``, which awaits each result in pluggy's order.
Hook wrappers are not supported (a wrapper cannot see an awaited outcome).

Every hook takes the keyword ``task``: a ``service.pipeline.TaskContext`` with
``task_id``, ``path`` (the directory under the base; None only in
``dptask_delete_failed``, for an invalid id), ``options`` (the
request's flags: ``dry_run``, ``force``, ``delete_database_records``,
``allow_missing``), ``record`` (the task row or None), ``running_steps``,
``directory_exists``, ``settings``, ``transaction`` (the locked record, with
``set_directory_exists`` and ``delete_records``), ``request_id``, ``client``
and ``extra`` (fields added to the task's result).

To fail a task, raise ``service.errors.TaskFailed(code, message)``; any other
exception fails only that task, with ``PLUGIN_ERROR``, and the hooks after it
do not run. Before ``dptask_detach_directory`` nothing has been changed; after
it, the pipeline renames the directory back if anything fails up to the commit
of the record transaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from service.errors import Veto
    from service.fs import TreeStats
    from service.pipeline import BatchContext, TaskContext

PROJECT = "dptask"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def dptask_check_delete(task: TaskContext) -> Veto | list[Veto] | None:
    """Decide whether ``task`` may be deleted; runs with the task's lock held.

    Return None to allow, or a ``Veto`` (or a list of them) to refuse. Every
    implementation runs, and every veto is reported: the task fails with the
    first veto's code and message, and all of them under ``vetoes``. Called in
    dry runs too.
    """


@hookspec
def dptask_before_removal(task: TaskContext) -> dict[str, Any] | None:
    """Runs once the checks have passed, before the directory is touched.

    This is where archiving goes. Return a dict of fields to add to the
    task's result (e.g. ``archive_path``), or None. Raise ``TaskFailed`` to
    refuse; the directory and the record are then as they were. In a dry run
    (``task.options.dry_run``) report what would be done and change nothing.
    """


@hookspec(firstresult=True)
def dptask_detach_directory(task: TaskContext) -> Path | None:
    """Take the task's directory out of readers' reach, in O(1).

    Return the path the tree now has (it is later given to
    ``dptask_purge_directory``), or None when there is no directory. The
    built-in renames it into ``<base_dir>/.trash/<token>/<task_id>``. Not
    called in dry runs. First non-None result wins.
    """


@hookspec(firstresult=True)
def dptask_update_records(task: TaskContext) -> bool | None:
    """Update or delete the task's rows inside ``task.transaction``.

    Return True when the records were deleted, False when they were kept (the
    built-in then sets ``directory_exists = false`` and ``updated_at``). The
    transaction commits after this hook; if anything fails before the commit,
    the directory is renamed back and the task fails. Not called in dry runs.
    First non-None result wins.
    """


@hookspec(firstresult=True)
def dptask_purge_directory(task: TaskContext, path: Path) -> TreeStats | None:
    """Remove the detached tree at ``path``, counting files and bytes as it goes.

    Return a ``service.fs.TreeStats``; errors listed in it fail the task with
    ``PURGE_FAILED``, and what is left is put back and recorded as existing.
    Runs after the record transaction has committed; it must do its work in
    worker threads. First non-None result wins.
    """


@hookspec
def dptask_after_delete(task: TaskContext, result: dict[str, Any]) -> None:
    """Called once for each task that was deleted (or would be, in a dry run).

    ``result`` is the task's entry of ``deleted_tasks``. Return value ignored;
    an exception here is logged and does not change the outcome.
    """


@hookspec
def dptask_delete_failed(task: TaskContext, result: dict[str, Any]) -> None:
    """Called once for each task that failed, whatever step it failed in.

    ``result`` is the task's entry of ``failed_tasks`` (``error_code``,
    ``error``). Return value ignored; an exception here is logged and does not
    change the outcome.
    """


@hookspec
def dptask_batch_finished(batch: BatchContext, data: dict[str, Any]) -> None:
    """Called once per DELETE request, after every task of it is done.

    ``batch`` has ``request_id``, ``client``, ``options`` and ``task_ids``;
    ``data`` is the response's ``data`` (results and ``summary``). Return value
    ignored; an exception here is logged and does not change the response.
    """
