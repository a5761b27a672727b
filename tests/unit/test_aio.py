"""iredapd.aio: stepping a coroutine by hand, then finishing it in a task."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from iredapd import aio


async def _first_step_outside_a_task(coro: Any) -> tuple[bool, Any]:
    """aio.step(coro) run from a plain loop callback, where no task is current."""
    loop = asyncio.get_running_loop()
    result: asyncio.Future[tuple[bool, Any]] = loop.create_future()

    def first_step() -> None:
        assert asyncio.current_task() is None
        try:
            result.set_result(aio.step(coro))
        except Exception as exc:
            result.set_exception(exc)

    loop.call_soon(first_step)
    return await result


async def _started_outside_a_task(coro: Any) -> Any:
    """What the server does: one step by hand (no current task), the rest in a task."""
    done, value = await _first_step_outside_a_task(coro)
    if done:
        return ("at once", value)
    loop = asyncio.get_running_loop()
    return ("in a task", await loop.create_task(_finish(aio.Resume(coro, value))))


async def _finish(resume: aio.Resume) -> Any:
    return await resume


async def test_a_coroutine_that_never_waits_finishes_in_its_first_step() -> None:
    async def pure() -> int:
        return 42

    assert await _started_outside_a_task(pure()) == ("at once", 42)


async def test_an_exception_of_the_first_step_propagates() -> None:
    async def broken() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await _started_outside_a_task(broken())


async def test_a_coroutine_that_waits_goes_on_in_a_task_with_its_result() -> None:
    async def waits() -> str:
        await asyncio.sleep(0.01)
        fut = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, fut.set_result, "late")
        return await fut

    assert await _started_outside_a_task(waits()) == ("in a task", "late")


async def test_timeout_outside_a_task_moves_into_one_and_holds() -> None:
    seen: list[object] = []

    async def deadline() -> str:
        seen.append(asyncio.current_task())
        try:
            async with aio.timeout(0.05):
                seen.append(asyncio.current_task())
                await asyncio.sleep(30)
        except TimeoutError:
            return "timed out"
        return "slept"

    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await _started_outside_a_task(deadline()) == ("in a task", "timed out")
    assert loop.time() - started < 5
    assert seen[0] is None and isinstance(seen[1], asyncio.Task)


async def test_timeout_inside_a_task_is_asyncios_own() -> None:
    with pytest.raises(TimeoutError):
        async with aio.timeout(0.01):
            await asyncio.sleep(30)
    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        async with aio.timeout_at(loop.time() + 0.01):
            await asyncio.sleep(30)
    async with aio.timeout(None):
        await asyncio.sleep(0)


async def test_within_counts_the_budget_from_the_start() -> None:
    async def pure() -> str:
        return "now"

    assert await aio.within(pure(), 0.0) == "now"  # no wait: no deadline needed

    async def slow() -> str:
        await asyncio.sleep(30)
        return "never"

    assert await _started_outside_a_task(_expect_timeout(aio.within(slow(), 0.05))) == (
        "in a task",
        "TimeoutError",
    )


async def _expect_timeout(coro: Any) -> str:
    try:
        await coro
    except TimeoutError:
        return "TimeoutError"
    return "no timeout"


async def test_cancelling_the_task_reaches_the_resumed_coroutine() -> None:
    cleaned: list[str] = []

    async def waits() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append("finally ran")

    coro = waits()
    done, first = await _first_step_outside_a_task(coro)
    assert not done
    task = asyncio.get_running_loop().create_task(_finish(aio.Resume(coro, first)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally ran"]


async def test_to_task_is_a_no_op_inside_a_task() -> None:
    task = asyncio.current_task()
    await aio.to_task()
    assert asyncio.current_task() is task
