"""HTTP responses: the contract's envelope, and the one middleware that turns
every error (``service.errors``) into it. Nothing else formats an error response.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from aiohttp import web

from service.db import DatabaseUnavailable
from service.errors import ApiError, ServiceUnavailable

log = structlog.get_logger("service")


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
