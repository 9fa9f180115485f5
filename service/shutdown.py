"""Stopping gracefully: what SIGTERM changes while the process drains.

``Shutdown`` (``app[appkeys.SHUTDOWN]``) is this process's state, not the
service's: another instance keeps serving, so it lives in memory. Once
``begin()`` is called (``service.server`` calls it on SIGTERM or SIGINT):

- ``/readyz`` answers 503 at once, so a load balancer stops sending traffic;
- ``shutdown_middleware`` refuses every request that would start work (any
  method but GET/HEAD/OPTIONS, except cancelling a job) with 503
  ``服务正在停止，请稍后重试``: no new deletion or job starts here;
- requests that started work before are counted (``in_flight``) and the
  server waits for them (``idle()``) for at most ``server.shutdown_grace``
  seconds, while the listener stays open for probes and reads; whatever is
  still running then is cancelled by aiohttp's shutdown, which the deletion
  protocol survives as it survives a crash (a tree in the trash is settled
  by its record at the next start).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from service import appkeys
from service.errors import ServiceUnavailable

STOPPING_MESSAGE = "服务正在停止，请稍后重试"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ShuttingDown(ServiceUnavailable):
    default_message = STOPPING_MESSAGE


class Shutdown:
    def __init__(self) -> None:
        self.stopping = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self) -> None:
        self.stopping = True

    async def idle(self) -> None:
        """Return once no request that started work is still running."""
        await self._idle.wait()

    def _enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()


def _starts_work(request: web.Request) -> bool:
    return request.method not in _SAFE_METHODS and not request.path.endswith("/cancel")


@web.middleware
async def shutdown_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    state = request.app[appkeys.SHUTDOWN]
    if not _starts_work(request):
        return await handler(request)
    if state.stopping:
        raise ShuttingDown()
    state._enter()
    try:
        return await handler(request)
    finally:
        state._leave()
