"""Blocking calls made together, run together: one worker thread for a group.

A group of tasks goes through each step of the deletion at once (one
coroutine per task, gathered), so each step's blocking call (an lstat, a
rename) is asked for by every task in the same turn of the event loop.
``Coalesced`` runs all the calls asked for in one turn one after the other in
a single worker thread, rather than one thread hop each: a hop costs more
than the call it carries (a wake-up, the GIL handed back and forth, a
callback on the loop), and under load the hops, not the calls, were most of
a small task's time.

Each caller still gets its own result or exception, and a caller that is
cancelled while its call runs leaves it to finish, as with
``asyncio.to_thread``. With ``many``, the turn's calls are one call of
``many`` (a list of the calls' arguments in, an outcome each out): for work
that is cheaper asked for at once, such as the purges sent to the purge
helper in one request.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

_Call = tuple[tuple[Any, ...], dict[str, Any], "asyncio.Future[Any]"]


class Coalesced(Generic[P, R]):
    """``await coalesced(*args)``: ``fn(*args)`` in a worker thread, together
    with the other calls made in the same turn of the event loop."""

    def __init__(
        self,
        fn: Callable[P, R],
        many: Callable[[list[tuple[Any, ...]]], list[R | BaseException]] | None = None,
    ) -> None:
        self._fn = fn
        self._many = many
        # Each event loop's calls of this turn; one loop per thread, but an
        # instance may serve several (a module-level one in tests, the CLI).
        self._calls: dict[asyncio.AbstractEventLoop, list[_Call]] = {}
        self._lock = threading.Lock()

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        with self._lock:
            calls = self._calls.setdefault(loop, [])
            if not calls:
                loop.call_soon(self._start, loop)
            calls.append((args, kwargs, future))
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            calls = self._calls.pop(loop, [])
        if not calls:
            return
        try:
            loop.run_in_executor(None, self._run, loop, calls)
        except RuntimeError as e:  # the executor is shut down: the loop is closing
            _settle([(future, None, e) for _, _, future in calls])

    def _run(self, loop: asyncio.AbstractEventLoop, calls: list[_Call]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        if self._many is not None:
            try:
                if any(kwargs for _, kwargs, _ in calls):
                    raise TypeError("a call of many takes positional arguments only")
                results = self._many([args for args, _, _ in calls])
                if len(results) != len(calls):
                    raise RuntimeError(f"{len(results)} outcomes for {len(calls)} calls")
            except BaseException as e:  # each caller's to see: none left waiting
                results = [e] * len(calls)
            for (_, _, future), result in zip(calls, results, strict=True):
                error = result if isinstance(result, BaseException) else None
                outcomes.append((future, None if error else result, error))
        else:
            for args, kwargs, future in calls:
                try:
                    outcomes.append((future, self._fn(*args, **kwargs), None))
                except BaseException as e:  # the caller's to see, as from to_thread
                    outcomes.append((future, None, e))
        loop.call_soon_threadsafe(_settle, outcomes)


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if future.cancelled():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
