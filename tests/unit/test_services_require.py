"""tests/support/services.py: skip locally, fail in CI, scaled timeouts, ports."""

from __future__ import annotations

import socket
import stat
import time
from pathlib import Path

import pytest

from tests.support import services

Skipped = pytest.skip.Exception
Failed = pytest.fail.Exception


@pytest.fixture
def empty_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holds only an empty directory, and sbin is not searched either."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(services, "SBIN_DIRS", ())
    return bin_dir


@pytest.mark.parametrize("value", [None, "", "0", "no"])
def test_missing_binary_skips_locally(
    empty_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv(services.REQUIRE_ALL_ENV, raising=False)
    else:
        monkeypatch.setenv(services.REQUIRE_ALL_ENV, value)

    with pytest.raises(Skipped, match="postfix not found: Debian package postfix"):
        services.require("postfix", "Debian package postfix")


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_missing_binary_fails_when_all_backends_required(
    empty_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(services.REQUIRE_ALL_ENV, value)

    with pytest.raises(Failed, match=r"slapd not found: Debian package slapd.*REQUIRE_ALL"):
        services.require("slapd", "Debian package slapd")


def test_binary_found_on_path(empty_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(services.REQUIRE_ALL_ENV, "1")
    program = empty_path / "fake-daemon"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)

    assert services.require("fake-daemon", "a test") == str(program)


def test_binary_found_in_sbin(empty_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sbin = empty_path.parent / "sbin"
    sbin.mkdir()
    program = sbin / "fake-daemon"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    monkeypatch.setattr(services, "SBIN_DIRS", (str(sbin),))

    assert services.require("fake-daemon") == str(program)


def test_missing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(services.REQUIRE_ALL_ENV, raising=False)
    with pytest.raises(Skipped, match="cannot import no_such_module_for_tests"):
        services.require_module("no_such_module_for_tests")
    monkeypatch.setenv(services.REQUIRE_ALL_ENV, "1")
    with pytest.raises(Failed):
        services.require_module("no_such_module_for_tests")
    assert services.require_module("json").__name__ == "json"


def test_require_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(services.REQUIRE_ALL_ENV, raising=False)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        services.require_tcp("127.0.0.1", listener.getsockname()[1], "listening")
    port = services.free_port()
    with pytest.raises(Skipped, match=f"nothing answers on 127.0.0.1:{port}"):
        services.require_tcp("127.0.0.1", port, "nothing there")


def test_timeout_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(services.TIMEOUT_SCALE_ENV, raising=False)
    assert services.timeout_scale() == 1.0
    assert services.scaled(3) == 3

    monkeypatch.setenv(services.TIMEOUT_SCALE_ENV, "2.5")
    assert services.timeout_scale() == 2.5
    assert services.scaled(4) == 10.0
    before = time.monotonic()
    assert before + 10 <= services.deadline_in(4) <= time.monotonic() + 10


@pytest.mark.parametrize("value", ["fast", "0", "-1", "nan", "inf"])
def test_timeout_scale_rejects_nonsense(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(services.TIMEOUT_SCALE_ENV, value)
    with pytest.raises(ValueError, match=services.TIMEOUT_SCALE_ENV):
        services.timeout_scale()


def test_free_port_and_wait_for_port() -> None:
    port = services.free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        services.wait_for_port("127.0.0.1", port, services.deadline_in(5))

    start = time.monotonic()
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
        services.wait_for_port("127.0.0.1", port, time.monotonic() + 0.3)
    assert time.monotonic() - start < 5


def test_wait_until_returns_first_truthy_value() -> None:
    calls = iter([0, None, "", "done", "later"])
    assert services.wait_until(lambda: next(calls), services.deadline_in(5)) == "done"
    assert services.wait_until(lambda: None, time.monotonic() + 0.05) is None
