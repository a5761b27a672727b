"""asyncio helpers for code that may start outside a task.

The server answers a request without an asyncio task when the answer needs no
waiting (most requests of a chain whose lookups are cached, every request of a
chain of pure plugins): it steps the answering coroutine once, by hand, and
only when that coroutine waits does it hand the rest to a new task
(:class:`Resume`).  A task costs about as much as parsing a request, so this
is the hot path's largest saving.

Until the coroutine waits for the first time it runs outside a task, where
``asyncio.timeout()`` (which cancels the *current task*) cannot work.  Code on
the request path therefore takes its deadlines from here: :func:`timeout` and
:func:`timeout_at` first move into a task (:func:`to_task`, one bare yield
that the server turns into a task) and then arm an ordinary asyncio timeout.
Inside a task they are asyncio's own.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["Resume", "resume_until", "step", "timeout", "timeout_at", "to_task", "within"]

_current_task = asyncio.current_task


@types.coroutine
def _bare_yield() -> Generator[None, None, None]:
    # A bare yield: a task reschedules itself at once (asyncio.sleep(0));
    # the server's hand stepping sees None and starts a task for the rest.
    yield


async def to_task() -> None:
    """Make sure the rest of this coroutine runs inside an asyncio task."""
    if _current_task() is None:
        await _bare_yield()


class Resume:
    """Awaitable that continues a coroutine already stepped once (``yield from``).

    The futures the coroutine yields pass up to the running task unchanged, and
    what the task sends or throws in (a result, a cancellation) goes back down:
    exactly what ``await coro`` would have done had it not been started.  A
    first step that yielded None (see :func:`to_task`) is continued at once.
    """

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, yielded = self.coro, self.first
        self.first = None
        if yielded is None:
            try:
                yielded = coro.send(None)
            except StopIteration as stop:
                return stop.value
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - cancellation goes to the coroutine
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def step(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run ``coro``'s first step: ``(True, result)`` if it finished, else
    ``(False, what it yielded)`` (hand that to :class:`Resume` in a task).

    An exception of the coroutine propagates (the coroutine is then closed).
    """
    try:
        return False, coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    except BaseException:
        coro.close()
        raise


async def within(coro: Coroutine[Any, Any, Any], budget: float) -> Any:
    """Await ``coro`` within ``budget`` seconds (TimeoutError after that).

    The first step runs at once: a coroutine that answers without waiting (pure
    logic, a cached lookup) needs no timer, and arming one costs more than most
    such plugins.  Only one that waits gets the deadline, counted from its
    start.
    """
    deadline = asyncio.get_running_loop().time() + budget
    done, first = step(coro)
    if done:
        return first
    return await resume_until(coro, first, deadline)


async def resume_until(coro: Coroutine[Any, Any, Any], first: Any, deadline: float) -> Any:
    """Finish ``coro`` (stepped once, it yielded ``first``) by loop time ``deadline``.

    TimeoutError after that.  Moves into a task first if need be.
    """
    if _current_task() is None:
        await _bare_yield()
    async with asyncio.timeout_at(deadline):
        return await Resume(coro, first)


class _Deadline:
    """``async with``: asyncio.timeout_at(when), entered from inside a task."""

    __slots__ = ("_cm", "_when")

    def __init__(self, when: float | None) -> None:
        self._when = when
        self._cm: asyncio.Timeout | None = None

    async def __aenter__(self) -> asyncio.Timeout:
        if _current_task() is None:
            await _bare_yield()
        self._cm = cm = asyncio.timeout_at(self._when)
        await cm.__aenter__()
        return cm

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._cm is not None
        await self._cm.__aexit__(*exc_info)  # raises TimeoutError when it expired


def timeout(delay: float | None) -> _Deadline:
    """``asyncio.timeout(delay)`` that also works where a coroutine starts outside a task."""
    when = None if delay is None else asyncio.get_running_loop().time() + delay
    return _Deadline(when)


def timeout_at(when: float | None) -> _Deadline:
    """``asyncio.timeout_at(when)`` that also works outside a task (see :func:`timeout`)."""
    return _Deadline(when)
