"""Built-in pre-delete checks (``docs/design.md``, "The threat model"):
protected names, the directory's containment (``fs.directory_problem``: no
symlink, a direct child of the base on its file system, not a mount point and
nothing mounted inside, bind mounts included), a missing directory, and a
running task. All refuse before anything is moved."""

from __future__ import annotations

from service import errors, fs
from service.coalesce import Coalesced
from service.errors import Veto
from service.hookspecs import hookimpl
from service.pipeline import TaskContext

# A group's tasks are checked in the same turn of the loop: one thread hop.
_directory_problem = Coalesced(fs.directory_problem)


@hookimpl
async def dptask_check_delete(task: TaskContext) -> list[Veto]:
    vetoes = []
    opts = task.options
    if task.task_id in task.settings.protected:
        vetoes.append(Veto(errors.PROTECTED, f"{task.task_id} 是受保护的目录，不可删除"))
    if task.directory_exists:
        problem = await _directory_problem(task.settings.base_dir, task.path)
        if problem:
            vetoes.append(Veto(errors.UNSAFE_PATH, problem))
    elif not opts.allow_missing and not (opts.delete_database_records and task.record):
        vetoes.append(Veto(errors.DELETE_FAILED, "任务目录不存在"))
    if not opts.force and (running := _running(task)):
        vetoes.append(
            Veto(errors.TASK_RUNNING, f"任务正在运行（{running}），如确需删除请传 force: true")
        )
    return vetoes


def _running(task: TaskContext) -> str | None:
    if task.record and task.record["status"] == "in_progress":
        return "status=in_progress"
    if task.running_steps:
        return "运行中的步骤: " + ", ".join(task.running_steps)
    return None
