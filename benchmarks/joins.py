"""``python -m benchmarks.joins``: members' join requests, measured (see ``benchmarks/README.md``).

1. Throughput: acknowledged ``join`` requests per second with 64 concurrent members, each on one
   persistent, greeted WebSocket session to an active auto-admit group, sending requests from
   fresh member keys, signed for that session before the clock starts, back to back (the lean
   epoll client of
   :mod:`benchmarks.join_members`, its own process; then, unless ``--no-trio-client``, the same
   with trio-websocket tasks in this process); the commit batch sizes the relay reports; and
   in the same run two SQLite baselines on the same disk: the same rows inserted with
   ``executemany`` in batches of the relay's mean batch size, and the relay's own store calls per
   request (``relay.store.groups``/``joins``, what the intake's transaction does) in those batches.
2. Fairness: group A (not yet active) is flooded with ``--flood`` requests, all held, then
   activated so the worker drains them, while group B (active) receives ``--b-rate`` requests/s
   from a few members; B's send-to-``admitted`` latency in each phase against B alone on the
   idle relay (the baseline, same relay, same run).
3. Restart: a relay holding ``--held`` held requests (rows inserted into the stopped relay's
   database with its own schema, then 2,000 more over the wire) is SIGKILLed and restarted;
   process start to ``relay.ready`` and to ``/readyz`` 200, against the same with an empty queue.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil
import trio

from benchmarks import machine, runs
from benchmarks.daemon import ONE_SOURCE, Daemon, read_metrics
from benchmarks.join_members import Spec
from benchmarks.members import (
    Group,
    NewMember,
    PreparedJoin,
    Share,
    activate_group,
    flood,
    greeted_joins,
    new_group,
    new_members,
    percentile,
    prepare_joins,
    run_joins,
)
from benchmarks.runs import BUSY, MACHINE_BUSY, Section, timed

AIM_RATE = 5000.0  # acknowledged join requests per second
AIM_P99_MS = 100.0  # B's p99 time to admission while A is flooded
AIM_RESTART_S = 1.0  # restart to ready with 100,000 held requests
CONNECTIONS = 64


# --- the relay under test -----------------------------------------------------------------


def join_config(path: Path, *, max_queued: int = 200_000, extra: str = "") -> Path:
    """The defaults, except the per-connection request rate (20/s by default: a benchmark member
    sends thousands per second on one connection), the budgets per source (every member is on
    loopback: one source) and the per-group queue bound."""
    path.write_text(
        "# Written by python -m benchmarks.joins.\n"
        f"[server]\nrequests_per_second = 1000000.0\nrequest_burst = 1000000\n{ONE_SOURCE}"
        f"[members]\nmax_queued_per_group = {max_queued}\n{extra}"
    )
    return path


def relay_daemon(
    workdir: Path, *, ports: tuple[int, int] | None = None, profile: Path | None = None
) -> Daemon:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "relay.toml"
    if not config.exists():
        join_config(config)
    listen, admin = (f"127.0.0.1:{p}" for p in ports) if ports else ("127.0.0.1:0", "127.0.0.1:0")
    profiler = ["cProfile", "-o", str(profile), "-m"] if profile is not None else []
    command = [*profiler, "relay", "serve", "--data", str(workdir / "data"), "--config", str(config)]
    return Daemon(command=[*command, "--listen", listen, "--admin-listen", admin], workdir=workdir)


def free_ports(n: int) -> tuple[int, ...]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return tuple(s.getsockname()[1] for s in socks)
    finally:
        for s in socks:
            s.close()


def sigkill(relay: Daemon) -> None:
    assert relay.proc is not None
    relay.proc.kill()
    relay.proc.wait(10)


@dataclass
class Batches:
    """Commit batch sizes between two ``/metrics`` readings."""

    commits: float
    jobs: float
    buckets: dict[str, float] = field(default_factory=dict)  # upper bound -> commits in it

    @property
    def mean(self) -> float:
        return self.jobs / self.commits if self.commits else 0.0

    def quantile(self, q: float) -> str:
        """The histogram bucket holding the q-quantile commit ("<= 64"), or "-" without one."""
        if not self.buckets or not self.commits:
            return "-"
        for bound, cumulative in self.buckets.items():
            if cumulative >= q * self.commits:
                return f"<= {bound}"
        return "-"

    def text(self) -> str:
        if not self.buckets:
            return f"mean {self.mean:.1f} (no histogram: mean only)"
        return f"mean {self.mean:.1f}, p50 {self.quantile(0.5)}, p90 {self.quantile(0.9)}"

    def summary(self) -> dict[str, Any]:
        return {
            "commits": self.commits,
            "jobs": self.jobs,
            "mean": round(self.mean, 2),
            "histogram_cumulative": self.buckets or None,
        }

    @classmethod
    def between(cls, before: dict[str, float], after: dict[str, float]) -> Batches:
        def delta(key: str) -> float:
            return after.get(key, 0.0) - before.get(key, 0.0)

        prefix = 'relay_db_batch_size_bucket{le="'
        buckets = {k[len(prefix) : -2]: delta(k) for k in after if k.startswith(prefix)}
        if "relay_db_batch_size_count" in after:
            return cls(delta("relay_db_batch_size_count"), delta("relay_db_batch_size_sum"), buckets)
        return cls(delta("relay_db_commits_total"), delta("relay_db_jobs_total"))


# --- 1. throughput ------------------------------------------------------------------------


def sqlite_baseline(
    folder: Path, joins: list[PreparedJoin], batch: int, *, relay_calls: bool
) -> tuple[float, float]:
    """Rows per second (and CPU ms per row) storing ``joins`` as admitted rows of one active group.

    A fresh database with the relay's schema (``relay.store.migrations.migrate``), WAL,
    ``synchronous=FULL``, one ``BEGIN IMMEDIATE`` .. ``COMMIT`` per ``batch`` rows.  Without
    ``relay_calls``: one ``executemany`` INSERT per batch.  With it: per request what the relay's
    intake transaction does (``Admissions._arrive`` for an auto-admit group with nothing queued),
    each in its own SAVEPOINT as the group-commit writer runs jobs.
    """
    from relay.protocol.admission import Decision, JoinState
    from relay.store import joins as store
    from relay.store.migrations import migrate

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    conn = sqlite3.connect(folder / "baseline.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    migrate(conn)
    now = int(time.time())
    conn.execute(
        "INSERT INTO groups (channel, service_group, state, address_id, profile, profile_version, kind, "
        "name, invited_at, updated_at) VALUES (?, ?, 'active', 'baseline', ?, 2, 'channel', 'b', ?, ?)",
        (os.urandom(32), os.urandom(16), os.urandom(700), now, now),
    )
    (group_id,) = conn.execute("SELECT id FROM groups").fetchone()
    admitted = Decision(JoinState.ADMITTED)
    batch = max(1, batch)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for start in range(0, len(joins), batch):
        chunk = joins[start : start + batch]
        conn.execute("BEGIN IMMEDIATE")
        if relay_calls:
            for j in chunk:
                conn.execute("SAVEPOINT job")
                store.intake_view(conn, group_id, j.member_key)
                new = store.NewJoin(group_id, j.member_key, j.request, "member")
                store.insert_row(conn, new, admitted, now)
                conn.execute("RELEASE job")
        else:
            conn.executemany(
                "INSERT INTO join_requests (group_id, member_key, request, name, status, received_at, "
                "decided_at) VALUES (?, ?, ?, 'member', 'admitted', ?, ?)",
                [(group_id, j.member_key, j.request, now, now) for j in chunk],
            )
        conn.execute("COMMIT")
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    (stored,) = conn.execute("SELECT count(*) FROM join_requests").fetchone()
    conn.close()
    assert stored == len(joins), (stored, len(joins))
    return len(joins) / wall, cpu / len(joins) * 1000


def throughput(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    relay = relay_daemon(
        work / "throughput", profile=args.profile_dir / "relay-joins.prof" if args.profile_dir else None
    )
    relay.start()
    try:
        group = trio.run(partial(new_group, relay.ready["address"], work / "owners", "t", activate=True))
        # The rows of the SQLite baselines below (the lean client signs its own requests, for
        # its connections, once they are open).
        joins = prepare_joins(group, args.requests)
        figures, batches = lean_run(args, relay, group, args.join_warmup, args.requests, work)
        if args.trio_client:
            # The project's own client library (trio-websocket) on the same relay, afterwards:
            # fresh keys, the same counts; its client costs about four times the lean one's CPU.
            warm = new_members(args.join_warmup, prefix="tw")
            trio_members = new_members(args.requests, prefix="t")
            figures["trio_client"], _ = trio_run(args, relay, group, warm, trio_members)
    finally:
        status = relay.stop()
    if status != 0:
        raise RuntimeError(f"relay exited with status {status}; log in {relay.log_path}")
    batch = max(1, round(batches.mean))
    raw_rate, raw_ms = sqlite_baseline(work / "baseline-raw", joins, batch, relay_calls=False)
    calls_rate, calls_ms = sqlite_baseline(work / "baseline-calls", joins, batch, relay_calls=True)
    return {
        **figures,
        "batches": batches.summary(),
        "batches_text": batches.text(),
        "baseline_batch": batch,
        "baseline_raw_rows_per_s": round(raw_rate, 1),
        "baseline_raw_cpu_ms_per_row": round(raw_ms, 4),
        "baseline_calls_rows_per_s": round(calls_rate, 1),
        "baseline_calls_cpu_ms_per_row": round(calls_ms, 4),
    }


def lean_run(
    args: argparse.Namespace, relay: Daemon, group: Group, warm: int, requests: int, work: Path
) -> tuple[dict[str, Any], Batches]:
    """The timed run with the lean client (:mod:`benchmarks.join_members`, its own process):
    ``warm`` requests, then ``requests`` timed ones, from fresh member keys."""
    address = group.address
    url = urllib.parse.urlsplit(address.websocket_url)
    assert url.hostname is not None and url.port is not None and address.address_id is not None
    spec = Spec(
        host=url.hostname,
        port=url.port,
        path=url.path,
        fingerprint=address.fingerprint,
        channel=group.owner.channel,
        address_id=address.address_id,
        connections=CONNECTIONS,
        warmup=warm,
        timed=requests,
    )
    spec_path = work / "join-members.msgpack"
    spec_path.write_bytes(msgspec.msgpack.encode(spec))
    client = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.join_members", str(spec_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdin is not None and client.stdout is not None
    try:
        line = client.stdout.readline()
        if json.loads(line or "{}").get("event") != "ready":
            raise RuntimeError(f"the join client failed to start: {line!r}")
        before = read_metrics(relay)
        with timed(relay, [client.pid], args.quiet_wait) as section:
            trio0 = relay.main_thread_cpu_seconds()
            client.stdin.write("go\n")
            client.stdin.flush()
            line = client.stdout.readline()
            trio_cpu = relay.main_thread_cpu_seconds() - trio0
        batches = Batches.between(before, read_metrics(relay))
        done = json.loads(line or "{}")
        if done.get("event") != "done":
            raise RuntimeError(f"the join client failed: {line!r}")
        client.wait(30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    statuses: dict[str, int] = done["statuses"]
    ok = statuses.get("admitted", 0)
    figures = run_figures(
        requests=requests,
        ok=ok,
        other_answers={s: n for s, n in statuses.items() if s != "admitted"},
        error_samples=done["error_samples"],
        elapsed=done["seconds"],
        p50_ms=done["p50_ms"],
        p99_ms=done["p99_ms"],
        section=section,
        trio_cpu=trio_cpu,
        client_cpu=done["cpu_seconds"],
    )
    return figures, batches


def trio_run(
    args: argparse.Namespace, relay: Daemon, group: Group, warm: list[NewMember], members: list[NewMember]
) -> tuple[dict[str, Any], Batches]:
    """The timed run with trio-websocket tasks in this process (:func:`benchmarks.members.run_joins`)."""
    trio.run(flood, group, warm, CONNECTIONS)

    async def run() -> tuple[Any, Section, float, float, dict[str, float]]:
        # Connections greeted and requests signed for them first, outside the timed section.
        async with greeted_joins(group, members, CONNECTIONS) as shares:
            before = read_metrics(relay)
            me = psutil.Process()
            cpu0 = sum(me.cpu_times()[:2])
            with timed(relay, [], args.quiet_wait) as section:
                trio0 = relay.main_thread_cpu_seconds()
                load = await run_joins(shares, record=True)
                trio_cpu = relay.main_thread_cpu_seconds() - trio0
            client_cpu = sum(me.cpu_times()[:2]) - cpu0
        return load, section, trio_cpu, client_cpu, before

    load, section, trio_cpu, client_cpu, before = trio.run(run)
    batches = Batches.between(before, read_metrics(relay))
    latencies = load.latencies or []
    figures = run_figures(
        requests=len(members),
        ok=sum(1 for s in load.answers.values() if s == "admitted"),
        other_answers=dict(Counter(s for s in load.answers.values() if s != "admitted")),
        error_samples=load.error_samples or [],
        elapsed=load.elapsed,
        p50_ms=percentile(latencies, 0.5) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        section=section,
        trio_cpu=trio_cpu,
        client_cpu=client_cpu,
    )
    return figures, batches


def run_figures(
    *,
    requests: int,
    ok: int,
    other_answers: dict[str, int],
    error_samples: list[str],
    elapsed: float,
    p50_ms: float,
    p99_ms: float,
    section: Section,
    trio_cpu: float,
    client_cpu: float,
) -> dict[str, Any]:
    rate = ok / elapsed if elapsed else 0.0
    return {
        "connections": CONNECTIONS,
        "requests": requests,
        "admitted": ok,
        "other_answers": other_answers,
        "errors": requests - ok,  # failed, unanswered, or answered other than "admitted"
        "error_samples": error_samples,
        "seconds": round(elapsed, 3),
        "rate": round(rate, 1),
        "p50_ms": round(p50_ms, 2),
        "p99_ms": round(p99_ms, 2),
        "relay_cpu_cores": round(section.server_cpu / section.wall, 2),
        "relay_cpu_ms_per_request": round(section.server_cpu / max(ok, 1) * 1000, 3),
        "relay_trio_thread_cores": round(trio_cpu / section.wall, 2),
        "relay_trio_thread_ms_per_request": round(trio_cpu / max(ok, 1) * 1000, 3),
        "client_cpu_cores": round(client_cpu / section.wall, 2),
        "client_cpu_ms_per_request": round(client_cpu / max(ok, 1) * 1000, 3),
        "machine_busy_cores": round(section.usage.busy, 2),
        "other_processes_cores": round(section.usage.others, 2),
        "bound_by": bound_by(trio_cpu / section.wall, client_cpu / section.wall, section.usage.busy),
    }


def bound_by(trio_cores: float, client_cores: float, machine_busy: float) -> str:
    """The first resource found saturated: the relay's trio thread (it serves every socket and
    verifies every signature: the relay's own ceiling), the client process, then the machine."""
    if trio_cores >= BUSY:
        return "relay trio thread (its core is saturated)"
    if client_cores >= BUSY:
        return "client process (its core is saturated)"
    if machine_busy >= MACHINE_BUSY:
        return "the machine (2 cores shared)"
    return "neither saturated (latency)"


# --- 2. fairness --------------------------------------------------------------------------


@dataclass
class Paced:
    """B's requests: (phase at send, seconds to the answer, status), sent on a fixed schedule."""

    samples: list[tuple[str, float, str]] = field(default_factory=list)
    late: int = 0  # sends that started more than 5 ms behind their schedule
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)


async def paced(shares: list[Share], rate: float, phase: list[str], stop: trio.Event) -> Paced:
    """The greeted sessions of ``shares`` together sending ``rate`` requests/s (open loop,
    evenly interleaved) until ``stop`` is set or their requests run out."""
    out = Paced()
    members = len(shares)
    interval = members / rate

    async def member(offset: float, share: Share) -> None:
        link, items = share.link, iter(share.joins)
        due = trio.current_time() + offset
        while not stop.is_set():
            await trio.sleep_until(due)
            if stop.is_set():
                return
            item = next(items, None)
            if item is None:
                return
            if trio.current_time() - due > 0.005:
                out.late += 1
            label = phase[0]
            t0 = time.perf_counter()
            try:
                result = await link.join(item.frame)
            except Exception as exc:
                out.errors += 1
                if len(out.error_samples) < 5:
                    out.error_samples.append(f"{type(exc).__name__}: {exc}")
                continue
            out.samples.append((label, time.perf_counter() - t0, result.status))
            due = max(due + interval, trio.current_time())

    async with trio.open_nursery() as nursery:
        for i, share in enumerate(shares):
            nursery.start_soon(member, 0.1 + i * interval / members, share)
    return out


async def held_now(relay: Daemon) -> float:
    values = await trio.to_thread.run_sync(read_metrics, relay)
    return values.get("relay_queue_held", 0.0)


async def fairness_load(
    relay: Daemon, a: Group, b: Group, a_members: list[NewMember], b_members: list[NewMember], args: Any
) -> dict[str, Any]:
    # Every session of the run opened and greeted, and its requests signed, before the idle
    # phase starts: no signing while B is measured.
    async with (
        greeted_joins(a, a_members, CONNECTIONS) as a_shares,
        greeted_joins(b, b_members, args.b_members) as b_shares,
    ):
        return await _fairness_phases(relay, a, a_shares, b_shares, len(a_members), args)


async def _fairness_phases(
    relay: Daemon, a: Group, a_shares: list[Share], b_shares: list[Share], a_count: int, args: Any
) -> dict[str, Any]:
    phase = ["idle"]
    stop = trio.Event()
    timings: dict[str, float] = {}
    result: dict[str, Any] = {}

    async def drive() -> None:
        await trio.sleep(args.idle_seconds)
        phase[0] = "flood"
        t0 = time.perf_counter()
        loaded = await run_joins(a_shares)
        timings["flood"] = time.perf_counter() - t0
        result["flood_answers"] = dict(Counter(loaded.answers.values()))
        result["flood_errors"] = a_count - sum(1 for s in loaded.answers.values() if s == "held")
        result["flood_error_samples"] = loaded.error_samples
        phase[0] = "drain"
        t0 = time.perf_counter()
        await activate_group(a)
        while await held_now(relay) > 0:
            await trio.sleep(0.05)
        timings["drain"] = time.perf_counter() - t0
        phase[0] = "after"
        await trio.sleep(0.5)
        stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drive)
        b_load = await paced(b_shares, args.b_rate, phase, stop)
        if not stop.is_set():  # B ran out of requests before the drain ended
            result["b_ran_out"] = True
    result["timings"] = timings
    result["b"] = b_load
    return result


def fairness(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    relay = relay_daemon(work / "fairness")
    join_config(relay.workdir / "relay.toml", max_queued=max(200_000, 2 * args.flood))
    relay.start()
    try:
        contact = relay.ready["address"]
        a = trio.run(partial(new_group, contact, work / "owners", "A", activate=False))
        b = trio.run(partial(new_group, contact, work / "owners", "B", activate=True))
        a_members = new_members(args.flood, prefix="a")
        # B: the idle phase, the flood at ~2,500/s, the drain, with room to spare.
        b_count = int(args.b_rate * (args.idle_seconds + args.flood / 500 + 30))
        b_members = new_members(b_count, prefix="b")
        machine.wait_quiet(args.quiet_wait) if args.quiet_wait > 0 else None
        me = psutil.Process()
        cpu0 = relay.cpu_seconds()
        out = trio.run(fairness_load, relay, a, b, a_members, b_members, args)
        out["relay_cpu_s"] = relay.cpu_seconds() - cpu0
        final = read_metrics(relay)
        del me
    finally:
        status = relay.stop()
    if status != 0:
        raise RuntimeError(f"relay exited with status {status}; log in {relay.log_path}")
    db = sqlite3.connect(relay.workdir / "data" / "relay.db")
    by_status = dict(db.execute("SELECT status, count(*) FROM join_requests GROUP BY status").fetchall())
    db.close()
    b_load: Paced = out["b"]
    phases = {}
    for label in ("idle", "flood", "drain"):
        lat = [s[1] for s in b_load.samples if s[0] == label]
        statuses = Counter(s[2] for s in b_load.samples if s[0] == label)
        phases[label] = {
            "requests": len(lat),
            "statuses": dict(statuses),
            "p50_ms": round(percentile(lat, 0.5) * 1000, 2),
            "p99_ms": round(percentile(lat, 0.99) * 1000, 2),
            "max_ms": round(max(lat, default=0.0) * 1000, 2),
        }
    loaded = [s[1] for s in b_load.samples if s[0] in ("flood", "drain")]
    phases["flood + drain"] = {
        "requests": len(loaded),
        "statuses": dict(Counter(s[2] for s in b_load.samples if s[0] in ("flood", "drain"))),
        "p50_ms": round(percentile(loaded, 0.5) * 1000, 2),
        "p99_ms": round(percentile(loaded, 0.99) * 1000, 2),
        "max_ms": round(max(loaded, default=0.0) * 1000, 2),
    }
    timings = out["timings"]
    not_admitted = sum(1 for s in b_load.samples if s[2] != "admitted")
    return {
        "flood": args.flood,
        "b_rate": args.b_rate,
        "b_members": args.b_members,
        "phases": phases,
        "flood_seconds": round(timings.get("flood", 0.0), 2),
        "flood_rate": round(args.flood / timings["flood"], 1) if timings.get("flood") else None,
        "flood_answers": out.get("flood_answers"),
        "drain_seconds": round(timings.get("drain", 0.0), 2),
        "drain_rate": round(args.flood / timings["drain"], 1) if timings.get("drain") else None,
        "rows_by_status": by_status,
        "members_final": final.get("relay_members"),
        "b_late_sends": b_load.late,
        "b_ran_out": out.get("b_ran_out", False),
        "errors": b_load.errors + out.get("flood_errors", 0) + not_admitted,
        "error_samples": b_load.error_samples + (out.get("flood_error_samples") or []),
    }


# --- 3. restart ---------------------------------------------------------------------------


def insert_held(db_path: Path, address_id: str, joins: list[PreparedJoin]) -> float:
    """Put ``joins`` in a stopped relay's database as held requests of the group, in arrival
    order, with the relay's schema (its triggers keep ``group_queues``); returns the seconds."""
    t0 = time.perf_counter()
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("PRAGMA synchronous=FULL")
    (group_id,) = conn.execute("SELECT id FROM groups WHERE address_id = ?", (address_id,)).fetchone()
    now = int(time.time())
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO join_requests (group_id, member_key, request, name, status, received_at) "
        "VALUES (?, ?, ?, ?, 'held', ?)",
        ((group_id, j.member_key, j.request, f"h{i}", now) for i, j in enumerate(joins)),
    )
    conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - t0


def start_timed(relay: Daemon, timeout: float = 60.0) -> tuple[float, float]:
    """Start the relay; seconds from just before the process is created to its ``relay.ready``
    log line (the line's own timestamp) and to the first ``/readyz`` answer 200 (polled)."""
    relay.workdir.mkdir(parents=True, exist_ok=True)
    admin = relay.command[relay.command.index("--admin-listen") + 1]
    url = f"http://{admin}/readyz"
    log = relay.log_path.open("ab")
    t0_wall, t0 = time.time(), time.perf_counter()
    relay.proc = subprocess.Popen(
        [sys.executable, "-m", *relay.command],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    readyz = None
    with httpx.Client(timeout=1.0) as client:
        while time.perf_counter() - t0 < timeout:
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    readyz = time.perf_counter() - t0
                    break
            if relay.proc.poll() is not None:
                break
            time.sleep(0.002)
    if readyz is None:
        relay.kill()
        raise RuntimeError("relay did not become ready:\n" + relay.log_path.read_text()[-3000:])
    for line in reversed(relay.log_lines()):
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == "relay.ready":
                relay.ready = event
                at = datetime.datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()
                return at - t0_wall, readyz
    raise RuntimeError("no relay.ready line")


def restart_case(args: argparse.Namespace, work: Path, held: int) -> dict[str, Any]:
    """One relay, ``held`` requests put in its stopped database, then per repeat: 2,000 joins
    over the wire (to A, held, when ``held``; to the active B otherwise), SIGKILL, restart."""
    relay = relay_daemon(work, ports=free_ports(2))
    relay.start()
    try:
        contact = relay.ready["address"]
        a = trio.run(partial(new_group, contact, work / "owners", "A", activate=False))
        b = trio.run(partial(new_group, contact, work / "owners", "B", activate=True))
    finally:
        relay.stop()
    fill = 0.0
    if held:
        assert a.address.address_id is not None
        fill = insert_held(work / "data" / "relay.db", a.address.address_id, prepare_joins(a, held, "h"))
    target = a if held else b
    over_wire = args.restart_wire
    expected = held
    times: list[tuple[float, float]] = []
    wal_at_kill: list[int] = []
    seen_held = []
    errors: list[str] = []
    start_timed(relay)
    try:
        for _ in range(args.restart_repeat):
            load = trio.run(flood, target, new_members(over_wire, "k"), CONNECTIONS)
            if load.errors or len(load.answers) != over_wire:
                errors.append(f"{load.errors} errors before the kill: {load.error_samples}")
            if held:
                expected += sum(1 for s in load.answers.values() if s == "held")
            sigkill(relay)
            wal = work / "data" / "relay.db-wal"
            wal_at_kill.append(wal.stat().st_size if wal.exists() else 0)
            machine.wait_quiet(min(args.quiet_wait, 5.0)) if args.quiet_wait > 0 else None
            times.append(start_timed(relay))
            seen_held.append(read_metrics(relay).get("relay_queue_held", 0.0))
            if seen_held[-1] != expected:
                errors.append(f"after restart {seen_held[-1]:.0f} held, expected {expected}")
    finally:
        relay.stop()
    return {
        "held_before_kill": expected,
        "filled_directly": held,
        "fill_seconds": round(fill, 2),
        "over_wire_before_each_kill": over_wire,
        "wal_bytes_at_kill": wal_at_kill,
        "ready_log_s": [round(t[0], 3) for t in times],
        "readyz_s": [round(t[1], 3) for t in times],
        "ready_log_median_s": round(statistics.median(t[0] for t in times), 3),
        "readyz_median_s": round(statistics.median(t[1] for t in times), 3),
        "held_after_restart": seen_held,
        "errors": len(errors),
        "error_samples": errors[:5],
    }


def restart(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    return {
        "baseline": restart_case(args, work / "restart-empty", 0),
        "held": restart_case(args, work / "restart-held", args.held),
    }


# --- the command --------------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, as ``python -m benchmarks`` prints them."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def listed(values: list[float]) -> str:
    return ", ".join(f"{x:.3f}" for x in values)


def run_row(label: str, t: dict[str, Any]) -> list[str]:
    return [
        label,
        f"{t['admitted']}" + (f" ({t['errors']} failed)" if t["errors"] else ""),
        f"{t['seconds']:.2f}",
        f"{t['rate']:.0f}",
        f"{t['p50_ms']:.1f} / {t['p99_ms']:.1f}",
        f"{t['relay_cpu_cores']:.2f} ({t['relay_cpu_ms_per_request']:.3f} ms/req)",
        f"{t['relay_trio_thread_cores']:.2f} ({t['relay_trio_thread_ms_per_request']:.3f} ms/req)",
        f"{t['client_cpu_cores']:.2f} ({t['client_cpu_ms_per_request']:.3f} ms/req)",
        f"{t['machine_busy_cores']:.2f}",
    ]


def report(out: dict[str, Any]) -> list[str]:
    verdicts = []
    print(f"chat-relay join benchmarks, {out['date']}, {out['machine']}, Python {out['python']}")
    print()
    t = out.get("throughput")
    if t:
        print(
            f"Join throughput: {t['connections']} members, one persistent session each, pre-signed requests"
        )
        print()
        header = [
            "load",
            "requests",
            "seconds",
            "per s",
            "p50 / p99 ms",
            "relay CPU",
            "of which trio thread",
            "client CPU",
            "machine busy",
        ]
        rows = [
            run_row("relay: join admitted (lean epoll client)", t),
            *(
                [run_row("relay: join admitted (trio-websocket client)", t["trio_client"])]
                if t.get("trio_client")
                else []
            ),
            [
                f"sqlite3 executemany, batches of {t['baseline_batch']} (baseline)",
                str(t["requests"]),
                "",
                f"{t['baseline_raw_rows_per_s']:.0f}",
                "",
                f"{t['baseline_raw_cpu_ms_per_row']:.3f} ms/row",
                "",
                "",
                "",
            ],
            [
                f"sqlite3 relay store calls, batches of {t['baseline_batch']} (baseline)",
                str(t["requests"]),
                "",
                f"{t['baseline_calls_rows_per_s']:.0f}",
                "",
                f"{t['baseline_calls_cpu_ms_per_row']:.3f} ms/row",
                "",
                "",
                "",
            ],
        ]
        print(table(header, rows))
        print()
        print(f"Commit batch sizes seen (relay /metrics): {t['batches_text']}")
        ratio = t["rate"] / t["baseline_raw_rows_per_s"] if t["baseline_raw_rows_per_s"] else 0
        print(f"relay / raw sqlite3 baseline: {ratio:.2f}")
        print(f"Bound by: {t['bound_by']}")
        others = [
            t["other_processes_cores"],
            *([t["trio_client"]["other_processes_cores"]] if t.get("trio_client") else []),
        ]
        if max(others) > 0.1:
            print(
                f"Other processes used {', '.join(f'{x:.2f}' for x in others)} cores during the run(s): "
                "its rate is low (wait for a quiet machine, --quiet-wait)"
            )
        print()
        met = "met" if t["rate"] >= AIM_RATE else "MISSED"
        verdicts.append(f"join requests/s: {t['rate']:.0f}; aim >= {AIM_RATE:.0f}: {met}")
    f = out.get("fairness")
    if f:
        print(
            f"Fairness: group A flooded with {f['flood']} requests (held, then drained), group B at "
            f"{f['b_rate']:.0f}/s from {f['b_members']} members"
        )
        print()
        header = ["B's requests during", "requests", "p50 ms", "p99 ms", "max ms", "A meanwhile"]
        meanwhile = {
            "idle": "nothing (baseline)",
            "flood": f"{f['flood']} held in {f['flood_seconds']:.1f} s ({f['flood_rate']:.0f}/s)",
            "drain": f"worker drains {f['flood']} in {f['drain_seconds']:.1f} s ({f['drain_rate']:.0f}/s)",
            "flood + drain": "both",
        }
        rows = [
            [
                label,
                str(p["requests"]),
                f"{p['p50_ms']:.1f}",
                f"{p['p99_ms']:.1f}",
                f"{p['max_ms']:.1f}",
                meanwhile[label],
            ]
            for label, p in f["phases"].items()
        ]
        print(table(header, rows))
        print()
        print(f"Rows at the end: {f['rows_by_status']}; late B sends: {f['b_late_sends']}")
        print()
        p99 = f["phases"]["flood + drain"]["p99_ms"]
        met = "met" if p99 < AIM_P99_MS else "MISSED"
        verdicts.append(
            f"B's p99 while A is flooded and drained: {p99:.1f} ms "
            f"(idle {f['phases']['idle']['p99_ms']:.1f} ms); "
            f"aim < {AIM_P99_MS:.0f} ms: {met}"
        )
    r = out.get("restart")
    if r:
        print("Restart after SIGKILL: process start to ready")
        print()
        header = [
            "held requests",
            "relay.ready line, s",
            "/readyz 200, s",
            "WAL at kill",
            "held after restart",
        ]
        rows = []
        for case in (r["baseline"], r["held"]):
            rows.append(
                [
                    f"{case['filled_directly']} + {case['over_wire_before_each_kill']} per kill"
                    if case["filled_directly"]
                    else "0 (baseline)",
                    f"{case['ready_log_median_s']:.3f} ({listed(case['ready_log_s'])})",
                    f"{case['readyz_median_s']:.3f} ({listed(case['readyz_s'])})",
                    ", ".join(f"{b / 1048576:.1f} MiB" for b in case["wal_bytes_at_kill"]),
                    ", ".join(f"{x:.0f}" for x in case["held_after_restart"]),
                ]
            )
        print(table(header, rows))
        print()
        held, base = r["held"], r["baseline"]
        extra = held["readyz_median_s"] - base["readyz_median_s"]
        print(f"Held requests cost {extra * 1000:+.0f} ms of restart time (median /readyz, held - empty).")
        print()
        met = "met" if held["readyz_median_s"] < AIM_RESTART_S else "MISSED"
        verdicts.append(
            f"restart to ready with {held['held_before_kill']} held: {held['readyz_median_s']:.3f} s "
            f"(empty queue {base['readyz_median_s']:.3f} s); aim < {AIM_RESTART_S:.0f} s: {met}"
        )
    for verdict in verdicts:
        print(verdict)
    return verdicts


def errors_of(out: dict[str, Any]) -> int:
    total = 0
    for key in ("throughput", "fairness"):
        if out.get(key):
            total += int(out[key]["errors"])
    if (out.get("throughput") or {}).get("trio_client"):
        total += int(out["throughput"]["trio_client"]["errors"])
    if out.get("restart"):
        total += sum(int(case["errors"]) for case in out["restart"].values())
    return total


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, help="join requests in the throughput run (default 30000)")
    p.add_argument("--flood", type=int, help="requests flooding group A (default 50000)")
    p.add_argument("--b-rate", type=float, default=50.0, help="group B's requests per second (default 50)")
    p.add_argument("--b-members", type=int, default=4, help="group B's sessions (default 4)")
    p.add_argument("--held", type=int, help="held requests in the restart benchmark (default 100000)")
    p.add_argument("--restart-repeat", type=int, help="SIGKILL/restart cycles per case (default 3)")
    p.add_argument(
        "--trio-client",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="after the lean client's run, the same with trio-websocket tasks (default: yes)",
    )
    p.add_argument("--skip-join-throughput", action="store_true")
    p.add_argument("--skip-fairness", action="store_true")
    p.add_argument("--skip-restart", action="store_true")
    p.add_argument(
        "--profile-joins",
        metavar="DIR",
        help="run the relay of the throughput run under cProfile; writes DIR/relay-joins.prof",
    )


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    quick = args.quick
    args.requests = args.requests or (2000 if quick else 30_000)
    args.join_warmup = 256 if quick else 2000
    args.flood = args.flood or (2000 if quick else 50_000)
    args.held = args.held or (2000 if quick else 100_000)
    args.restart_repeat = args.restart_repeat or (1 if quick else 3)
    args.restart_wire = 500 if quick else 2000
    args.idle_seconds = 2.0 if quick else 10.0
    if args.quiet_wait is None:
        args.quiet_wait = 2.0 if quick else 30.0
    args.profile_dir = Path(args.profile_joins).resolve() if args.profile_joins else None
    if args.profile_dir is not None:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every join benchmark not skipped; prints the tables and returns the figures."""
    out: dict[str, Any] = runs.run_header()
    with runs.work_folder("relay-bench-joins-", keep=args.keep) as work:
        if not args.skip_join_throughput:
            print(f"... join throughput: {args.requests} requests, {CONNECTIONS} members", file=sys.stderr)
            out["throughput"] = throughput(args, work)
        if not args.skip_fairness:
            print(f"... fairness: {args.flood} requests flood group A", file=sys.stderr)
            out["fairness"] = fairness(args, work)
        if not args.skip_restart:
            print(f"... restart: {args.held} held requests", file=sys.stderr)
            out["restart"] = restart(args, work)
        out["verdicts"] = report(out)
        out["errors"] = errors_of(out)
    return out


def main(argv: list[str] | None = None) -> int:
    return runs.standalone_main(
        argv,
        prog="python -m benchmarks.joins",
        description="Members' join benchmarks.",
        add_arguments=add_arguments,
        resolve=resolve,
        run=run,
    )


if __name__ == "__main__":
    sys.exit(main())
