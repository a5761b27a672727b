"""wblist_rdns: decision table on SQLite, MariaDB and PostgreSQL (access-policies.md §5)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from iredapd.storage.schema import wblist_rdns
from tests.plugins.test_amavisd_wblist import backend_services, chain_for, rcpt
from tests.support.databases import backend_params

REJECT = "REJECT Blacklisted"
DISCARD = "DISCARD Policy discard"

ROWS = [
    (".dynamic.163data.com.cn", "B"),
    (".clients.your-server.de", "B"),
    ("host.bad.example", "B"),
    (".spam.example", "B"),
    ("good.spam.example", "W"),  # a whitelist row beats a blacklist row
    (".ok.spam.example", "W"),
    ("lower.example", "b"),  # MySQL's collation takes 'b' for 'B'
    ("amavis.example", "Y"),  # neither W nor B
]


@pytest.fixture(scope="module", params=backend_params())
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """(backend, services) with the rows above in wblist_rdns."""
    backend: str = request.param
    directory = tmp_path_factory.mktemp(f"rdns-{backend}")
    with backend_services(backend, directory) as services:
        assert services.iredapd_db is not None
        with services.iredapd_db.engine.begin() as conn:
            conn.execute(wblist_rdns.insert(), [{"rdns": r, "wb": wb} for r, wb in ROWS])
        yield backend, services


# (reverse_client_name, client_address, sasl_username, expected, expected on MariaDB)
TABLE = {
    "exact-name": ("host.bad.example", "203.0.113.5", "", REJECT, None),
    "exact-name-only": ("sub.host.bad.example", "203.0.113.5", "", "DUNNO", None),
    "suffix": ("1-2-3-4.dynamic.163data.com.cn", "203.0.113.5", "", REJECT, None),
    "suffix-deep": ("a.b.c.clients.your-server.de", "203.0.113.5", "", REJECT, None),
    "suffix-matches-the-domain-itself": ("spam.example", "203.0.113.5", "", REJECT, None),
    "suffix-no-partial-label": ("notspam.example", "203.0.113.5", "", "DUNNO", None),
    "name-lower-cased": ("HOST.Bad.Example", "203.0.113.5", "", REJECT, None),
    "whitelist-beats-blacklist": ("good.spam.example", "203.0.113.5", "", "DUNNO", None),
    "whitelist-suffix": ("x.ok.spam.example", "203.0.113.5", "", "DUNNO", None),
    "other-name": ("mail.example.org", "203.0.113.5", "", "DUNNO", None),
    "unknown": ("unknown", "203.0.113.5", "", "DUNNO", None),
    "absent-name": ("", "203.0.113.5", "", "DUNNO", None),
    "smtp-auth": ("host.bad.example", "203.0.113.5", "u@example.com", "DUNNO", None),
    "localhost-trusted": ("host.bad.example", "127.0.0.1", "", "DUNNO", None),
    "mynetworks-network": ("host.bad.example", "192.168.1.20", "", "DUNNO", None),
    "mynetworks-wildcard": ("host.bad.example", "10.1.2.3", "", "DUNNO", None),
    "wb-lowercase": ("lower.example", "203.0.113.5", "", "DUNNO", REJECT),
    "wb-other-value": ("amavis.example", "203.0.113.5", "", "DUNNO", None),
}


@pytest.mark.parametrize("ttl", [pytest.param(60, id="cached"), pytest.param(0, id="uncached")])
@pytest.mark.parametrize("row", [pytest.param(row, id=key) for key, row in TABLE.items()])
async def test_decision(env: Any, row: tuple[str, str, str, str, str | None], ttl: float) -> None:
    backend, services = env
    name, client, sasl, expected, on_mysql = row
    mynetworks = ["192.168.1.0/24", "10.*.*.*"]
    chain = chain_for(services, "wblist_rdns", MYNETWORKS=mynetworks, CACHE_TTL=ttl)
    request = rcpt(
        reverse_client_name=name,
        client_address=client,
        sasl_username=sasl,
        sender="a@example.org",
        recipient="b@example.com",
    )
    decision = await chain.evaluate(request)
    want = on_mysql if backend == "mariadb" and on_mysql is not None else expected
    assert decision.action.text == want
    assert decision.plugin == ("" if want == "DUNNO" else "wblist_rdns")


@pytest.mark.parametrize("ttl", [0, 300])
async def test_a_new_row_applies_at_once_without_cache_else_within_the_ttl(
    env: Any, ttl: float
) -> None:
    """With CACHE_TTL the table is read at most once per TTL (the snapshot and
    the answers expire: TTLCache's and Snapshot's own tests); a reload reads it."""
    _backend, services = env
    request = rcpt(reverse_client_name="mx.new-spammer.example", client_address="203.0.113.5")
    chain = chain_for(services, "wblist_rdns", CACHE_TTL=ttl)
    assert (await chain.evaluate(request)).action.text == "DUNNO"
    engine = services.iredapd_db.engine
    with engine.begin() as conn:
        conn.execute(wblist_rdns.insert().values(rdns=".new-spammer.example", wb="B"))
    try:
        assert (await chain.evaluate(request)).action.text == (REJECT if ttl == 0 else "DUNNO")
        reloaded = chain_for(services, "wblist_rdns", CACHE_TTL=ttl)
        assert (await reloaded.evaluate(request)).action.text == REJECT
    finally:
        with engine.begin() as conn:
            conn.execute(wblist_rdns.delete().where(wblist_rdns.c.rdns == ".new-spammer.example"))


async def test_a_name_the_snapshot_may_match_is_asked_of_the_database(env: Any) -> None:
    """A row equal to a name only loosely (here: in case) is not ruled out by
    the snapshot: the database compares, as without cache (MySQL's collation
    ignores case, PostgreSQL's and SQLite's do not)."""
    backend, services = env
    engine = services.iredapd_db.engine
    with engine.begin() as conn:
        conn.execute(wblist_rdns.insert().values(rdns="Mixed.Case.example", wb="B"))
    try:
        chain = chain_for(services, "wblist_rdns")
        request = rcpt(reverse_client_name="mixed.case.example", client_address="203.0.113.5")
        expected = REJECT if backend == "mariadb" else "DUNNO"
        assert (await chain.evaluate(request)).action.text == expected
        uncached = chain_for(services, "wblist_rdns", CACHE_TTL=0)
        assert (await uncached.evaluate(request)).action.text == expected
    finally:
        with engine.begin() as conn:
            conn.execute(wblist_rdns.delete().where(wblist_rdns.c.rdns == "Mixed.Case.example"))


async def test_discard_instead_of_reject(env: Any) -> None:
    _backend, services = env
    chain = chain_for(services, "wblist_rdns", WBLIST_DISCARD_INSTEAD_OF_REJECT=True)
    request = rcpt(reverse_client_name="host.bad.example", client_address="203.0.113.5")
    assert (await chain.evaluate(request)).action.text == DISCARD


async def test_runs_at_rcpt_only(env: Any) -> None:
    _backend, services = env
    chain = chain_for(services, "wblist_rdns")
    request = rcpt(reverse_client_name="host.bad.example", client_address="203.0.113.5")
    request = request._replace(protocol_state="END-OF-MESSAGE", state="END-OF-MESSAGE")
    assert (await chain.evaluate(request)).action.text == "DUNNO"


async def test_priority_99_runs_before_amavisd_wblist(env: Any) -> None:
    _backend, services = env
    chain = chain_for(services, "amavisd_wblist", plugins=["amavisd_wblist", "wblist_rdns"])
    assert chain.names == ["wblist_rdns", "amavisd_wblist"]
