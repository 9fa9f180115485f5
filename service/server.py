"""Serving the app so that slow or idle clients cannot hold the service.

Design notes:

- Header timeout. aiohttp has no read timeout for request headers, but its
  keep-alive timer is armed when a connection is accepted and again when a
  response is finished, and on expiry it closes the connection only if the
  protocol is still waiting for a complete request (a request being handled is
  never cut). That is exactly "from accepted / previous response finished to
  the end of the headers", so ``keepalive_timeout = header_timeout``: a client
  that trickles half a request line, or sends nothing, is closed after it.
  Bytes arriving do not re-arm the timer, so trickling does not extend it.
  ``tests/test_slow_clients.py`` pins this behaviour of aiohttp.
- Body timeout. ``body_timeout_middleware`` (innermost, after auth: nobody
  waits for an anonymous body) reads the whole body within ``body_timeout``;
  ``request.read()`` caches it, so handlers' ``request.json()`` reuse it. A
  slow body gets 408 in the envelope and the connection is closed (after
  ``lingering_time = header_timeout`` at most, so the client can read it).
- Connection bound. The protocol factory (``ConnectionLimiter``) keeps open
  connections at ``connection_limit()``: ``max_connections`` clamped below the
  process's ``RLIMIT_NOFILE`` soft limit, leaving room for the database pool,
  the walks' descriptors, a fixed reserve and the accepts still in flight
  (two backlogs: see ``ACCEPTS_IN_FLIGHT``). At the bound, a new connection
  evicts the oldest connection that has no request in progress (an idle
  or slow client: the one that has held its slot longest); when every
  connection is busy the new one gets a 503 envelope and is closed. So an
  authenticated request is answered at once while slow clients fill the slots,
  and ``accept()`` never runs out of descriptors in normal operation.
- Loop errors. If ``accept()`` still fails (EMFILE when the limit is lowered
  under a running process), asyncio reports it through the loop's exception
  handler, with a traceback, every second. ``ThrottledLog`` makes that one JSON
  line per kind per ``LOG_INTERVAL`` with a count of the repeats it held back.
- Stopping (SIGTERM or SIGINT; see ``service.shutdown``). The process stops
  taking work at once (``/readyz`` 503, new deletions and jobs 503) but keeps
  listening, so probes and reads are answered while it drains: it waits for
  the deletions in flight and, with the jobs engine, ``JobQueue.drain``
  (running jobs go back to the queue for another instance), both within
  ``server.shutdown_grace``. A second signal cuts the grace short. Then
  aiohttp's shutdown closes the listener and cancels what is left (within
  ``SHUTDOWN_REST`` s), the cleanup contexts close the database and the
  audit, and one ``shutdown_complete`` line is logged; the exit status is 0.
- SIGHUP reopens the audit log (logrotate renames it, then signals), and
  never stops the process.
"""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from service import appkeys
from service.responses import envelope
from service.settings import Settings

log = structlog.get_logger("server")

LOG_INTERVAL = 10.0  # seconds between two log lines of one repeated kind
DB_POOL_SIZE = 10  # Database.connect's default maxsize
# Descriptors besides the pool and the walks: stdio, the listening socket,
# epoll and its self-pipe, the audit file, an embedded database's pipes, imports.
FIXED_RESERVE = 64
BACKLOG = 128
# asyncio accepts up to ``backlog`` connections in one loop iteration and calls
# the protocol factory (which evicts) only at the next, where the evicted ones'
# descriptors close one iteration later still, while new accepts go on: one
# backlog accepted and not yet counted, one evicted and not yet closed. Measured
# (1,100 connections under a 1,024 limit) at more than one backlog over the bound.
ACCEPTS_IN_FLIGHT = 2 * BACKLOG
BUSY_MESSAGE = "服务繁忙，请稍后重试"
BODY_TIMEOUT_MESSAGE = "请求体发送超时"
# Seconds aiohttp's shutdown gives requests still running once the grace is over.
SHUTDOWN_REST = 1.0


class ListenError(OSError):
    """The listening socket could not be opened (the port is busy, say)."""


class ThrottledLog:
    """At most one log line per kind per ``interval``; the next line of that
    kind says how many were held back (``suppressed``)."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, event: str, *, kind: str | None = None, **fields: Any) -> None:
        kind = kind or event
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._held[kind] = self._held.get(kind, 0) + 1
            return
        self._last[kind] = now
        log.warning(event, suppressed=self._held.pop(kind, 0), **fields)


def connection_limit(
    max_connections: int, walk_descriptors: int, soft_limit: int | None = None
) -> int:
    """``max_connections``, clamped so that connections (and those a burst of
    accepts is still evicting), the database pool, the walks and a fixed
    reserve fit under the descriptor soft limit."""
    if soft_limit is None:
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft_limit == resource.RLIM_INFINITY:
        return max_connections
    room = soft_limit - walk_descriptors - DB_POOL_SIZE - FIXED_RESERVE - ACCEPTS_IN_FLIGHT
    return max(1, min(max_connections, room))


class ConnectionLimiter:
    """The listening socket's protocol factory: aiohttp's, under a bound."""

    def __init__(self, server: web.Server, limit: int, throttled: ThrottledLog) -> None:
        self.server = server
        self.limit = limit
        self.throttled = throttled
        self.busy: set[RequestHandler] = set()
        # Mark connections with a request in progress: they are never evicted.
        # Set before the first connection: each RequestHandler copies it.
        inner = server.request_handler

        async def tracked(request: web.BaseRequest) -> web.StreamResponse:
            protocol = request.protocol
            self.busy.add(protocol)
            try:
                return await inner(request)
            finally:
                self.busy.discard(protocol)

        server.request_handler = tracked

    def __call__(self) -> asyncio.BaseProtocol:
        # Oldest first; an evicted or closed one has no transport any more.
        open_now = [h for h in self.server.connections if h.transport is not None]
        if len(open_now) >= self.limit:
            idle = [h for h in open_now if h not in self.busy]
            if not idle:
                self.throttled.warning("connection_refused", limit=self.limit)
                return _Refused()
            for handler in idle[: len(open_now) - self.limit + 1]:
                handler.force_close()
            self.throttled.warning("connection_evicted", limit=self.limit)
        return self.server()


def _busy_response() -> bytes:
    body = json.dumps(
        {"success": False, "code": 503, "message": BUSY_MESSAGE, "data": None},
        ensure_ascii=False,
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _Refused(asyncio.Protocol):
    """Every connection busy: say so in the envelope and hang up."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_busy_response())
        transport.close()


class BoundedSite(web.BaseSite):
    """A TCP site whose protocol factory is a ``ConnectionLimiter``."""

    __slots__ = ("_factory", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, factory: Callable) -> None:
        super().__init__(runner, backlog=BACKLOG)
        self._host, self._port, self._factory = host, port, factory

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._factory, self._host, self._port, backlog=self._backlog, reuse_address=True
        )


def body_timeout_middleware(timeout: float) -> Any:
    @web.middleware
    async def body_timeout(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.body_exists:
            try:
                async with asyncio.timeout(timeout):
                    await request.read()
            except TimeoutError:
                log.info("body_timeout", path=request.path, client=request.remote)
                response = envelope(408, BODY_TIMEOUT_MESSAGE)
                response.force_close()  # the rest of the body is not worth waiting for
                return response
        return await handler(request)

    return body_timeout


def loop_exception_handler(throttled: ThrottledLog) -> Callable[..., None]:
    """The loop's errors as throttled JSON lines (a traceback inside the line,
    not on its own lines), instead of asyncio's multi-line text."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        exc = context.get("exception")
        if "accept()" in message:  # EMFILE and friends; asyncio retries every second
            throttled.warning("accept_failed", error=str(exc))
            return
        throttled.warning("event_loop_error", kind=message, message=message, exc_info=exc)

    return handle


def serve(app: web.Application, settings: Settings) -> None:
    """Serve ``app`` on ``settings.host:port`` until SIGINT or SIGTERM. Raises
    ``ListenError`` when the port cannot be listened on (after the app's
    start-up, as ``web.run_app`` did)."""
    # A worker thread (a group's coalesced lstats and renames, the audit
    # write) that holds the interpreter lock gives it back to the event loop
    # after 1 ms rather than 5 (bench/profile_tasks.py --load, alternating:
    # one-file tasks 6 % faster in one comparison, the same in another).
    sys.setswitchinterval(0.001)
    asyncio.run(_serve(app, settings))


def _spare_the_collector() -> None:
    """What start-up built lives as long as the process: out of the garbage
    collector's sight (``gc.freeze``), with young collections 30 times rarer,
    so that a full collection does not stall the event loop while it walks
    every module, class and plugin: list requests during 1,000 one-file
    deletions had p99 spikes of 24-27 ms without this, 7-13 ms with it."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


async def _serve(app: web.Application, settings: Settings) -> None:
    host, port = settings.host, settings.port
    loop = asyncio.get_running_loop()
    throttled = ThrottledLog()
    loop.set_exception_handler(loop_exception_handler(throttled))
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_stop() -> None:
        if stop.is_set():
            hurry.set()  # a second signal: no more grace
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_stop)
    reopening: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = asyncio.create_task(_reopen_audit(app))
        reopening.add(task)
        task.add_done_callback(reopening.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)

    app.middlewares.append(body_timeout_middleware(settings.body_timeout))
    runner = web.AppRunner(
        app,
        access_log=None,  # one access line per request comes from our middleware
        handle_signals=False,
        keepalive_timeout=settings.header_timeout,
        shutdown_timeout=SHUTDOWN_REST,  # the grace was given before (drain)
        # What a client still sends after its response (the rest of a body cut
        # off by a 408, say) is read and dropped for at most this long, then closed.
        lingering_time=settings.header_timeout,
    )
    await runner.setup()
    _spare_the_collector()
    try:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        limit = connection_limit(settings.max_connections, settings.walk_descriptors, soft)
        assert runner.server is not None
        site = BoundedSite(runner, host, port, ConnectionLimiter(runner.server, limit, throttled))
        try:
            await site.start()
        except OSError as e:
            raise ListenError(e.errno, e.strerror or str(e)) from e
        log.info(
            "connection_limit",
            max_connections=limit,
            configured=settings.max_connections,
            nofile_soft_limit=soft,
        )
        log.info("serving", url=f"http://{host}:{port}")
        await stop.wait()
        drained = await _drain(app, settings.shutdown_grace, hurry)
    finally:
        await runner.cleanup()
    log.info("shutdown_complete", drained=drained)


async def _drain(app: web.Application, grace: float, hurry: asyncio.Event) -> bool:
    """Stop taking work, then wait (within ``grace``, or until ``hurry``) for
    the deletions in flight and the jobs engine's drain. True when all ended."""
    state = app[appkeys.SHUTDOWN]
    state.begin()
    log.info("shutdown_started", grace=grace, in_flight=state.in_flight)
    waits: list[Any] = [state.idle()]
    if (queue := app.get(appkeys.JOBS)) is not None:
        waits.append(queue.drain(grace))
    drain = asyncio.ensure_future(asyncio.gather(*waits))
    hurried = asyncio.ensure_future(hurry.wait())
    try:
        await asyncio.wait([drain, hurried], timeout=grace, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hurried.cancel()
    if drain.done():
        if drain.exception() is None:
            return True
        log.error("shutdown_drain_failed", exc_info=drain.exception())
        return False
    drain.cancel()
    log.warning("shutdown_grace_over", in_flight=state.in_flight, hurried=hurry.is_set())
    return False


async def _reopen_audit(app: web.Application) -> None:
    try:
        await asyncio.to_thread(app[appkeys.AUDIT].reopen)
    except OSError as e:
        # The old file stays open: lines are not lost, and reserve() tries again.
        log.error("audit_reopen_failed", error=e.strerror or str(e))
