"""The request tasks of a load: each owned until it ends, none failing unseen.

A request task ends with its node's answer recorded, whatever that answer was; one that raises
instead is a bug in the load tool, and its request's transactions were never accounted for. The
first such exception is kept and re-raised by :meth:`RequestTasks.check` once the load is over:
a run that lost track of requests must fail, not print figures that omit them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class RequestTasks(Generic[T]):
    """A set of running request tasks that remembers the first one that failed."""

    __slots__ = ("_tasks", "failed", "failure")

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[T]] = set()
        self.failure: BaseException | None = None
        self.failed = 0
        """Request tasks that raised (each one logged)."""

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[T]]:
        return iter(list(self._tasks))

    def start(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[T]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here, so asyncio never reports it as lost
        if exc is not None:
            self.failed += 1
            if self.failure is None:
                self.failure = exc
                log.error("a request task failed", exc_info=exc)

    def check(self) -> None:
        """RuntimeError (from the first failure) if any request task raised."""
        if self.failure is not None:
            raise RuntimeError(
                f"{self.failed} request task(s) of the load failed; the first: {self.failure!r}"
            ) from self.failure
