#!/usr/bin/env python3
"""Load generator for the Postfix policy delegation protocol.

It behaves like a farm of Postfix smtpd processes: N persistent connections,
each sends one request, waits for the whole reply (``action=...`` lines up to
the empty line), then sends the next one.  Postfix never pipelines, so neither
does this.  Requests carry the full Postfix 3.x attribute set (empty values
included) and are drawn from a pool that is built once, from a seeded RNG, and
encoded to bytes before the clock starts.

Measured per request: the time from the write of the request to the arrival of
the empty line that ends its reply.  Requests sent during ``--warmup`` are not
counted.  Errors: ``timeout`` (no reply within ``--timeout``; the connection
is dropped and reopened, as smtpd does), ``disconnect`` (the server closed with
a request outstanding), ``malformed`` (reply without ``action=``, a line
without ``=``, an oversized reply), ``unexpected`` (bytes that answer no
request, e.g. a second reply to one request), ``connect`` (connection refused).

Standard library only, so it runs with any Python >= 3.11::

    python benchmarks/loadgen.py --port 7777 --connections 64 --duration 10 --json

``--processes K`` spreads the connections over K client processes and merges
their results, for when one Python process cannot keep up with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import math
import sys
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

from policy_mix import PRESETS, Mix, build_pool, read_pool

__all__ = ["main", "merge", "run_load"]


# A reply longer than this without its empty line is malformed (Postfix reads
# replies with its attribute line limit; ours are one short line).
MAX_REPLY_BYTES = 64 * 1024
# Pause before reopening a connection after an error (smtpd_policy_service_retry_delay
# is 1 s in Postfix; shorter here so a flapping server still gets load).
RECONNECT_DELAY = 0.1

ERROR_KINDS = ("timeout", "disconnect", "malformed", "unexpected", "connect")
# Width of a latency histogram bucket (--histogram): 2 %.
HISTOGRAM_BASE = 1.02


# --------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------


class _Run:
    """State shared by the connections of one process."""

    def __init__(
        self,
        pool: list[bytes],
        *,
        host: str,
        port: int,
        timeout: float,
        requests: int | None,
    ) -> None:
        self.pool = pool
        self.host = host
        self.port = port
        self.timeout = timeout
        self.remaining = requests if requests is not None else -1  # -1: no limit
        self.measure_start = math.inf
        self.end = math.inf
        self.stopping = False
        self.latencies = array("d")
        self.unmeasured = 0
        self.actions: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.reconnects = 0
        self.verbs: dict[bytes, str | None] = {}
        self.conns: list[_Conn] = []
        self.busy = 0
        self.idle_event = asyncio.Event()
        self.last_done = 0.0

    def verb(self, block: bytes) -> str | None:
        """First word of the action (upper-cased), or None if the reply is malformed."""
        verb = self.verbs.get(block, "")
        if verb != "":
            return verb
        action = None
        for line in block.split(b"\n"):
            name, sep, value = line.partition(b"=")
            if not sep:
                action = None
                break
            if name == b"action" and action is None:
                action = value
        if action is not None and action.strip():
            verb = action.split(None, 1)[0].decode("utf-8", "replace").upper()
        else:
            verb = None
        if len(self.verbs) < 10_000:
            self.verbs[block] = verb
        return verb


class _Conn(asyncio.Protocol):
    """One smtpd process's policy client: one request at a time."""

    def __init__(self, run: _Run, offset: int) -> None:
        self.run = run
        self.pos = offset
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.t0 = 0.0
        self.waiting = False
        self.active = True  # wants to send more requests

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""

    def send_next(self) -> None:
        run = self.run
        now = time.perf_counter()
        if run.stopping or now >= run.end or run.remaining == 0 or self.transport is None:
            self._go_idle(now)
            return
        pool = run.pool
        request = pool[self.pos]
        self.pos = (self.pos + 1) % len(pool)
        if now >= run.measure_start and run.remaining > 0:
            run.remaining -= 1
        self.waiting = True
        self.t0 = now
        self.transport.write(request)

    def _go_idle(self, now: float) -> None:
        if self.active:
            self.active = False
            run = self.run
            run.busy -= 1
            run.last_done = max(run.last_done, now)
            if run.busy == 0:
                run.idle_event.set()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        run = self.run
        if not self.waiting:
            run.errors["unexpected"] += 1
            self._drop()
            return
        buf = self.buf + data if self.buf else data
        end = buf.find(b"\n\n")
        if end < 0:
            if len(buf) > MAX_REPLY_BYTES:
                run.errors["malformed"] += 1
                self._drop()
            else:
                self.buf = buf
            return
        if end + 2 != len(buf):
            # More than one reply to one request: Postfix would read the
            # extra bytes as the reply to its next request.
            run.errors["unexpected"] += 1
            self._drop()
            return
        self.buf = b""
        self.waiting = False
        verb = run.verb(buf[:end])
        if verb is None:
            run.errors["malformed"] += 1
            self._drop()
            return
        t0 = self.t0
        if t0 >= run.measure_start:
            run.latencies.append(now - t0)
            run.actions[verb] += 1
        else:
            run.unmeasured += 1
        self.send_next()

    def _drop(self) -> None:
        """Close after an error; smtpd reconnects for its next request."""
        self.waiting = False
        self.buf = b""
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        run = self.run
        if self.waiting:
            run.errors["disconnect"] += 1
            self.waiting = False
        if self.active and not run.stopping:
            run.reconnects += 1
            asyncio.get_running_loop().create_task(_reconnect(self))

    def check_timeout(self, now: float) -> None:
        if self.waiting and now - self.t0 > self.run.timeout:
            self.run.errors["timeout"] += 1
            self._drop()


def _same(conn: _Conn) -> _Conn:
    """Protocol factory that hands back an existing connection object."""
    return conn


async def _reconnect(conn: _Conn) -> None:
    run = conn.run
    loop = asyncio.get_running_loop()
    # Give up after --timeout seconds of refused connections (also bounds a
    # --requests run against a server that went away).
    give_up = time.perf_counter() + run.timeout
    while conn.active and not run.stopping:
        await asyncio.sleep(RECONNECT_DELAY)
        now = time.perf_counter()
        if now >= run.end or now >= give_up:
            conn._go_idle(now)
            return
        try:
            await loop.create_connection(functools.partial(_same, conn), run.host, run.port)
        except OSError:
            run.errors["connect"] += 1
            continue
        conn.send_next()
        return


async def _watchdog(run: _Run) -> None:
    while True:
        await asyncio.sleep(min(0.25, run.timeout / 4))
        now = time.perf_counter()
        for conn in run.conns:
            conn.check_timeout(now)


async def run_load(
    pool: list[bytes],
    *,
    host: str,
    port: int,
    connections: int,
    duration: float | None,
    requests: int | None,
    warmup: float,
    reply_timeout: float,
    offset_base: int = 0,
    barrier: Any = None,
) -> dict[str, Any]:
    """Run one process's share of the load; return raw results (latencies as bytes)."""
    loop = asyncio.get_running_loop()
    run = _Run(pool, host=host, port=port, timeout=reply_timeout, requests=requests)
    step = max(1, len(pool) // max(1, connections))
    run.conns = [_Conn(run, ((offset_base + i) * step) % len(pool)) for i in range(connections)]
    results = await asyncio.gather(
        *(loop.create_connection(functools.partial(_same, c), host, port) for c in run.conns),
        return_exceptions=True,
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        run.errors["connect"] += len(failed)
        if len(failed) == len(results):
            return _raw(run, 0.0, fatal=f"cannot connect to {host}:{port}: {failed[0]}")
        for conn, result in zip(run.conns, results, strict=True):
            if isinstance(result, BaseException):
                conn.active = False
        run.conns = [c for c in run.conns if c.active]
    if barrier is not None:
        await loop.run_in_executor(None, barrier.wait, 60)
    gc.collect()
    gc.freeze()
    start = time.perf_counter()
    run.measure_start = start + warmup
    if duration is not None:
        run.end = run.measure_start + duration
    run.busy = len(run.conns)
    watchdog = loop.create_task(_watchdog(run))
    for conn in run.conns:
        conn.send_next()
    if run.busy:
        # Bounded: every connection stops sending at run.end, or after its
        # share of --requests; an unanswered request times out.
        await run.idle_event.wait()
    run.stopping = True
    watchdog.cancel()
    for conn in run.conns:
        if conn.transport is not None:
            conn.transport.close()
    await asyncio.sleep(0)
    elapsed = max(0.0, run.last_done - run.measure_start)
    return _raw(run, elapsed)


def _raw(run: _Run, elapsed: float, fatal: str | None = None) -> dict[str, Any]:
    return {
        "latencies": run.latencies.tobytes(),
        "elapsed": elapsed,
        "unmeasured": run.unmeasured,
        "actions": dict(run.actions),
        "errors": dict(run.errors),
        "reconnects": run.reconnects,
        "connections": len(run.conns),
        "fatal": fatal,
    }


# --------------------------------------------------------------------------
# Processes and the report
# --------------------------------------------------------------------------


def _child(conn: Any, kwargs: dict[str, Any]) -> None:
    try:
        raw = asyncio.run(run_load(**kwargs))
    except BaseException as exc:
        raw = {"fatal": f"{type(exc).__name__}: {exc}"}
    conn.send(raw)
    conn.close()


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _run_processes(pool: list[bytes], args: argparse.Namespace) -> list[dict[str, Any]]:
    procs = max(1, min(args.processes, args.connections))
    common = {
        "host": args.host,
        "port": args.port,
        "duration": args.duration,
        "warmup": args.warmup,
        "reply_timeout": args.timeout,
    }
    conns = _split(args.connections, procs)
    reqs: list[int | None] = (
        list(_split(args.requests, procs)) if args.requests is not None else [None] * procs
    )
    if procs == 1:
        raw = asyncio.run(run_load(pool, connections=conns[0], requests=reqs[0], **common))
        return [raw]
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    ctx: Any = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    barrier = ctx.Barrier(procs)
    children = []
    offset = 0
    for i in range(procs):
        parent_end, child_end = ctx.Pipe(duplex=False)
        kwargs = {
            "pool": pool,
            "connections": conns[i],
            "requests": reqs[i],
            "offset_base": offset,
            "barrier": barrier,
            **common,
        }
        offset += conns[i]
        proc = ctx.Process(target=_child, args=(child_end, kwargs), daemon=True)
        proc.start()
        child_end.close()
        children.append((proc, parent_end))
    deadline = 120 + args.warmup + (args.duration or 0) + args.timeout
    results = []
    for proc, parent_end in children:
        if parent_end.poll(deadline):
            results.append(parent_end.recv())
        else:
            results.append({"fatal": "client process did not report"})
            barrier.abort()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    return results


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def histogram(values: list[float]) -> dict[str, int]:
    """Latencies (s) counted in log buckets of HISTOGRAM_BASE width, keyed by index.

    Bucket ``i`` holds latencies in ``[BASE**i, BASE**(i+1))`` microseconds;
    run.py adds the buckets of several runs and reads percentiles from them
    (within 2 %).
    """
    counts: Counter[int] = Counter()
    log_base = math.log(HISTOGRAM_BASE)
    log = math.log
    for value in values:
        us = value * 1e6
        counts[int(log(us) / log_base) if us > 1.0 else 0] += 1
    return {str(i): n for i, n in sorted(counts.items())}


def merge(raws: list[dict[str, Any]], args: argparse.Namespace, mix_name: str) -> dict[str, Any]:
    """One report from the raw results of every client process."""
    latencies = array("d")
    actions: Counter[str] = Counter()
    errors: Counter[str] = Counter(dict.fromkeys(ERROR_KINDS, 0))
    fatal = [r["fatal"] for r in raws if r.get("fatal")]
    elapsed = 0.0
    unmeasured = reconnects = connections = 0
    for raw in raws:
        if "latencies" not in raw:
            continue
        chunk = array("d")
        chunk.frombytes(raw["latencies"])
        latencies.extend(chunk)
        actions.update(raw["actions"])
        errors.update(raw["errors"])
        elapsed = max(elapsed, raw["elapsed"])
        unmeasured += raw["unmeasured"]
        reconnects += raw["reconnects"]
        connections += raw["connections"]
    values = sorted(latencies)
    count = len(values)
    ms = 1000.0
    report: dict[str, Any] = {
        "requests": count,
        "elapsed_s": round(elapsed, 4),
        "rps": round(count / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": {
            "p50": round(_percentile(values, 50) * ms, 4),
            "p90": round(_percentile(values, 90) * ms, 4),
            "p99": round(_percentile(values, 99) * ms, 4),
            "p99.9": round(_percentile(values, 99.9) * ms, 4),
            "max": round((values[-1] if values else 0.0) * ms, 4),
            "mean": round((math.fsum(values) / count if count else 0.0) * ms, 4),
        },
        "errors": sum(errors.values()) + len(fatal),
        "error_kinds": dict(errors),
        "fatal": fatal,
        "actions": dict(actions.most_common()),
        "warmup_requests": unmeasured,
        "reconnects": reconnects,
        "connections": connections,
        "processes": len(raws),
        "target": f"{args.host}:{args.port}",
        "duration_s": args.duration,
        "requests_limit": args.requests,
        "warmup_s": args.warmup,
        "mix": mix_name,
        "seed": args.seed,
    }
    if args.histogram:
        report["histogram"] = {"base": HISTOGRAM_BASE, "unit": "us", "buckets": histogram(values)}
    return report


def format_text(report: dict[str, Any]) -> str:
    lat = report["latency_ms"]
    kinds = ", ".join(f"{k} {v}" for k, v in report["error_kinds"].items())
    actions = ", ".join(f"{k} {v}" for k, v in report["actions"].items()) or "-"
    lines = [
        f"target     {report['target']}  ({report['connections']} connections, "
        f"{report['processes']} process(es), mix {report['mix']})",
        f"requests   {report['requests']} in {report['elapsed_s']:.2f} s = "
        f"{report['rps']:.1f} req/s  (+{report['warmup_requests']} in warmup)",
        f"latency ms p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  "
        f"p99.9 {lat['p99.9']:.3f}  max {lat['max']:.3f}  mean {lat['mean']:.3f}",
        f"errors     {report['errors']}  ({kinds}; reconnects {report['reconnects']})",
        f"actions    {actions}",
    ]
    lines += [f"FATAL      {msg}" for msg in report["fatal"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7777)
    p.add_argument("--connections", "-c", type=int, default=8, help="persistent connections")
    p.add_argument("--duration", "-d", type=float, help="seconds measured (after warmup)")
    p.add_argument("--requests", "-n", type=int, help="requests measured (after warmup)")
    p.add_argument("--warmup", "-w", type=float, default=0.0, help="seconds not measured")
    p.add_argument(
        "--mix",
        default="default",
        help=f"preset ({', '.join(PRESETS)}) or a JSON file of Mix fields",
    )
    p.add_argument("--seed", type=int, default=1, help="RNG seed of the request pool")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for one reply")
    p.add_argument("--processes", "-p", type=int, default=1, help="client processes")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--histogram", action="store_true", help="add a latency histogram to the JSON")
    p.add_argument("--pool-file", metavar="FILE", help="read the requests from FILE (--write-pool)")
    p.add_argument("--write-pool", metavar="FILE", help="write the request pool to FILE and exit")
    p.add_argument("--dump", type=int, metavar="N", help="print N requests of the pool and exit")
    args = p.parse_args(argv)
    if args.duration is None and args.requests is None:
        args.duration = 10.0
    for name in ("connections", "processes"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.requests is not None and args.requests < args.processes:
        p.error("--requests must be >= --processes")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mix_name, mix = Mix.load(args.mix)
    if args.pool_file:
        mix_name, pool = f"file {Path(args.pool_file).name}", read_pool(args.pool_file)
    else:
        pool = build_pool(mix, args.seed)
    if args.write_pool:
        Path(args.write_pool).write_bytes(b"".join(pool))
        return 0
    if args.dump is not None:
        for request in pool[: args.dump]:
            sys.stdout.write(request.decode())
        return 0
    raws = _run_processes(pool, args)
    report = merge(raws, args, mix_name)
    if not args.pool_file:
        report["mix_spec"] = mix.describe()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_text(report))
    if report["fatal"]:
        return 2
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
