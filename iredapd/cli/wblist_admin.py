"""``wblist_admin``: show, add and delete amavisd white/blacklists (iRedAPD's tool).

The lists ``amavisd_wblist`` reads: inbound (``wblist``: what a local account
accepts or refuses from senders) and, with ``--outbound``, outbound
(``outbound_wblist``: what a local account may send to).  Same options and
output as iRedAPD's ``tools/wblist_admin.py``; output goes to standard output,
errors to standard error.

Exit status: 0 done (or usage shown), 2 bad arguments, 69 database
unreachable, 78 bad settings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

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
from iredapd.lookup import classify_address
from iredapd.storage import wblist

__all__ = ["main"]

PROG = "wblist_admin"

DESCRIPTION = "Add, delete or show amavisd white/blacklists of a local account."
EPILOG = """\
Account formats (--account; default '@.', server-wide):
  a single user: user@domain.com; a domain: @domain.com;
  a domain and all its sub-domains: @.domain.com; anyone: @. (the dot is required)

Address formats: user@domain.com, @domain.com, @.domain.com, @.com, @., user@*,
  192.0.2.1, 192.0.2.*, 192.0.2.0/24, 2001:db8::/32

Sample usage:
  wblist_admin.py --add --whitelist 192.168.1.10 user@example.com
  wblist_admin.py --add --blacklist 172.16.1.10 baduser@example.com
  wblist_admin.py --list --whitelist
  wblist_admin.py --account user@mydomain.com --add --blacklist baduser@example.com
  wblist_admin.py --outbound --account user@mydomain.com --list --blacklist
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(p)
    p.add_argument(
        "--outbound",
        action="store_true",
        help="manage the lists of outbound mail (default: inbound)",
    )
    p.add_argument("--account", default="@.", help="the local account (default: '@.', server-wide)")
    p.add_argument("--whitelist", action="store_true", help="work on the whitelist")
    p.add_argument("--blacklist", action="store_true", help="work on the blacklist")
    p.add_argument("--add", action="store_true", help="add the addresses")
    p.add_argument("--delete", action="store_true", help="delete the addresses")
    p.add_argument("--delete-all", action="store_true", help="delete every entry of the list")
    p.add_argument("--list", action="store_true", help="show the list")
    p.add_argument("addresses", nargs="*", metavar="ADDRESS", help="senders (or recipients)")
    return p


def _choose(args: argparse.Namespace) -> tuple[str, str] | str:
    """(list type, action), or the iRedAPD error text."""
    if args.whitelist:  # checked first, as iRedAPD
        wb_type = "whitelist"
    elif args.blacklist:
        wb_type = "blacklist"
    else:
        return "No --whitelist or --blacklist specified. Exit."
    for action in ("add", "delete", "delete_all", "list"):
        if getattr(args, action):
            return wb_type, action.replace("_", "-")
    return "No --add, --delete or --list specified. Exit."


def _run(
    engine: Engine,
    account: str,
    *,
    wb_type: str,
    action: str,
    outbound: bool,
    addresses: list[str],
) -> None:
    direction = "outbound" if outbound else "inbound"
    white = wb_type == "whitelist"
    wl = addresses if white else []
    bl = [] if white else addresses
    verb = {"add": "Add", "delete": "Delete", "delete-all": "Delete all", "list": "List all"}
    print(f"* {verb[action]} {direction} {wb_type} for account: {account}")
    if action == "add":
        print(f"* Add senders: {', '.join(addresses)}")
        if outbound:
            transaction(engine, lambda c: wblist.add_wblist(c, account, wl_rcpts=wl, bl_rcpts=bl))
        else:
            transaction(
                engine, lambda c: wblist.add_wblist(c, account, wl_senders=wl, bl_senders=bl)
            )
    elif action == "delete":
        if outbound:
            deleted = transaction(
                engine, lambda c: wblist.delete_wblist(c, account, wl_rcpts=wl, bl_rcpts=bl)
            )
        else:
            deleted = transaction(
                engine, lambda c: wblist.delete_wblist(c, account, wl_senders=wl, bl_senders=bl)
            )
        for address in deleted.all():
            print(f"- Deleted: {address}")
    elif action == "delete-all":
        if outbound:
            transaction(
                engine,
                lambda c: wblist.delete_all_wblist(c, account, wl_rcpts=white, bl_rcpts=not white),
            )
        else:
            transaction(
                engine,
                lambda c: wblist.delete_all_wblist(
                    c, account, wl_senders=white, bl_senders=not white
                ),
            )
    else:
        listed = transaction(
            engine,
            lambda c: wblist.account_wblist(
                c, account, outbound=outbound, whitelist=white, blacklist=not white
            ),
        )
        shown = listed[0] if white else listed[1]
        for address in shown:
            print(address)
        if not shown:
            print("* No whitelist/blacklist.")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = parse_or_help(_parser(), argv, intermixed=True)
    if args is None:
        return EX_OK
    account = args.account.strip().lower()
    if "@" not in account or classify_address(account) is None:
        return fail(PROG, "<<< ERROR >>> Invalid account format.", EX_USAGE)
    chosen = _choose(args)
    if isinstance(chosen, str):
        return fail(PROG, chosen, EX_USAGE)
    wb_type, action = chosen
    addresses = wblist.normalise_addresses(args.addresses)
    valid = set(addresses)
    for given in args.addresses:
        if given.strip().lower() not in valid:
            print(f"{PROG}: warning: skipped invalid address: {given}", file=sys.stderr)
    if action in ("add", "delete") and not addresses:
        return fail(PROG, f"--{action} needs at least one valid address", EX_USAGE)
    loaded = load_config(PROG, args)
    if loaded is None:
        return EX_CONFIG
    print("* Establishing SQL connection.")
    try:
        with database_engine(loaded.settings, "amavisd", create_tables=True) as engine:
            _run(
                engine,
                account,
                wb_type=wb_type,
                action=action,
                outbound=args.outbound,
                addresses=addresses,
            )
    except sa.exc.DBAPIError as e:
        return database_error(PROG, "amavisd", e, state=True)
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
