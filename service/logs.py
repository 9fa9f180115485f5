"""Logging through structlog: JSON lines when stdout is not a terminal, a
readable console format when it is; a request id bound per request, and one
access line per request.

One stream, one format, for every record: structlog's own and those of
aiohttp, aiopg, asyncio and plugins that log through the standard library.
The standard library's records go to one handler on the root logger, which
renders them with ``structlog.stdlib.ProcessorFormatter``, through the same
processors as structlog's. structlog's own records are rendered by its
processor chain and written by ``_HandlerLogger`` to that handler's stream,
under that handler's lock, so no two lines ever interleave. They skip the
standard library's record machinery, which cost more than everything else in
a line (two ``LogRecord`` objects a line and a walk up the stack for the
caller) when each deleted task writes one; so a handler added to the root
logger later (a plugin's, say) sees the standard library's records only, not
these lines: the service's log is its stdout. As with the standard library,
a line that cannot be rendered or written is reported on stderr, never
raised. So every stdout line is one JSON object, a traceback is its
``exception`` field, every line has a ``logger`` field, and one level
(``[logging] level``) filters them all. Log timestamps carry their UTC
offset (``2026-11-30T07:15:00.123+00:00``); the API's timestamps stay naive,
as the contract shows them. The probes' access lines are logged at debug, so
that a load balancer polling them does not fill the log at the default level.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
import traceback
import uuid
from datetime import datetime
from typing import Any, TextIO

import structlog
from aiohttp import web

from service import appkeys
from service.audit import LINE_BREAKS

access_log = structlog.get_logger("access")
REQUEST_ID_HEADER = "X-Request-ID"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Polled by load balancers and Prometheus: their access lines are debug lines.
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
# The current second, as (seconds since the epoch, local date and time, UTC offset).
_second: tuple[int, str, str] = (-1, "", "")


def _one_line(obj: Any, **kwargs: Any) -> str:
    return json.dumps(obj, **kwargs).translate(LINE_BREAKS)


def _timestamp(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Local time with its UTC offset, to the millisecond. The local date,
    time and offset are worked out once a second (``astimezone`` asks the
    time zone rules each time), the milliseconds each time."""
    global _second
    now = time.time()
    second = int(now)
    cached = _second  # one read: another thread may store the next second meanwhile
    if cached[0] != second:
        text = datetime.fromtimestamp(second).astimezone().isoformat()
        cached = _second = (second, text[:19], text[19:])
    _, local, offset = cached
    event_dict["timestamp"] = f"{local}.{int((now - second) * 1000):03d}{offset}"
    return event_dict


def _report_failure() -> None:
    """A line that could not be rendered or written: its traceback on stderr,
    as the standard library's handlers report theirs; never raised, so that
    logging never fails what was being logged."""
    with contextlib.suppress(Exception):
        sys.stderr.write("--- Logging error ---\n")
        traceback.print_exc(file=sys.stderr)


def _bound_logger(level: int) -> type:
    """structlog's bound logger that drops lines below ``level``, and whose
    processors' and writer's failures are reported, never raised."""
    base: Any = structlog.make_filtering_bound_logger(level)

    class Logger(base):
        def _proxy_to_logger(self, method_name: str, event: Any = None, **kw: Any) -> Any:
            try:
                return super()._proxy_to_logger(method_name, event, **kw)
            except Exception:
                _report_failure()
                return None

    return Logger


class _HandlerLogger:
    """structlog's logger: a rendered line onto the root handler's stream,
    under the handler's lock."""

    def __init__(self, handler: logging.StreamHandler[TextIO], name: str) -> None:
        self.handler = handler
        self.name = name  # the ``logger`` field (structlog.stdlib.add_logger_name)

    def write(self, line: str) -> None:
        self.handler.acquire()
        try:
            self.handler.stream.write(line + "\n")
            self.handler.stream.flush()
        finally:
            self.handler.release()

    debug = info = warning = error = critical = exception = msg = log = write


def _caller_module() -> str:
    """The module that logs through an unnamed ``structlog.get_logger()`` (a
    plugin's, say): its logger is named for it, as the standard library's is."""
    frame = sys._getframe(1)
    while frame.f_back is not None and (
        frame.f_globals.get("__name__", "").startswith("structlog")
        or frame.f_globals.get("__name__") == __name__
    ):
        frame = frame.f_back
    return str(frame.f_globals.get("__name__", "root"))


def level_number(level: str) -> int:
    """``[logging] level`` (``debug``, ``info``, ...) as the standard library's number."""
    return logging.getLevelNamesMapping()[level.upper()]


def configure_logging(
    stream: TextIO | None = None, *, json_lines: bool | None = None, level: str = "info"
) -> None:
    """structlog, and the standard library's loggers (asyncio, aiohttp, aiopg,
    and any a plugin uses) rendered by the same processors onto the same
    stream: one JSON line per record, a traceback inside it, never plain text."""
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
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        _timestamp,
    ]
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                exc_info,
                renderer,
            ],
        )
    )
    structlog.configure(
        processors=[*shared, exc_info, renderer],
        wrapper_class=_bound_logger(level_number(level)),
        logger_factory=lambda *name: _HandlerLogger(handler, name[0] if name else _caller_module()),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level_number(level))


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
        emit = access_log.debug if request.path in QUIET_PATHS else access_log.info
        emit(
            "request",
            method=request.method,
            path=request.path,
            status=status,
            client=request.remote,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
        structlog.contextvars.unbind_contextvars("request_id")
