"""The daemon assembled: settings + plugins -> services -> chain -> listeners.

Also the lifecycle: pid file, privilege drop, SIGTERM (graceful stop), SIGHUP
(reload, keeping the old settings when the new ones are invalid), and the
systemd readiness notification.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iredapd import __version__
from iredapd.chain import Chain, PluginLoadError, PluginSpec, declared_settings, discover_plugins
from iredapd.chain import plugin_search_path as _search_path
from iredapd.config import (
    ConfigError,
    Settings,
    build_settings,
    find_settings_file,
    read_settings_file,
)
from iredapd.handler import PolicyHandler
from iredapd.logs import LogSetup, configure_logging
from iredapd.protocol import PolicyParser, ProtocolError, RawRequest
from iredapd.server import LineServer, format_addresses
from iredapd.services import Services
from iredapd.srs_service import SRSChannels, SRSService, srs_enabled
from iredapd.storage.db import BackendUnavailable
from iredapd.tcptable import Request

__all__ = ["Daemon", "Loaded", "PolicyService", "load_all", "load_namespace", "sd_notify"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Loaded:
    """Validated settings and the plugin classes they enable."""

    settings: Settings
    specs: dict[str, PluginSpec]
    path: Path | None


def load_all(config: str | None, overrides: Mapping[str, Any] | None = None) -> Loaded:
    """Find, read and validate the settings, and import the enabled plugins.

    Raises ConfigError or PluginLoadError with a one-line reason.
    """
    path = find_settings_file(config)
    ns = read_settings_file(path) if path is not None else {}
    return load_namespace(ns, path=path, overrides=overrides)


def load_namespace(
    ns: Mapping[str, Any],
    *,
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Loaded:
    """Validate a settings namespace and import the plugins it enables."""
    # First pass: only what is needed to find the plugins; the plugins may
    # declare more setting names, which the second pass then accepts.
    core_ns = dict(ns)
    core_ns.update(overrides or {})
    probe = build_settings(
        {k: v for k, v in core_ns.items() if k in ("plugins", "PLUGIN_DIRS")},
        source=str(path or ""),
    )
    specs = discover_plugins(probe.plugins, _search_path(probe))
    settings = build_settings(
        ns,
        source=str(path or ""),
        plugin_settings=declared_settings(specs.values()),
        overrides=overrides,
    )
    return Loaded(settings, specs, path)


class PolicyService:
    """The policy port as a LineService: Postfix policy protocol in, actions out."""

    name = "policy"
    errors: tuple[type[Exception], ...] = (ProtocolError,)

    def __init__(self, handler: PolicyHandler) -> None:
        self.handler = handler

    def new_parser(self) -> PolicyParser:
        """A parser for one connection."""
        return PolicyParser()

    async def answer(self, item: RawRequest) -> bytes:
        """The reply bytes for one request."""
        return (await self.handler.answer(item)).render()


def sd_notify(message: str) -> bool:
    """Send a systemd notification (READY=1, STOPPING=1, ...) if NOTIFY_SOCKET is set."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.sendall(message.encode())
    except OSError as e:
        log.warning("cannot notify systemd: %s", e)
        return False
    return True


def worker_ready() -> None:
    """Tell the supervisor this worker listens (a byte on IREDAPD_READY_FD)."""
    fd = os.environ.get("IREDAPD_READY_FD")
    if fd and fd.isdigit():
        with contextlib.suppress(OSError):
            os.write(int(fd), b"R")
            os.close(int(fd))


def _write_pid_file(path: str) -> None:
    """Write the pid atomically (a pre-existing symlink is replaced, not followed)."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, p)


def _lookup_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"run_as_user {name!r} does not exist") from None


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    if not path.exists():
        return
    os.chown(path, uid, gid)
    for child in path.rglob("*"):
        os.chown(child, uid, gid, follow_symlinks=False)


def _drop_privileges(user: pwd.struct_passwd) -> None:
    os.initgroups(user.pw_name, user.pw_gid)
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)


class Daemon:
    """One running daemon: owns the listeners and swaps chains on reload."""

    def __init__(
        self,
        loaded: Loaded,
        *,
        config: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        foreground: bool = False,
        worker: int = 0,
    ) -> None:
        self.loaded = loaded
        #: 0: the only process; N >= 1: worker N under a supervisor (WORKERS > 1)
        self.worker = worker
        self.config = config
        self.overrides = dict(overrides or {})
        self.foreground = foreground
        self.settings = loaded.settings
        self.logsetup: LogSetup | None = None
        self.server: LineServer[RawRequest] | None = None
        self.srs_servers: list[LineServer[Request]] = []
        self._srs: SRSChannels | None = None
        self._fqdn = ""
        self.handler: PolicyHandler | None = None
        self.stop_event = asyncio.Event()
        self._reloading: asyncio.Task[bool] | None = None
        self._retiring: set[asyncio.Task[None]] = set()

    async def _make_chain(self, loaded: Loaded) -> Chain:
        """Services, databases and a started chain for ``loaded`` settings."""
        services = Services(loaded.settings)
        try:
            await asyncio.get_running_loop().run_in_executor(None, services.open_databases)
            chain = Chain.build(loaded.settings, services, loaded.specs)
            await chain.start()
        except BaseException:
            await services.close()
            raise
        return chain

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop gracefully.  Returns the exit status."""
        settings = self.settings
        self.logsetup = configure_logging(settings, foreground=self.foreground)
        try:
            return await self._run(settings)
        finally:
            self.logsetup.close()

    async def _run(self, settings: Settings) -> int:
        user = None
        if settings.run_as_user and os.geteuid() == 0:
            user = _lookup_user(settings.run_as_user)
        elif settings.run_as_user:
            log.info("not root: run_as_user %s ignored", settings.run_as_user)
        try:
            chain = await self._make_chain(self.loaded)
        except (PluginLoadError, BackendUnavailable, ConfigError) as e:
            log.error("cannot start: %s", e)
            return 78 if not isinstance(e, BackendUnavailable) else 69
        self.handler = PolicyHandler(chain, request_line=self.logsetup_line)
        self.server = LineServer(PolicyService(self.handler), idle_timeout=settings.IDLE_TIMEOUT)
        log.info(
            "Starting iRedAPD (version: %s, backend: %s), listening on %s:%d.",
            __version__,
            settings.backend,
            settings.listen_address,
            settings.listen_port,
        )
        try:
            await self.server.listen(
                settings.listen_address, settings.listen_port, reuse_port=self.worker > 0
            )
        except OSError as e:
            log.error(
                "cannot listen on %s:%d: %s",
                settings.listen_address,
                settings.listen_port,
                e.strerror or e,
            )
            await chain.close()
            await chain.services.close()
            return 71
        log.info("listening on %s", format_addresses(self.server.addresses))
        log.info("plugins (in order): %s", ", ".join(chain.names) or "none")
        try:
            await self._start_srs(settings, chain.services)
        except OSError as e:
            log.error("cannot listen for SRS: %s", e.strerror or e)
            await self.server.stop(0)
            await chain.close()
            await chain.services.close()
            return 71
        pid_file = settings.pid_file if not self.worker else ""  # the supervisor's
        if pid_file:
            _write_pid_file(pid_file)
        if user is not None:
            if settings.backend == "sqlite":
                _chown_tree(Path(settings.DATA_DIR), user.pw_uid, user.pw_gid)
            if pid_file:
                os.chown(pid_file, user.pw_uid, user.pw_gid)
            _drop_privileges(user)
            log.info("running as user %s (group %s)", user.pw_name, grp.getgrgid(user.pw_gid)[0])
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, self._schedule_reload)
        if self.worker:
            worker_ready()
        else:
            sd_notify("READY=1")
        await self.stop_event.wait()
        sd_notify("STOPPING=1")
        log.info(
            "stopping: no new connections, %.1fs for requests in flight", settings.SHUTDOWN_GRACE
        )
        grace = self.handler.chain.settings.SHUTDOWN_GRACE
        stops = [srv.stop(grace) for srv in self.srs_servers]
        cut = sum(await asyncio.gather(self.server.stop(grace), *stops))
        if cut:
            log.warning("stopped with %d connection(s) cut after the grace period", cut)
        for task in list(self._retiring):
            task.cancel()
        chain = self.handler.chain
        await chain.close()
        await chain.services.close()
        if pid_file:
            with contextlib.suppress(OSError):
                os.unlink(pid_file)
        log.info("stopped after %d requests", self.handler.requests)
        return 0

    async def _start_srs(self, settings: Settings, services: Services) -> None:
        """The SRS tcp_table listeners, when srs_secrets and srs_domain are set."""
        if not srs_enabled(settings):
            log.info("No SRS domain and/or secret strings in settings.py, not loaded.")
            return
        if not self._fqdn:
            # getfqdn() may ask DNS: not on the event loop
            loop = asyncio.get_running_loop()
            self._fqdn = settings.SERVER_HOSTNAME or await loop.run_in_executor(
                None, socket.getfqdn
            )
        self._srs = SRSChannels(settings, services, self._fqdn)
        for name, port, label in (
            ("srs_forward", settings.srs_forward_port, "sender rewriting"),
            ("srs_reverse", settings.srs_reverse_port, "recipient rewriting"),
        ):
            pick = (
                (lambda: self._channels().forward)
                if name == "srs_forward"
                else (lambda: self._channels().reverse)
            )
            server: LineServer[Request] = LineServer(
                SRSService(name, pick), idle_timeout=settings.IDLE_TIMEOUT
            )
            host, bound = await server.listen(
                settings.listen_address, port, reuse_port=self.worker > 0
            )
            self.srs_servers.append(server)
            log.info("Starting SRS %s channel, listening on %s:%d", label, host, bound)

    def _channels(self) -> SRSChannels:
        assert self._srs is not None
        return self._srs

    def logsetup_line(self, text: str) -> None:
        """The per-request log line, to the current log set-up."""
        if self.logsetup is not None:
            self.logsetup.request_line(text)

    def _schedule_reload(self) -> None:
        if self._reloading is not None and not self._reloading.done():
            log.warning("reload already in progress; SIGHUP ignored")
            return
        self._reloading = asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> bool:
        """Re-read settings and plugins; swap the chain.  False if the old ones stay."""
        assert self.handler is not None
        log.info("SIGHUP: reloading settings")
        try:
            loaded = load_all(self.config, self.overrides)
            chain = await self._make_chain(loaded)
        except (ConfigError, PluginLoadError, BackendUnavailable) as e:
            log.error("reload failed, keeping the current settings: %s", e)
            return False
        old_settings = self.handler.chain.settings
        new = loaded.settings
        if (new.listen_address, new.listen_port) != (
            old_settings.listen_address,
            old_settings.listen_port,
        ):
            log.warning("listen_address/listen_port changed: takes effect at the next restart")
        if self.logsetup is not None:
            target_changed = any(
                getattr(new, k) != getattr(old_settings, k)
                for k in (
                    "LOG_TARGET",
                    "LOG_FILE",
                    "SYSLOG_SERVER",
                    "SYSLOG_PORT",
                    "SYSLOG_FACILITY",
                )
            )
            if target_changed and not self.foreground:
                try:
                    fresh = configure_logging(new, foreground=self.foreground)
                except ConfigError as e:
                    log.error("new log target unusable, keeping the old one: %s", e)
                else:
                    self.logsetup.close()
                    self.logsetup = fresh
            self.logsetup.logger.setLevel(new.log_level.upper())
        old = self.handler.chain
        self.handler.chain = chain
        if self.srs_servers and srs_enabled(new):
            self._srs = SRSChannels(new, chain.services, self._fqdn)
        if srs_enabled(new) != bool(self.srs_servers) or (
            new.srs_forward_port,
            new.srs_reverse_port,
        ) != (old_settings.srs_forward_port, old_settings.srs_reverse_port):
            log.warning("SRS listeners changed: takes effect at the next restart")
        if self.server is not None:
            self.server.idle_timeout = new.IDLE_TIMEOUT
        self.loaded = loaded
        task = asyncio.get_running_loop().create_task(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        log.info(
            "settings reloaded (%s); plugins: %s",
            loaded.path or "defaults",
            ", ".join(chain.names) or "none",
        )
        return True

    async def _retire(self, chain: Chain) -> None:
        """Close an old chain once requests that started on it are done."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(chain.settings.REQUEST_TIMEOUT + 1.0):
                await chain.drained()
        await chain.close()
        await chain.services.close()
