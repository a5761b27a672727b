"""Shared test set-up: coroutine tests run on a fresh event loop with a deadline."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.services import timeout_scale

# Fixtures every test may use: a private Postfix, a throwaway slapd.
pytest_plugins = ["tests.support.postfix", "tests.support.slapd"]

# Every timeout in the tests is multiplied by this (slow or loaded machines).
TIMEOUT_SCALE = timeout_scale()
# Deadline of one coroutine test.
ASYNC_TEST_DEADLINE = 60.0 * TIMEOUT_SCALE


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests with asyncio.run (no plugin needed)."""
    func = pyfuncitem.obj
    if not inspect.iscoroutinefunction(func):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs: dict[str, Any] = {name: pyfuncitem.funcargs[name] for name in names}

    async def _run() -> None:
        async with asyncio.timeout(ASYNC_TEST_DEADLINE):
            await func(**kwargs)

    asyncio.run(_run())
    return True


@pytest.fixture
def settings_file(tmp_path: Any) -> Iterator[Any]:
    """Write a settings file from text; returns its path."""

    def _write(text: str, name: str = "settings.py") -> Any:
        path = tmp_path / name
        path.write_text(text)
        return path

    yield _write
