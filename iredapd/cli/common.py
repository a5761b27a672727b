"""What the command-line programs share: --config, -o NAME=VALUE, exit codes, databases."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from iredapd.app import Loaded, load_all
from iredapd.chain import PluginLoadError
from iredapd.config import ConfigError, Settings, parse_override
from iredapd.storage import db

__all__ = [
    "EX_CONFIG",
    "EX_OK",
    "EX_SOFTWARE",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "add_config_arguments",
    "command_logger",
    "database_engine",
    "database_error",
    "database_reason",
    "fail",
    "is_unavailable",
    "load_config",
    "overrides_from",
    "parse_or_help",
    "transaction",
]

T = TypeVar("T")

# sysexits(3) codes, so scripts and supervisors can tell failures apart.
EX_OK: Final = 0
EX_USAGE: Final = 2  # argparse's own code for bad arguments
EX_UNAVAILABLE: Final = 69  # a database or directory is down
EX_SOFTWARE: Final = 70
EX_OSERR: Final = 71  # cannot bind, cannot write the pid file
EX_CONFIG: Final = 78  # bad settings or plugins


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and -o, common to every program."""
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="settings file (default: $IREDAPD_SETTINGS, ./settings.py of a checkout, "
        "/opt/iredapd/settings.py, /etc/iredapd/settings.py)",
    )
    parser.add_argument(
        "-o",
        dest="overrides",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help="override one setting (VALUE is a Python literal or a plain string); repeatable",
    )


def overrides_from(args: argparse.Namespace) -> dict[str, Any]:
    """The -o options as a dict; ConfigError for a malformed one."""
    out: dict[str, Any] = {}
    for text in args.overrides:
        name, value = parse_override(text)
        out[name] = value
    return out


def load_config(program: str, args: argparse.Namespace) -> Loaded | None:
    """The settings and plugins of --config and -o; None once the error is shown.

    The caller exits with EX_CONFIG then.
    """
    try:
        return load_all(args.config, overrides_from(args))
    except (ConfigError, PluginLoadError) as e:
        fail(program, str(e), EX_CONFIG)
        return None


def fail(program: str, message: str, code: int) -> int:
    """Print a one-line error to stderr and return the exit code."""
    print(f"{program}: error: {message}", file=sys.stderr)
    return code


def check_error(program: str, exc: ConfigError | Exception) -> int:
    """Exit code and message for a settings/plugin error."""
    return fail(program, str(exc), EX_CONFIG)


def parse_or_help(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, *, intermixed: bool = False
) -> argparse.Namespace | None:
    """Parse ``argv`` (default: the command line); None once the help is shown.

    As iRedAPD's tools, a program run without arguments prints its help (and
    exits 0).  ``intermixed``: options may follow the positional arguments.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        parser.print_help()
        return None
    return parser.parse_intermixed_args(args) if intermixed else parser.parse_args(args)


def command_logger(settings: Settings) -> logging.Logger:
    """iRedAPD's tool output: bare messages on stdout at ``log_level``."""
    logger = logging.getLogger("iredapd-cmd")
    logger.propagate = False
    logger.handlers[:] = []
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(settings.log_level.upper())
    return logger


# -- databases -------------------------------------------------------------------


@contextmanager
def database_engine(
    settings: Settings, name: str, *, create_tables: bool = False
) -> Iterator[Engine]:
    """The engine of database ``name`` (``iredapd``, ``amavisd``, ``vmail``), disposed after.

    The daemon's engine (:func:`iredapd.storage.db.engine_for`): its pool and
    timeouts, ``<name>_db_use_ssl``; connections autocommit, so use
    :func:`transaction` where statements must take effect together.  With
    ``create_tables``, the tables of the embedded SQLite default are created
    first (a tool may run before the daemon ever has); on MySQL/PostgreSQL
    nothing is created.
    """
    engine = db.engine_for(name, settings)
    try:
        if create_tables and settings.backend == "sqlite":
            from iredapd.storage.migrate import upgrade

            upgrade(engine, name)
        yield engine
    finally:
        engine.dispose()


def transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run ``work(conn)`` in one transaction and return what it returns."""
    with db.transaction(engine) as conn:
        return work(conn)


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database did not answer (down, unreachable, refusing)."""
    return isinstance(exc, db.BackendUnavailable | sa.exc.OperationalError | sa.exc.InterfaceError)


def database_reason(exc: BaseException) -> str:
    """The first line of the driver's message (PostgreSQL's run over several)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0]


def database_error(prog: str, name: str, exc: BaseException, *, state: bool = False) -> int:
    """Report a database failure in one line; 69 when unreachable, 70 otherwise.

    The message is ``<name> database: <reason>``; with ``state`` (the wording
    of wblist_admin and senderscore_admin) ``<name> database unavailable:
    <reason>`` or ``<name> database error: <reason>``.
    """
    unavailable = is_unavailable(exc)
    label = (" unavailable" if unavailable else " error") if state else ""
    code = EX_UNAVAILABLE if unavailable else EX_SOFTWARE
    return fail(prog, f"{name} database{label}: {database_reason(exc)}", code)
