"""``python -m benchmarks.fleet``: one relay against a fleet (issue 15; see ``benchmarks/README.md``).

In one run, three configurations, each a fresh relay: SQLite with one process (the reference),
PostgreSQL with one process, PostgreSQL with two processes sharing the public port
(``relay serve --processes 2``).  For each: fan-out deliveries per second at 1,000 members (the
maximum-rate run of :mod:`benchmarks.fanout`), acknowledged joins per second (the lean client
of :mod:`benchmarks.joins`), signed events accepted per second (16 publishers, the ingest run of
:mod:`benchmarks.fanout`), the CPU of each relay process, and deliveries per server CPU-second;
then the p99 from a post on one process to members on another at 50 posts/s.  The PostgreSQL
server is started here, with ``tests/pgserver.py`` (imported, not copied).

Two processes deliver a post to the members of the other process only through the fleet's
cross-process delivery (``relay/server/fleet.py``): without it, the rows that need it say so
instead of printing a wrong number.  Must not: assert a figure (the smoke test asserts none).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Self

import psutil
import trio

from benchmarks import fanout, joins, runs
from benchmarks.daemon import Daemon
from benchmarks.members import new_group

ROOT = Path(__file__).resolve().parent.parent
AIM_PG_RATIO = 0.7  # PostgreSQL, one process, of SQLite's figures
AIM_TWO_RATIO = 0.8  # two processes' deliveries per CPU-second, of one process's
AIM_CROSS_P99_MS = 20.0  # a post on one process to a member on another, 50 posts/s, 1,000 members
NEEDS_FLEET = "needs the fleet lane"
NOT_RUN = "not run"  # a load or configuration left out (--only, --engines)
LOADS = ("fanout", "joins", "events")  # each configuration's loads, in the order they run
CONFIGS = (("sqlite-1", "SQLite, 1 process", 1), ("pg-1", "PostgreSQL, 1 process", 1),
           ("pg-2", "PostgreSQL, 2 processes", 2))  # fmt: skip


def fleet_delivery() -> bool:
    """Whether this relay carries a post to the members of another process (the fleet bus)."""
    return importlib.util.find_spec("relay.server.fleet") is not None


# --- the relay under test: one process, or a supervisor and its processes -----------------------


@dataclass
class FleetDaemon(Daemon):
    """``relay serve`` (``processes`` 1) or ``relay serve --processes N``: ready when every
    process has logged ``relay.ready``; CPU, memory and main threads summed over them."""

    processes: int = 1

    def start(self, timeout: float = 60.0) -> Self:
        super().start(timeout)
        deadline = time.monotonic() + timeout
        while len(self.ready_lines()) < self.processes:
            if time.monotonic() > deadline or (self.proc is not None and self.proc.poll() is not None):
                self.kill()
                raise RuntimeError(f"{self.name}: not every process became ready; log in {self.log_path}")
            time.sleep(0.05)
        return self

    def ready_lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_lines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "relay.ready":
                found.append(event)
        return found

    def relay_processes(self) -> list[psutil.Process]:
        """The processes that serve: the relay itself, or the supervisor's children."""
        me = psutil.Process(self.pid)
        return me.children() if self.processes > 1 else [me]

    @property
    def relay_pids(self) -> list[int]:
        return [p.pid for p in self.relay_processes()]

    def cpu_by_process(self) -> list[float]:
        return [float(sum(p.cpu_times()[:2])) for p in self.relay_processes()]

    def cpu_seconds(self) -> float:
        """Every relay process's CPU, and the supervisor's (which should be next to none)."""
        supervisor = float(sum(psutil.Process(self.pid).cpu_times()[:2])) if self.processes > 1 else 0.0
        return sum(self.cpu_by_process()) + supervisor

    def main_thread_cpu_seconds(self) -> float:
        total = 0.0
        for proc in self.relay_processes():
            for thread in proc.threads():
                if thread.id == proc.pid:
                    total += thread.user_time + thread.system_time
        return total

    def rss(self) -> int:
        return sum(int(p.memory_info().rss) for p in self.relay_processes())


def relay_daemon(workdir: Path, *, url: str, processes: int, port: int) -> FleetDaemon:
    """A relay with the fan-out benchmark's configuration; ``url``: PostgreSQL, or SQLite when
    empty.  Several processes need a fixed public port (each would pick its own port 0)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = fanout.fanout_config(workdir / "relay.toml")
    command = ["relay", "serve", "--data", str(workdir / "data"), "--config", str(config)]
    command += ["--listen", f"127.0.0.1:{port if processes > 1 else 0}", "--admin-listen", "127.0.0.1:0"]
    if processes > 1:
        command += ["--processes", str(processes)]
    env = {"RELAY_STORAGE_URL": url} if url else {}
    return FleetDaemon(command=command, workdir=workdir, env=env, processes=processes)


# --- the measurements ---------------------------------------------------------------------------


def split(figures: dict[str, Any], before: list[float], after: list[float], timed_cores: float) -> None:
    """Each relay process's cores in the timed section (``cores_by_process``): the section's
    server cores (every process) split by each process's share of the CPU over the whole call
    (the harness also waits for a quiet machine and warms up around its timed section)."""
    used = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(used)
    figures["cpu_seconds_by_process"] = used
    figures["cores_by_process"] = [timed_cores * u / total if total else 0.0 for u in used]


async def fanout_max(target: fanout.Target, args: argparse.Namespace) -> dict[str, Any]:
    """The maximum-rate fan-out run of benchmarks.fanout at ``args.members`` members, with the
    CPU of each relay process over the timed part."""
    daemon = target.daemon
    assert isinstance(daemon, FleetDaemon)
    out: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        crowd = fanout.Crowd(target, args.members, args.workers, f"m{args.members}")
        try:
            setup = await crowd.start(nursery)
            if setup["live"] != args.members:
                raise RuntimeError(
                    f"only {setup['live']} of {args.members} members live: {setup['error_samples']}"
                )
            pub = fanout.Publisher(target, args.body_bytes)
            await pub.open()
            nursery.start_soon(pub.read_answers)
            cpu0 = daemon.cpu_by_process()
            out = await fanout.max_rate(pub, crowd, args, daemon.relay_pids)
            split(out, cpu0, daemon.cpu_by_process(), out["server_cores"])
            if args.cross:
                out["fixed"] = await fanout.fixed_rate(
                    pub, crowd, args, daemon.relay_pids, args.fixed_seconds
                )
            out["publisher_errors"] = pub.errors
            await pub.aclose()
        finally:
            await crowd.stop()
            nursery.cancel_scope.cancel()
    return out


def joins_run(daemon: FleetDaemon, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    group = trio.run(partial(new_group, daemon.ready["address"], work / "owners", "joins", activate=True))
    cpu0 = daemon.cpu_by_process()
    figures, _ = joins.lean_run(args, daemon, group, args.join_warmup, args.requests, work)
    split(figures, cpu0, daemon.cpu_by_process(), figures["relay_cpu_cores"])
    return figures


def ingest(daemon: FleetDaemon, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    async def targets() -> list[fanout.Target]:
        return [
            await fanout.relay_target(daemon, work / "owners", f"ingest-{i}") for i in range(args.publishers)
        ]

    chosen = trio.run(targets)
    cpu0 = daemon.cpu_by_process()
    result = trio.run(fanout.ingest_run, chosen, args.events, args)
    result.pop("signed", None)
    split(result, cpu0, daemon.cpu_by_process(), result["server_cores"])
    return result


def configuration(
    name: str, processes: int, pg: bool, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """One relay (or fleet) through the three loads; each load gets a fresh relay and database."""
    out: dict[str, Any] = {"name": name, "processes": processes}
    cross = processes > 1
    for load in args.only:
        if load == "fanout" and cross and not fleet_delivery():
            out[load] = NEEDS_FLEET
            continue
        print(f"... {name}: {load}", file=sys.stderr)
        folder = work / f"{name}-{load}"
        db_url = args.new_database() if pg else ""
        daemon = relay_daemon(folder, url=db_url, processes=processes, port=joins.free_ports(1)[0]).start()
        try:
            if load == "fanout":
                args.cross = cross
                target = trio.run(fanout.relay_target, daemon, folder / "owners", name)
                out[load] = trio.run(fanout_max, target, args)
            elif load == "joins":
                out[load] = joins_run(daemon, args, folder)
            else:
                out[load] = ingest(daemon, args, folder)
        finally:
            status = daemon.stop()
        if status != 0:
            raise RuntimeError(f"{name}: the relay exited with status {status}; log in {daemon.log_path}")
    return out


# --- report -------------------------------------------------------------------------------------


def _cores(r: Any) -> str:
    if not isinstance(r, dict):
        return NOT_RUN if r is None else str(r)
    return " + ".join(f"{c:.2f}" for c in r["cores_by_process"])


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """Print the table and the aims; the verdict lines."""
    names = [c[0] for c in CONFIGS]
    results = {n: results.get(n, {}) for n in names}  # a configuration not run: n/a

    def cell(name: str, load: str, key: str, fmt: str = "{:,.0f}") -> str:
        r = results[name].get(load)
        return fmt.format(r[key]) if isinstance(r, dict) else NOT_RUN if r is None else str(r)

    def per_cpu(name: str) -> float | None:
        r = results[name].get("fanout")
        if not isinstance(r, dict):
            return None
        cores = r["server_cores"]
        return float(r["rate"] / cores) if cores else None

    rows = [
        [f"fan-out deliveries/s, {args.members} members", *(cell(n, "fanout", "rate") for n in names)],
        ["  relay cores by process (fan-out)", *(_cores(results[n].get("fanout")) for n in names)],
        ["  deliveries per server CPU-second",
         *((f"{v:,.0f}" if (v := per_cpu(n)) is not None else NEEDS_FLEET) for n in names)],
        ["acknowledged joins/s", *(cell(n, "joins", "rate") for n in names)],
        ["  relay cores by process (joins)", *(_cores(results[n].get("joins")) for n in names)],
        [f"signed events accepted/s, {args.publishers} publishers",
         *(cell(n, "events", "rate") for n in names)],
        ["  relay cores by process (events)", *(_cores(results[n].get("events")) for n in names)],
    ]  # fmt: skip
    cross = results["pg-2"].get("fanout")
    p99 = cross["fixed"]["p99_ms"] if isinstance(cross, dict) and "fixed" in cross else None
    rows.append(
        [f"p99 post -> member on another process, {args.rate:g} posts/s", "", "",
         f"{p99:.1f} ms" if p99 is not None else NEEDS_FLEET]
    )  # fmt: skip
    header = ["figure", *(label for _, label, _ in CONFIGS)]
    print(fanout.table(header, rows))

    verdicts = []

    def ratio(a: Any, b: Any, key: str) -> float | None:
        if isinstance(a, dict) and isinstance(b, dict) and b[key]:
            return float(a[key] / b[key])
        return None

    for load, what in (("fanout", "fan-out deliveries/s"), ("joins", "joins/s"), ("events", "events/s")):
        r = ratio(results["pg-1"].get(load), results["sqlite-1"].get(load), "rate")
        verdicts.append(
            f"PostgreSQL 1 process / SQLite, {what}: "
            + (f"{r:.2f} (aim >= {AIM_PG_RATIO}): {'met' if r >= AIM_PG_RATIO else 'NOT met'}"
               if r is not None else "n/a")
        )  # fmt: skip
    one, two = per_cpu("pg-1"), per_cpu("pg-2")
    if one and two:
        r = two / one
        verdicts.append(
            f"2 processes / 1, deliveries per CPU-second: {r:.2f} (aim >= {AIM_TWO_RATIO}): "
            f"{'met' if r >= AIM_TWO_RATIO else 'NOT met'}"
        )
    else:
        verdicts.append(f"2 processes / 1, deliveries per CPU-second: {NEEDS_FLEET}")
    if p99 is not None:
        verdicts.append(
            f"p99 across processes: {p99:.1f} ms (aim < {AIM_CROSS_P99_MS:g} ms): "
            f"{'met' if p99 < AIM_CROSS_P99_MS else 'NOT met'}"
        )
    else:
        verdicts.append(f"p99 across processes: {NEEDS_FLEET}")
    for line in verdicts:
        print(line)
    return verdicts


def errors_of(results: dict[str, dict[str, Any]]) -> int:
    errors = 0
    for config in results.values():
        for load in ("fanout", "joins", "events"):
            r = config.get(load)
            if isinstance(r, dict):
                errors += int(r.get("errors", 0)) + int(r.get("publisher_errors", 0)) + int(r.get("gaps", 0))
    return errors


# --- command line -------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--members", type=int, help="fan-out members (default 1000)")
    p.add_argument("--workers", type=int, default=1, help="member load processes (default 1)")
    p.add_argument("--seconds", type=float, help="timed seconds of the fan-out run (default 5)")
    p.add_argument("--window", type=int, default=8, help="posts in flight at the maximum rate (default 8)")
    p.add_argument("--rate", type=float, default=50.0, help="posts per second of the p99 run (default 50)")
    p.add_argument("--body-bytes", type=int, default=200, help="event body size (default 200)")
    p.add_argument("--requests", type=int, help="join requests (default 30000)")
    p.add_argument("--events", type=int, help="signed events per ingest run (default 20000)")
    p.add_argument("--publishers", type=int, default=16, help="ingest publishers (default 16)")
    p.add_argument(
        "--ingest-window", type=int, default=64, help="posts unanswered per publisher (default 64)"
    )
    p.add_argument(
        "--only", default=",".join(LOADS), help=f"loads to run, comma-separated (default {','.join(LOADS)})"
    )
    p.add_argument(
        "--engines",
        default=",".join(c[0] for c in CONFIGS),
        help=f"configurations to run, comma-separated (default {','.join(c[0] for c in CONFIGS)})",
    )


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    quick = args.quick
    args.members = args.members or (50 if quick else 1000)
    args.seconds = args.seconds or (0.5 if quick else 5.0)
    args.fixed_seconds = 0.5 if quick else 10.0
    args.warmup = 0.3 if quick else 1.0
    args.requests = args.requests or (300 if quick else 30_000)
    args.join_warmup = 50 if quick else 2000
    args.events = args.events or (320 if quick else 20_000)
    if quick:
        args.publishers = min(args.publishers, 4)
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if quick else 30.0
    args.cross = False
    args.only = _choice(args.only, LOADS, "--only")
    args.engines = _choice(args.engines, tuple(c[0] for c in CONFIGS), "--engines")
    return args


def _choice(value: str, known: tuple[str, ...], option: str) -> tuple[str, ...]:
    """A comma-separated subset of ``known``, in ``known``'s order (a mistake ends the run)."""
    chosen = {v.strip() for v in value.split(",") if v.strip()}
    unknown = chosen - set(known)
    if unknown or not chosen:
        raise SystemExit(f"{option}: choose among {', '.join(known)} (got {value!r})")
    return tuple(k for k in known if k in chosen)


def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "tests"))
    from pgserver import PgServer, find_bindir

    out: dict[str, Any] = {**runs.run_header(), "fleet_delivery": fleet_delivery()}
    bindir = find_bindir()
    if bindir is None:
        raise SystemExit(
            "no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql package"
        )
    server = PgServer(bindir)
    try:
        server.start()
        args.new_database = server.create_database
        with runs.work_folder("relay-bench-fleet-", keep=args.keep) as work:
            results = {
                name: configuration(name, processes, name.startswith("pg"), args, work)
                for name, _, processes in CONFIGS
                if name in args.engines
            }
            out["configurations"] = results
            out["verdicts"] = report(results, args)
            out["errors"] = errors_of(results)
    finally:
        server.destroy()
    return out


def main(argv: list[str] | None = None) -> int:
    return runs.standalone_main(
        argv,
        prog="python -m benchmarks.fleet",
        description="One relay against a fleet: SQLite, PostgreSQL, PostgreSQL with two processes.",
        add_arguments=add_arguments,
        resolve=resolve,
        run=run,
    )


if __name__ == "__main__":
    sys.exit(main())
