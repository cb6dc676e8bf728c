"""Long-poll waiters: woken by a commit, bounded in number, and never holding a stop open."""

from __future__ import annotations

import asyncio

import pytest

from node.api import Overloaded
from node.waiters import CommitWaiters

TX = b"\x01" * 32
LONG_MS = 600_000  # far longer than any bound below: a wait that returns was released


def _run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 10.0))  # type: ignore[arg-type]


def test_a_commit_wakes_its_waiter() -> None:
    async def go() -> None:
        w = CommitWaiters(4)
        task = asyncio.create_task(w.wait(TX, LONG_MS))
        await asyncio.sleep(0)
        assert w.count == 1
        w.wake([TX])
        await task
        assert w.count == 0

    _run(go())


def test_waiters_are_bounded() -> None:
    async def go() -> None:
        w = CommitWaiters(1)
        task = asyncio.create_task(w.wait(TX, LONG_MS))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await w.wait(b"\x02" * 32, LONG_MS)
        w.release_all()
        await task

    _run(go())


def test_after_close_a_new_long_poll_returns_at_once() -> None:
    """Clients keep polling until the listener closes; a poll that arrives after the node began
    to stop must not hold its graceful shutdown for the whole wait."""

    async def go() -> None:
        w = CommitWaiters(4)
        early = asyncio.create_task(w.wait(TX, LONG_MS))
        await asyncio.sleep(0)
        w.release_all(close=True)
        await early
        await w.wait(TX, LONG_MS)
        assert w.count == 0

    _run(go())


def test_release_without_close_keeps_accepting_waits() -> None:
    async def go() -> None:
        w = CommitWaiters(4)
        w.release_all()
        task = asyncio.create_task(w.wait(TX, LONG_MS))
        await asyncio.sleep(0)
        assert w.count == 1, "release_all answers only those waiting now"
        w.wake([TX])
        await task

    _run(go())
