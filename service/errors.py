"""Errors: one exception type per contract error, and the one middleware that
turns them into the envelope. Nothing else formats an error response.

Two families:
- ``ApiError``: the whole request fails (400, 404, 413, 503, 500).
- ``TaskFailed``/``Veto``: one task of a batch fails with a code and a message;
  the request still answers 200 with the task under ``failed_tasks``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from service.db import DatabaseUnavailable

log = structlog.get_logger("service")

# Per-task error codes (README lists each with its message).
INVALID_TASK_ID = "INVALID_TASK_ID"
PROTECTED = "PROTECTED"
UNSAFE_PATH = "UNSAFE_PATH"
TASK_RUNNING = "TASK_RUNNING"
TASK_LOCKED = "TASK_LOCKED"
DELETE_FAILED = "DELETE_FAILED"
DATABASE_ERROR = "DATABASE_ERROR"
PURGE_FAILED = "PURGE_FAILED"
PLUGIN_ERROR = "PLUGIN_ERROR"
# The built-in detach's own failures: each says what is wrong, never PLUGIN_ERROR.
TRASH_UNSAFE = "TRASH_UNSAFE"
PERMISSION_DENIED = "PERMISSION_DENIED"
DIRECTORY_BUSY = "DIRECTORY_BUSY"
NO_SPACE = "NO_SPACE"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
DETACH_FAILED = "DETACH_FAILED"
# The audit line of a deletion cannot be written: nothing is deleted.
AUDIT_UNAVAILABLE = "AUDIT_UNAVAILABLE"
AUDIT_UNAVAILABLE_MESSAGE = "审计日志不可写，暂停删除，请稍后重试"


@dataclass(frozen=True)
class Veto:
    """A pre-delete check's refusal: the task fails with this code and message."""

    code: str
    message: str


class TaskFailed(Exception):
    """Raised inside the deletion of one task to fail it with a contract code."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class ApiError(Exception):
    status = 500
    default_message = "服务器内部错误，请稍后重试"

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        self.message = message or self.default_message
        self.fields = fields
        super().__init__(self.message)


class BadRequest(ApiError):
    status = 400


class MissingParams(BadRequest):
    def __init__(self, names: list[str]) -> None:
        super().__init__(f"缺少必需参数: {', '.join(names)}", missing_params=names)


class Unauthorized(ApiError):
    status = 401
    default_message = "需要有效的访问令牌（Authorization: Bearer <token>）"


class Forbidden(ApiError):
    status = 403
    default_message = "访问令牌权限不足"


class NotFound(ApiError):
    status = 404
    default_message = "资源不存在"


class ServiceUnavailable(ApiError):
    status = 503
    default_message = "数据库暂时不可用，请稍后重试"


class AuditUnavailableError(ServiceUnavailable):
    default_message = AUDIT_UNAVAILABLE_MESSAGE


def envelope(
    status: int, message: str, data: Any = None, *, success: bool | None = None, **fields: Any
) -> web.Response:
    """The contract's envelope; ``success`` follows the status unless given."""
    ok = 200 <= status < 300 if success is None else success
    body = {"success": ok, "code": status, "message": message, "data": data, **fields}
    return json_response(body, status=status)


def json_response(body: Any, *, status: int = 200) -> web.Response:
    # A lone surrogate cannot be UTF-8: written as its JSON escape, it stays valid JSON.
    data = json.dumps(body, ensure_ascii=False, default=str).encode("utf-8", "backslashreplace")
    return web.Response(body=data, status=status, content_type="application/json")


# What an unexpected fault says, by method: the contract's words for DELETE.
_FAULT_MESSAGES = {"DELETE": "删除任务失败，请稍后重试"}
_DEFAULT_FAULT = "服务器内部错误，请稍后重试"


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        response = envelope(e.status, e.message, **e.fields)
        if e.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response
    except DatabaseUnavailable:
        log.warning("database_unavailable", path=request.path)
        return envelope(ServiceUnavailable.status, ServiceUnavailable.default_message)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        response = envelope(e.status, _HTTP_MESSAGES.get(e.status, e.reason))
        if "Allow" in e.headers:  # a 405 must say what is allowed (RFC 9110)
            response.headers["Allow"] = e.headers["Allow"]
        return response
    except Exception:
        log.exception("unhandled_error", path=request.path, method=request.method)
        return envelope(500, _FAULT_MESSAGES.get(request.method, _DEFAULT_FAULT))


_HTTP_MESSAGES = {
    404: "接口不存在",
    405: "不支持的请求方法",
    413: "请求体过大",
}
