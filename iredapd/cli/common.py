"""What the command-line programs share: --config, -o NAME=VALUE, exit codes."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Final

from iredapd.config import ConfigError, parse_override

__all__ = [
    "EX_CONFIG",
    "EX_OK",
    "EX_SOFTWARE",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "add_config_arguments",
    "fail",
    "overrides_from",
]

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


def fail(program: str, message: str, code: int) -> int:
    """Print a one-line error to stderr and return the exit code."""
    print(f"{program}: error: {message}", file=sys.stderr)
    return code


def check_error(program: str, exc: ConfigError | Exception) -> int:
    """Exit code and message for a settings/plugin error."""
    return fail(program, str(exc), EX_CONFIG)
