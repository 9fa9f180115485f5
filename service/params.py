"""Request validation: the list query and the DELETE body (DESIGN.md §2).

Each bad input raises ``BadRequest`` (or ``MissingParams``) with a message
that names the parameter; nothing is read by truthiness.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from service.errors import BadRequest, MissingParams
from service.pipeline import DeleteOptions
from service.schema import TASK_STATUSES

REQUIRED = ("task_ids", "confirm")
# Optional booleans and their defaults: the contract's two, then this service's.
OPTIONS = {
    "delete_database_records": False,
    "continue_on_error": True,
    "force": False,
    "dry_run": False,
    "allow_missing": False,
}
TASK_IDS_MESSAGE = "task_ids必须是非空的任务ID列表"
_INT = re.compile(r"^-?\d{1,12}$")


@dataclass(frozen=True)
class ListQuery:
    limit: int
    offset: int
    status: str | None
    directory_exists: bool | None


def list_query(query: MultiMapping[str]) -> ListQuery:
    status = query.get("status")
    if status is not None and status not in TASK_STATUSES:
        raise BadRequest(
            f"status 必须是以下之一: {', '.join(TASK_STATUSES)}", invalid_params=["status"]
        )
    exists = query.get("directory_exists")
    if exists is not None and exists.lower() not in ("true", "false"):
        raise BadRequest(
            "directory_exists 必须是 true 或 false", invalid_params=["directory_exists"]
        )
    return ListQuery(
        limit=_int_param(query, "limit", 50, 1, 100),
        offset=_int_param(query, "offset", 0, 0, None),
        status=status,
        directory_exists=None if exists is None else exists.lower() == "true",
    )


def _int_param(
    query: MultiMapping[str], name: str, default: int, low: int, high: int | None
) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    if not _INT.match(raw):
        raise BadRequest(f"{name} 必须是整数", invalid_params=[name])
    value = int(raw)
    if value < low or (high is not None and value > high):
        bounds = f"在 {low} 到 {high} 之间" if high is not None else f"不小于 {low}"
        raise BadRequest(f"{name} 必须{bounds}", invalid_params=[name])
    return value


async def delete_body(request: web.Request, max_task_ids: int) -> tuple[list[str], DeleteOptions]:
    try:
        body: Any = await request.json()
    except ValueError:  # not JSON, not UTF-8, or empty
        body = None
    if not isinstance(body, dict):
        raise BadRequest("请求体必须是JSON对象")
    if missing := [name for name in REQUIRED if name not in body]:
        raise MissingParams(missing)
    task_ids = body["task_ids"]
    if (
        not isinstance(task_ids, list)
        or not task_ids
        or not all(isinstance(t, str) for t in task_ids)
    ):
        raise BadRequest(TASK_IDS_MESSAGE, invalid_params=["task_ids"])
    if body["confirm"] is not True:
        raise BadRequest("confirm 必须为 true 才能执行删除", invalid_params=["confirm"])
    if unknown := sorted(set(body) - set(REQUIRED) - set(OPTIONS)):
        # A typo in a destructive call must not be silently ignored.
        raise BadRequest(f"未知参数: {', '.join(unknown)}", unknown_params=unknown)
    for name in OPTIONS:
        if name in body and not isinstance(body[name], bool):
            raise BadRequest(f"{name} 必须是布尔值 true 或 false", invalid_params=[name])
    if len(task_ids) > max_task_ids:
        raise BadRequest(
            f"task_ids 最多 {max_task_ids} 个（limits.max_task_ids），收到 {len(task_ids)} 个",
            invalid_params=["task_ids"],
        )
    return task_ids, DeleteOptions(**{name: body.get(name, d) for name, d in OPTIONS.items()})
