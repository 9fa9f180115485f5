"""``dptask tasks | delete | cleanup | jobs`` as an operator runs them: a real
``dptask`` process (through ``run.py``) against a real running service, its
stdout a pipe (so the plain, non-terminal output is what is checked) and its
stdin not a terminal.

The job-following parts need the jobs API (issue 10). When the service answers
``GET /api/v0/data_pipeline/jobs`` the tests run against it; until then (and only
then) ``jobs_url`` puts a small aiohttp front in between: a real HTTP server that
passes every other request to the real service and runs each "job" as the
service's own synchronous DELETE, so the tasks really go.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import web

from tests.helpers import (
    ROOT,
    TOKENS,
    URL,
    free_port,
    insert_task,
    make_task_dir,
    write_settings,
)

# A load or fault test: .ci/run runs it once, not again on the embedded server.
pytestmark = pytest.mark.slow

JOBS = "/api/v0/data_pipeline/jobs"


def dptask(
    *args: str, url: str, token: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DPTASK_URL": url}
    env.pop("DPTASK_TOKEN", None)
    if token:
        env["DPTASK_TOKEN"] = token
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def service(service_factory):
    return service_factory()


@pytest.fixture
def make_task(pg, base_dir: Path):
    def make(task_id: str, files: int = 5, **record: Any) -> Path:
        insert_task(pg, task_id, **record)
        return make_task_dir(base_dir, task_id, files=files)

    return make


# ---------------------------------------------------------------- the fallback jobs front


class JobsFront:
    """Until the service has its jobs API: the routes of common3.md over real HTTP,
    each job being the real service's synchronous DELETE, held ``hold`` seconds
    in ``running`` first so that a follower sees it move."""

    def __init__(self, upstream: str, hold: float = 1.5) -> None:
        self.upstream, self.hold = upstream, hold
        self.jobs: dict[str, dict[str, Any]] = {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> JobsFront:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("DELETE", URL, self.delete)
        app.router.add_post(f"{URL}/cleanup", self.cleanup)
        app.router.add_get(JOBS, self.list_jobs)
        app.router.add_get(JOBS + "/{job_id}", self.get_job)
        app.router.add_post(JOBS + "/{job_id}/cancel", self.cancel)
        app.router.add_route("*", "/{tail:.*}", self.proxy)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def _upstream(self, request: web.Request, method: str, path: str, **kw: Any) -> Any:
        headers = {k: v for k, v in request.headers.items() if k == "Authorization"}
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.upstream + path, headers=headers, **kw) as resp,
        ):
            return resp.status, await resp.json()

    async def proxy(self, request: web.Request) -> web.Response:
        status, body = await self._upstream(
            request, request.method, request.path_qs, data=await request.read() or None
        )
        return web.json_response(body, status=status)

    async def delete(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not body.pop("background", False):
            status, answer = await self._upstream(request, "DELETE", URL, json=body)
            return web.json_response(answer, status=status)
        return self._submit(request, "delete", body, None)

    def _submit(self, request: web.Request, kind: str, body: dict, selection: Any) -> Any:
        job_id = uuid.uuid4().hex
        job = {
            "job_id": job_id, "kind": kind, "status": "queued", "actor": "anonymous",
            "request_id": "r", "client": "127.0.0.1", "created_at": datetime.now().isoformat(),
            "started_at": None, "finished_at": None, "options": {}, "selection": selection,
            "cancel_requested": False, "result": None,
            "progress": {"tasks_total": len(body["task_ids"]), "tasks_done": 0, "files": 0,
                         "bytes": 0},
        }  # fmt: skip
        self.jobs[job_id] = job
        self.loop.create_task(self._run(request, job, body))
        envelope = {"success": True, "code": 202, "message": "删除任务已提交后台执行", "data": job}
        return web.json_response(envelope, status=202, headers={"Location": f"{JOBS}/{job_id}"})

    async def _run(self, request: web.Request, job: dict, body: dict) -> None:
        await asyncio.sleep(0.3)
        job["status"] = "running"
        await asyncio.sleep(self.hold)
        _, answer = await self._upstream(request, "DELETE", URL, json=body)
        data = answer["data"]
        done = data["deleted_tasks"]
        job["progress"].update(
            tasks_done=len(done) + len(data["failed_tasks"]),
            files=sum(t["deleted_files_count"] for t in done),
            bytes=sum(t["deleted_bytes"] for t in done),
        )
        summary = data["summary"]
        ok = summary["successfully_deleted"]
        job["status"] = "succeeded" if ok == summary["total_requested"] else (
            "partial" if ok else "failed"
        )  # fmt: skip
        job["result"] = data

    async def cleanup(self, request: web.Request) -> web.Response:
        body = await request.json()
        cut = datetime.now() - timedelta(days=body["older_than_days"])
        statuses = body.get("statuses", ["completed", "failed"])
        _, listed = await self._upstream(request, "GET", f"{URL}?limit=100")
        tasks = [t for t in listed["data"]["tasks"] if t["directory_exists"]]
        tasks = [t for t in tasks if t["status"] in statuses][body.get("keep_last", 0) :]
        ids = [
            t["task_id"] for t in reversed(tasks) if datetime.fromisoformat(t["created_at"]) < cut
        ]
        if body.get("dry_run", True):
            data = {"dry_run": True, "matched": len(ids), "sample_task_ids": ids[:100],
                    "more_remaining": False, "files": None, "bytes": None, "counted": False,
                    "selection": body}  # fmt: skip
            return web.json_response({"success": True, "code": 200, "message": "ok", "data": data})
        records = body.get("delete_database_records", False)
        delete = {"task_ids": ids, "confirm": True, "delete_database_records": records}
        return self._submit(request, "cleanup", delete, body)

    def _envelope(self, data: Any) -> web.Response:
        return web.json_response({"success": True, "code": 200, "message": "ok", "data": data})

    async def list_jobs(self, request: web.Request) -> web.Response:
        jobs = list(reversed(self.jobs.values()))
        return self._envelope({"jobs": jobs, "total": len(jobs), "limit": 50, "offset": 0})

    async def get_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["job_id"]
        if job_id not in self.jobs:
            body = {"success": False, "code": 404, "message": f"任务作业不存在: {job_id}"}
            return web.json_response(body, status=404)
        return self._envelope(self.jobs[job_id])

    async def cancel(self, request: web.Request) -> web.Response:
        job = self.jobs[request.match_info["job_id"]]
        job["cancel_requested"] = True
        return self._envelope(job)


@pytest.fixture
def jobs_url(service) -> Iterator[str]:
    """The real service when it has the jobs API; the fallback front otherwise."""
    if requests.get(service.url + JOBS, timeout=5).status_code == 200:
        yield service.url
        return
    front = JobsFront(service.url).start()
    try:
        yield front.url
    finally:
        front.stop()


def wait_job(url: str, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = requests.get(f"{url}{JOBS}/{job_id}", timeout=5).json()["data"]
        if job["status"] in ("succeeded", "partial", "failed", "cancelled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def job_id_of(stdout: str) -> str:
    line = next(line for line in stdout.splitlines() if line.endswith("--follow"))
    return line.split()[1]


# ---------------------------------------------------------------- tasks


def test_tasks_table_and_json_lines(service, make_task):
    now = datetime.now()
    make_task("task_old", created_at=now - timedelta(days=40))
    make_task("task_mid", status="failed", created_at=now - timedelta(days=3, hours=2))
    make_task("task_new", created_at=now - timedelta(minutes=5))

    table = dptask("tasks", url=service.url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["task", "status", "age", "directory", "db", "by", "name"]
    rows = [line.split() for line in lines[1:] if line.startswith("task_")]
    assert [r[0] for r in rows] == ["task_new", "task_mid", "task_old"]  # newest first
    assert rows[1][1:5] == ["failed", "3d", "2h", "present"]
    assert "\x1b[" not in table.stdout  # no colour off a terminal
    assert lines[-1] == "3 of 3 tasks"

    as_json = dptask("tasks", "--json", "--status", "completed", "--limit", "1", url=service.url)
    assert as_json.returncode == 0, as_json.stderr
    [task] = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert task["task_id"] == "task_new" and task["status"] == "completed"


def test_tasks_older_than_uses_the_services_filter(service, make_task):
    probe = requests.get(f"{service.url}{URL}?created_before=2000-01-01T00:00:00", timeout=5)
    make_task("task_old", created_at=datetime.now() - timedelta(days=40))
    make_task("task_new", created_at=datetime.now() - timedelta(days=1))
    if probe.status_code != 400 and requests.get(probe.url, timeout=5).json()["data"]["total"]:
        pytest.skip("this service ignores created_before (issue 10 adds it)")
    result = dptask("tasks", "--older-than", "30d", "--json", url=service.url)
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["task_id"] for line in result.stdout.splitlines()] == ["task_old"]


@pytest.mark.parametrize(
    "args",
    [
        ["tasks", "--limit", "0"],
        ["tasks", "--older-than", "soon"],
        ["cleanup"],
        ["delete"],
        ["jobs", "--cancel"],
    ],
)
def test_bad_usage_is_2(service, args):
    result = dptask(*args, url=service.url)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip()


def test_a_request_the_service_refuses_is_2_with_its_message(service):
    result = dptask("tasks", "--status", "bogus", url=service.url)
    assert result.returncode == 2
    assert "400" in one_error_line(result) and "status 必须是以下之一" in result.stderr


def test_an_unreachable_service_is_3(tmp_path):
    result = dptask("tasks", url=f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 3
    assert "cannot reach the service" in one_error_line(result)


# ---------------------------------------------------------------- delete


def test_delete_dry_run_shows_and_changes_nothing(service, make_task, base_dir):
    make_task("task_a", files=7)
    make_task("task_b")
    result = dptask("delete", "task_a", "task_b", "--dry-run", url=service.url)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:3]}
    assert rows["task_a"][1:3] == ["directory", "7"]
    assert "would delete 2 of 2 tasks (12 files" in result.stdout
    assert (base_dir / "task_a").is_dir() and (base_dir / "task_b").is_dir()

    missing = dptask("delete", "task_a", "nope", "--dry-run", url=service.url)
    assert missing.returncode == 1
    assert "DELETE_FAILED: 任务目录不存在" in missing.stdout


def test_delete_without_a_terminal_and_without_yes_refuses(service, make_task, base_dir):
    make_task("task_a")
    result = dptask("delete", "task_a", url=service.url)
    assert result.returncode == 2
    assert "pass --yes" in one_error_line(result)
    assert "would delete 1 of 1 tasks" in result.stdout  # shown all the same
    assert (base_dir / "task_a").is_dir()


def test_delete_yes_runs_a_job_with_plain_progress_and_results(jobs_url, make_task, base_dir):
    make_task("task_a", files=9)
    make_task("task_b")
    result = dptask("delete", "task_a", "task_b", "--yes", url=jobs_url)
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert not (base_dir / "task_a").exists() and not (base_dir / "task_b").exists()
    job_id = job_id_of(result.stdout)
    progress = [line for line in result.stdout.splitlines() if line.startswith(f"job {job_id} ")]
    assert progress[-1].startswith(f"job {job_id} delete succeeded: 2/2 tasks, 14 files, 1.2 KB")
    assert len(progress) == len(set(progress))  # a line per change, not per poll
    assert "\x1b[" not in result.stdout and "━" not in result.stdout  # no bar off a terminal
    assert "deleted 2 of 2 tasks (14 files, 1.2 KB); failed 0, skipped 0" in result.stdout

    shown = dptask("jobs", job_id, url=jobs_url)
    assert shown.returncode == 0 and "deleted 2 of 2 tasks" in shown.stdout
    listed = dptask("jobs", "--json", url=jobs_url)
    assert job_id in [json.loads(line)["job_id"] for line in listed.stdout.splitlines()]


def test_delete_with_a_failed_task_is_1(jobs_url, make_task, base_dir):
    make_task("task_a")
    make_task("task_run", status="in_progress")
    result = dptask("delete", "task_a", "task_run", "--yes", url=jobs_url)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "TASK_RUNNING" in result.stdout
    assert "deleted 1 of 2 tasks" in result.stdout
    assert not (base_dir / "task_a").exists() and (base_dir / "task_run").is_dir()


def test_ctrl_c_while_following_leaves_the_job_running(jobs_url, make_task, base_dir):
    make_task("task_big", files=30_000)
    env = {**os.environ, "DPTASK_URL": jobs_url}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "delete", "task_big", "--yes"],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = ""
    while not line.endswith("--follow\n"):
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
    job_id = line.split()[1]
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert f"dptask jobs {job_id} --cancel" in stderr
    assert wait_job(jobs_url, job_id)["status"] == "succeeded"  # it went on
    assert not (base_dir / "task_big").exists()


# ---------------------------------------------------------------- cleanup and jobs


def test_cleanup_dry_run_then_the_job(jobs_url, make_task, base_dir):
    old = datetime.now() - timedelta(days=40)
    make_task("task_old1", created_at=old)
    make_task("task_old2", created_at=old + timedelta(hours=1))
    make_task("task_new", created_at=datetime.now() - timedelta(days=1))

    dry = dptask("cleanup", "--older-than", "30d", "--dry-run", url=jobs_url)
    assert dry.returncode == 0, dry.stderr
    assert "2 tasks match" in dry.stdout and "oldest first: task_old1 task_old2" in dry.stdout
    assert (base_dir / "task_old1").is_dir()

    refused = dptask("cleanup", "--older-than", "30d", url=jobs_url)
    assert refused.returncode == 2 and "pass --yes" in one_error_line(refused)
    assert (base_dir / "task_old1").is_dir()

    result = dptask("cleanup", "--older-than", "30d", "--yes", url=jobs_url)
    assert result.returncode == 0, (result.stdout, result.stderr)
    job_id = job_id_of(result.stdout)
    assert f"job {job_id} cleanup succeeded: 2/2 tasks" in result.stdout
    assert not (base_dir / "task_old1").exists() and not (base_dir / "task_old2").exists()
    assert (base_dir / "task_new").is_dir()


def test_jobs_follow_cancel_and_unknown(jobs_url, make_task):
    make_task("task_a")
    submitted = requests.delete(
        jobs_url + URL, json={"task_ids": ["task_a"], "confirm": True, "background": True},
        timeout=10,
    )  # fmt: skip
    assert submitted.status_code == 202
    job_id = submitted.json()["data"]["job_id"]
    assert submitted.headers["Location"] == f"{JOBS}/{job_id}"

    followed = dptask("jobs", job_id, "--follow", url=jobs_url)
    assert followed.returncode == 0, followed.stderr
    assert "deleted 1 of 1 tasks" in followed.stdout

    cancelled = dptask("jobs", job_id, "--cancel", url=jobs_url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(f"cancel requested: job {job_id}")

    unknown = dptask("jobs", str(uuid.uuid4()), url=jobs_url)
    assert unknown.returncode == 2 and "answered 404" in one_error_line(unknown)


# ---------------------------------------------------------------- tokens


def test_401_and_403_are_3(service_factory, make_task, base_dir):
    service = service_factory(settings_text=TOKENS)
    make_task("task_a")
    none = dptask("tasks", url=service.url)
    assert none.returncode == 3 and "401" in one_error_line(none)
    viewer = dptask("delete", "task_a", "--yes", url=service.url, token="view-secret")
    assert viewer.returncode == 3 and "403" in one_error_line(viewer)
    assert (base_dir / "task_a").is_dir()
    ops = dptask("tasks", "--json", url=service.url, token="ops-secret")
    assert ops.returncode == 0 and json.loads(ops.stdout)["task_id"] == "task_a"
    flag = dptask("tasks", "--token", "ops-secret", url=service.url)
    assert flag.returncode == 0


# ---------------------------------------------------------------- the operator commands


def test_serve_is_a_subcommand_too(workdir, base_dir, database_url, pg):
    port = free_port()
    config = write_settings(workdir)
    env = {**os.environ, "DATABASE_URL": database_url}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "--config", str(config), "serve", "--port",
         str(port)],
        cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                result = dptask("tasks", url=f"http://127.0.0.1:{port}")
                if result.returncode == 0:
                    break
            except subprocess.TimeoutExpired:
                pass
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert result.stdout.strip().endswith("0 of 0 tasks")
    finally:
        proc.terminate()
        proc.wait(10)
