"""The deletion hooks, and the one place that says in what order they run.

The service's own behaviour is the in-tree plugins in ``service/builtin``,
registered first; pluggy calls later registrations first, so a plugin runs
before the built-ins (unless marked ``trylast``) and, for a ``firstresult``
hook, replaces them by returning a result (``tryfirst=True`` to be sure).
Implementations may be ``def`` or ``async def``: the service calls hooks only
through ``service.hookrunner``, which awaits each result in pluggy's order.
Hook wrappers are refused at start-up (a wrapper cannot see an awaited result).

The protocol of one DELETE (``service.pipeline.Deleter``). With
``continue_on_error`` the tasks go in groups of ``limits.commit_group``,
``limits.tasks_in_flight`` tasks at once; without it one by one, stopping at
the first failure (a group of one). A group shares its transaction and its
COMMIT, and each of its tasks goes through every step below with its own
hooks, result and audit line: a task that fails is put back and left out of
the COMMIT, the others go on. If the group fails as a whole before its COMMIT
(a row another session holds, a failed record update or COMMIT), none of its
record changes is made, every tree that can go back goes back, and its tasks
are deleted again one at a time, through every hook again (a group of one
just fails); a task whose tree could not go back, or whose directory a
failing detach hook moved, is not run again but fails. A
``dptask_before_removal`` hook must bear being run twice for one task (the
archive plugin then writes a second archive, under a new timestamp; the first
stays, as for any task that fails after archiving). For each task:

1. **The id.** It must be one plain path component that matches
   ``tasks.id_pattern``; if not, the task fails with ``INVALID_TASK_ID``
   before a ``TaskContext`` exists, so no hook ever sees a path built from it.
2. **The lock.** The group's database transaction opens, takes a
   transaction-scoped advisory lock on the id (``TASK_LOCKED`` at once if
   another request or service process holds it) and reads the record ``FOR
   UPDATE`` and the running steps. It stays open until step 6 commits.
3. ``dptask_check_delete``: every implementation runs and every veto is kept;
   the task fails with the first veto, all of them under ``vetoes``.
4. ``dptask_before_removal``: archiving and the like; the dicts returned are
   added to the task's result.
5. ``dptask_detach_directory`` (only when the directory exists): first the
   audit line's room is reserved (``AUDIT_UNAVAILABLE`` if it cannot be: no
   deletion without its audit line), then the built-in renames the directory
   into the trash, ``<base_dir>/.trash/<token>.<task_id>``, in one rename
   through held descriptors. Readers see the task gone at once.
6. ``dptask_update_records``, then **COMMIT**: the record changes the
   group's tasks asked for are made in one round trip, the renames into the
   trash are made durable (one fsync of the base and of the trash for the
   group), then the transaction commits. If anything fails from step 5 up to
   the commit, the tree is renamed back while the lock is still held, and the
   task fails (``DATABASE_ERROR``, or the hook's own code). A detach that
   fails after its tree left its place records ``directory_exists = false``
   instead (``DETACH_FAILED``).
   **A COMMIT with no answer** (``CommitUnknown``) is read back: purged on
   if the record says committed, renamed back if not; if the database does
   not answer within 30 s the task fails (``DATABASE_ERROR``) and a
   background task settles the tree by its record when it does (the
   start-up sweep, if the process ends first).
7. ``dptask_purge_directory``: the tree is removed in worker threads,
   counted in the same walk. From here on the deletion is committed; errors
   fail the task with ``PURGE_FAILED``, and what is left is recorded as
   existing and renamed back (or, with the records deleted, left in the
   trash for the start-up sweep).
8. **The observers**, ``dptask_after_delete`` (success) or
   ``dptask_delete_failed`` (a failure at any step after 1): every
   implementation is called; one that raises is logged with its plugin's
   name and the next one still runs.
9. **The audit line** (``task_delete``), written by the pipeline itself after
   the observers, so no plugin can prevent, reorder or alter it.

Once every task is done: ``dptask_batch_finished`` (an observer, as in 8),
then the request's audit line (``delete_request``), then the response.

**A dry run** (``task.options.dry_run``) takes no lock and holds no database
connection while it walks: it reads the record as it is (``transaction`` is
None), runs steps 3 and 4, then walks the tree without removing anything and
reports the counts the real run would give, or ``PURGE_FAILED`` for what the
real run could not remove. Steps 5 to 7 do not run; 8 and 9 do. Plugins must
report what they would do and change nothing.

**Failing a task.** In steps 3 to 6, raise ``TaskFailed(code, message)``: the
task fails with that code, and its directory and record are as they were.
Any other exception fails only that task, with ``PLUGIN_ERROR`` (``插件
<name> 在 <hook> 中出错``), and the hooks after it do not run; the traceback goes
to the service log, never to the client. Exceptions in the observers
(8, ``dptask_batch_finished``) change nothing.

**The task context.** Every hook but ``dptask_batch_finished`` takes ``task``,
a ``TaskContext`` (``from service.plugin_api import TaskContext``):

- ``task_id``: the id, already validated;
- ``path``: ``base_dir / task_id``, never resolved (it may be a symlink,
  which the built-in checks refuse);
- ``directory_exists``: whether anything exists at ``path`` (lstat), read
  before step 3;
- ``record``: the ``data_pipeline_tasks`` row as a dict, or None; read under
  the lock (as it is, in a dry run);
- ``running_steps``: names of the task's steps whose ``step_status`` is
  ``running``;
- ``transaction``: the locked record, with ``await
  set_directory_exists(exists, at)`` and ``await delete_records()``; None in
  a dry run;
- ``settings``: the service's ``Settings`` (``base_dir``, ``protected``, ...);
- ``now``: the time recorded as ``updated_at`` and ``deleted_at``, set just
  before ``dptask_update_records``;
- ``extra``: fields merged into the task's result;
- ``batch``: the request's ``BatchContext`` (``task_ids``, ``options``,
  ``request_id``, ``client``, ``actor``); ``task.options``,
  ``task.request_id``, ``task.client`` and ``task.actor`` read it. ``options``
  has ``delete_database_records``, ``continue_on_error``, ``force``,
  ``dry_run`` and ``allow_missing``; ``actor`` is the token's name, or
  ``anonymous``.

``docs/plugins.md``'s hook reference is generated from the docstrings below
(``python docs/gen_plugin_docs.py``); ``docs/design.md`` says why the protocol
is what it is.
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
    """Decide whether ``task`` may be deleted (step 3; in dry runs too).

    Runs with the task's lock held (a dry run holds none). Every implementation runs and every veto
    is reported: the task fails with the first veto's code and message, and
    its result lists all of them under ``vetoes``. The built-in refuses
    protected names (``PROTECTED``), a directory that is a symlink, not a
    directory, or not directly under ``base_dir`` on its device
    (``UNSAFE_PATH``), a missing directory (``DELETE_FAILED``, unless
    ``allow_missing`` or the records are to be deleted) and a running task
    (``TASK_RUNNING``, unless ``force``).

    Returns None (or an empty list) to allow, or a ``Veto(code, message)``, or
    a list of them, to refuse.
    """


@hookspec
def dptask_before_removal(task: TaskContext) -> dict[str, Any] | None:
    """Runs once the checks have passed, before the directory is touched (step 4).

    This is where archiving goes. Raise ``TaskFailed`` to refuse: the
    directory and the record are then as they were. In a dry run
    (``task.options.dry_run``) report what would be done and change nothing.
    No built-in implementation.

    Returns a dict of fields to add to the task's result (e.g.
    ``archive_path``), or None. Every implementation runs.
    """


@hookspec(firstresult=True)
def dptask_detach_directory(task: TaskContext) -> Path | None:
    """Take the task's directory out of readers' reach, in O(1) (step 5).

    Called only when the directory exists, and never in a dry run. The
    built-in renames it into ``<base_dir>/.trash/<token>.<task_id>``, where
    the start-up sweep finds it after a crash; the pipeline makes that rename
    durable before the COMMIT (a plugin that moves the tree elsewhere makes
    its own move durable). If anything fails before the commit, the tree is
    renamed back to ``task.path``.

    Returns the path the tree now has (it is given to
    ``dptask_purge_directory``). First non-None result wins; when every
    implementation returns None the task fails (``DELETE_FAILED``) and
    nothing changes.
    """


@hookspec(firstresult=True)
def dptask_update_records(task: TaskContext) -> bool | None:
    """Update or delete the task's rows through ``task.transaction`` (step 6).

    Never called in a dry run. The built-in sets ``directory_exists = false``
    and ``updated_at = task.now``, or with ``delete_database_records`` deletes
    the task's steps and its row. ``task.transaction`` keeps the changes and
    makes them, with the rest of the group's, just before the COMMIT; if
    anything fails before the commit, the directory is renamed back and the
    task fails.

    Returns True when the records were deleted, False when they were kept.
    First non-None result wins.
    """


@hookspec(firstresult=True)
def dptask_purge_directory(task: TaskContext, path: Path) -> TreeStats | None:
    """Remove the detached tree at ``path``, counting as it goes (step 7).

    Runs after the commit, never in a dry run; do the work in worker threads
    (``asyncio.to_thread``). Errors in the result, an exception, or no result
    at all fail the task with ``PURGE_FAILED``: what is left is recorded as
    existing and renamed back under its id, or, when the records were
    deleted, left in the trash for the start-up sweep. The built-in walks the
    tree in the service's purge helper process (``service/purger.py``), never
    following a symlink and never entering another file system; it purges
    only trees in the service's trash.

    Returns a ``TreeStats`` (``files``, ``bytes``, ``errors``,
    ``error_count``). First non-None result wins.
    """


@hookspec
def dptask_after_delete(task: TaskContext, result: dict[str, Any]) -> None:
    """An observer: called once for each task that was deleted (or would be,
    in a dry run), before its audit line (step 8).

    ``result`` is the task's entry of ``deleted_tasks``. Every implementation
    is called; one that raises is logged with its plugin's name and changes
    nothing.

    Returns nothing (the value is ignored).
    """


@hookspec
def dptask_delete_failed(task: TaskContext, result: dict[str, Any]) -> None:
    """An observer: called once for each task that failed, whatever step it
    failed in, before its audit line (step 8).

    ``result`` is the task's entry of ``failed_tasks`` (``error_code``,
    ``error``, ...). Every implementation is called; one that raises is logged
    with its plugin's name and changes nothing.

    Returns nothing (the value is ignored).
    """


@hookspec
def dptask_batch_finished(batch: BatchContext, data: dict[str, Any]) -> None:
    """An observer: called once per DELETE request, after every task of it is
    done and before the request's audit line.

    ``batch`` has ``task_ids``, ``options``, ``request_id``, ``client`` and
    ``actor``; ``data`` is the response's ``data`` (results and ``summary``).
    Every implementation is called; one that raises is logged with its
    plugin's name and changes nothing.

    Returns nothing (the value is ignored).
    """
