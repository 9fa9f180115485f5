"""Errors: the contract's error codes and one exception type per contract
error. ``service.responses`` turns them into the envelope; this module imports
neither aiohttp nor the database driver, so plugins (through
``service.plugin_api``) and tools can import it alone.

Two families:
- ``ApiError``: the whole request fails (400, 404, 413, 503, 500).
- ``TaskFailed``/``Veto``: one task of a batch fails with a code and a message;
  the request still answers 200 with the task under ``failed_tasks``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
