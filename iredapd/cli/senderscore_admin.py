"""``senderscore_admin``: whitelist IP addresses for the senderscore plugin (iRedAPD's tool).

``senderscore_admin.py -w 192.0.2.1 [192.0.2.2 ...]`` stores each address in
``senderscore_cache`` with score 100 and time 4102444799 (2099-12-31 23:59:59
UTC), so the plugin never rejects it and the cleanup never expires it.

Exit status: 0 done (or usage shown), 2 bad arguments, 69 database
unreachable, 78 bad settings.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iredapd.cli.common import (
    EX_CONFIG,
    EX_OK,
    EX_USAGE,
    add_config_arguments,
    database_engine,
    database_error,
    fail,
    load_config,
    parse_or_help,
    transaction,
)
from iredapd.storage.schema import senderscore_cache
from iredapd.storage.upsert import upsert

__all__ = ["WHITELIST_SCORE", "WHITELIST_TIME", "main", "whitelist"]

PROG = "senderscore_admin"
#: 2099-12-31 23:59:59 UTC: never older than SENDERSCORE_CACHE_DAYS
WHITELIST_TIME = 4102444799
WHITELIST_SCORE = 100


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Manage the senderscore plugin's cache.",
        epilog="example: senderscore_admin.py -w 192.0.2.1 198.51.100.7",
    )
    add_config_arguments(p)
    p.add_argument(
        "-w",
        dest="whitelist",
        action="store_true",
        help="whitelist the given IP address(es), separated by whitespace",
    )
    p.add_argument("ips", nargs="*", metavar="IP", help="IP addresses")
    return p


def whitelist(conn: Connection, ips: Sequence[str]) -> None:
    """Store ``ips`` with score 100 and a time the cleanup never reaches.

    One UPSERT: an existing cache row becomes the whitelist row, and a row the
    plugin inserts concurrently cannot make it fail.
    """
    rows = [{"client_address": ip, "score": WHITELIST_SCORE, "time": WHITELIST_TIME} for ip in ips]
    if rows:
        stmt = upsert(senderscore_cache, conn.dialect.name, ("client_address",), ("score", "time"))
        conn.execute(stmt, rows)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_or_help(_parser(), argv, intermixed=True)
    if args is None:
        return EX_OK
    if not args.whitelist:
        return fail(PROG, "Invalid argument. (use -w IP [IP ...])", EX_USAGE)
    ips = list(dict.fromkeys(ip for ip in args.ips if _is_ip(ip)))
    for given in args.ips:
        if not _is_ip(given):
            print(f"{PROG}: warning: skipped, not an IP address: {given}", file=sys.stderr)
    if not ips:
        return fail(PROG, "No valid IP address.", EX_USAGE)
    loaded = load_config(PROG, args)
    if loaded is None:
        return EX_CONFIG
    try:
        with database_engine(loaded.settings, "iredapd", create_tables=True) as engine:
            transaction(engine, lambda conn: whitelist(conn, ips))
    except sa.exc.DBAPIError as e:
        return database_error(PROG, "iredapd", e, state=True)
    print(f"Whitelisted: {', '.join(ips)}")
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
