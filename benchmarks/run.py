#!/usr/bin/env python3
"""Benchmark matrix: several policy servers side by side, in one run.

For each connection count, the measured time (``--duration``) is cut into
``--rounds`` short rounds; in each round every target is loaded in turn with
``benchmarks/loadgen.py`` (the order rotates between rounds), so that the
noise of a shared machine hits all targets alike.  The table reports each
target's throughput as a percentage of the ``ceiling`` server in the same
rounds (the median of the per-round ratios).  Targets are started once,
before the first measurement, on a port picked at run time, and stopped with
SIGTERM (SIGKILL 5 s later) at the end.

    python benchmarks/run.py                      # default targets, 10 s + 2 s warmup
    python benchmarks/run.py --quick              # smoke run, 2 s per cell
    python benchmarks/run.py --rounds 10 --out results/2026-11-25
    python benchmarks/run.py --no-default-targets \\
        --target 'ceiling-copy=python3 benchmarks/ceiling.py --port {port}'
    .venv/bin/python benchmarks/run.py --scenario access-mariadb,access-pgsql,access-ldap
    .venv/bin/python benchmarks/run.py --scenario default-mariadb,default-pgsql

A target command is split like a shell line (no shell runs it) and may use
``{port}``, ``{tmpdir}`` (a fresh directory per target), ``{repo}`` and
``{python}`` (this interpreter).

``--scenario`` (see ``scenarios.py``, which needs the project's virtualenv)
loads realistic account data into MariaDB, PostgreSQL or a throwaway slapd,
runs the daemon with one of iRedAPD's plugin chains on it, and draws the
requests from the same data; everything is dropped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Target", "main"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LOADGEN = HERE / "loadgen.py"

READY_DEADLINE = 30.0  # seconds for a target to accept connections
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL

DAEMON_COMMAND = "{repo}/.venv/bin/iredapd --foreground --config {tmpdir}/settings.py"
TREE_COMMAND = "{python} -m iredapd --foreground --config {tmpdir}/settings.py"
DAEMON_SETTINGS = """\
# Written by benchmarks/run.py for one benchmark target.
listen_address = '127.0.0.1'
listen_port = {port}
plugins = {plugins}
DATA_DIR = '{tmpdir}'
LOG_TARGET = 'file'
LOG_FILE = '{tmpdir}/iredapd.log'
log_level = 'info'
"""


@dataclass
class Target:
    """A server to measure: how to start it and the files it needs first."""

    name: str
    command: str
    #: file name (in the target's tmpdir) -> content; both take the placeholders
    files: dict[str, str] = field(default_factory=dict)
    port: int = 0
    tmpdir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    failure: str | None = None
    exit_status: int | None = None
    #: True when stop() had to send SIGTERM (the exit status is its answer to it)
    terminated: bool = False
    #: processes doing this target's backend work (database servers, slapd,
    #: DNS): name -> pid; their CPU time is reported per request too
    backend_pids: dict[str, int] = field(default_factory=dict)
    #: scenario details for the report (scenarios.py), None for other targets
    scenario: dict[str, Any] | None = None
    #: send the whole request pool once before measuring (fills a warm cache)
    prime: bool = False
    #: WARNING/ERROR/... lines in the target's log (scan_log), and samples of them
    log_counts: dict[str, int] = field(default_factory=dict)
    log_samples: dict[str, str] = field(default_factory=dict)
    log_sample_counts: dict[str, int] = field(default_factory=dict)

    def fill(self, template: str, *, quote: bool = False) -> str:
        """Replace the known placeholders only (settings files have braces of their own).

        With ``quote``, the values are shell-quoted, for a command line that is
        then split with shlex (a path with a space stays one argument).
        """
        values = {
            "{port}": str(self.port),
            "{tmpdir}": str(self.tmpdir),
            "{repo}": str(REPO),
            "{python}": sys.executable,
        }
        for key, value in values.items():
            template = template.replace(key, shlex.quote(value) if quote else value)
        return template


def ceiling_target(name: str = "ceiling") -> Target:
    return Target(name, "{python} {repo}/benchmarks/ceiling.py --port {port}")


def daemon_target(name: str, plugins: list[str], extra_settings: list[str]) -> Target:
    settings = DAEMON_SETTINGS.replace("{plugins}", repr(plugins))
    settings += "".join(line + "\n" for line in extra_settings)
    return Target(name, DAEMON_COMMAND, {"settings.py": settings})


def default_targets(extra_settings: list[str]) -> list[Target]:
    return [
        daemon_target("iredapd (no plugins)", [], extra_settings),
        # the protocol and chain alone: no smtp_sessions rows (an SQLite
        # INSERT per END-OF-MESSAGE request, written by a thread)
        daemon_target(
            "iredapd (no plugins, LOG_SMTP_SESSIONS = False)",
            [],
            ["LOG_SMTP_SESSIONS = False", *extra_settings],
        ),
        daemon_target(
            "iredapd (reject_null_sender, reject_to_hostname)",
            ["reject_null_sender", "reject_to_hostname"],
            extra_settings,
        ),
    ]


# --------------------------------------------------------------------------
# Target lifecycle
# --------------------------------------------------------------------------


def free_port(taken: set[int]) -> int:
    """A port nobody listens on right now (the target binds it a moment later)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def start(target: Target, taken: set[int]) -> None:
    """Start the target and wait until its port accepts connections."""
    target.port = free_port(taken)
    target.tmpdir = Path(tempfile.mkdtemp(prefix="iredapd-bench-"))
    for name, content in target.files.items():
        (target.tmpdir / name).write_text(target.fill(content), encoding="utf-8")
    argv = shlex.split(target.fill(target.command, quote=True))
    log = target.tmpdir / "output.log"
    try:
        with log.open("wb") as out:
            target.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=target.tmpdir,
            )
    except OSError as exc:
        target.failure = f"cannot run {argv[0]}: {exc.strerror}"
        return
    deadline = time.monotonic() + READY_DEADLINE
    while time.monotonic() < deadline:
        if target.proc.poll() is not None:
            target.failure = f"exited with status {target.proc.returncode} before listening"
            break
        if _accepts(target.port):
            return
        time.sleep(0.05)
    else:
        target.failure = f"port {target.port} not accepting after {READY_DEADLINE:.0f} s"
    stop(target)
    details = _tail(log) or _tail(target.tmpdir / "iredapd.log")
    print(f"target {target.name!r}: {target.failure}", file=sys.stderr)
    if details:
        print("  " + details.replace("\n", "\n  "), file=sys.stderr)


def stop(target: Target) -> None:
    """SIGTERM, then SIGKILL after STOP_GRACE seconds; record the exit status."""
    proc = target.proc
    if proc is None or target.exit_status is not None:
        return
    if proc.poll() is None:
        target.terminated = True
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            print(f"target {target.name!r}: no exit {STOP_GRACE:.0f} s after SIGTERM; SIGKILL")
            proc.kill()
            proc.wait()
    target.exit_status = proc.returncode


def cleanup(target: Target, keep: bool) -> None:
    if target.tmpdir is not None and not keep:
        shutil.rmtree(target.tmpdir, ignore_errors=True)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process and its descendants, live or waited for (Linux /proc)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
        stats[int(entry.name)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total = 0.0
    todo = [pid]
    while todo:
        current = todo.pop()
        stat = stats.get(current)
        if stat is None:
            continue
        # utime, stime, and cutime, cstime: the CPU of children that exited and
        # were waited for (PostgreSQL's backends of closed connections)
        total += (int(stat[11]) + int(stat[12]) + int(stat[13]) + int(stat[14])) / tick
        todo.extend(children.get(current, []))
    return total


def machine_cpu() -> tuple[float, float] | None:
    """(busy, stolen) CPU seconds of the whole machine since boot (Linux /proc/stat)."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    values = [int(x) for x in first[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    return (user + nice + system + irq + softirq) / tick, steal / tick


def _backend_cpu(target: Target) -> float | None:
    """CPU seconds of the target's backend processes (with their children), or None."""
    if not target.backend_pids:
        return None
    values = [cpu_seconds(pid) for pid in target.backend_pids.values()]
    if any(v is None for v in values):
        return None
    return sum(v for v in values if v is not None)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------


def load(
    target: Target, connections: int, duration: float, warmup: float, args: argparse.Namespace
) -> dict[str, Any]:
    """One loadgen run against a started target, plus CPU figures around it."""
    assert target.proc is not None
    argv = [
        sys.executable,
        str(LOADGEN),
        "--port",
        str(target.port),
        "--connections",
        str(connections),
        "--duration",
        str(duration),
        "--warmup",
        str(warmup),
        "--pool-file",
        str(args.pool_file),
        "--processes",
        str(min(args.loadgen_processes, connections)),
        "--timeout",
        str(args.timeout),
        "--histogram",
        "--json",
    ]
    cpu_before = cpu_seconds(target.proc.pid)
    backend_before = _backend_cpu(target)
    machine_before = machine_cpu()
    children_before = _children_cpu()
    t0 = time.monotonic()
    wall = warmup + duration + args.timeout + 60
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=wall, check=False)
    except subprocess.TimeoutExpired:
        return {"fatal": [f"loadgen did not finish in {wall:.0f} s"], "errors": 1}
    elapsed = time.monotonic() - t0
    cpu_after = cpu_seconds(target.proc.pid)
    backend_after = _backend_cpu(target)
    machine_after = machine_cpu()
    loadgen_cpu = _children_cpu() - children_before
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        return {"fatal": [f"loadgen failed: {done.stderr.strip()[-500:]}"], "errors": 1}
    # loadgen counts the requests *sent* in the measured window and divides by
    # the time to the last reply; when the latency L approaches the window d
    # (a slow server at many connections), that understates the rate by
    # d / (d + L).  In a closed loop, requests are sent as fast as replies come
    # back, so requests sent in the window / d is the steady-state rate.
    report["loadgen_rps"] = report.get("rps")
    report["window_s"] = duration
    report["rps"] = round(report.get("requests", 0) / duration, 1) if duration > 0 else 0.0
    if cpu_before is not None and cpu_after is not None:
        # Includes the warmup requests: the CPU counters cannot tell them apart.
        report["server_cpu_s"] = round(cpu_after - cpu_before, 3)
        report["served"] = report["requests"] + report["warmup_requests"]
    report["loadgen_cpu_s"] = round(loadgen_cpu, 2)
    backend = 0.0
    if backend_before is not None and backend_after is not None:
        backend = max(0.0, backend_after - backend_before)
        report["backend_cpu_s"] = round(backend, 3)
    if machine_before is not None and machine_after is not None and cpu_before is not None:
        busy = machine_after[0] - machine_before[0]
        server = (cpu_after or 0.0) - cpu_before
        # CPU used by everything else on the machine (other people's jobs),
        # and stolen by the hypervisor, in cores, averaged over the run.
        other = busy - server - loadgen_cpu - backend
        report["other_load_cores"] = round(max(0.0, other) / elapsed, 2)
        report["steal_cores"] = round((machine_after[1] - machine_before[1]) / elapsed, 2)
    if target.proc.poll() is not None:
        target.failure = f"exited with status {target.proc.returncode} during the run"
        report.setdefault("fatal", []).append(target.failure)
        report["errors"] = report.get("errors", 0) + 1
    return report


def _percentile_ms(buckets: dict[int, int], base: float, q: float) -> float | None:
    """Nearest-rank percentile from log buckets (the bucket's geometric middle)."""
    total = sum(buckets.values())
    if not total:
        return None
    rank = max(1, math.ceil(q / 100 * total))
    seen = 0
    for index in sorted(buckets):
        seen += buckets[index]
        if seen >= rank:
            return float(base ** (index + 0.5) / 1000.0)
    return None


def summarize(runs: list[dict[str, Any]], baseline: list[dict[str, Any]] | None) -> dict[str, Any]:
    """One cell of the table from its rounds.

    req/s is all requests over all measured windows; p50/p99 come from the summed
    histograms; "% of ceiling" is the median, over the rounds, of this target's
    req/s divided by the baseline's req/s in the same round.
    """
    ok = [r for r in runs if "rps" in r]
    requests = sum(r["requests"] for r in ok)
    elapsed = sum(r.get("window_s", r["elapsed_s"]) for r in ok)
    buckets: dict[int, int] = {}
    base = 1.02
    for run in ok:
        hist = run.get("histogram")
        if hist:
            base = hist["base"]
            for index, count in hist["buckets"].items():
                buckets[int(index)] = buckets.get(int(index), 0) + count
    ratios = []
    if baseline is not None:
        base_by_round = {r["round"]: r for r in baseline if "rps" in r}
        for run in ok:
            other = base_by_round.get(run["round"])
            if other and other["rps"] > 0:
                ratios.append(100.0 * run["rps"] / other["rps"])
    cpu = sum(r.get("server_cpu_s", 0.0) for r in ok)
    backend_cpu = sum(r.get("backend_cpu_s", 0.0) for r in ok)
    served = sum(r.get("served", 0) for r in ok)

    def median_of(key: str) -> float | None:
        values = [r[key] for r in ok if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {
        "rounds": len(runs),
        "requests": requests,
        "rps": requests / elapsed if elapsed > 0 else None,
        "rps_rounds": [r["rps"] for r in ok],
        "pct_of_baseline": statistics.median(ratios) if ratios else None,
        "pct_rounds": [round(x, 1) for x in ratios],
        "p50_ms": _percentile_ms(buckets, base, 50),
        "p99_ms": _percentile_ms(buckets, base, 99),
        "max_ms": max((r["latency_ms"]["max"] for r in ok), default=None),
        "errors": sum(int(r.get("errors", 0)) for r in runs),
        "cpu_us": cpu / served * 1e6 if served and any("server_cpu_s" in r for r in ok) else None,
        "backend_cpu_us": (
            backend_cpu / served * 1e6 if served and any("backend_cpu_s" in r for r in ok) else None
        ),
        "other_load_cores": median_of("other_load_cores"),
        "steal_cores": median_of("steal_cores"),
        "actions": _sum_actions(ok),
        "fatal": [msg for r in runs for msg in r.get("fatal", [])],
    }


def _sum_actions(runs: list[dict[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for run in runs:
        for verb, count in run["actions"].items():
            total[verb] = total.get(verb, 0) + count
    return total


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        rev = ""
    return rev or "unknown"


def environment() -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "revision": _git_revision(),
    }


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(cell: dict[str, Any]) -> str:
    pct = cell["pct_of_baseline"]
    if pct is None:
        return "-"
    rounds = cell["pct_rounds"]
    if len(rounds) < 2:
        return f"{pct:.1f}"
    return f"{pct:.1f} ({min(rounds):.0f}–{max(rounds):.0f})"


def _replies(actions: dict[str, int]) -> str:
    """``DUNNO 78%, 451 12%, REJECT 9.5%``: the share of each reply verb."""
    total = sum(actions.values())
    if not total:
        return "-"
    parts = []
    for verb, count in sorted(actions.items(), key=lambda kv: -kv[1]):
        share = 100.0 * count / total
        text = f"{share:.0f}" if share >= 0.95 else f"{share:.1f}" if share >= 0.05 else "<0.1"
        parts.append(f"{verb} {text}%")
    return ", ".join(parts)


def markdown(
    targets: list[Target],
    table: dict[tuple[str, int], dict[str, Any]],
    args: argparse.Namespace,
    env: dict[str, Any],
) -> str:
    other = [c["other_load_cores"] for c in table.values() if c["other_load_cores"] is not None]
    steal = [c["steal_cores"] for c in table.values() if c["steal_cores"] is not None]
    with_backends = any(t.backend_pids for t in targets)
    noise = (
        "- other load on the machine while measuring (CPU cores busy with other "
        f"processes{', not counting the backends' if with_backends else ''}, median / max "
        f"over the runs): {statistics.median(other):.2f} / "
        f"{max(other):.2f}; hypervisor steal {statistics.median(steal):.2f} / {max(steal):.2f}"
        if other and steal
        else "- other load on the machine: not measured (no /proc)"
    )
    slice_s = args.duration / args.rounds
    out = [
        "## Policy server benchmark",
        "",
        f"- {env['date']}, revision `{env['revision']}`, {env['cpus']} CPUs, "
        f"Python {env['python']}, {env['platform']}, load average at start "
        f"{env['load_average']}",
        f"- loadgen: mix `{getattr(args, 'mix_label', None) or args.mix}` (seed {args.seed}), "
        f"{args.loadgen_processes} client "
        f"process(es); per target and connection count {args.duration:g} s measured in "
        f"{args.rounds} round(s) of {slice_s:g} s, targets interleaved within each round "
        f"(order rotated), {args.warmup:g} s warmup before the first round",
        f"- req/s: all rounds together; % of {args.baseline}: median over the rounds of "
        f"req/s / `{args.baseline}` req/s in the same round (min–max in brackets); "
        "p50/p99 over all requests; CPU µs/req: the server's own CPU per request",
    ]
    if with_backends:
        out.append(
            "- backend µs/req: CPU of the target's backend processes per request (the whole "
            "MariaDB/PostgreSQL server, so other users' queries too; slapd; the stub DNS)"
        )
    out += [*getattr(args, "scenario_notes", []), noise, ""]
    header = f"| target | connections | req/s | % of {args.baseline} | p50 ms | p99 ms | max ms "
    header += "| errors | CPU µs/req |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    if with_backends:
        header += " backend µs/req |"
        rule += "---:|"
    out += [header + " replies |", rule + "---|"]
    for connections in args.connections:
        for target in targets:
            cell = table.get((target.name, connections))
            if cell is None or cell["rps"] is None:
                row = f"| {target.name} | {connections} | - | - | - | - | - | failed | - |"
                out.append(row + (" - |" if with_backends else "") + " - |")
                continue
            pct = "100.0" if target.name == args.baseline else _pct(cell)
            row = (
                f"| {target.name} | {connections} | {cell['rps']:.0f} | {pct} "
                f"| {_fmt(cell['p50_ms'], 3)} | {_fmt(cell['p99_ms'], 3)} "
                f"| {_fmt(cell['max_ms'], 1)} | {cell['errors']} | {_fmt(cell['cpu_us'], 1)} |"
            )
            if with_backends:
                row += f" {_fmt(cell.get('backend_cpu_us'), 1)} |"
            out.append(row + f" {_replies(cell['actions'])} |")
    notes = []
    for target in targets:
        if target.failure:
            notes.append(f"- `{target.name}`: {target.failure}")
        if target.terminated and target.exit_status != 0:
            notes.append(f"- `{target.name}` exited with status {target.exit_status} on SIGTERM")
        for connections in args.connections:
            cell = table.get((target.name, connections))
            if cell:
                notes.extend(f"- `{target.name}` ({connections}): {msg}" for msg in cell["fatal"])
                unusual = {k: v for k, v in cell["actions"].items() if k != "DUNNO"}
                if unusual and target.name == args.baseline:
                    notes.append(f"- `{target.name}` ({connections}) answered {unusual}")
        notes.extend(_log_notes(target))
    if notes:
        out += ["", *notes]
    return "\n".join(out) + "\n"


# Log lines of the daemon: "2026-11-26 01:00:44 WARNING message"
_LOG_LEVELS = ("WARNING", "ERROR", "CRITICAL")


def scan_log(target: Target) -> None:
    """Count the WARNING/ERROR/CRITICAL lines and tracebacks of the target's output."""
    if target.tmpdir is None:
        return
    counts: dict[str, int] = {}
    samples: dict[str, int] = {}
    for name in ("output.log", "iredapd.log"):
        path = target.tmpdir / name
        try:
            handle = path.open(encoding="utf-8", errors="replace")
        except OSError:
            continue
        with handle:
            for line in handle:
                parts = line.split(" ", 3)
                level = parts[2] if len(parts) == 4 else ""
                if line.startswith("Traceback"):
                    level = "Traceback"
                elif level not in _LOG_LEVELS:
                    continue
                counts[level] = counts.get(level, 0) + 1
                text = parts[3].strip() if level != "Traceback" else line.strip()
                # one sample per kind of message: digits and [client] do not count
                key = "".join("#" if c.isdigit() else c for c in text)[:120]
                samples[key] = samples.get(key, 0) + 1
                target.log_samples.setdefault(key, text[:300])
    target.log_counts = counts
    target.log_sample_counts = samples


def _log_notes(target: Target) -> list[str]:
    if not target.log_counts:
        return []
    counts = ", ".join(f"{n} {level}" for level, n in sorted(target.log_counts.items()))
    notes = [f"- `{target.name}` log: {counts} line(s); most frequent:"]
    top = sorted(target.log_sample_counts.items(), key=lambda kv: -kv[1])[:3]
    notes += [f"  - {n}× `{target.log_samples[key]}`" for key, n in top]
    return notes


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME=COMMAND",
        help="add a target; placeholders {port} {tmpdir} {repo} {python}",
    )
    p.add_argument(
        "--daemon-target",
        action="append",
        default=[],
        metavar="NAME=PLUGIN,...",
        help="add an iredapd target with these plugins (nothing after '=' = none)",
    )
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="LINE",
        help="extra line for the daemon targets' settings.py, e.g. \"log_level = 'warning'\"",
    )
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="CHAIN-BACKEND[-cold|-warm],...",
        help="daemon targets on loaded account data (scenarios.py): CHAIN access or default, "
        "BACKEND mariadb, pgsql or ldap; e.g. access-mariadb,access-pgsql,access-ldap",
    )
    p.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="with --scenario: also run each scenario target with the daemon of another "
        "source tree (e.g. an unpacked `git archive` of an older commit), named "
        "'NAME <target>', on an iredapd database of its own: before/after in one run",
    )
    p.add_argument(
        "--no-default-targets",
        action="store_true",
        help="only the ceiling and the targets given (implied by --target/--daemon-target/"
        "--scenario)",
    )
    p.add_argument("--baseline", default="ceiling", help="target the %% column refers to")
    p.add_argument(
        "--connections",
        default="1,8,64,256",
        type=lambda s: [int(x) for x in s.split(",") if x],
        help="comma-separated connection counts (default 1,8,64,256)",
    )
    p.add_argument(
        "--duration", type=float, default=10.0, help="seconds measured per target and count"
    )
    p.add_argument(
        "--rounds",
        "--repeat",
        type=int,
        default=5,
        help="split --duration into this many interleaved rounds (medians over them)",
    )
    p.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of warmup before the first round"
    )
    p.add_argument(
        "--round-warmup",
        type=float,
        default=0.25,
        help="seconds of warmup before the later rounds (new connections)",
    )
    p.add_argument(
        "--mix",
        help="loadgen --mix (preset or JSON file); default: 'default', or with --scenario "
        "the requests drawn from the scenario's accounts",
    )
    p.add_argument("--seed", type=int, default=1, help="loadgen --seed")
    p.add_argument("--timeout", type=float, default=10.0, help="loadgen reply timeout (s)")
    p.add_argument("--loadgen-processes", type=int, default=1, help="loadgen --processes")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 s in 2 rounds, 0.5 s warmup")
    p.add_argument("--out", metavar="FILE", help="also write FILE.md and FILE.json")
    p.add_argument("--keep", action="store_true", help="keep the targets' tmpdirs (logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.warmup = 2.0, 2, 0.5
    if args.rounds < 1 or not args.connections or min(args.connections) < 1:
        p.error("--rounds and --connections must be >= 1")
    if args.duration <= 0:
        p.error("--duration must be > 0")
    args.scenario_specs = []
    if args.scenario:
        try:
            from scenarios import parse_scenarios
        except ImportError as exc:
            p.error(f"--scenario needs the project's virtualenv (.venv/bin/python): {exc}")
        args.scenario_specs = parse_scenarios(args.scenario)
    args.trees = {}
    for spec in args.tree:
        name, sep, directory = spec.partition("=")
        if not sep or not name.strip() or not (Path(directory) / "iredapd").is_dir():
            p.error(f"--tree {spec!r}: expected NAME=DIR, DIR a source tree with iredapd/")
        args.trees[name.strip()] = str(Path(directory).resolve())
    if args.trees and not args.scenario_specs:
        p.error("--tree needs --scenario")
    return args


def build_targets(args: argparse.Namespace) -> list[Target]:
    targets = [ceiling_target()]
    explicit = args.target or args.daemon_target or args.scenario_specs
    if not args.no_default_targets and not explicit:
        targets += default_targets(args.setting)
    for spec in args.daemon_target:
        name, _, plugins = spec.partition("=")
        names = [x.strip() for x in plugins.split(",") if x.strip()]
        targets.append(daemon_target(name.strip(), names, args.setting))
    for spec in args.target:
        name, sep, command = spec.partition("=")
        if not sep or not name.strip() or not command.strip():
            raise SystemExit(f"--target {spec!r}: expected NAME=COMMAND")
        targets.append(Target(name.strip(), command.strip()))
    names = [t.name for t in targets]
    names += [
        f"{copy} {name}" if copy else name
        for spec in args.scenario_specs
        for name in spec.target_names
        for copy in ("", *args.trees)
    ]
    if len(set(names)) != len(names):
        raise SystemExit(f"target names must be unique: {names}")
    if args.baseline not in names:
        raise SystemExit(f"--baseline {args.baseline!r} is not a target: {names}")
    return targets


def scenario_targets(prepared: Any, args: argparse.Namespace) -> list[Target]:
    """Daemon targets for the scenarios.ScenarioTarget list of ``prepared``."""
    targets = []
    for spec in prepared.targets:
        target = daemon_target(spec.name, spec.plugins, [*spec.settings, *args.setting])
        if spec.copy:
            # the other tree's package first on the path (its plugins/ come with it)
            tree = shlex.quote(args.trees[spec.copy])
            target.command = f"env PYTHONPATH={tree} {TREE_COMMAND}"
        target.backend_pids = dict(spec.backend_pids)
        target.prime = spec.prime
        target.scenario = {
            "scenario": spec.scenario,
            "chain": spec.chain,
            "backend": spec.backend,
            "cache": spec.cache,
            "plugins": spec.plugins,
        }
        targets.append(target)
    return targets


def _interrupt(signum: int, _frame: Any) -> None:
    """SIGTERM/SIGHUP: unwind like Ctrl-C, so targets stop and scenario data is dropped."""
    raise KeyboardInterrupt(f"signal {signum}")


def write_pool(args: argparse.Namespace, workdir: Path) -> None:
    """Build the request pool once; every loadgen run reads it (fast start)."""
    args.pool_file = workdir / "requests.pool"
    argv = [sys.executable, str(LOADGEN), "--mix", args.mix, "--seed", str(args.seed)]
    subprocess.run([*argv, "--write-pool", str(args.pool_file)], check=True, timeout=120)


PRIME_CONNECTIONS = 16
#: most warmup a later round gets to reach the steady state (slow targets)
MAX_SETTLE = 5.0


def prime(targets: list[Target], args: argparse.Namespace) -> None:
    """Send every request of the pool once to each target that asks for it.

    A warm cache is then full: the first rounds of a slow target would
    otherwise measure it filling up (the pool holds thousands of distinct
    accounts, and a round sees only a few hundred requests).
    """
    requests = max(1, args.pool_file.read_bytes().count(b"\n\n"))
    for target in targets:
        if not target.prime or target.failure is not None or target.proc is None:
            continue
        argv = [sys.executable, str(LOADGEN), "--port", str(target.port), "--pool-file"]
        argv += [str(args.pool_file), "--connections", str(PRIME_CONNECTIONS)]
        argv += ["--requests", str(requests), "--timeout", str(args.timeout), "--json"]
        t0 = time.monotonic()
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
            report = json.loads(done.stdout)
        except (subprocess.TimeoutExpired, json.JSONDecodeError):
            report = {"errors": "?"}
        print(
            f"  primed {target.name}: {requests} requests in {time.monotonic() - t0:.1f} s, "
            f"{report.get('errors', '?')} errors",
            file=sys.stderr,
        )


def measure(
    targets: list[Target], args: argparse.Namespace
) -> dict[tuple[str, int], list[dict[str, Any]]]:
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    slice_s = args.duration / args.rounds
    #: target -> (connections, mean latency in s) of its last round
    latency: dict[str, tuple[int, float]] = {}
    for connections in args.connections:
        for rnd in range(args.rounds):
            live = [t for t in targets if t.failure is None]
            if not live:
                return runs
            # Rotate the order between rounds: no target always runs first,
            # or always right after the same neighbour.
            shift = rnd % len(live)
            for target in live[shift:] + live[:shift]:
                warmup = args.warmup if rnd == 0 else min(args.warmup, args.round_warmup)
                # New connections: wait until the server is in its steady state,
                # at least twice its latency in the last round (at the previous
                # connection count, scaled: a saturated server's latency grows
                # with the number of connections).
                known = latency.get(target.name)
                if known is not None:
                    settle = 2 * known[1] * connections / known[0]
                    warmup = max(warmup, min(MAX_SETTLE, settle))
                report = load(target, connections, slice_s, warmup, args)
                report["round"] = rnd
                mean_ms = report.get("latency_ms", {}).get("mean")
                if mean_ms:
                    latency[target.name] = (connections, float(mean_ms) / 1000.0)
                runs.setdefault((target.name, connections), []).append(report)
                print(
                    f"  c={connections} round {rnd + 1}/{args.rounds} {target.name}: "
                    f"{report.get('rps', 0):.0f} req/s, {report.get('errors', '?')} errors",
                    file=sys.stderr,
                )
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    targets = build_targets(args)
    env = environment()
    count = len(targets) + sum(len(spec.caches) for spec in args.scenario_specs) * (
        1 + len(args.trees)
    )
    cells = len(args.connections) * count
    eta = cells * (args.duration + args.warmup + args.rounds * (args.round_warmup + 0.6))
    print(
        f"{count} targets x {len(args.connections)} connection counts, "
        f"{args.rounds} rounds each: about {eta:.0f} s"
        + (" (plus about 30 s to prepare the scenarios)" if args.scenario_specs else ""),
        file=sys.stderr,
    )
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="iredapd-bench-run-"))
    taken: set[int] = set()
    args.scenario_notes = []
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    stack = contextlib.ExitStack()
    try:
        if args.scenario_specs:
            from scenarios import prepare

            prepared = stack.enter_context(
                prepare(args.scenario_specs, workdir, seed=args.seed, copies=list(args.trees))
            )
            targets += scenario_targets(prepared, args)
            args.scenario_notes = prepared.description
            if args.mix is None:
                args.mix, args.mix_label = str(prepared.mix_file), "scenario accounts"
        if args.mix is None:
            args.mix = "default"
        write_pool(args, workdir)
        for target in targets:
            start(target, taken)
        prime(targets, args)
        runs = measure(targets, args)
    except KeyboardInterrupt:
        print("interrupted; stopping the targets", file=sys.stderr)
    finally:
        try:
            for target in targets:
                stop(target)
                scan_log(target)
                cleanup(target, args.keep)
                if args.keep and target.tmpdir is not None:
                    print(f"target {target.name!r} files: {target.tmpdir}", file=sys.stderr)
        finally:
            try:
                stack.close()  # scenario databases, slapd, stub DNS (after the targets)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
    baseline_name = args.baseline
    table = {
        key: summarize(value, runs.get((baseline_name, key[1]))) for key, value in runs.items()
    }
    text = markdown(targets, table, args, env)
    print(text)
    if args.out:
        write_out(args, text, env=env, targets=targets, table=table, runs=runs)
    failed = any(t.failure for t in targets) or any(c["errors"] for c in table.values())
    return 1 if failed else 0


def write_out(
    args: argparse.Namespace,
    text: str,
    *,
    env: dict[str, Any],
    targets: list[Target],
    table: dict[tuple[str, int], dict[str, Any]],
    runs: dict[tuple[str, int], list[dict[str, Any]]],
) -> None:
    base = Path(args.out)
    if base.suffix in (".md", ".json"):
        base = base.with_suffix("")
    md_path, json_path = Path(f"{base}.md"), Path(f"{base}.json")
    base.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(text, encoding="utf-8")
    skip = ("pool_file", "scenario_specs")
    settings = {k: v for k, v in vars(args).items() if k not in skip}
    data = {
        "environment": env,
        "settings": settings,
        "targets": [
            {
                "name": t.name,
                "command": t.command,
                "failure": t.failure,
                "exit_status": t.exit_status,
                "stopped_by_sigterm": t.terminated,
                "scenario": t.scenario,
                "backend_pids": t.backend_pids,
                "log_lines": t.log_counts,
                "log_samples": [
                    {"count": t.log_sample_counts[key], "text": text}
                    for key, text in t.log_samples.items()
                ],
            }
            for t in targets
        ],
        "cells": [
            {"target": name, "connections": conns, **table[(name, conns)], "runs": raw}
            for (name, conns), raw in runs.items()
        ],
    }
    json_path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    print(f"wrote {md_path} and {json_path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
