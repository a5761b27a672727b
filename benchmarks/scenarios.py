#!/usr/bin/env python3
"""Benchmark scenarios: iRedAPD's plugin chains on real account databases.

A scenario is a plugin chain on an account backend, ``CHAIN-BACKEND`` with an
optional ``-cold`` / ``-warm`` suffix:

========== ===================================================================
chain      plugins (the daemon orders them by iRedAPD's priorities)
========== ===================================================================
access     reject_null_sender, reject_sender_login_mismatch,
           sql_alias_access_policy, sql_ml_access_policy
default    iRedAPD's default chain: reject_null_sender, wblist_rdns,
           reject_sender_login_mismatch, greylisting, throttle,
           amavisd_wblist, sql_alias_access_policy
========== ===================================================================

Backends: ``mariadb`` (127.0.0.1:3306, root), ``pgsql`` (127.0.0.1:5432,
postgres) and ``ldap`` (a throwaway slapd with the iRedMail schema; the
iredapd and amavisd databases then live on MariaDB, as in iRedMail's LDAP
setups).  ``cold`` is ``CACHE_TTL = 0`` (every lookup asks the backend);
``warm`` is ``CACHE_TTL = 3600`` and ``run.py`` sends the whole request pool
once before measuring, so that every cacheable answer is cached (the steady
state of a busy server, which sees the same accounts again well within the
default 60 s; with 60 s here, the interleaved rounds of a slow target would
let entries expire between its turns).  Without a suffix, ``access``
scenarios give both targets and ``default`` ones the warm one only.

:func:`prepare` builds one data set (:func:`build_dataset`: 20 domains, 6 of
them with an alias domain, 2,000 mailboxes, per-user alias addresses, 200
mail aliases and 50 mlmmj lists with members, moderators, owners and every
access policy; throttle rules, greylisting settings and whitelists, amavisd
white/blacklists, rDNS white/blacklists; external domains with SPF records
and their SMTP clients) and loads it where the scenarios need it: a vmail and
an amavisd database per SQL backend (shared by that backend's targets, which
only read them), an iredapd database per target (counters, greylisting
triplets and the session log are each target's own), and one slapd.  A stub
DNS server (``tests/support/stubdns.py``) answers the SPF queries of
greylisting and reject_sender_login_mismatch.  The request mix
(``policy_mix.py`` with ``accounts``) is drawn from the same data.
Everything is dropped and stopped when the context ends, also on errors and
Ctrl-C.

Needs the project's virtualenv (SQLAlchemy, the drivers, python-ldap for the
LDAP scenario, pytest for ``tests/support``).  Standalone::

    .venv/bin/python benchmarks/scenarios.py --describe
    .venv/bin/python benchmarks/scenarios.py --serve default-mariadb   # prints settings; Ctrl-C
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402
from sqlalchemy.engine import URL, Engine  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

from iredapd.backends.fake import FakeAccounts, FakeList  # noqa: E402
from iredapd.storage import greylisting as greylisting_store  # noqa: E402
from iredapd.storage import schema  # noqa: E402
from iredapd.storage.migrate import upgrade  # noqa: E402
from iredapd.storage.throttle import upsert_rule  # noqa: E402
from iredapd.storage.wblist import add_wblist  # noqa: E402

__all__ = [
    "CHAINS",
    "Dataset",
    "Prepared",
    "ScenarioSpec",
    "ScenarioTarget",
    "build_dataset",
    "parse_scenarios",
    "prepare",
]

CHAINS: dict[str, tuple[str, ...]] = {
    # issue 3: the access checks of a submission/relay server
    "access": (
        "reject_null_sender",
        "reject_sender_login_mismatch",
        "sql_alias_access_policy",
        "sql_ml_access_policy",
    ),
    # issue 4: iRedAPD's default chain (iRedMail's settings.py)
    "default": (
        "reject_null_sender",
        "wblist_rdns",
        "reject_sender_login_mismatch",
        "greylisting",
        "throttle",
        "amavisd_wblist",
        "sql_alias_access_policy",
    ),
}
BACKENDS = ("mariadb", "pgsql", "ldap")
#: cold: nothing cached; warm: everything cacheable is cached (the run primes
#: the warm targets with the whole request pool, and nothing expires during it)
CACHE_TTLS = {"cold": 0, "warm": 3600}
#: caches measured when the scenario name has no -cold/-warm suffix
DEFAULT_CACHES = {"access": ("cold", "warm"), "default": ("warm",)}

MARIADB_URL = URL.create(
    "mysql+pymysql",
    username=os.environ.get("BENCH_MARIADB_USER", "root"),
    password=os.environ.get("BENCH_MARIADB_PASSWORD") or None,
    host=os.environ.get("BENCH_MARIADB_HOST", "127.0.0.1"),
    port=int(os.environ.get("BENCH_MARIADB_PORT", "3306")),
    query={"charset": "utf8mb4"},
)
PGSQL_URL = URL.create(
    "postgresql+psycopg2",
    username=os.environ.get("BENCH_PGSQL_USER", "postgres"),
    password=os.environ.get("BENCH_PGSQL_PASSWORD") or None,
    host=os.environ.get("BENCH_PGSQL_HOST", "127.0.0.1"),
    port=int(os.environ.get("BENCH_PGSQL_PORT", "5432")),
    database="postgres",
)
SERVER_HOSTNAME = "mx.example.com"  # policy_mix's Mix.server_hostname
#: SPF record of the hosted domains (their own servers; no client of the mix)
HOSTED_SPF = "v=spf1 ip4:192.0.2.0/24 -all"


# ---------------------------------------------------------------------------
# Scenario names
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ScenarioSpec:
    """One ``CHAIN-BACKEND[-CACHE]`` scenario, expanded to its cache variants."""

    name: str
    chain: str
    backend: str
    caches: tuple[str, ...]

    def target_name(self, cache: str) -> str:
        return f"{self.chain}-{self.backend} {cache}"

    @property
    def target_names(self) -> list[str]:
        return [self.target_name(c) for c in self.caches]


def parse_scenarios(values: list[str]) -> list[ScenarioSpec]:
    """``["access-mariadb,access-pgsql", "default-pgsql-cold"]`` -> specs (merged, in order)."""
    specs: dict[tuple[str, str], list[str]] = {}
    for value in values:
        for raw in value.split(","):
            name = raw.strip().lower()
            if not name:
                continue
            parts = name.split("-")
            cache = None
            if parts[-1] in CACHE_TTLS:
                cache = parts.pop()
            if len(parts) != 2 or parts[0] not in CHAINS or parts[1] not in BACKENDS:
                raise SystemExit(
                    f"--scenario {raw!r}: expected CHAIN-BACKEND[-cold|-warm], CHAIN one of "
                    f"{', '.join(CHAINS)}, BACKEND one of {', '.join(BACKENDS)}"
                )
            chain, backend = parts
            caches = specs.setdefault((chain, backend), [])
            for c in (cache,) if cache else DEFAULT_CACHES[chain]:
                if c not in caches:
                    caches.append(c)
    return [
        ScenarioSpec(
            f"{chain}-{backend}", chain, backend, tuple(c for c in CACHE_TTLS if c in caches)
        )
        for (chain, backend), caches in specs.items()
    ]


# ---------------------------------------------------------------------------
# The data set
# ---------------------------------------------------------------------------

_FIRST = (
    "james", "mary", "robert", "patricia", "john", "jennifer", "michael", "linda",
    "david", "elizabeth", "william", "barbara", "richard", "susan", "joseph", "jessica",
    "thomas", "sarah", "carlos", "karen", "daniel", "lisa", "matthew", "nancy",
)  # fmt: skip
_LAST = (
    "smith", "jones", "taylor", "brown", "williams", "wilson", "johnson", "davies",
    "miller", "garcia", "martinez", "anderson", "thomas", "moore", "martin", "lee",
    "walker", "hall", "allen", "young", "king", "wright", "lopez", "hill",
)  # fmt: skip
_DOMAIN_STEMS = (
    "acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka",
    "tyrell", "cyberdyne", "soylent", "gringotts", "oscorp", "vandelay", "dunder",
    "piedpiper", "monarch",
)  # fmt: skip
_ALIAS_NAMES = (
    "sales", "support", "info", "hr", "team", "dev", "ops", "billing", "marketing",
    "all", "board", "it", "legal", "press", "jobs", "finance", "security", "office",
)  # fmt: skip
_LIST_NAMES = ("announce", "newsletter", "discuss", "users", "staff", "events")
_POLICIES_ALIAS = (
    ("public", 35), ("domain", 20), ("subdomain", 5), ("membersonly", 20),
    ("moderatorsonly", 12), ("membersandmoderatorsonly", 8),
)  # fmt: skip
_POLICIES_LIST = (
    ("public", 30), ("domain", 25), ("subdomain", 10), ("membersonly", 15),
    ("moderatorsonly", 12), ("membersandmoderatorsonly", 8),
)  # fmt: skip


@dataclass
class Dataset:
    """Accounts and policy data, the same for every backend (seeded)."""

    accounts: FakeAccounts
    external_domains: list[str]
    #: (address, client_name, reverse_client_name, helo, domain)
    clients: list[tuple[str, str, str, str, str]]
    submission_clients: list[str]
    #: stub DNS zone: name -> entries (tests/support/stubdns.py)
    zone: dict[str, list[Any]]
    #: (account, kind, values) for iredapd.storage.throttle.upsert_rule
    throttle: list[tuple[str, str, dict[str, int]]]
    #: greylisting settings (account, sender, active)
    greylisting: list[tuple[str, str, bool]]
    #: greylisting_whitelists rows (account, sender)
    greylisting_whitelists: list[tuple[str, str]]
    #: greylisting_whitelist_domain_spf: domain -> client addresses (as the SPF tool writes)
    greylisting_spf: dict[str, list[str]]
    #: client addresses that passed greylisting before (a passed triplet each)
    passed_clients: list[tuple[str, str, str]]
    #: amavisd lists: account -> {"wl_senders": [...], "bl_senders": ..., "wl_rcpts", "bl_rcpts"}
    wblist: dict[str, dict[str, list[str]]]
    #: wblist_rdns rows (rdns, wb)
    wblist_rdns: list[tuple[str, str]]
    counts: dict[str, int] = field(default_factory=dict)

    def accounts_json(self) -> dict[str, Any]:
        """The ``accounts`` file of policy_mix (what requests are drawn from)."""
        fake = self.accounts
        domains: dict[str, list[str]] = {d: [] for d in fake.domains}
        for alias, target in fake.alias_domains.items():
            domains[target].append(alias)
        return {
            "domains": domains,
            "users": list(fake.mailboxes),
            "user_aliases": dict(fake.user_aliases),
            "aliases": {
                a.address: {"policy": a.policy, "members": a.members, "moderators": a.moderators}
                for a in fake.aliases.values()
            },
            "maillists": {
                m.address: {"policy": m.policy, "moderators": m.moderators, "owners": m.owners}
                for m in fake.maillists.values()
            },
            "external_domains": self.external_domains,
            "clients": [list(c) for c in self.clients],
            "submission_clients": self.submission_clients,
        }


def _weighted(rng: random.Random, table: tuple[tuple[str, int], ...]) -> str:
    names, weights = zip(*table, strict=True)
    return str(rng.choices(names, weights)[0])


def _public_ipv4(rng: random.Random) -> str:
    while True:
        a, b = rng.randint(1, 223), rng.randint(0, 255)
        if a in (0, 10, 127) or (a == 172 and 16 <= b <= 31) or (a, b) in ((192, 168), (169, 254)):
            continue
        if (a == 100 and 64 <= b <= 127) or (a, b) == (192, 0) or (a, b) == (203, 0):
            continue
        return f"{a}.{b}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def build_dataset(
    seed: int = 1,
    *,
    domains: int = 20,
    alias_domains: int = 6,
    mailboxes: int = 2000,
    aliases: int = 200,
    maillists: int = 50,
    external_domains: int = 400,
    clients: int = 3000,
) -> Dataset:
    """The accounts and policy data of every scenario (same seed, same data)."""
    rng = random.Random(seed)
    fake = FakeAccounts()
    # -- domains, alias domains ------------------------------------------------
    names = ["example.com", "example.net", "example.org"]
    names += [f"{stem}.example" for stem in _DOMAIN_STEMS][: max(0, domains - 3)]
    names = names[:domains]
    for name in names:
        fake.add_domain(name)
    for name in names[:alias_domains]:
        fake.add_alias_domain(name.replace(".", "-mail.", 1), name)  # acme-mail.example
    # -- mailboxes: a few big domains, many small ones ------------------------
    weights = [1 / (i + 1) ** 0.8 for i in range(len(names))]
    users_of: dict[str, list[str]] = {d: [] for d in names}
    for i in range(mailboxes):
        domain = rng.choices(names, weights)[0] if i >= len(names) else names[i]
        user = f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}{i}@{domain}"
        fake.add_user(user)
        users_of[domain].append(user)
    users = list(fake.mailboxes)
    # per-user alias addresses: 15 % of users, at their own domain
    for i, user in enumerate(users):
        if rng.random() < 0.15:
            local, _, domain = user.partition("@")
            first, _, last = local.partition(".")
            fake.add_user_alias(f"{first[0]}{last}.a{i}@{domain}", user)
    # -- external world -------------------------------------------------------
    kinds = ("mail", "corp", "shop", "news", "lists", "isp", "bank", "cloud")
    ext = [f"{rng.choice(kinds)}{i}.example" for i in range(external_domains)]
    client_rows: list[tuple[str, str, str, str, str]] = []
    for i in range(clients):
        domain = ext[i % len(ext)] if i < len(ext) else rng.choice(ext)
        if rng.random() < 0.1:
            a, b, c = rng.randint(0, 0xFFFF), rng.randint(0, 0xFFFF), rng.randint(1, 0xFFFF)
            address = f"2001:db8:{a:x}:{b:x}::{c:x}"
        else:
            address = _public_ipv4(rng)
        if rng.random() < 0.1:
            # no usable PTR: half have a generic one (dynamic ranges), half none
            name = "unknown"
            reverse = (
                f"dynamic-{address.replace('.', '-').replace(':', '-')}.isp.example"
                if rng.random() < 0.5
                else "unknown"
            )
            helo = rng.choice((f"[{address}]", "localhost", f"smtp.{domain}"))
        else:
            name = reverse = f"{rng.choice(('mx', 'smtp', 'out', 'mail'))}{i}.{domain}"
            helo = name
        client_rows.append((address, name, reverse, helo, domain))
    submission = [f"192.168.{rng.randint(0, 10)}.{rng.randint(2, 254)}" for _ in range(150)]
    submission += [_public_ipv4(rng) for _ in range(100)]  # roaming users
    # -- mail aliases ---------------------------------------------------------
    alias_count = 0
    while alias_count < aliases:
        domain = rng.choices(names, weights)[0]
        local = rng.choice(_ALIAS_NAMES)
        address = f"{local}@{domain}"
        if address in fake.aliases:
            address = f"{local}{alias_count}@{domain}"
        policy = _weighted(rng, _POLICIES_ALIAS)
        pool = users_of[domain] or users
        members = rng.sample(pool, min(len(pool), rng.randint(2, 15)))
        if rng.random() < 0.2:
            members += [f"{rng.choice(_FIRST)}@{rng.choice(ext)}" for _ in range(rng.randint(1, 2))]
        moderators = rng.sample(pool, min(len(pool), rng.randint(1, 3)))
        if policy == "moderatorsonly" and rng.random() < 0.15:
            moderators.append(f"*@{domain}")
        fake.aliases[address] = FakeList(address, policy, True, members, moderators)
        alias_count += 1
    # -- mlmmj mailing lists --------------------------------------------------
    list_count = 0
    while list_count < maillists:
        domain = rng.choices(names, weights)[0]
        local = rng.choice(_LIST_NAMES)
        address = f"{local}@{domain}"
        if address in fake.maillists or address in fake.aliases:
            address = f"{local}{list_count}@{domain}"
        pool = users_of[domain] or users
        fake.maillists[address] = FakeList(
            address,
            _weighted(rng, _POLICIES_LIST),
            True,
            moderators=rng.sample(pool, min(len(pool), rng.randint(1, 2))),
            owners=rng.sample(pool, 1),
        )
        list_count += 1
    # -- SPF (stub DNS) -------------------------------------------------------
    by_domain: dict[str, list[str]] = {}
    for address, *_rest, domain in client_rows:
        by_domain.setdefault(domain, []).append(address)
    zone: dict[str, list[Any]] = {d: [{"TXT": HOSTED_SPF}] for d in names}
    for alias in fake.alias_domains:
        zone[alias] = [{"TXT": HOSTED_SPF}]
    spf_listed: list[str] = []
    for i, domain in enumerate(ext):
        roll = rng.random()
        ips = by_domain.get(domain, [])[:12]
        mechanisms = " ".join(("ip6:" if ":" in ip else "ip4:") + ip for ip in ips)
        if roll < 0.5 and ips:
            spf_listed.append(domain)
            if i % 3 == 0:  # a third of them through an include
                zone[domain] = [{"TXT": f"v=spf1 include:_spf.{domain} ~all"}]
                zone[f"_spf.{domain}"] = [{"TXT": f"v=spf1 {mechanisms} -all"}]
            else:
                zone[domain] = [{"TXT": f"v=spf1 {mechanisms} -all"}]
        elif roll < 0.7:
            zone[domain] = [{"TXT": "v=spf1 ip4:198.51.100.0/24 -all"}]  # not its clients
        # else: no record (NXDOMAIN)
    # -- throttle: generous limits, a few tight ones -------------------------
    hour, day = 3600, 86400
    throttle: list[tuple[str, str, dict[str, int]]] = [
        ("@.", "outbound", {"period": hour, "max_msgs": 100_000, "max_quota": 10 * 2**30,
                            "msg_size": 50 * 2**20, "max_rcpts": 500}),
        ("@.", "inbound", {"period": hour, "max_msgs": 100_000, "msg_size": 50 * 2**20}),
        ("@.", "external", {"period": hour, "max_msgs": 100_000}),
        ("@ip", "external", {"period": hour, "max_msgs": 1_000_000}),
    ]  # fmt: skip
    for domain in names[:10]:
        throttle.append(
            (f"@{domain}", "outbound", {"period": day, "max_msgs": 1_000_000, "max_quota": 0})
        )
    sample = rng.sample(users, 160)
    for user in sample[:100]:
        throttle.append((user, "outbound", {"period": hour, "max_msgs": 20_000, "max_rcpts": 100}))
    for user in sample[100:110]:  # tight: these users do get "quota exceeded" under load
        throttle.append((user, "outbound", {"period": 60, "max_msgs": 30}))
    for user in sample[110:160]:
        throttle.append((user, "inbound", {"period": hour, "max_msgs": 50_000}))
    bulk = client_rows[7][0]
    if ":" not in bulk:
        throttle.append(
            (bulk.rsplit(".", 1)[0] + ".*", "external", {"period": hour, "max_msgs": 500_000})
        )
    # -- greylisting ----------------------------------------------------------
    grey: list[tuple[str, str, bool]] = [("@.", "@.", True)]
    grey += [(f"@{d}", "@.", False) for d in names[-2:]]
    grey += [(u, "@.", False) for u in rng.sample(users, 20)]
    ipv4_clients = [c for c in client_rows if ":" not in c[0]]
    grey_wl: list[tuple[str, str]] = [("@.", f"@{d}") for d in rng.sample(ext, 10)]
    grey_wl += [("@.", c[0]) for c in rng.sample(client_rows, 30)]
    for row in rng.sample(ipv4_clients, 2):
        grey_wl.append(("@.", str(ipaddress.ip_network(row[0] + "/24", strict=False))))
    grey_spf = {d: by_domain[d][:12] for d in rng.sample(spf_listed, min(5, len(spf_listed)))}
    passed = []
    for address, _n, _r, _h, domain in client_rows:
        if rng.random() < 0.6:
            passed.append((address, f"bounce@{domain}", rng.choice(users)))
    # -- amavisd white/blacklists ---------------------------------------------
    wblist: dict[str, dict[str, list[str]]] = {
        "@.": {
            "bl_senders": [f"@{d}" for d in rng.sample(ext, 5)]
            + [c[0] for c in rng.sample(client_rows, 20)]
            + [c[0].rsplit(".", 1)[0] + ".*" for c in rng.sample(ipv4_clients, 2)],
            "wl_senders": [f"@{d}" for d in rng.sample(ext, 5)],
        }
    }
    for domain in names[:5]:
        wblist[f"@{domain}"] = {
            "bl_senders": [f"@{d}" for d in rng.sample(ext, 3)],
            "wl_senders": [f"@{d}" for d in rng.sample(ext, 3)],
        }
    for user in rng.sample(users, 200):
        entries: dict[str, list[str]] = {"wl_senders": [], "bl_senders": []}
        for _ in range(rng.randint(1, 4)):
            d = rng.choice(ext)
            sender = f"@{d}" if rng.random() < 0.7 else f"{rng.choice(_FIRST)}@{d}"
            entries["wl_senders" if rng.random() < 0.6 else "bl_senders"].append(sender)
        wblist[user] = entries
    for user in rng.sample(users, 30):
        wblist.setdefault(user, {})["bl_rcpts"] = [f"@{d}" for d in rng.sample(ext, 2)]
    # -- wblist_rdns -----------------------------------------------------------
    named = [c for c in client_rows if c[2] != "unknown" and not c[2].startswith("dynamic-")]
    dynamic = [c for c in client_rows if c[2].startswith("dynamic-")]
    rdns = [(".isp.example", "B"), (".dsl.example", "B"), (".cable.example", "B")]
    rdns += [(c[2], "B") for c in rng.sample(named, 10)]
    rdns += [(c[2], "W") for c in rng.sample(dynamic, min(3, len(dynamic)))]
    rdns += [(f".{d}", "W") for d in rng.sample(ext, 5)]

    data = Dataset(
        accounts=fake,
        external_domains=ext,
        clients=client_rows,
        submission_clients=submission,
        zone=zone,
        throttle=throttle,
        greylisting=grey,
        greylisting_whitelists=grey_wl,
        greylisting_spf=grey_spf,
        passed_clients=passed,
        wblist=wblist,
        wblist_rdns=rdns,
    )
    data.counts = {
        "domains": len(fake.domains),
        "alias domains": len(fake.alias_domains),
        "mailboxes": len(fake.mailboxes),
        "per-user aliases": len(fake.user_aliases),
        "mail aliases": len(fake.aliases),
        "mailing lists": len(fake.maillists),
        "external domains": len(ext),
        "with SPF listing their clients": len(spf_listed),
        "SMTP clients": len(client_rows),
        "clients that passed greylisting": len(passed),
        "throttle rules": len(throttle),
        "greylisting settings": len(grey),
        "greylisting whitelists": len(grey_wl),
        "amavisd wblist accounts": len(wblist),
        "wblist_rdns rows": len(rdns),
    }
    return data


# ---------------------------------------------------------------------------
# Databases, slapd, stub DNS
# ---------------------------------------------------------------------------


def _server_url(kind: str) -> URL:
    return MARIADB_URL if kind == "mariadb" else PGSQL_URL


@contextlib.contextmanager
def bench_database(kind: str, role: str, run_id: str) -> Iterator[URL]:
    """Create ``iredapd_bench_<run>_<role>`` on ``kind``; yield its URL; drop it."""
    name = f"iredapd_bench_{run_id}_{role}"
    admin = sa.create_engine(_server_url(kind), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    quoted = admin.dialect.identifier_preparer.quote(name)
    try:
        with admin.connect() as conn:
            if kind == "mariadb":
                conn.exec_driver_sql(f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4")
            else:
                conn.exec_driver_sql(f"CREATE DATABASE {quoted} TEMPLATE template0 ENCODING 'UTF8'")
    except sa.exc.DBAPIError as exc:
        admin.dispose()
        where = _server_url(kind).render_as_string(hide_password=True)
        raise SystemExit(f"cannot create a database on {where}: {exc.orig}") from None
    try:
        yield _server_url(kind).set(database=name)
    finally:
        try:
            with admin.connect() as conn:
                if kind == "mariadb":
                    conn.exec_driver_sql("SET SESSION lock_wait_timeout = 30")
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}")
                else:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
        except sa.exc.DBAPIError as exc:
            print(f"scenarios: could not drop {kind} database {name}: {exc.orig}", file=sys.stderr)
        finally:
            admin.dispose()


def _engine(url: URL) -> Engine:
    return sa.create_engine(url, poolclass=NullPool)


def load_vmail(url: URL, data: Dataset) -> None:
    """iRedMail's vmail tables and the accounts (tests/support/accounts.py's mapping)."""
    from tests.support.accounts import load_sql

    load_sql(url, data.accounts)


def load_amavisd(url: URL, data: Dataset) -> None:
    """amavisd's tables and the white/blacklists (wblist_admin's storage code)."""
    engine = _engine(url)
    try:
        upgrade(engine, "amavisd", create_foreign=True)
        with engine.begin() as conn:
            for account, lists in data.wblist.items():
                add_wblist(
                    conn,
                    account,
                    wl_senders=lists.get("wl_senders", ()),
                    bl_senders=lists.get("bl_senders", ()),
                    wl_rcpts=lists.get("wl_rcpts", ()),
                    bl_rcpts=lists.get("bl_rcpts", ()),
                )
    finally:
        engine.dispose()


def load_iredapd(url: URL, data: Dataset) -> None:
    """The daemon's own tables (as it creates them) with throttle, greylisting, rDNS data."""
    engine = _engine(url)
    now = int(time.time())
    try:
        upgrade(engine, "iredapd")
        with engine.begin() as conn:
            for account, kind, values in data.throttle:
                upsert_rule(conn, account, kind, values)
            for account, sender, active in data.greylisting:
                if active:
                    greylisting_store.enable_greylisting(conn, account, sender)
                else:
                    greylisting_store.disable_greylisting(conn, account, sender)
            for account, sender in data.greylisting_whitelists:
                greylisting_store.add_whitelist_sender(conn, account, sender, "benchmark")
            for domain, senders in data.greylisting_spf.items():
                greylisting_store.add_whitelist_domain(conn, domain)
                greylisting_store.replace_spf_whitelist(conn, domain, senders)
            rows = [
                {
                    "sender": sender,
                    "recipient": recipient,
                    "client_address": client,
                    "sender_domain": sender.partition("@")[2],
                    "rcpt_domain": recipient.partition("@")[2],
                    "init_time": now - 86400,
                    "block_expired": now - 86400 + 900,
                    "record_expired": now + 30 * 86400,
                    "blocked_count": 1,
                    "passed": 1,
                }
                for client, sender, recipient in data.passed_clients
            ]
            if rows:
                conn.execute(sa.insert(schema.greylisting_tracking), rows)
            conn.execute(
                sa.insert(schema.wblist_rdns), [{"rdns": r, "wb": wb} for r, wb in data.wblist_rdns]
            )
    finally:
        engine.dispose()


def _outcome_exceptions() -> tuple[type[BaseException], ...]:
    """pytest's skip/fail exceptions (tests/support raises them for missing programs)."""
    try:
        import pytest
    except ImportError:
        return ()
    return (pytest.skip.Exception, pytest.fail.Exception)


@contextlib.contextmanager
def ldap_server(data: Dataset) -> Iterator[tuple[Any, str]]:
    """A throwaway slapd holding the accounts; yields (instance, basedn)."""
    outcomes: tuple[type[BaseException], ...] = (*_outcome_exceptions(), ImportError)
    try:
        from tests.support.accounts import ldif_for
        from tests.support.slapd import base_ldif, slapd_instance

        cm = slapd_instance(base_ldif(domains=(), users={}))
        server = cm.__enter__()
    except outcomes as exc:
        raise SystemExit(
            f"the LDAP scenario needs slapd, ldap-utils and python-ldap: {exc}"
        ) from None
    try:
        basedn = f"o=bench,{server.suffix}"
        server.add(ldif_for(data.accounts, basedn))
        yield server, basedn
    finally:
        cm.__exit__(None, None, None)


@contextlib.contextmanager
def stub_dns(zone: dict[str, list[Any]], workdir: Path) -> Iterator[tuple[int, int]]:
    """tests/support/stubdns.py serving ``zone``; yields (port, pid)."""
    zonefile = workdir / "zone.json"
    portfile = workdir / "dns.port"
    zonefile.write_text(json.dumps(zone), encoding="utf-8")
    log = (workdir / "stubdns.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "support" / "stubdns.py"),
            str(portfile),
            str(zonefile),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not portfile.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                text = (workdir / "stubdns.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"stub DNS server did not start:\n{text}")
            time.sleep(0.05)
        yield int(portfile.read_text().strip()), proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def listening_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` (Linux /proc; None when not found or not allowed)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{parts[9]}]")
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return int(entry.name)
        except OSError:
            continue
    return None


# ---------------------------------------------------------------------------
# Preparation
# ---------------------------------------------------------------------------


@dataclass
class ScenarioTarget:
    """A daemon target of a scenario: its plugins, settings lines and backend processes."""

    name: str
    scenario: str
    chain: str
    backend: str
    cache: str
    plugins: list[str]
    settings: list[str]
    #: processes whose CPU time is the target's backends (database servers, slapd, DNS)
    backend_pids: dict[str, int]
    #: send the whole request pool once before measuring (warm cache)
    prime: bool = False
    #: the ``copies`` name this target is for ("": the checkout's daemon)
    copy: str = ""


@dataclass
class Prepared:
    """What :func:`prepare` made: targets, the request mix file, a description."""

    targets: list[ScenarioTarget]
    mix_file: Path
    dataset: Dataset
    seconds: float
    description: list[str]


def _db_settings(prefix: str, url: URL, kind: str) -> list[str]:
    return [
        f"{prefix}_db_server = {url.host!r}",
        f"{prefix}_db_port = {int(url.port or (3306 if kind == 'mariadb' else 5432))}",
        f"{prefix}_db_name = {url.database!r}",
        f"{prefix}_db_user = {url.username!r}",
        f"{prefix}_db_password = {url.password or ''!r}",
    ]


@contextlib.contextmanager
def prepare(
    specs: list[ScenarioSpec],
    workdir: Path,
    *,
    seed: int = 1,
    log: Any = None,
    copies: Sequence[str] = (),
) -> Iterator[Prepared]:
    """Load the data for ``specs``, start slapd and the stub DNS; undo it all on exit.

    ``copies``: for each name, one more target per scenario target, named
    ``<name> <target>``, with an iredapd database of its own (the same data):
    the same scenario for another build of the daemon, side by side.
    """
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t0 = time.monotonic()
    data = build_dataset(seed)
    run_id = secrets.token_hex(3)
    accounts_file = workdir / "accounts.json"
    accounts_file.write_text(json.dumps(data.accounts_json()), encoding="utf-8")
    mix_file = workdir / "scenario-mix.json"
    mix_file.write_text(json.dumps({"preset": "default", "accounts": accounts_file.name}))
    backends = {s.backend for s in specs}
    kinds = {"mariadb" if b == "ldap" else b for b in backends}
    where = ", ".join(sorted(kinds))
    say(f"scenarios: databases iredapd_bench_{run_id}_* on {where}; dropped at the end")
    with contextlib.ExitStack() as stack:
        dns_port, dns_pid = stack.enter_context(stub_dns(data.zone, workdir))
        pids: dict[str, int] = {"stub DNS": dns_pid}
        for kind in sorted(kinds):
            port = int(_server_url(kind).port or 0)
            pid = listening_pid(port)
            if pid is not None:
                pids[kind] = pid
        shared: dict[str, dict[str, URL]] = {}
        # amavisd_wblist is the only reader of amavisd; LDAP targets read no vmail
        wants_amavisd = {"mariadb" if s.backend == "ldap" else s.backend for s in specs
                         if "amavisd_wblist" in CHAINS[s.chain]}  # fmt: skip
        wants_vmail = {s.backend for s in specs if s.backend != "ldap"}
        for kind in sorted(kinds):
            shared[kind] = {}
            if kind in wants_vmail:
                say(f"scenarios: loading a vmail database on {kind} ...")
                url = stack.enter_context(bench_database(kind, f"{kind[:2]}_vmail", run_id))
                load_vmail(url, data)
                shared[kind]["vmail"] = url
            if kind in wants_amavisd:
                say(f"scenarios: loading an amavisd database on {kind} ...")
                url = stack.enter_context(bench_database(kind, f"{kind[:2]}_amavisd", run_id))
                load_amavisd(url, data)
                shared[kind]["amavisd"] = url
        ldap: tuple[Any, str] | None = None
        if "ldap" in backends:
            say("scenarios: starting slapd and loading the accounts ...")
            ldap = stack.enter_context(ldap_server(data))
            if ldap[0].pid is not None:
                pids["slapd"] = ldap[0].pid
        targets: list[ScenarioTarget] = []
        variants = [(spec, cache, copy) for spec in specs for cache in spec.caches
                    for copy in ("", *copies)]  # fmt: skip
        for spec, cache, copy in variants:
            kind = "mariadb" if spec.backend == "ldap" else spec.backend
            index = len(targets)
            name = f"{copy} {spec.target_name(cache)}" if copy else spec.target_name(cache)
            say(f"scenarios: iredapd database for {name} ...")
            iredapd = stack.enter_context(bench_database(kind, f"t{index}_iredapd", run_id))
            load_iredapd(iredapd, data)
            lines = [f"backend = {'mysql' if kind == 'mariadb' else 'pgsql'!r}"]
            if spec.backend == "ldap":
                server, basedn = ldap or (None, "")
                assert server is not None
                lines = [
                    "backend = 'ldap'",
                    f"ldap_uri = {server.uri!r}",
                    f"ldap_basedn = {basedn!r}",
                    f"ldap_binddn = {server.binddn!r}",
                    f"ldap_bindpw = {server.bindpw!r}",
                ]
            else:
                lines += _db_settings("vmail", shared[kind]["vmail"], kind)
            if "amavisd" in shared[kind]:
                lines += _db_settings("amavisd", shared[kind]["amavisd"], kind)
            lines += _db_settings("iredapd", iredapd, kind)
            lines += [
                f"CACHE_TTL = {CACHE_TTLS[cache]}",
                "DNS_NAMESERVERS = ['127.0.0.1']",
                f"DNS_PORT = {dns_port}",
                f"SERVER_HOSTNAME = {SERVER_HOSTNAME!r}",
            ]
            used = {"stub DNS", kind} | ({"slapd"} if spec.backend == "ldap" else set())
            targets.append(
                ScenarioTarget(
                    name=name,
                    scenario=spec.name,
                    chain=spec.chain,
                    backend=spec.backend,
                    cache=cache,
                    plugins=list(CHAINS[spec.chain]),
                    settings=lines,
                    backend_pids={k: v for k, v in pids.items() if k in used},
                    prime=CACHE_TTLS[cache] > 0,
                    copy=copy,
                )
            )
        seconds = time.monotonic() - t0
        say(f"scenarios: ready in {seconds:.1f} s")
        counts = ", ".join(f"{v} {k}" for k, v in data.counts.items())
        description = [
            f"- scenario data (seed {seed}): {counts}",
            *(f"- `{s.name}`: {', '.join(CHAINS[s.chain])}" for s in specs),
            "- cold = `CACHE_TTL = 0`; warm = `CACHE_TTL = 3600`, primed with the whole "
            "request pool before the first round (every cacheable answer cached); SPF answered "
            "by a local stub DNS; every target has its own iredapd database (counters, "
            "greylisting triplets, session log)",
        ]
        try:
            yield Prepared(targets, mix_file, data, seconds, description)
        finally:
            say("scenarios: dropping the databases, stopping slapd and the stub DNS ...")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _interrupt(signum: int, _frame: Any) -> None:
    """SIGTERM: unwind like Ctrl-C, so that everything is dropped and stopped."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--describe", action="store_true", help="print the data set's size and exit")
    p.add_argument(
        "--serve", metavar="SCENARIOS", help="prepare, print the settings, wait for Ctrl-C"
    )
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.describe or not args.serve:
        data = build_dataset(args.seed)
        for key, value in data.counts.items():
            print(f"{value:>7}  {key}")
        for chain, plugins in CHAINS.items():
            print(f"chain {chain}: {', '.join(plugins)}")
        return 0
    specs = parse_scenarios([args.serve])
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="iredapd-bench-scenario-") as tmp:
        try:
            with prepare(specs, Path(tmp), seed=args.seed) as ready:
                for target in ready.targets:
                    print(f"# {target.name}\nplugins = {target.plugins!r}")
                    print("\n".join(target.settings) + "\n")
                print(f"# request mix: --mix {ready.mix_file}")
                print("# Ctrl-C to drop everything", flush=True)
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
