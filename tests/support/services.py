"""Shared helpers for tests that need something outside Python.

Every test that needs an external program or server asks for it through this
module, so that a missing one is handled the same way everywhere:

* locally, the test is **skipped** with the given reason;
* with ``REQUIRE_ALL_BACKENDS=1`` in the environment (CI sets it), the test
  **fails** instead, so nothing is silently skipped in CI.

Timeouts are multiplied by ``IREDAPD_TEST_TIMEOUT_SCALE`` (a float, default
1.0) so that a slow or loaded machine can stretch every wait at once::

    deadline = deadline_in(10)          # 10 s, scaled, as a monotonic instant
    wait_for_port("127.0.0.1", port, deadline)

Ports are picked at run time with :func:`free_port` (other people run tests on
the same machine at the same time; never hard-code a port).
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import time
from collections.abc import Callable
from types import ModuleType
from typing import NoReturn, TypeVar

import pytest

__all__ = [
    "REQUIRE_ALL_ENV",
    "SBIN_DIRS",
    "TIMEOUT_SCALE_ENV",
    "deadline_in",
    "free_port",
    "missing",
    "require",
    "require_all_backends",
    "require_module",
    "require_root",
    "require_tcp",
    "scaled",
    "timeout_scale",
    "wait_for_port",
    "wait_until",
]

REQUIRE_ALL_ENV = "REQUIRE_ALL_BACKENDS"
TIMEOUT_SCALE_ENV = "IREDAPD_TEST_TIMEOUT_SCALE"

# Daemons (postfix, slapd, saslpasswd2) live in sbin, which is not on every
# user's PATH; these are searched after PATH.  Tests may monkeypatch it.
SBIN_DIRS: tuple[str, ...] = ("/usr/sbin", "/sbin", "/usr/local/sbin")

T = TypeVar("T")


def require_all_backends() -> bool:
    """True when a missing service must fail the test instead of skipping it."""
    return os.environ.get(REQUIRE_ALL_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def missing(reason: str) -> NoReturn:
    """Skip the test (locally) or fail it (``REQUIRE_ALL_BACKENDS=1``)."""
    if require_all_backends():
        pytest.fail(f"{reason} ({REQUIRE_ALL_ENV}=1, so this is a failure, not a skip)")
    pytest.skip(reason)


def require(name: str, reason: str | None = None) -> str:
    """Return the full path of the program ``name``, or skip/fail.

    PATH is searched first, then :data:`SBIN_DIRS`.

    Args:
        name: the program, e.g. ``"postfix"`` or ``"slapd"``.
        reason: why the test needs it (the Debian package, say); shown in the
            skip or failure message.
    """
    path = os.environ.get("PATH", "")
    found = shutil.which(name, path=os.pathsep.join([path, *SBIN_DIRS]))
    if found is None:
        missing(f"{name} not found" + (f": {reason}" if reason else ""))
    return found


def require_module(name: str, reason: str | None = None) -> ModuleType:
    """Import and return the Python module ``name``, or skip/fail."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"cannot import {name} ({exc})" + (f": {reason}" if reason else ""))


def require_root(reason: str | None = None) -> None:
    """Skip/fail unless running as root (Postfix's master must be started by root)."""
    if os.geteuid() != 0:
        missing("needs root" + (f": {reason}" if reason else ""))


def require_tcp(host: str, port: int, reason: str | None = None, timeout: float = 2.0) -> None:
    """Skip/fail unless something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=scaled(timeout)):
            pass
    except OSError as exc:
        missing(f"nothing answers on {host}:{port} ({exc})" + (f": {reason}" if reason else ""))


def timeout_scale() -> float:
    """The factor from ``IREDAPD_TEST_TIMEOUT_SCALE`` (default 1.0).

    Raises:
        ValueError: the variable is set but is not a positive number; a typo
            here must not silently turn every timeout into something else.
    """
    raw = os.environ.get(TIMEOUT_SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_SCALE_ENV}={raw!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{TIMEOUT_SCALE_ENV}={raw!r} must be a positive finite number")
    return value


def scaled(seconds: float) -> float:
    """``seconds`` multiplied by :func:`timeout_scale`."""
    return seconds * timeout_scale()


def deadline_in(seconds: float) -> float:
    """A :func:`time.monotonic` instant ``scaled(seconds)`` from now."""
    return time.monotonic() + scaled(seconds)


def free_port(*hosts: str) -> int:
    """A TCP port that is free right now on every one of ``hosts`` (default 127.0.0.1).

    The port is only free until someone else takes it: bind it soon.  When a
    server can listen on port 0 and report its port, prefer that.
    """
    if not hosts:
        hosts = ("127.0.0.1",)
    last: OSError | None = None
    for _ in range(50):
        with socket.socket(_family(hosts[0]), socket.SOCK_STREAM) as first:
            first.bind((hosts[0], 0))
            port: int = first.getsockname()[1]
            try:
                for host in hosts[1:]:
                    with socket.socket(_family(host), socket.SOCK_STREAM) as other:
                        other.bind((host, port))
            except OSError as exc:
                last = exc
                continue
            return port
    raise OSError(f"no port free on all of {hosts}: {last}")


def wait_for_port(host: str, port: int, deadline: float | None = None) -> None:
    """Wait until ``host:port`` accepts a TCP connection.

    Args:
        deadline: a :func:`time.monotonic` instant (see :func:`deadline_in`);
            default ``deadline_in(10)``.

    Raises:
        TimeoutError: still refused at the deadline.
    """
    if deadline is None:
        deadline = deadline_in(10)
    last: OSError | None = None

    def connects() -> bool:
        nonlocal last
        remaining = max(deadline - time.monotonic(), 0.05)
        try:
            with socket.create_connection((host, port), timeout=min(remaining, 2.0)):
                return True
        except OSError as exc:
            last = exc
            return False

    if not wait_until(connects, deadline):
        raise TimeoutError(f"{host}:{port} did not accept a connection in time: {last}")


def wait_until(
    predicate: Callable[[], T], deadline: float | None = None, interval: float = 0.02
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that, or the last falsy value.

    For things that cannot be awaited (a file appearing, a log line).  The
    interval grows up to 0.2 s so a long wait does not spin.
    """
    if deadline is None:
        deadline = deadline_in(10)
    while True:
        result = predicate()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(min(interval, max(deadline - time.monotonic(), 0)))
        interval = min(interval * 1.5, 0.2)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
