"""``dptask tasks | delete | cleanup | jobs``: the client commands, over HTTP only.

``add_commands(subparsers)`` registers them on ``dptask``'s parser; each sets
``handler`` (a function of the parsed arguments returning the exit status), so
``main`` runs them without loading settings or touching the database.

Exit status: 0 all done; 1 some tasks failed (or would fail, or the job was
cancelled); 2 bad usage (argparse, a 4xx from the service, a deletion that
needs confirming with no terminal to ask on); 3 the service could not be
reached or refused (401/403/503, any 5xx). A problem is one line on stderr.

A deletion is shown before it is done: ``delete`` sends the same request with
``dry_run: true`` first, ``cleanup`` its dry run (the default on the server),
and both ask unless ``--yes``. The real run is a background job
(``"background": true``; ``cleanup``'s real run always is) that the command
follows with ``GET /jobs/{id}?wait=…`` (answered as the job ends, else after the
progress interval); Ctrl-C stops following, never the job.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from rich.prompt import Confirm

from service.client.api import DEFAULT_URL, UNAVAILABLE, USAGE, Api, ServiceError
from service.client.render import (
    FINISHED,
    JobProgress,
    Output,
    batch_report,
    job_line,
    jobs_table,
    tasks_table,
)

PAGE = 100  # the list endpoints' largest page
INTERRUPTED = 130
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhdw])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s``: an age, more than zero."""
    match = _DURATION.fullmatch(text.strip())
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"not an age like 30d, 12h or 90m: {text!r}")
    return timedelta(seconds=float(match[1]) * _UNIT[match[2]])


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number of at least 1: {text!r}")
    return int(text)


def add_commands(commands: Any) -> None:
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--url",
        default=os.environ.get("DPTASK_URL", DEFAULT_URL),
        help=f"the service (env DPTASK_URL, default {DEFAULT_URL})",
    )
    connection.add_argument(
        "--token",
        default=os.environ.get("DPTASK_TOKEN"),
        help="bearer token (env DPTASK_TOKEN; prefer it: arguments show in ps)",
    )

    def command(name: str, handler: Callable[[argparse.Namespace], int], text: str) -> Any:
        parser = commands.add_parser(name, parents=[connection], help=text, description=text)
        parser.set_defaults(handler=lambda args: _run(handler, args))
        return parser

    tasks = command("tasks", tasks_command, "list tasks, newest first")
    tasks.add_argument("--status", help="only tasks with this status")
    tasks.add_argument("--older-than", type=duration, help="only tasks older than this (30d)")
    tasks.add_argument("--limit", type=positive, default=50, help="at most N tasks (default 50)")
    tasks.add_argument("--json", action="store_true", help="one JSON object a line")

    delete = command("delete", delete_command, "delete tasks, showing what first")
    delete.add_argument("task_ids", nargs="+", metavar="ID", help="task ids")
    delete.add_argument("--records", action="store_true", help="also delete the database records")
    delete.add_argument("--dry-run", action="store_true", help="only show what would be deleted")
    delete.add_argument("--force", action="store_true", help="delete running tasks too")
    delete.add_argument(
        "--allow-missing", action="store_true", help="a directory already gone is no failure"
    )
    delete.add_argument("--yes", "-y", action="store_true", help="do not ask")

    cleanup = command("cleanup", cleanup_command, "the server-side clean-up of old tasks")
    cleanup.add_argument("--older-than", type=duration, required=True, help="age, e.g. 30d")
    cleanup.add_argument(
        "--status",
        action="append",
        dest="statuses",
        help="a status to select (repeatable; the server's default: completed, failed)",
    )
    cleanup.add_argument("--keep-last", type=int, help="always keep the N newest matching tasks")
    cleanup.add_argument("--records", action="store_true", help="also delete the database records")
    cleanup.add_argument("--dry-run", action="store_true", help="only show what would be deleted")
    cleanup.add_argument("--yes", "-y", action="store_true", help="do not ask")

    jobs = command("jobs", jobs_command, "background jobs: list, show, follow, cancel")
    jobs.add_argument("job_id", nargs="?", metavar="ID", help="one job")
    jobs.add_argument("--follow", "-f", action="store_true", help="follow it to its end")
    jobs.add_argument("--cancel", action="store_true", help="cancel it (tasks not started)")
    jobs.add_argument("--status", help="list: only jobs with this status")
    jobs.add_argument("--kind", help="list: only jobs of this kind (delete, cleanup)")
    jobs.add_argument("--limit", type=positive, default=50, help="list: at most N (default 50)")
    jobs.add_argument("--json", action="store_true", help="one JSON object a line")


def _run(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return handler(args)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code


def _api(args: argparse.Namespace) -> Api:
    return Api(args.url, args.token)


def _paged(api: Api, path: str, key: str, limit: int, query: dict[str, Any]) -> tuple[list, int]:
    items: list[dict[str, Any]] = []
    total = 0
    while len(items) < limit:
        page = {**query, "limit": min(PAGE, limit - len(items)), "offset": len(items)}
        _, body, _ = api.call("GET", path, query=page)
        data = body["data"]
        items += data[key]
        total = data["total"]
        if not data[key] or len(items) >= total:
            break
    return items, total


def tasks_command(args: argparse.Namespace) -> int:
    out = Output()
    query: dict[str, Any] = {"status": args.status}
    if args.older_than:
        cut = datetime.now() - args.older_than
        query["created_before"] = cut.isoformat(timespec="seconds")
    tasks, total = _paged(_api(args), "/tasks", "tasks", args.limit, query)
    if args.json:
        for task in tasks:
            out.json_line(task)
    else:
        tasks_table(out, tasks, total)
    return 0


def _confirm(out: Output, question: str) -> bool | None:
    """The answer, or ``None`` when there is no terminal to ask on."""
    if not sys.stdin.isatty():
        return None
    return Confirm.ask(question, console=out.console, default=False)


def _ask(out: Output, args: argparse.Namespace, question: str) -> int | None:
    """``None`` to go on, or the exit status to stop with."""
    if args.yes:
        return None
    try:
        answer = _confirm(out, question)
    except (KeyboardInterrupt, EOFError):
        print("\nnothing deleted", file=sys.stderr)
        return INTERRUPTED
    if answer is None:
        print("error: no terminal to confirm on; pass --yes to delete", file=sys.stderr)
        return USAGE
    if not answer:
        out.line("nothing deleted")
        return 0
    return None


def delete_command(args: argparse.Namespace) -> int:
    out, api = Output(), _api(args)
    body = {
        "task_ids": args.task_ids,
        "confirm": True,
        "delete_database_records": args.records,
        "force": args.force,
        "allow_missing": args.allow_missing,
    }
    _, preview, _ = api.call("DELETE", "/tasks", body={**body, "dry_run": True})
    data = preview["data"]
    batch_report(out, data)
    would = data["summary"]["successfully_deleted"]
    if args.dry_run or would == 0:
        if would == 0 and not args.dry_run:
            out.line("nothing to delete")
        return 0 if not data["failed_tasks"] else 1
    if (stop := _ask(out, args, f"Delete {would} task(s)?")) is not None:
        return stop
    status, answer, _ = api.call("DELETE", "/tasks", body={**body, "background": True})
    return _submitted(out, api, status, answer)


def cleanup_command(args: argparse.Namespace) -> int:
    out, api = Output(), _api(args)
    body: dict[str, Any] = {
        "older_than_days": round(args.older_than.total_seconds() / 86400, 6),
        "delete_database_records": args.records,
    }
    if args.statuses:
        body["statuses"] = args.statuses
    if args.keep_last is not None:
        body["keep_last"] = args.keep_last
    _, preview, _ = api.call("POST", "/tasks/cleanup", body={**body, "dry_run": True})
    data = preview["data"]
    counts = (
        f"{data.get('files')} files, {data.get('bytes')} bytes"
        if data.get("counted")
        else "files and bytes not counted within the time budget"
    )
    out.line(f"{data['matched']} tasks match ({counts})")
    if data["sample_task_ids"]:
        out.line("oldest first: " + " ".join(data["sample_task_ids"]))
    if data.get("more_remaining"):
        out.line("more tasks match than one run deletes: run it again afterwards")
    if args.dry_run or not data["matched"]:
        if not data["matched"]:
            out.line("nothing to clean up")
        return 0
    if (stop := _ask(out, args, f"Delete {data['matched']} task(s)?")) is not None:
        return stop
    status, answer, _ = api.call(
        "POST", "/tasks/cleanup", body={**body, "dry_run": False, "confirm": True}
    )
    return _submitted(out, api, status, answer)


def _submitted(out: Output, api: Api, status: int, answer: dict[str, Any]) -> int:
    if status != 202:
        raise ServiceError(f"the service answered {status}, not 202 with a job", UNAVAILABLE)
    return _follow(out, api, answer["data"], submitted=True)


def _follow(out: Output, api: Api, job: dict[str, Any], submitted: bool = False) -> int:
    interval = 0.25 if out.terminal else 1.0
    try:
        if submitted:
            out.line(
                f"job {job['job_id']} submitted; follow it: dptask jobs {job['job_id']} --follow"
            )
        with JobProgress(out) as progress:
            progress.update(job)
            while job["status"] not in FINISHED:
                # The service answers when the job ends, or after the interval;
                # one that answers sooner (older, without wait) is not asked at once again.
                asked = time.monotonic()
                query = {"wait": interval}
                job = api.call("GET", f"/jobs/{job['job_id']}", query=query)[1]["data"]
                progress.update(job)
                if job["status"] not in FINISHED:
                    time.sleep(max(0.0, interval - (time.monotonic() - asked)))
    except KeyboardInterrupt:
        print(
            f"\nstopped following job {job['job_id']}; it goes on. "
            f"Cancel it with: dptask jobs {job['job_id']} --cancel",
            file=sys.stderr,
        )
        return INTERRUPTED
    return _finished(out, job)


def _finished(out: Output, job: dict[str, Any]) -> int:
    out.line(job_line(job))
    if job.get("result"):
        batch_report(out, job["result"])
    return 0 if job["status"] == "succeeded" else 1


def jobs_command(args: argparse.Namespace) -> int:
    out, api = Output(), _api(args)
    if args.job_id is None:
        if args.follow or args.cancel:
            print("error: --follow and --cancel need a job id", file=sys.stderr)
            return USAGE
        query = {"status": args.status, "kind": args.kind}
        jobs, total = _paged(api, "/jobs", "jobs", args.limit, query)
        if args.json:
            for job in jobs:
                out.json_line(job)
        else:
            jobs_table(out, jobs, total)
        return 0
    if args.cancel:
        job = api.call("POST", f"/jobs/{args.job_id}/cancel")[1]["data"]
        out.line(f"cancel requested: {job_line(job)}")
    else:
        job = api.call("GET", f"/jobs/{args.job_id}")[1]["data"]
    if args.follow:
        return _follow(out, api, job)
    if args.json:
        out.json_line(job)
        return 0 if job["status"] not in FINISHED or job["status"] == "succeeded" else 1
    if job["status"] in FINISHED:
        return _finished(out, job)
    out.line(job_line(job))
    return 0
