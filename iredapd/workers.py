"""Several worker processes on the same ports (WORKERS > 1), under one supervisor.

Each worker is the whole daemon (``iredapd`` started again with
``IREDAPD_WORKER=<n>``) and binds the listening ports with SO_REUSEPORT, so
the kernel spreads Postfix's connections over them and every core does work.
Counters and state live in the database, so workers agree as separate hosts
do.  The supervisor serves nothing; it:

* resolves ``listen_port = 0`` (and the SRS ports) once, so all workers share
  the same port, and holds that port while they run;
* starts the workers, reports READY to systemd once all of them listen, and
  writes ``pid_file``;
* passes SIGTERM, SIGINT and SIGHUP on (checking the settings first on
  SIGHUP, so a broken file is reported once, here);
* restarts a worker that dies, unless it dies again right after starting
  (RESTART_BURST times in a row: then it stops everything and exits 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Final

from iredapd.app import load_all, sd_notify
from iredapd.chain import PluginLoadError
from iredapd.config import ConfigError, Settings
from iredapd.srs_service import srs_enabled

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)

# A worker that exits within this many seconds of its start counts as a
# failed start; RESTART_BURST such failures in a row stop the supervisor.
QUICK_DEATH: Final = 5.0
RESTART_BURST: Final = 5
RESTART_DELAY: Final = 1.0
# How long workers get to report that they listen.
READY_TIMEOUT: Final = 60.0
# Exit codes of a worker that mean "restarting will not help".
FATAL_CODES: Final = frozenset({2, 69, 71, 78})


def _reserve(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) with SO_REUSEPORT: resolves port 0 and keeps it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, int(sock.getsockname()[1])


class Supervisor:
    """Runs WORKERS copies of the daemon and keeps them running."""

    def __init__(self, settings: Settings, argv: Sequence[str], config: str | None) -> None:
        self.settings = settings
        self.argv = list(argv)
        self.config = config
        self.count = settings.WORKERS
        self.children: dict[int, asyncio.subprocess.Process] = {}
        self.started: dict[int, float] = {}
        self.failures = 0
        self.stopping = False
        self.exit_code = 0
        self._reserved: list[socket.socket] = []
        self._extra: list[str] = []
        self._changed = asyncio.Event()

    def _reserve_ports(self) -> None:
        s = self.settings
        ports = [("listen_port", s.listen_port)]
        if srs_enabled(s):
            ports += [
                ("srs_forward_port", s.srs_forward_port),
                ("srs_reverse_port", s.srs_reverse_port),
            ]
        for name, port in ports:
            sock, bound = _reserve(s.listen_address, port)
            self._reserved.append(sock)
            self._extra += ["-o", f"{name}={bound}"]

    async def _spawn(self, n: int) -> asyncio.Event:
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, IREDAPD_WORKER=str(n), IREDAPD_READY_FD=str(write_fd))
        env.pop("NOTIFY_SOCKET", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "iredapd",
            *self.argv,
            *self._extra,
            env=env,
            pass_fds=(write_fd,),
        )
        os.close(write_fd)
        self.children[n] = proc
        self.started[n] = time.monotonic()
        ready = asyncio.Event()
        loop = asyncio.get_running_loop()

        def readable() -> None:
            with contextlib.suppress(OSError):
                os.read(read_fd, 1)
            loop.remove_reader(read_fd)
            os.close(read_fd)
            log.info("worker %d ready (pid %d)", n, proc.pid)
            ready.set()

        loop.add_reader(read_fd, readable)
        asyncio.get_running_loop().create_task(self._watch(n, proc))
        log.info("worker %d started (pid %d)", n, proc.pid)
        return ready

    async def _watch(self, n: int, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self.children.get(n) is proc:
            del self.children[n]
        self._changed.set()
        if self.stopping:
            return
        lived = time.monotonic() - self.started.get(n, 0.0)
        log.error("worker %d (pid %d) exited with status %s", n, proc.pid, code)
        if code in FATAL_CODES and lived < QUICK_DEATH:
            self.exit_code = code
            await self.stop()
            return
        self.failures = self.failures + 1 if lived < QUICK_DEATH else 0
        if self.failures >= RESTART_BURST:
            log.error("workers keep dying right after start; giving up")
            self.exit_code = 1
            await self.stop()
            return
        await asyncio.sleep(RESTART_DELAY)
        if not self.stopping:
            await self._spawn(n)

    def _signal_all(self, sig: int) -> None:
        for proc in list(self.children.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)

    async def reload(self) -> None:
        """Check the settings, then have every worker reload them."""
        try:
            load_all(self.config, None)
        except (ConfigError, PluginLoadError) as e:
            log.error("SIGHUP: settings invalid, workers keep the current ones: %s", e)
            return
        log.info("SIGHUP: reloading %d workers", len(self.children))
        self._signal_all(signal.SIGHUP)

    async def stop(self) -> None:
        """SIGTERM to every worker; SIGKILL to those still there after the grace."""
        if self.stopping:
            return
        self.stopping = True
        sd_notify("STOPPING=1")
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.SHUTDOWN_GRACE + 5.0
        while self.children and time.monotonic() < deadline:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._changed.wait()
        self._signal_all(signal.SIGKILL)

    async def run(self) -> int:
        """Start the workers and supervise them until SIGTERM/SIGINT."""
        try:
            self._reserve_ports()
        except OSError as e:
            log.error("cannot bind %s: %s", self.settings.listen_address, e.strerror or e)
            return 71
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()

        def on_term() -> None:
            task = loop.create_task(self.stop())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            self._changed.set()

        loop.add_signal_handler(signal.SIGTERM, on_term)
        loop.add_signal_handler(signal.SIGINT, on_term)
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        readies = [await self._spawn(n) for n in range(1, self.count + 1)]
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await asyncio.gather(*(r.wait() for r in readies))
        except TimeoutError:
            log.error("workers did not report ready within %.0fs", READY_TIMEOUT)
        if not self.stopping:
            if self.settings.pid_file:
                from iredapd.app import _write_pid_file

                _write_pid_file(self.settings.pid_file)
            sd_notify("READY=1")
            ports = ", ".join(str(s.getsockname()[1]) for s in self._reserved)
            log.info(
                "%d workers listening on %s port %s",
                self.count,
                self.settings.listen_address,
                ports,
            )
        while not self.stopping:
            self._changed.clear()
            await self._changed.wait()
        # stopping: wait until every worker is gone
        while self.children:
            self._changed.clear()
            await self._changed.wait()
        for sock in self._reserved:
            sock.close()
        if self.settings.pid_file:
            with contextlib.suppress(OSError):
                os.unlink(self.settings.pid_file)
        return self.exit_code
