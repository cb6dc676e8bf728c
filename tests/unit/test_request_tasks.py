"""A load's request task that raises is reported, not lost (scripts.tasks)."""

from __future__ import annotations

import asyncio

import pytest

from scripts.tasks import RequestTasks


async def test_a_failed_request_task_fails_the_run_and_a_finished_one_leaves() -> None:
    tasks: RequestTasks[int] = RequestTasks()

    async def answer() -> int:
        return 1

    async def crash() -> int:
        raise OverflowError("numerical result out of range")

    await tasks.start(answer())
    await asyncio.sleep(0)
    assert len(tasks) == 0
    tasks.check()  # nothing failed
    with pytest.raises(OverflowError):
        await tasks.start(crash())
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match=r"1 request task.*OverflowError") as info:
        tasks.check()
    assert isinstance(info.value.__cause__, OverflowError)


async def test_a_cancelled_request_task_is_not_a_failure() -> None:
    tasks: RequestTasks[None] = RequestTasks()
    task = tasks.start(asyncio.sleep(10))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert len(tasks) == 0 and tasks.failed == 0
    tasks.check()
