"""A background task that works in rounds and reaches peers over one HTTP session it owns.

The read path's repairs and scrub (:mod:`node.reader`) and the cross-audit
(:mod:`node.audit.auditor`) share this lifecycle: start opens the session (TLS and read tokens
from :class:`node.access.ReaderHttp`), a task runs a round every ``interval_ms`` (sooner when
woken), a failing round is logged and counted but never ends the task, and stop cancels the
task and closes the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp

from node.access import ReaderHttp

log = logging.getLogger("medchain.node")


class PeriodicRounds:
    """One owned task running ``run_round`` every ``interval_ms``; see the module docstring."""

    def __init__(self, name: str, interval_ms: int, run_round: Callable[[], Awaitable[None]]):
        self.name = name
        self.interval_ms = interval_ms
        self.round_errors = 0
        self._run_round = run_round
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def open(self, http: ReaderHttp | None) -> aiohttp.ClientSession:
        """Open the session (plain HTTP without ``http``); RuntimeError if already open."""
        if self._session is not None:
            raise RuntimeError(f"{self.name} already started")
        self._session = (http or ReaderHttp()).session()
        return self._session

    def spawn(self) -> None:
        """Start the rounds (tests that drive rounds themselves do not call this)."""
        if self._session is None:
            raise RuntimeError(f"{self.name} not started")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.name)

    def wake(self) -> None:
        """Run the next round now rather than at the end of the interval."""
        self._wake.set()

    async def stop(self) -> None:
        """Cancel the task and close the session. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _run(self) -> None:
        interval = self.interval_ms / 1000.0
        while True:
            started = time.monotonic()
            self._wake.clear()
            try:
                await self._run_round()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug in one round must not end the task; it is logged and counted.
                self.round_errors += 1
                log.exception("%s round failed", self.name)
            delay = max(0.0, interval - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
