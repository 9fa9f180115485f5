"""The 202 path of DELETE and the jobs API: the job at its Location, its
result equal to the synchronous answer for the same tasks, every check of the
request before the 202, and the list/get/cancel validation."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from service import appkeys
from service.plugin_api import TaskContext, hookimpl
from tests.helpers import URL, delete

JOBS = "/api/v0/data_pipeline/jobs"


async def get_job(client: Any, location: str, **query: str) -> tuple[float, dict[str, Any]]:
    """Seconds the answer took, and the job."""
    started = time.monotonic()
    resp = await client.get(location, params=query)
    body = await resp.json()
    assert resp.status == 200, body
    return time.monotonic() - started, body["data"]


async def finished(client: Any, location: str) -> dict[str, Any]:
    """The job once it has ended: the wait answers as it does."""
    _, job = await get_job(client, location, wait="30")
    assert job["status"] not in ("queued", "running"), job
    return job


def comparable(data: dict[str, Any]) -> dict[str, Any]:
    """A DELETE's data without what differs between two runs (times)."""
    strip = {"deleted_at", "duration_ms"}
    return {
        **{k: v for k, v in data.items() if k != "deleted_at"},
        "deleted_tasks": [
            {k: v for k, v in t.items() if k not in strip} for t in data["deleted_tasks"]
        ],
        "failed_tasks": [
            {k: v for k, v in t.items() if k not in strip} for t in data["failed_tasks"]
        ],
    }


@pytest.mark.parametrize("how", ["body", "header"])
async def test_background_delete_answers_202_and_the_same_result(client, task_factory, how):
    for name in ("a", "b"):
        task_factory(f"task_{name}1", files=8)
        task_factory(f"task_{name}2", files=8)
    body = {"task_ids": ["task_a1", "task_a2", "task_missing"], "confirm": True}
    headers = {}
    if how == "body":
        body["background"] = True
    else:
        headers["Prefer"] = "wait=5, respond-async"
    resp = await client.request("DELETE", URL, json=body, headers=headers)
    answer = await resp.json()
    assert resp.status == 202, answer
    assert answer["success"] is True and answer["code"] == 202
    assert answer["message"] == "删除任务已提交后台执行"
    job = answer["data"]
    assert job["kind"] == "delete" and job["status"] in ("queued", "running")
    assert job["request_id"] and job["actor"] == "anonymous"
    location = resp.headers["Location"]
    assert location == f"{JOBS}/{job['job_id']}"
    if how == "header":
        assert resp.headers["Preference-Applied"] == "respond-async"
    job = await finished(client, location)
    assert job["status"] == "partial" and job["finished_at"]
    # The same request, synchronously, on the twin tasks.
    status, sync = await delete(client, "task_b1", "task_b2", "task_missing")
    assert status == 200
    rename = {"task_b1": "task_a1", "task_b2": "task_a2"}
    for t in sync["data"]["deleted_tasks"]:
        t["task_id"] = rename[t["task_id"]]
    assert comparable(job["result"]) == comparable(sync["data"])


async def test_the_synchronous_delete_is_unchanged_without_background(client, task_factory):
    task_factory("task_1")
    status, body = await delete(client, "task_1", background=False)
    assert status == 200 and body["data"]["summary"]["successfully_deleted"] == 1
    resp = await client.get(JOBS)
    assert (await resp.json())["data"]["total"] == 0


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"task_ids": ["task_1"], "confirm": True, "background": "yes"}, 400),
        ({"task_ids": ["task_1"], "confirm": False, "background": True}, 400),
        ({"task_ids": ["task_1"], "confirm": True, "background": True, "forse": True}, 400),
        ({"task_ids": [f"t{i}" for i in range(1001)], "confirm": True, "background": True}, 400),
    ],
)
async def test_request_checks_come_before_the_202(client, schema, body, status):
    resp = await client.request("DELETE", URL, json=body, headers={"Prefer": "respond-async"})
    assert resp.status == status, await resp.json()
    assert "Location" not in resp.headers
    assert (await (await client.get(JOBS)).json())["data"]["total"] == 0


async def test_an_unwritable_audit_is_a_503_before_the_202(client, task_factory, settings):
    task_factory("task_1")
    settings.audit_path.unlink(missing_ok=True)
    settings.audit_path.mkdir()  # a directory where the audit file must be: not writable
    try:
        status, body = await delete(client, "task_1", background=True)
    finally:
        settings.audit_path.rmdir()
    if status != 503:
        pytest.skip("the audit stays open on its old descriptor here")
    assert (await (await client.get(JOBS)).json())["data"]["total"] == 0


async def test_jobs_list_newest_first_with_filters(client, task_factory):
    for i in range(3):
        task_factory(f"task_{i}")
        resp = await client.request(
            "DELETE", URL, json={"task_ids": [f"task_{i}"], "confirm": True, "background": True}
        )
        await finished(client, resp.headers["Location"])
    body = await (await client.get(JOBS, params={"limit": "2"})).json()
    data = body["data"]
    assert data["total"] == 3 and data["limit"] == 2 and data["offset"] == 0
    assert [j["result"]["deleted_tasks"][0]["task_id"] for j in data["jobs"]] == [
        "task_2",
        "task_1",
    ]
    data = (await (await client.get(JOBS, params={"kind": "cleanup"})).json())["data"]
    assert data["total"] == 0 and data["jobs"] == []
    data = (await (await client.get(JOBS, params={"status": "succeeded"})).json())["data"]
    assert data["total"] == 3


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"status": "done"}, "status"),
        ({"kind": "purge"}, "kind"),
    ],
)
async def test_jobs_list_validation(client, schema, query, name):
    resp = await client.get(JOBS, params=query)
    body = await resp.json()
    assert resp.status == 400 and body["invalid_params"] == [name]


async def test_jobs_list_refuses_unknown_parameters(client, schema):
    resp = await client.get(JOBS, params={"stauts": "queued"})
    body = await resp.json()
    assert resp.status == 400 and body["unknown_params"] == ["stauts"]
    assert body["message"] == "未知参数: stauts"


@pytest.mark.parametrize("job_id", ["0123456789abcdef0123456789abcdef", "no.such", "x" * 65])
async def test_an_unknown_job_is_404(client, schema, job_id):
    for method, path in (("GET", f"{JOBS}/{job_id}"), ("POST", f"{JOBS}/{job_id}/cancel")):
        resp = await client.request(method, path)
        body = await resp.json()
        assert resp.status == 404 and body["message"] == f"任务作业不存在: {job_id}", body


async def test_cancel_answers_the_job(client, task_factory):
    task_factory("task_1")
    resp = await client.request(
        "DELETE", URL, json={"task_ids": ["task_1"], "confirm": True, "background": True}
    )
    location = resp.headers["Location"]
    resp = await client.post(f"{location}/cancel")
    body = await resp.json()
    assert resp.status == 200 and body["data"]["job_id"] == location.rsplit("/", 1)[1]
    job = await finished(client, location)
    # Either it had started (then it finishes) or it had not (then its task is skipped).
    if job["status"] == "cancelled":
        assert job["result"]["skipped_tasks"] == ["task_1"]
    else:
        assert job["status"] == "succeeded"


async def test_a_background_delete_of_an_id_with_nul_reports_it_invalid(client, schema):
    """jsonb cannot hold U+0000: the job keeps such an id escaped, and fails it
    as the synchronous path does, never with a 500."""
    resp = await client.delete(
        URL, json={"task_ids": ["a\x00b", "../x"], "confirm": True, "background": True}
    )
    assert resp.status == 202
    job = await finished(client, resp.headers["Location"])
    failed = {t["error_code"] for t in job["result"]["failed_tasks"]}
    assert failed == {"INVALID_TASK_ID"} and job["result"]["summary"]["failed"] == 2


class Held:
    """Each task waits, before its directory is touched, until ``go`` is set."""

    def __init__(self) -> None:
        self.go = asyncio.Event()

    @hookimpl
    async def dptask_before_removal(self, task: TaskContext) -> None:
        await self.go.wait()


async def background(client: Any, *task_ids: str) -> str:
    body = {"task_ids": list(task_ids), "confirm": True, "background": True}
    resp = await client.delete(URL, json=body)
    assert resp.status == 202
    return resp.headers["Location"]


@pytest.mark.parametrize("plugins", [[Held()]])
async def test_wait_answers_as_the_job_ends(client, task_factory, base_dir, plugins):
    task_factory("task_1", files=3)
    location = await background(client, "task_1")
    waiting = asyncio.create_task(get_job(client, location, wait="30"))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # held: the answer waits for the job
    plugins[0].go.set()
    took, job = await waiting
    assert job["status"] == "succeeded" and job["finished_at"]
    assert job["result"]["deleted_tasks"][0]["deleted_files_count"] == 3
    assert not (base_dir / "task_1").exists()
    assert took < 5  # as it ended, not when the 30 s were up


@pytest.mark.parametrize("plugins", [[Held()]])
async def test_wait_answers_the_job_as_it_is_when_the_time_is_up(client, task_factory, plugins):
    task_factory("task_1")
    location = await background(client, "task_1")
    took, job = await get_job(client, location, wait="0.4")
    assert job["status"] in ("queued", "running") and job["result"] is None
    assert 0.4 <= took < 3
    took, job = await get_job(client, location)  # no wait: at once
    assert job["status"] in ("queued", "running") and took < 0.4
    plugins[0].go.set()
    _, job = await get_job(client, location, wait="30")
    assert job["status"] == "succeeded"


async def test_wait_sees_a_job_another_instance_finishes(client, schema):
    """A job this instance does not run is read again while it waits: here a
    row another instance owns, finished by that instance's own write."""
    schema.rows(
        "INSERT INTO dptask_jobs (job_id, kind, status, owner, actor, request_id, options,"
        " task_ids, progress, created_at, started_at, heartbeat_at)"
        " VALUES ('elsewhere', 'delete', 'running', 'other-host:1:x', 'tester', 'r',"
        " '{\"dry_run\": false}', '[]', '{}', now(), now(), now())"
    )

    async def finish_elsewhere() -> None:
        await asyncio.sleep(0.6)
        await asyncio.to_thread(
            schema.rows,
            "UPDATE dptask_jobs SET status = 'succeeded', finished_at = now(),"
            " result = '{\"summary\": {}}' WHERE job_id = 'elsewhere'",
        )

    other = asyncio.create_task(finish_elsewhere())
    took, job = await get_job(client, f"{JOBS}/elsewhere", wait="30")
    await other
    assert job["status"] == "succeeded" and job["result"] == {"summary": {}}
    assert 0.6 <= took < 3


@pytest.mark.parametrize("plugins", [[Held()]])
async def test_a_drain_ends_the_wait(client, task_factory, plugins):
    task_factory("task_1")
    location = await background(client, "task_1")
    waiting = asyncio.create_task(get_job(client, location, wait="30"))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await client.app[appkeys.JOBS].drain(0.2)  # as at shutdown: the job goes back to the queue
    took, job = await waiting
    # Answered as it was when the drain began, not after the 30 s.
    assert job["status"] in ("running", "queued") and time.monotonic() - started < 3
    plugins[0].go.set()


@pytest.mark.parametrize("value", ["-1", "60.5", "61", "1e3", "abc", "", " 5", "nan", "inf", "1."])
async def test_wait_validation(client, schema, value):
    resp = await client.get(f"{JOBS}/any", params={"wait": value})
    body = await resp.json()
    assert resp.status == 400 and body["invalid_params"] == ["wait"], body
    assert "wait 必须是 0 到 60 之间的秒数" in body["message"]


@pytest.mark.parametrize("value", ["0", "60", "0.25", "2.5e-1", "1E+1"])
async def test_wait_takes_any_number_of_seconds_in_range(client, schema, value):
    resp = await client.get(f"{JOBS}/0123456789abcdef", params={"wait": value})
    assert resp.status == 404  # valid, and no such job: answered at once


async def test_one_job_refuses_unknown_and_repeated_parameters(client, schema):
    resp = await client.get(f"{JOBS}/any?wiat=5")
    body = await resp.json()
    assert resp.status == 400 and body["unknown_params"] == ["wiat"]
    resp = await client.get(f"{JOBS}/any?wait=1&wait=2")
    assert resp.status == 400 and (await resp.json())["invalid_params"] == ["wait"]
    resp = await client.get(f"{JOBS}/0123456789abcdef?wait=0.2")
    assert resp.status == 404  # no such job: at once, not after the wait
