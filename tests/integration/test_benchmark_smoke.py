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
