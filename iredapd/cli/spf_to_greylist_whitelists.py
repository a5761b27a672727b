"""``spf_to_greylist_whitelists``: whitelist the mail servers of big senders (cron, hourly).

Greylisting hurts senders that retry from another server of a large pool.
For each domain in ``greylisting_whitelist_domains`` (or given on the command
line), this tool reads the networks the domain's SPF record authorises
(``ip4``, ``ip6``, ``a``, ``mx``, ``include``, ``redirect``; a domain without
SPF: the addresses of its MX hosts) and stores them in
``greylisting_whitelist_domain_spf`` as whitelisted for everyone, with the
comment ``AUTO-UPDATE: <domain>`` (core-and-stateful.md §14.4)::

    spf_to_greylist_whitelists.py [--debug] [--submit] [domain ...]

``--submit`` also adds the given domains to ``greylisting_whitelist_domains``.

Differences from iRedAPD: each domain is expanded on its own (iRedAPD shared
the visited includes between domains, so a shared include counted only for
the first one, §17.5 item 36); a ``ptr`` mechanism whitelists nothing (iRedAPD
whitelisted every envelope sender ``@domain``, which anyone can forge, item
35); a domain whose DNS lookups failed keeps its previous rows (exit status
1) instead of losing them; each domain's rows are replaced in one
transaction, so the daemon never sees them half written.

Exit status: 0 done; 1 some domain could not be looked up; 2 bad options;
69 database unreachable; 78 bad settings.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import sqlalchemy as sa

from iredapd.addr import is_domain
from iredapd.cli.common import (
    EX_CONFIG,
    EX_OK,
    EX_UNAVAILABLE,
    add_config_arguments,
    database_engine,
    database_error,
    fail,
    load_config,
)
from iredapd.config import Settings
from iredapd.resolver import MX, DNSAnswer, DNSSource, Resolver
from iredapd.spf import spf_networks
from iredapd.storage import greylisting as store

__all__ = ["Expansion", "expand_domain", "main"]

PROG = "spf_to_greylist_whitelists.py"
EX_PARTIAL: Final = 1
# Domains looked up at the same time (each is a chain of DNS queries).
CONCURRENCY: Final = 8
# Deadline of one domain's expansion, all its DNS queries included.
DOMAIN_TIME_LIMIT: Final = 60.0

log = logging.getLogger("iredapd.cli.spf_to_greylist_whitelists")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Watched:
    """A DNSSource that remembers which queries failed (SERVFAIL, timeout)."""

    def __init__(self, inner: DNSSource) -> None:
        self.inner = inner
        self.errors: list[str] = []
        self.queries = 0

    async def query(self, name: str, rdtype: str) -> DNSAnswer:
        self.queries += 1
        answer = await self.inner.query(name, rdtype)
        if answer.status.is_error:
            self.errors.append(f"{rdtype} {name}: {answer.status.value}")
        return answer


@dataclass(slots=True)
class Expansion:
    """What one domain expands to.  ``errors``: DNS failures (result incomplete)."""

    domain: str
    senders: list[str] = field(default_factory=list)
    has_spf: bool = False
    truncated: bool = False
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


async def _mx_addresses(domain: str, dns: _Watched, max_lookups: int) -> list[IPNetwork]:
    """Addresses of the MX hosts (A and AAAA), for a domain without SPF."""
    out: list[IPNetwork] = []
    answer = await dns.query(domain, "MX")
    hosts = [r.host for r in answer.records if isinstance(r, MX) and r.host]
    for host in hosts:
        for rdtype in ("A", "AAAA"):
            if dns.queries >= max_lookups:
                return out
            for record in (await dns.query(host, rdtype)).texts:
                try:
                    out.append(ipaddress.ip_network(record))
                except ValueError:
                    continue
    return out


async def expand_domain(domain: str, resolver: DNSSource, *, max_lookups: int) -> Expansion:
    """The whitelist senders (IP or network text) for one domain, looked up on its own."""
    dns = _Watched(resolver)
    result = Expansion(domain)
    try:
        async with asyncio.timeout(DOMAIN_TIME_LIMIT):
            spf = await spf_networks(
                domain, dns, max_lookups=max_lookups, time_limit=DOMAIN_TIME_LIMIT
            )
            result.has_spf = spf.has_record
            result.truncated = spf.truncated
            result.skipped = list(spf.skipped)
            networks = list(spf.networks)
            if not spf.has_record and not dns.errors:
                networks = await _mx_addresses(domain, dns, max_lookups)
    except TimeoutError:
        dns.errors.append(f"no answer within {DOMAIN_TIME_LIMIT:g} s")
        networks = []
    result.errors = dns.errors
    seen: set[str] = set()
    for net in networks:
        text = store.network_text(net)
        if text not in seen:
            seen.add(text)
            result.senders.append(text)
    return result


async def _expand_all(domains: Sequence[str], settings: Settings) -> list[Expansion]:
    resolver = Resolver(
        list(settings.DNS_NAMESERVERS) or None,
        port=settings.DNS_PORT,
        timeout=settings.DNS_QUERY_TIMEOUT,
    )
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(domain: str) -> Expansion:
        async with gate:
            return await expand_domain(domain, resolver, max_lookups=settings.SPF_MAX_DNS_QUERIES)

    return list(await asyncio.gather(*(one(d) for d in domains)))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Whitelist for greylisting the SPF/MX hosts of the domains in "
        "greylisting_whitelist_domains (or of the domains given).",
    )
    add_config_arguments(p)
    p.add_argument("--debug", action="store_true", help="log every step")
    p.add_argument(
        "--submit",
        action="store_true",
        help="also add the given domains to greylisting_whitelist_domains",
    )
    p.add_argument("domains", nargs="*", metavar="domain", help="default: every whitelisted one")
    return p


_handlers: list[logging.Handler] = []


def _setup_logging(debug: bool) -> None:
    """iRedAPD's tools log bare messages to stdout; problems go to stderr here."""
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    root = logging.getLogger()
    for old in _handlers:  # main() called again in one process
        root.removeHandler(old)
    _handlers[:] = [out, err]
    for handler in _handlers:
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tools/spf_to_greylist_whitelists.py``."""
    args = _parser().parse_args(argv)
    _setup_logging(args.debug)
    loaded = load_config(PROG, args)
    if loaded is None:
        return EX_CONFIG
    settings = loaded.settings
    try:
        with database_engine(settings, "iredapd", create_tables=True) as engine:
            return _main(args, settings, engine)
    except (sa.exc.OperationalError, sa.exc.InterfaceError) as e:
        return database_error(PROG, "iredapd", e)


def _main(args: argparse.Namespace, settings: Settings, engine: sa.Engine) -> int:
    if args.domains:
        names = list(args.domains)
    else:
        with engine.connect() as conn:
            names = store.list_whitelist_domains(conn)
    domains = list(dict.fromkeys(d.strip().lower() for d in names if is_domain(d.strip())))
    if not domains:
        log.info("* No valid domain names. Abort.")
        return EX_OK

    try:
        results = asyncio.run(_expand_all(domains, settings))
    except Exception as e:  # noqa: BLE001 - e.g. no /etc/resolv.conf: one clear line
        return fail(PROG, f"DNS: {e}", EX_UNAVAILABLE)

    status = EX_OK
    usable: list[Expansion] = []
    for r in results:
        for term in r.skipped:
            log.debug("* [%s] ignored (not a network): %s", r.domain, term)
        if r.errors:
            log.warning(
                "* [%s] DNS lookup failed, whitelist kept as it was: %s",
                r.domain,
                "; ".join(r.errors),
            )
            status = EX_PARTIAL
            continue
        if r.truncated:
            log.warning(
                "* [%s] more than %d DNS lookups needed; stored what was found",
                r.domain,
                settings.SPF_MAX_DNS_QUERIES,
            )
        source = "SPF" if r.has_spf else "MX"
        log.debug("* [%s] %s: %s", r.domain, source, " ".join(r.senders) or "(nothing)")
        usable.append(r)

    if not any(r.senders for r in usable):
        log.info("* No IP address/network found. Exit.")
        return status

    for r in usable:
        with store.transaction(engine) as conn:
            store.replace_spf_whitelist(conn, r.domain, r.senders)
        log.info("* [%s] %d IP addresses/networks whitelisted.", r.domain, len(r.senders))

    if args.submit:
        with engine.connect() as conn:
            for domain in domains:
                store.add_whitelist_domain(conn, domain)
    return status


if __name__ == "__main__":
    sys.exit(main())
