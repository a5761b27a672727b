"""``greylisting_admin``: manage greylisting settings and whitelists (iRedAPD's tool).

Same options and output as iRedAPD's ``tools/greylisting_admin.py``
(core-and-stateful.md §14.3)::

    greylisting_admin.py --enable  [--from SENDER] [--to ACCOUNT]
    greylisting_admin.py --disable [--from SENDER] [--to ACCOUNT]
    greylisting_admin.py --delete  [--from SENDER] [--to ACCOUNT]
    greylisting_admin.py --list [--to ACCOUNT]
    greylisting_admin.py --whitelist-domain --from @DOMAIN
    greylisting_admin.py --remove-whitelist-domain --from @DOMAIN
    greylisting_admin.py --list-whitelist-domains
    greylisting_admin.py --list-whitelists [--to ACCOUNT]
    greylisting_admin.py --add-whitelist --from SENDER [--to ACCOUNT]

``--from`` and ``--to`` default to ``@.`` (anyone).  When several operations
are given, the first of the order above wins.  Differences: IPv6 networks
are accepted (``--from 2001:db8::/32``), values are lower-cased, and adding
what exists already is not an error.

Exit status: 0 done; 1 bad input (message on stderr); 2 bad options;
69 database unreachable; 78 bad settings.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iredapd.cli.common import (
    EX_CONFIG,
    EX_OK,
    add_config_arguments,
    database_engine,
    database_error,
    database_reason,
    is_unavailable,
    load_config,
    parse_or_help,
)
from iredapd.lookup import CATCHALL, AddressType, classify_address
from iredapd.storage import greylisting as store

__all__ = ["OPERATIONS", "main"]

PROG = "greylisting_admin.py"
EX_INPUT: Final = 1  # iRedAPD's status for "<<< ERROR >>> ..."

#: operations in the order iRedAPD checks them (the first given wins)
OPERATIONS: Final = (
    "enable",
    "disable",
    "delete",
    "list",
    "whitelist_domain",
    "remove_whitelist_domain",
    "list_whitelist_domains",
    "list_whitelists",
    "add_whitelist",
)
_HELP: Final = {
    "enable": "greylist mail from --from to --to",
    "disable": "never greylist mail from --from to --to",
    "delete": "delete the setting for --from -> --to",
    "list": "list greylisting settings (of --to, or all)",
    "whitelist_domain": "whitelist the SPF/MX hosts of domain --from @DOMAIN "
    "(applied by spf_to_greylist_whitelists.py)",
    "remove_whitelist_domain": "remove a whitelisted domain and its SPF/MX hosts",
    "list_whitelist_domains": "list whitelisted domains",
    "list_whitelists": "list whitelisted senders (of --to, or all)",
    "add_whitelist": "whitelist sender --from for --to",
}
_LIST_FORMAT: Final = "%-8s %-34s -> %-30s"
_ANYONE: Final = "@. (anyone)"


class InputError(Exception):
    """Bad input: printed as ``<<< ERROR >>> <text>``, exit status 1."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Manage greylisting settings and whitelists (iRedAPD's greylisting_admin).",
        epilog="SENDER: user@domain, @domain, @.domain, @.tld, @., an IP address or an "
        "IPv4/IPv6 network.  ACCOUNT: a local user@domain, @domain, @.domain or @.",
    )
    add_config_arguments(p)
    for op in OPERATIONS:
        p.add_argument("--" + op.replace("_", "-"), action="store_true", help=_HELP[op])
    p.add_argument(
        "--from", dest="sender", default=CATCHALL, metavar="SENDER", help="default: @. (anyone)"
    )
    p.add_argument(
        "--to", dest="rcpt", default=CATCHALL, metavar="ACCOUNT", help="default: @. (anyone)"
    )
    return p


def _shown(value: str) -> str:
    return _ANYONE if value == CATCHALL else value


def _sender_domain(sender: str) -> str:
    """The domain of ``@domain`` / ``@.domain`` (``.domain``: invalid, as iRedAPD)."""
    if classify_address(sender) in (AddressType.DOMAIN, AddressType.SUBDOMAIN):
        return sender.split("@", 1)[1]
    return ""


def _run(op: str, sender: str, rcpt: str, conn: Connection) -> None:
    if op in ("enable", "disable"):
        print(f"* {op.capitalize()} greylisting: {sender} -> {rcpt}")
        (store.enable_greylisting if op == "enable" else store.disable_greylisting)(
            conn, rcpt, sender
        )
    elif op == "delete":
        print(f"* Delete greylisting setting: {sender} -> {rcpt}")
        store.delete_setting(conn, rcpt, sender)
    elif op == "list":
        rows = store.list_settings(conn, None if rcpt == CATCHALL else rcpt)
        if not rows:
            print("* No greylisting settings.")
            return
        print(_LIST_FORMAT % ("Status", "Sender", "Local Account"))
        print("-" * 78)
        for row in rows:
            status = "enabled" if row.active else "disabled"
            print(_LIST_FORMAT % (status, _shown(row.sender), _shown(row.account)))
    elif op == "whitelist_domain":
        store.add_whitelist_domain(conn, _sender_domain(sender))
    elif op == "remove_whitelist_domain":
        store.remove_whitelisted_domain(conn, _sender_domain(sender))
    elif op == "list_whitelist_domains":
        for domain in store.list_whitelist_domains(conn):
            print(domain)
    elif op == "list_whitelists":
        for s, account, comment in store.list_whitelists(conn, None if rcpt == CATCHALL else rcpt):
            print(f"{s} -> {account}, '{comment}'")
    elif op == "add_whitelist":
        store.add_whitelist(conn, rcpt, sender)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tools/greylisting_admin.py``."""
    args = parse_or_help(_parser(), argv)
    if args is None:
        return EX_OK
    op = next((o for o in OPERATIONS if getattr(args, o)), None)
    if op is None:
        return _input_error("No valid operation specified. Exit.")
    sender, rcpt = args.sender.strip().lower(), args.rcpt.strip().lower()
    if not store.is_valid_sender(sender):
        return _input_error("Invalid sender address.")
    if "@" not in rcpt:
        return _input_error("Invalid recipient address.")
    loaded = load_config(PROG, args)
    if loaded is None:
        return EX_CONFIG
    try:
        with (
            database_engine(loaded.settings, "iredapd", create_tables=True) as engine,
            engine.connect() as conn,
        ):
            _run(op, sender, rcpt, conn)
    except store.InvalidInput as e:
        return _input_error(e.code)
    except sa.exc.SQLAlchemyError as e:
        if is_unavailable(e):
            return database_error(PROG, "iredapd", e)
        return _input_error(repr(database_reason(e)))
    return EX_OK


def _input_error(text: str) -> int:
    print(f"<<< ERROR >>> {text}", file=sys.stderr)
    return EX_INPUT


if __name__ == "__main__":
    sys.exit(main())
