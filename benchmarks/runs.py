"""The benchmark runs: throughput (relay and echo baseline) and growth per group.

Each run starts its own server subprocess in a fresh temp folder, so one run's data never
slows another.  Everything client-side only (channel keys) is prepared before the clock starts;
a short warm-up at full concurrency precedes every timed section, and each timed section first
waits (a bounded time) for the machine to be quiet.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from benchmarks import machine
from benchmarks.daemon import Daemon, RelayDaemon, echo_daemon
from benchmarks.load import LoadResult, Operation, echo_op, invite_op, make_channels, publish_op, run_load

BUSY = 0.9  # a process using at least 90 % of one core counts as saturated
MACHINE_BUSY = 1.6  # cores: the machine counts as saturated (see benchmarks.machine on VM clocks)
QUIET_WAIT = 30.0  # seconds a timed section waits at most for the machine to be quiet


@contextmanager
def work_folder(prefix: str, *, keep: bool) -> Iterator[Path]:
    """A fresh temp folder for one benchmark command, removed at the end unless ``keep``."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if keep:
            print(f"kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_header(args: argparse.Namespace | None = None) -> dict[str, Any]:
    """When and where a benchmark command ran (and, given its arguments, with which options):
    the first keys of its JSON figures."""
    header: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine.description(),
        "python": sys.version.split()[0],
    }
    if args is not None:
        header["options"] = {
            k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, list, type(None)))
        }
    return header


@dataclass
class Section:
    """What a timed section measured besides the load's own result."""

    wall: float = 0.0
    server_cpu: float = 0.0  # CPU seconds of the server process (all threads)
    usage: machine.Usage = field(default_factory=lambda: machine.Usage(0.0, 0.0))
    quiet_before: float = 0.0  # machine busy cores just before the section started


@contextmanager
def timed(server: Daemon, exclude: list[int], quiet_wait: float) -> Iterator[Section]:
    section = Section()
    section.quiet_before = machine.wait_quiet(quiet_wait) if quiet_wait > 0 else 0.0
    mine = [server.pid, *exclude]
    before, cpu0, t0 = machine.sample(mine), server.cpu_seconds(), time.perf_counter()
    yield section
    section.wall = time.perf_counter() - t0
    section.server_cpu = server.cpu_seconds() - cpu0
    section.usage = machine.Usage.between(before, machine.sample(mine))


@dataclass
class Throughput:
    load: str  # "echo", "invite", ...
    processes: int
    tasks: int
    result: LoadResult
    section: Section
    commits: float = 0.0
    jobs: float = 0.0

    @property
    def wall(self) -> float:
        return self.section.wall

    @property
    def rate(self) -> float:
        return self.result.ok / self.wall if self.wall else 0.0

    def percentile(self, q: float) -> float:
        lat = sorted(self.result.latencies)
        if not lat:
            return 0.0
        return lat[min(len(lat) - 1, int(q * len(lat)))]

    @property
    def server_load(self) -> float:
        """Server CPU in cores (1.0 = one core busy all the time)."""
        return self.section.server_cpu / self.wall if self.wall else 0.0

    @property
    def client_load(self) -> float:
        """Client CPU (all client processes) in cores."""
        return self.result.cpu / self.wall if self.wall else 0.0

    @property
    def server_ms(self) -> float:
        """Server CPU milliseconds per successful operation."""
        return self.section.server_cpu / self.result.ok * 1000 if self.result.ok else 0.0

    @property
    def client_ms(self) -> float:
        return self.result.cpu / self.result.ok * 1000 if self.result.ok else 0.0

    @property
    def bound_by(self) -> str:
        """The first resource found saturated: a server core, a client core, then the machine."""
        if self.server_load >= BUSY:
            return "server (its core is saturated)"
        if self.client_load / self.processes >= BUSY:
            return "client process" + ("es" if self.processes > 1 else "") + " (core saturated)"
        if self.section.usage.busy >= MACHINE_BUSY:
            return "the machine (2 cores shared)"
        return "neither saturated (latency)"

    def summary(self) -> dict[str, Any]:
        return {
            "load": self.load,
            "processes": self.processes,
            "tasks": self.tasks,
            "ok": self.result.ok,
            "errors": self.result.errors,
            "error_samples": self.result.error_samples,
            "seconds": round(self.wall, 3),
            "rate": round(self.rate, 1),
            "p50_ms": round(self.percentile(0.5) * 1000, 1),
            "p99_ms": round(self.percentile(0.99) * 1000, 1),
            "server_cpu_cores": round(self.server_load, 2),
            "client_cpu_cores": round(self.client_load, 2),
            "server_cpu_ms_per_op": round(self.server_ms, 3),
            "client_cpu_ms_per_op": round(self.client_ms, 3),
            "machine_busy_cores": round(self.section.usage.busy, 2),
            "other_processes_cores": round(self.section.usage.others, 2),
            "machine_busy_before": round(self.section.quiet_before, 2),
            "bound_by": self.bound_by,
            "db_jobs_per_commit": round(self.jobs / self.commits, 1) if self.commits else None,
        }


def _db_counters(server: Daemon) -> tuple[float, float]:
    if not isinstance(server, RelayDaemon):
        return 0.0, 0.0
    values = server.metrics()
    return values.get("relay_db_commits_total", 0.0), values.get("relay_db_jobs_total", 0.0)


def _spawn_workers(specs: list[dict[str, Any]]) -> list[subprocess.Popen[str]]:
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "benchmarks.worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for spec in specs
    ]
    for worker in workers:
        assert worker.stdout is not None
        line = worker.stdout.readline()
        if json.loads(line or "{}").get("event") != "worker.ready":
            for other in workers:
                other.kill()
            raise RuntimeError(f"a client worker failed to start: {line!r}")
    return workers


def _worker_result(worker: subprocess.Popen[str]) -> LoadResult:
    out, _ = worker.communicate(timeout=3600)
    lines = out.strip().splitlines()
    done = json.loads(lines[-1]) if lines else {}
    if worker.returncode != 0 or done.pop("event", None) != "worker.done":
        raise RuntimeError(f"a client worker failed (status {worker.returncode}): {out[-2000:]!r}")
    return LoadResult.from_json(done)


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def throughput(
    load: str,
    *,
    processes: int,
    tasks: int,
    count: int,
    warmup: int,
    workdir: Path,
    states: Path,
    max_groups: int,
    quiet_wait: float = QUIET_WAIT,
    profile: Path | None = None,
    prefilled: int = 0,
) -> Throughput:
    """One timed run of ``count`` operations by ``tasks`` tasks in ``processes`` client processes."""
    server: Daemon
    if load == "invite":
        server = RelayDaemon.create(workdir, max_groups, profile, prefilled).start()
    else:
        server = echo_daemon(workdir).start()
    try:
        target = server.address if isinstance(server, RelayDaemon) else server.listen

        def op_for(n: int, prefix: str) -> Operation:
            if load == "invite":
                return invite_op(make_channels(n, states, prefix=prefix), target)
            return echo_op(target)

        trio.run(run_load, op_for(warmup, "warm"), warmup, tasks)
        if processes == 1:
            op = op_for(count, "c")
            commits0, jobs0 = _db_counters(server)
            with timed(server, [], quiet_wait) as section:
                result = trio.run(run_load, op, count, tasks)
        else:
            specs = [
                {
                    "kind": load,
                    "target": target,
                    "tasks": t,
                    "count": n,
                    "states": str(states),
                    "prefix": f"p{i}-",
                }
                for i, (t, n) in enumerate(
                    zip(_split(tasks, processes), _split(count, processes), strict=True)
                )
            ]
            workers = _spawn_workers(specs)
            try:
                commits0, jobs0 = _db_counters(server)
                with timed(server, [w.pid for w in workers], quiet_wait) as section:
                    for worker in workers:
                        assert worker.stdin is not None
                        worker.stdin.write("go\n")
                        worker.stdin.flush()
                    result = LoadResult()
                    for worker in workers:
                        result.merge(_worker_result(worker))
            finally:
                for worker in workers:
                    if worker.poll() is None:
                        worker.kill()
                        worker.wait()
        commits1, jobs1 = _db_counters(server)
    finally:
        status = server.stop()
    if status != 0:
        raise RuntimeError(f"{server.name} exited with status {status}; log in {server.log_path}")
    return Throughput(load, processes, tasks, result, section, commits1 - commits0, jobs1 - jobs0)


@dataclass
class Snapshot:
    label: str
    groups: int  # groups added since the baseline snapshot
    rss: int
    db: dict[str, int]

    @property
    def db_total(self) -> int:
        return sum(self.db.values())


@dataclass
class Growth:
    snapshots: list[Snapshot] = field(default_factory=list)
    loads: list[Throughput] = field(default_factory=list)
    group_states: dict[str, float] = field(default_factory=dict)

    def per_group(self, after: Snapshot) -> tuple[float, float, float]:
        """(RSS, relay.db, relay.db + WAL) bytes per group between the baseline and ``after``."""
        before = self.snapshots[0]
        n = after.groups or 1
        return (
            (after.rss - before.rss) / n,
            (after.db["relay.db"] - before.db["relay.db"]) / n,
            (after.db_total - before.db_total) / n,
        )

    def summary(self) -> dict[str, Any]:
        rows = []
        for snap in self.snapshots[1:]:
            rss, db, total = self.per_group(snap)
            rows.append(
                {
                    "state": snap.label,
                    "groups": snap.groups,
                    "rss_before": self.snapshots[0].rss,
                    "rss_after": snap.rss,
                    "rss_per_group": round(rss, 1),
                    "db_before": self.snapshots[0].db,
                    "db_after": snap.db,
                    "db_per_group": round(db, 1),
                    "db_wal_per_group": round(total, 1),
                }
            )
        return {
            "rows": rows,
            "group_states": self.group_states,
            "loads": [t.summary() for t in self.loads],
        }


def growth(
    *,
    groups: int,
    tasks: int,
    warmup: int,
    workdir: Path,
    states: Path,
    activate: bool,
    quiet_wait: float = QUIET_WAIT,
) -> Growth:
    """RSS and database size of an idle relay before and after ``groups`` new groups."""
    relay = RelayDaemon.create(workdir, max_groups=groups + warmup + 1000).start()
    out = Growth()
    try:
        warm = make_channels(warmup, states, prefix="warm")
        channels = make_channels(groups, states, prefix="g")
        trio.run(run_load, invite_op(warm, relay.address), warmup, tasks)
        relay.wait_idle()
        out.snapshots.append(Snapshot("baseline", 0, relay.rss(), relay.db_sizes()))

        def run(load: str, op: Operation) -> Throughput:
            with timed(relay, [], quiet_wait) as section:
                result = trio.run(run_load, op, groups, tasks)
            out.loads.append(Throughput(load, 1, tasks, result, section))
            relay.wait_idle()
            return out.loads[-1]

        filled = run("invite (filling)", invite_op(channels, relay.address))
        out.snapshots.append(Snapshot("accepted, idle", filled.result.ok, relay.rss(), relay.db_sizes()))
        if activate:
            activated = run("publish (activating)", publish_op(channels))
            out.snapshots.append(Snapshot("active, idle", activated.result.ok, relay.rss(), relay.db_sizes()))
        out.group_states = {
            key.split('"')[1]: value
            for key, value in relay.metrics().items()
            if key.startswith("relay_groups{")
        }
    finally:
        status = relay.stop()
    if status != 0:
        raise RuntimeError(f"relay exited with status {status}; log in {relay.log_path}")
    return out


def standalone_main(
    argv: list[str] | None,
    *,
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    resolve: Callable[[argparse.Namespace], argparse.Namespace],
    run: Callable[[argparse.Namespace], dict[str, Any]],
) -> int:
    """The command line shared by the benchmark modules run alone (``python -m benchmarks.X``):
    the common options, the run, the JSON file, and exit status 1 if anything failed."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--quick", action="store_true", help="a fast smoke run (small counts)")
    p.add_argument(
        "--quiet-wait", type=float, help="seconds to wait at most for an idle machine (default 30)"
    )
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (server logs, databases)")
    add_arguments(p)
    args = resolve(p.parse_args(argv))
    out = run(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    if out["errors"]:
        print(f"{out['errors']} errors", file=sys.stderr)
    return 1 if out["errors"] else 0
