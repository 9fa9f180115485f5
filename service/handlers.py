"""HTTP handlers: parse, call the database or the deletion pipeline, answer
in the contract's envelope."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service import appkeys, params
from service.errors import BadRequest, NotFound
from service.formatting import jsonable
from service.openapi import openapi
from service.pipeline import BatchContext, id_problem
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
    task_ids, options = await params.delete_body(request, settings.max_task_ids)
    # Fail the whole request (503) before any directory is touched when the
    # database is away (every task would fail its record step anyway), or when
    # the audit cannot be written (no deletion without its audit line).
    if not options.dry_run:
        await request.app[appkeys.DELETER].ready_to_delete()
    await request.app[appkeys.DB].ping()
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
