"""HTTP handlers: parse, call the database or the deletion pipeline, answer
in the contract's envelope."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service import appkeys, cleanup, params
from service.errors import BadRequest, NotFound
from service.formatting import jsonable
from service.openapi import API, openapi
from service.pipeline import BatchContext, DeleteOptions, id_problem
from service.plugin_manager import describe
from service.responses import envelope, json_response


def _task(row: dict[str, Any]) -> dict[str, Any]:
    task = jsonable(row)
    if "steps" in task:
        task["steps"] = [jsonable(step) for step in task["steps"]]
    task["created_by"] = task.get("by_user")
    return task


async def list_tasks(request: web.Request) -> web.Response:
    query = params.list_query(request.query)
    rows, total = await request.app[appkeys.DB].list_tasks(**query)
    data = {
        "tasks": [_task(row) for row in rows],
        "total": total,
        "limit": query["limit"],
        "offset": query["offset"],
    }
    return envelope(200, "获取任务列表成功", data)


async def get_task(request: web.Request) -> web.Response:
    task_id = request.match_info["task_id"]
    if problem := id_problem(task_id, request.app[appkeys.SETTINGS]):
        raise BadRequest(problem, invalid_params=["task_id"])
    row = await request.app[appkeys.DB].get_task(task_id)
    if row is None:
        raise NotFound(f"任务不存在: {task_id}")
    return envelope(200, "获取任务详情成功", _task(row))


async def openapi_document(request: web.Request) -> web.Response:
    return json_response(openapi(request.app[appkeys.SETTINGS]))


async def list_plugins(request: web.Request) -> web.Response:
    return envelope(200, "获取插件列表成功", describe(request.app[appkeys.PLUGINS]))


async def delete_tasks(request: web.Request) -> web.Response:
    settings = request.app[appkeys.SETTINGS]
    task_ids, options, background = await params.delete_body(request, settings.max_task_ids)
    background = background or _prefers_async(request)
    # Fail the whole request (503) before any directory is touched when the
    # database is away (every task would fail its record step anyway), or when
    # the audit cannot be written (no deletion without its audit line). A
    # background job is checked the same way before its 202.
    if not options.dry_run:
        await request.app[appkeys.DELETER].ready_to_delete()
    await request.app[appkeys.DB].ping()
    if background:
        return await _submit(request, "delete", options, task_ids=task_ids)
    batch = BatchContext(
        task_ids=task_ids,
        options=options,
        request_id=request[appkeys.REQUEST_ID],
        client=request.remote,
        actor=request[appkeys.ACTOR],
    )
    data = await request.app[appkeys.DELETER].delete_batch(batch)
    summary = data["summary"]
    if summary["successfully_deleted"] == 0:
        return envelope(200, "任务删除失败", data, success=False)
    if summary["failed"] or summary["skipped"]:
        return envelope(200, "批量删除部分完成", data)
    return envelope(200, "任务目录删除成功", data)


def _prefers_async(request: web.Request) -> bool:
    """``Prefer: respond-async`` (RFC 7240), among any other preferences."""
    for header in request.headers.getall("Prefer", ()):
        for preference in header.split(","):
            if preference.split(";")[0].strip().lower() == "respond-async":
                return True
    return False


async def _submit(
    request: web.Request,
    kind: str,
    options: DeleteOptions,
    *,
    task_ids: list[str] | None,
    selection: dict[str, Any] | None = None,
) -> web.Response:
    """Queue a job; 202 with its URL."""
    job = await request.app[appkeys.JOBS].submit(
        kind=kind,
        options=options,
        actor=request[appkeys.ACTOR],
        request_id=request[appkeys.REQUEST_ID],
        client=request.remote,
        task_ids=task_ids,
        selection=selection,
    )
    response = envelope(202, "删除任务已提交后台执行", job)
    response.headers["Location"] = f"{API}/jobs/{job['job_id']}"
    if _prefers_async(request):
        response.headers["Preference-Applied"] = "respond-async"
    return response


async def cleanup_tasks(request: web.Request) -> web.Response:
    """Select old tasks on the server: a dry run answers at once, a real run is a job."""
    settings = request.app[appkeys.SETTINGS]
    selection, options = await params.cleanup_body(request, settings.max_task_ids)
    db = request.app[appkeys.DB]
    if options.dry_run:
        data = await cleanup.dry_run(db, request.app[appkeys.TRASH], selection, settings)
        return envelope(200, "清理预演完成，未删除任何内容", data)
    await request.app[appkeys.DELETER].ready_to_delete()
    # The job chooses its tasks when it starts (it may wait behind another
    # job); this look only says whether one run leaves some.
    _ids, more = await cleanup.select_task_ids(db, selection, selection["max_tasks"])
    selection = {**selection, "more_remaining": more}
    return await _submit(request, "cleanup", options, task_ids=None, selection=selection)


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    if not params.JOB_ID.fullmatch(job_id):
        raise NotFound(f"任务作业不存在: {job_id}")
    return job_id


async def list_jobs(request: web.Request) -> web.Response:
    query = params.query_values(request.query, params.JOBS_QUERY)
    jobs, total = await request.app[appkeys.JOBS].list(**query)
    data = {"jobs": jobs, "total": total, "limit": query["limit"], "offset": query["offset"]}
    return envelope(200, "获取任务作业列表成功", data)


async def get_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    wait = params.query_values(request.query, params.JOB_QUERY)["wait"]
    jobs = request.app[appkeys.JOBS]
    job = await (jobs.wait(job_id, wait) if wait else jobs.get(job_id))
    if job is None:
        raise NotFound(f"任务作业不存在: {job_id}")
    return envelope(200, "获取任务作业成功", job)


async def cancel_job(request: web.Request) -> web.Response:
    job_id = _job_id(request)
    job = await request.app[appkeys.JOBS].cancel(job_id)
    if job is None:
        raise NotFound(f"任务作业不存在: {job_id}")
    return envelope(200, "已请求取消任务作业", job)
