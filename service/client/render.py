"""How ``dptask`` shows what the service answered, with ``rich``.

On a terminal: tables with borders and a live progress bar. Not on a terminal
(a pipe, a file, cron, CI): the same tables without borders or colour, never
wrapped or cut, and progress as plain lines, one per poll and only when
something changed, so that a log stays readable and a script can ``grep`` it.
Machines should use ``--json`` (one JSON object a line) rather than parse tables.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from service.formatting import format_size

FINISHED = ("succeeded", "partial", "failed", "cancelled")


class Output:
    def __init__(self) -> None:
        self.terminal = sys.stdout.isatty()
        # Off a terminal rich would assume 80 columns and fold the table: never cut a task id.
        self.console = Console(highlight=False, width=None if self.terminal else 100_000)

    def line(self, text: str) -> None:
        self.console.print(text, markup=False, soft_wrap=True)

    def json_line(self, value: Any) -> None:
        print(json.dumps(value, ensure_ascii=False), flush=True)

    def table(self, *columns: str) -> Table:
        table = Table(box=box.SIMPLE if self.terminal else None, pad_edge=False)
        for column in columns:
            table.add_column(column, no_wrap=not self.terminal)
        return table


def age(created_at: str | None, now: datetime | None = None) -> str:
    """``"3d 4h"``, ``"5h 2m"``, ``"12m"`` from a naive local ISO timestamp."""
    if not created_at:
        return "-"
    seconds = int(((now or datetime.now()) - datetime.fromisoformat(created_at)).total_seconds())
    if seconds < 0:
        return "0m"
    days, rest = divmod(seconds, 86400)
    hours, minutes = rest // 3600, rest % 3600 // 60
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {minutes}m" if hours else f"{minutes}m"


def tasks_table(out: Output, tasks: list[dict[str, Any]], total: int) -> None:
    table = out.table("task", "status", "age", "directory", "db", "by", "name")
    for task in tasks:
        table.add_row(
            task["task_id"],
            str(task.get("status")),
            age(task.get("created_at")),
            "present" if task.get("directory_exists") else "gone",
            str(task.get("db_name") or "-"),
            str(task.get("created_by") or "-"),
            str(task.get("task_name") or ""),
        )
    out.console.print(table)
    out.line(f"{len(tasks)} of {total} tasks")


def batch_report(out: Output, data: dict[str, Any]) -> None:
    """Per-task results and the summary of a DELETE's (or a finished job's) ``data``."""
    dry = data.get("dry_run")
    table = out.table("task", "would delete" if dry else "result", "files", "size", "error")
    for task in data.get("deleted_tasks", []):
        what = "directory" if task.get("directory_deleted") else "no directory"
        if task.get("database_records_deleted"):
            what += " + records"
        size = task.get("deleted_size", format_size(task.get("deleted_bytes", 0)))
        table.add_row(task["task_id"], what, str(task.get("deleted_files_count", 0)), size, "")
    for task in data.get("failed_tasks", []):
        error = f"{task.get('error_code')}: {task.get('error')}"
        table.add_row(str(task.get("task_id")), "FAILED", "", "", error)
    for task_id in data.get("skipped_tasks", []):
        table.add_row(task_id, "skipped", "", "", "not tried")
    out.console.print(table)
    out.line(summary_line(data))


def summary_line(data: dict[str, Any]) -> str:
    summary = data.get("summary", {})
    deleted = data.get("deleted_tasks", [])
    files = sum(t.get("deleted_files_count", 0) for t in deleted)
    size = format_size(sum(t.get("deleted_bytes", 0) for t in deleted))
    verb = "would delete" if data.get("dry_run") else "deleted"
    return (
        f"{verb} {summary.get('successfully_deleted', 0)} of "
        f"{summary.get('total_requested', 0)} tasks ({files} files, {size}); "
        f"failed {summary.get('failed', 0)}, skipped {summary.get('skipped', 0)}"
    )


def job_line(job: dict[str, Any]) -> str:
    p = job.get("progress") or {}
    line = (
        f"job {job['job_id']} {job['kind']} {job['status']}: "
        f"{p.get('tasks_done', 0)}/{p.get('tasks_total', 0)} tasks, "
        f"{p.get('files', 0)} files, {format_size(p.get('bytes', 0))}"
    )
    if job.get("cancel_requested") and job["status"] not in FINISHED:
        line += " (cancel requested)"
    return line


def jobs_table(out: Output, jobs: list[dict[str, Any]], total: int) -> None:
    table = out.table("job", "kind", "status", "tasks", "files", "size", "actor", "created")
    for job in jobs:
        p = job.get("progress") or {}
        table.add_row(
            job["job_id"],
            job["kind"],
            job["status"],
            f"{p.get('tasks_done', 0)}/{p.get('tasks_total', 0)}",
            str(p.get("files", 0)),
            format_size(p.get("bytes", 0)),
            str(job.get("actor") or "-"),
            str(job.get("created_at") or "-"),
        )
    out.console.print(table)
    out.line(f"{len(jobs)} of {total} jobs")


class JobProgress:
    """The progress of one job, fed each polled job: a live bar on a terminal
    (tasks, files, bytes, rate), plain lines otherwise."""

    def __init__(self, out: Output) -> None:
        self.out = out
        self.started = time.monotonic()
        self.first_bytes: int | None = None
        self.last = ""
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def __enter__(self) -> JobProgress:
        if self.out.terminal:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} tasks"),
                TextColumn("{task.fields[files]} files, {task.fields[size]}"),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                console=self.out.console,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("queued", total=None, files=0, size="0 B", rate="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)

    def rate(self, done_bytes: int) -> str:
        if self.first_bytes is None:
            self.first_bytes = done_bytes
        elapsed = time.monotonic() - self.started
        if elapsed < 0.5:
            return ""
        return f"{format_size(int((done_bytes - self.first_bytes) / elapsed))}/s"

    def update(self, job: dict[str, Any]) -> None:
        p = job.get("progress") or {}
        rate = self.rate(p.get("bytes", 0))
        if self.bar is not None and self.task is not None:
            self.bar.update(
                self.task,
                description=job["status"],
                completed=p.get("tasks_done", 0),
                total=p.get("tasks_total") or None,
                files=p.get("files", 0),
                size=format_size(p.get("bytes", 0)),
                rate=rate,
            )
            return
        line = job_line(job)
        # A line per change, at most one per poll; a finished job's line is
        # written once, by the follower, with its result.
        if line != self.last and job["status"] not in FINISHED:
            self.last = line
            self.out.line(f"{line}, {rate}" if rate else line)
