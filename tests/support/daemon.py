"""Run the daemon for tests: in-process (fast) or as a real subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iredapd.app import PolicyService, load_namespace
from iredapd.chain import Chain
from iredapd.handler import PolicyHandler
from iredapd.protocol import RawRequest
from iredapd.server import LineServer
from iredapd.services import Services
from tests.conftest import TIMEOUT_SCALE
from tests.support.requests import encode

REPO = Path(__file__).resolve().parents[2]


@dataclass
class InProcess:
    host: str
    port: int
    server: LineServer[RawRequest]
    handler: PolicyHandler


@contextlib.asynccontextmanager
async def running_server(**overrides: Any) -> AsyncIterator[InProcess]:
    """The policy listener on 127.0.0.1:<free port> in this event loop."""
    overrides.setdefault("listen_port", 0)
    with contextlib.ExitStack() as stack:
        if "DATA_DIR" not in overrides:
            overrides["DATA_DIR"] = stack.enter_context(tempfile.TemporaryDirectory())
        async with _running(overrides) as srv:
            yield srv


@contextlib.asynccontextmanager
async def _running(overrides: dict[str, Any]) -> AsyncIterator[InProcess]:
    loaded = load_namespace({}, overrides=overrides)
    services = Services(loaded.settings)
    await asyncio.to_thread(services.open_databases)
    chain = Chain.build(loaded.settings, services, loaded.specs)
    await chain.start()
    handler = PolicyHandler(chain)
    server: LineServer[RawRequest] = LineServer(
        PolicyService(handler), idle_timeout=loaded.settings.IDLE_TIMEOUT
    )
    host, port = await server.listen("127.0.0.1", 0)
    try:
        yield InProcess(host, port, server, handler)
    finally:
        await server.stop(1.0)
        await chain.close()
        await services.close()


class PolicyClient:
    """A Postfix-like client: one connection, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int) -> PolicyClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, timeout: float = 10.0) -> str:
        """The next action (without 'action='); raises EOFError if the server closed."""
        async with asyncio.timeout(timeout * TIMEOUT_SCALE):
            line = await self.reader.readline()
            if not line:
                raise EOFError("connection closed")
            blank = await self.reader.readline()
        assert blank == b"\n", blank
        text = line.decode()
        assert text.startswith("action=") and text.endswith("\n"), text
        return text[len("action=") : -1]

    async def ask(self, attrs: Mapping[str, str], timeout: float = 10.0) -> str:
        await self.send(encode(attrs))
        return await self.reply(timeout)

    async def closed_by_server(self, timeout: float = 10.0) -> bool:
        """True if the server closes the connection (EOF) within the timeout, sending nothing."""
        try:
            async with asyncio.timeout(timeout * TIMEOUT_SCALE):
                data = await self.reader.read()
        except ConnectionResetError:
            return True  # closed with unread input pending: the kernel sends RST
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@dataclass
class Subprocess:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    settings_path: Path
    lines: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until the daemon's log matches ``pattern``."""
        deadline = time.monotonic() + timeout * TIMEOUT_SCALE
        rx = re.compile(pattern)
        while time.monotonic() < deadline:
            m = rx.search(self.log())
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise AssertionError(f"log never matched {pattern!r}:\n{self.log()}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout * TIMEOUT_SCALE)


def daemon_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "iredapd", *args]


@contextlib.contextmanager
def subprocess_daemon(
    tmp_path: Path, settings: str = "", *, extra_args: tuple[str, ...] = ()
) -> Iterator[Subprocess]:
    """Start ``iredapd --foreground`` with a settings file; yield once it listens."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    settings_path = tmp_path / "settings.py"
    base = (
        "listen_address = '127.0.0.1'\nlisten_port = 0\n"
        f"DATA_DIR = {str(data)!r}\nlog_level = 'debug'\n"
    )
    settings_path.write_text(base + settings)
    log_path = tmp_path / "daemon.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("NOTIFY_SOCKET", None)
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            daemon_command("--foreground", "--config", str(settings_path), *extra_args),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
    daemon = Subprocess(proc, 0, log_path, settings_path)
    try:
        m = daemon.wait_log(r"listening on 127\.0\.0\.1:(\d+)\n", timeout=20)
        daemon.port = int(m.group(1))
        yield daemon
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
