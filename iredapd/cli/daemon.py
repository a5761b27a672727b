"""``iredapd``: the policy daemon (foreground; run it under a supervisor).

Exit status: 0 after a clean stop (SIGTERM/SIGINT), 2 for bad arguments,
78 for bad settings or plugins, 69 when a database is unreachable at start,
71 when the listening socket cannot be bound.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pprint import pformat

from iredapd import __version__
from iredapd.app import Daemon, load_all
from iredapd.chain import PluginLoadError
from iredapd.cli.common import (
    EX_CONFIG,
    EX_OK,
    add_config_arguments,
    fail,
    overrides_from,
)
from iredapd.config import ConfigError, Settings, all_values, describe, non_default

__all__ = ["main"]

PROG = "iredapd"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Postfix policy server (iRedAPD successor)")
    add_config_arguments(p)
    p.add_argument(
        "--foreground",
        action="store_true",
        help="log to stderr (the daemon always runs in the foreground)",
    )
    p.add_argument(
        "--check-config", action="store_true", help="validate settings and plugins, then exit"
    )
    p.add_argument(
        "--show-config", action="store_true", help="print every setting with its value, then exit"
    )
    p.add_argument(
        "--non-default",
        action="store_true",
        help="with --show-config: only settings that differ from the default (postconf -n)",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def _show(settings_values: dict[str, object], verbose: bool) -> None:
    for name in sorted(settings_values, key=str.lower):
        value = settings_values[name]
        if isinstance(value, tuple):
            value = list(value)
        elif hasattr(value, "items") and not isinstance(value, dict):
            value = dict(value.items())
        text = pformat(value, width=88, sort_dicts=True)
        doc = describe(name)
        line = f"{name} = {text}"
        if verbose and doc:
            line += f"  # {doc}"
        print(line)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when asked for (or 'auto' and installed), else the stdlib's.

    uvloop (libuv in C) roughly halves the event loop's own cost per request;
    the daemon behaves the same on either loop.
    """
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("EVENT_LOOP = 'uvloop' but uvloop is not installed") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _supervise(settings: Settings, argv: list[str], args: argparse.Namespace) -> int:
    """WORKERS > 1: run the workers under a supervisor process."""
    from iredapd.logs import configure_logging
    from iredapd.workers import Supervisor

    try:
        logsetup = configure_logging(settings, foreground=args.foreground)
    except ConfigError as e:
        return fail(PROG, str(e), EX_CONFIG)
    try:
        return asyncio.run(Supervisor(settings, argv, args.config).run())
    finally:
        logsetup.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``iredapd`` console script."""
    args = _parser().parse_args(argv)
    if args.non_default and not args.show_config:
        return fail(PROG, "--non-default needs --show-config", 2)
    try:
        overrides = overrides_from(args)
        loaded = load_all(args.config, overrides)
    except (ConfigError, PluginLoadError) as e:
        return fail(PROG, str(e), EX_CONFIG)
    settings = loaded.settings
    if args.check_config:
        where = str(loaded.path) if loaded.path else "built-in defaults (no settings file found)"
        print(f"{PROG}: settings OK: {where}")
        print(f"{PROG}: plugins: {', '.join(settings.plugins) or 'none'}")
        return EX_OK
    if args.show_config:
        values = non_default(settings) if args.non_default else all_values(settings)
        _show(values, verbose=not args.non_default)
        return EX_OK
    # Until the loop's own handlers are in place, a SIGHUP (an eager logrotate,
    # a supervisor's reload) must not kill a daemon that is still starting.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    worker = os.environ.get("IREDAPD_WORKER", "")
    if settings.WORKERS > 1 and not worker:
        return _supervise(settings, list(sys.argv[1:] if argv is None else argv), args)
    daemon = Daemon(
        loaded,
        config=args.config,
        overrides=overrides,
        foreground=args.foreground,
        worker=int(worker) if worker.isdigit() else 0,
    )
    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.EVENT_LOOP)) as runner:
            return runner.run(daemon.run())
    except ConfigError as e:
        return fail(PROG, str(e), EX_CONFIG)
    except KeyboardInterrupt:
        return EX_OK


if __name__ == "__main__":
    sys.exit(main())
