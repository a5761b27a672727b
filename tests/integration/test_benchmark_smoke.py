"""Smoke test of the benchmark tools: loadgen against the ceiling server.

Both run as subprocesses, exactly as ``benchmarks/run.py`` uses them, on a
port the ceiling server picks at run time.
"""

from __future__ import annotations

import json
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TIMEOUT_SCALE as SCALE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


@pytest.fixture
def ceiling_port() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "ceiling.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30 * SCALE)
        assert ready, "ceiling.py printed nothing"
        line = proc.stdout.readline()
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
        assert match, f"unexpected first line {line!r}"
        yield int(match.group(1))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=10 * SCALE)
    assert status == 0, f"ceiling.py exited with {status} on SIGTERM"


def test_loadgen_against_ceiling(ceiling_port: int) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "loadgen.py"),
            "--port",
            str(ceiling_port),
            "--connections",
            "4",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60 * SCALE,
        check=False,
    )
    assert done.returncode == 0, done.stderr or done.stdout
    report = json.loads(done.stdout)
    assert report["requests"] > 0
    assert report["errors"] == 0, report["error_kinds"]
    assert report["connections"] == 4
    assert report["actions"] == {"DUNNO": report["requests"]}
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]
    assert report["latency_ms"]["p99"] <= report["latency_ms"]["max"]


def test_loadgen_requests_limit(ceiling_port: int) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "loadgen.py"),
            "--port",
            str(ceiling_port),
            "--connections",
            "4",
            "--requests",
            "500",
            "--processes",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60 * SCALE,
        check=False,
    )
    assert done.returncode == 0, done.stderr or done.stdout
    report = json.loads(done.stdout)
    assert report["requests"] == 500
    assert report["processes"] == 2
    assert report["errors"] == 0


@pytest.mark.slow
def test_run_matrix_ceiling_against_itself(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run.py"),
            "--no-default-targets",
            "--target",
            "ceiling-copy={python} {repo}/benchmarks/ceiling.py --port {port}",
            "--connections",
            "2",
            "--duration",
            "0.6",
            "--rounds",
            "2",
            "--warmup",
            "0.2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120 * SCALE,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ceiling")]
    assert [row.split("|")[1].strip() for row in rows] == ["ceiling", "ceiling-copy"]
    data = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".md").read_text().strip() == done.stdout.strip()
    cells = {cell["target"]: cell for cell in data["cells"]}
    assert cells["ceiling"]["errors"] == cells["ceiling-copy"]["errors"] == 0
    assert cells["ceiling-copy"]["requests"] > 0
    assert len(cells["ceiling-copy"]["pct_rounds"]) == 2
    assert all(t["exit_status"] == 0 and t["stopped_by_sigterm"] for t in data["targets"])


def test_accounts_mix_draws_from_the_accounts(tmp_path: Path) -> None:
    """A mix file with ``accounts`` sends requests for those accounts (no database needed)."""
    sys.path.insert(0, str(BENCH))
    try:
        from policy_mix import Mix, build_pool
        from scenarios import build_dataset
    finally:
        sys.path.remove(str(BENCH))
    data = build_dataset(seed=3, mailboxes=200, aliases=20, maillists=5, clients=300)
    (tmp_path / "accounts.json").write_text(json.dumps(data.accounts_json()))
    (tmp_path / "mix.json").write_text(json.dumps({"accounts": "accounts.json", "pool": 2000}))
    _, mix = Mix.load(str(tmp_path / "mix.json"))
    pool = build_pool(mix, seed=1)
    assert pool == build_pool(mix, seed=1)  # seeded: the same bytes every time
    requests = [
        dict(line.split("=", 1) for line in raw.decode().splitlines() if line) for raw in pool
    ]
    fake = data.accounts
    hosted = set(fake.domains) | set(fake.alias_domains)
    logins = {r["sasl_username"].lower() for r in requests if r["sasl_username"]}
    assert logins and logins <= set(fake.mailboxes)
    recipients = set()
    for r in requests:
        local, _, domain = r["recipient"].lower().partition("@")
        recipients.add(f"{local.partition('+')[0]}@{domain}")
    assert recipients & set(fake.aliases)
    assert recipients & set(fake.maillists)
    assert recipients & set(fake.mailboxes)
    unknown = {r for r in recipients if r.partition("@")[2] in hosted} - set(fake.mailboxes)
    assert unknown - set(fake.aliases) - set(fake.maillists) - set(fake.user_aliases)
    clients = {c[0] for c in data.clients} | set(data.submission_clients)
    assert {r["client_address"] for r in requests} <= clients
    states = {r["protocol_state"] for r in requests}
    assert states == {"RCPT", "END-OF-MESSAGE"}


@pytest.mark.slow
@pytest.mark.pgsql
def test_run_matrix_scenario_on_postgresql(tmp_path: Path) -> None:
    """One database scenario end to end: data loaded, daemon measured, all dropped."""
    from tests.support.databases import require_service

    require_service("pgsql")
    out = tmp_path / "bench"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run.py"),
            "--scenario",
            "access-pgsql-cold",
            "--connections",
            "2",
            "--duration",
            "1",
            "--rounds",
            "1",
            "--warmup",
            "0.3",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300 * SCALE,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    data = json.loads(out.with_suffix(".json").read_text())
    cells = {cell["target"]: cell for cell in data["cells"]}
    cell = cells["access-pgsql cold"]
    assert cell["errors"] == 0 and cell["requests"] > 0
    assert set(cell["actions"]) <= {"DUNNO", "REJECT"} and "DUNNO" in cell["actions"]
    target = next(t for t in data["targets"] if t["name"] == "access-pgsql cold")
    assert target["scenario"]["chain"] == "access" and not target["log_lines"]
    assert "| access-pgsql cold | 2 |" in done.stdout
    # the run's databases are gone
    match = re.search(r"databases (iredapd_bench_[0-9a-f]+_)\*", done.stderr)
    assert match, done.stderr
    assert not [name for name in _pgsql_databases() if name.startswith(match.group(1))]


def _pgsql_databases() -> list[str]:
    import sqlalchemy as sa

    from tests.support.databases import require_service

    engine = sa.create_engine(require_service("pgsql"))
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.text("SELECT datname FROM pg_database")).scalars())
    finally:
        engine.dispose()
