"""Logging through structlog: JSON lines when stdout is not a terminal, a
readable console format when it is; the standard library's loggers through
the same renderer, so nothing reaches stdout as plain text; a request id bound
per request, and one access line per request."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any, TextIO

import structlog
from aiohttp import web

from service import appkeys
from service.audit import LINE_BREAKS

access_log = structlog.get_logger("access")
REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _one_line(obj: Any, **kwargs: Any) -> str:
    return json.dumps(obj, **kwargs).translate(LINE_BREAKS)


def configure_logging(stream: TextIO | None = None, *, json_lines: bool | None = None) -> None:
    """structlog, and the standard library's loggers (asyncio, aiohttp, and
    any a plugin uses) rendered by the same processors onto the same stream:
    one JSON line per record, a traceback inside it, never plain text."""
    stream = stream or sys.stdout
    if json_lines is None:
        json_lines = not stream.isatty()
    renderer: Any = (
        # Line breaks that line-based readers split on are escaped, as in the audit.
        structlog.processors.JSONRenderer(serializer=_one_line, ensure_ascii=False)
        if json_lines
        else structlog.dev.ConsoleRenderer()
    )
    exc_info = structlog.processors.format_exc_info if json_lines else structlog.dev.set_exc_info
    stamped: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=False),
    ]
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, *stamped, exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_logger_name,
                *stamped,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.INFO)


@web.middleware
async def request_context_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bind a request id (the client's X-Request-ID when sane) and log the request."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = given if _CLIENT_REQUEST_ID.match(given) else uuid.uuid4().hex
    request[appkeys.REQUEST_ID] = request_id
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers[REQUEST_ID_HEADER] = request_id
        return response
    finally:
        access_log.info(
            "request",
            method=request.method,
            path=request.path,
            status=status,
            client=request.remote,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        structlog.contextvars.unbind_contextvars("request_id")
