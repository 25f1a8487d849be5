"""``python -m benchmarks``: run every benchmark and print one table (see ``benchmarks/README.md``).

1. Throughput, for each number of client processes (1 and 2 by default): the bare WebSocket
   echo baseline, then invitations accepted by a real ``relay serve``, with 32 concurrent tasks.
2. Growth: an idle relay's RSS and database size before and after ``--groups`` new groups
   (accepted, then activated by a published profile unless ``--no-activate``).

3. With ``--joins``: the members' join benchmarks of :mod:`benchmarks.joins` (throughput, fairness,
   restart), also runnable alone as ``python -m benchmarks.joins``.
4. With ``--fanout``: the channel traffic benchmarks of :mod:`benchmarks.fanout` (fan-out to
   members against a bare broadcast baseline, signed events accepted, memory per member, a
   stalled member), also runnable alone as ``python -m benchmarks.fanout``.

``--quick`` is a smoke run of a few seconds; ``--json FILE`` also writes every figure as JSON
(``benchmarks/results/`` is git-ignored for that).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import fanout, joins, machine
from benchmarks.runs import Growth, Throughput, growth, throughput

AIM_RATE = 500.0  # invitations per second on the 2-core reference machine
AIM_MEMORY = 2048.0  # bytes of relay memory per idle group
NAMES = {"echo": "WebSocket echo (baseline)", "invite": "relay: invitation accepted"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Run the chat-relay benchmarks and print one table."
    )
    p.add_argument("--quick", action="store_true", help="a fast smoke run (small counts)")
    p.add_argument("--groups", type=int, help="groups added in the growth benchmark (default 10000)")
    p.add_argument("--invitations", type=int, help="invitations per throughput run (default 5000)")
    p.add_argument("--round-trips", type=int, help="echo round trips per baseline run (default 10000)")
    p.add_argument("--owners", type=int, default=32, help="concurrent owner/client tasks (default 32)")
    p.add_argument(
        "--processes", default="1,2", help="client process counts to compare, comma-separated (default 1,2)"
    )
    p.add_argument(
        "--repeat", type=int, help="throughput runs per configuration, median shown (default 3, quick 1)"
    )
    p.add_argument(
        "--prefill",
        type=int,
        default=0,
        help="synthetic groups in the relay's database before each invitation run (a full relay)",
    )
    p.add_argument("--no-activate", action="store_true", help="growth: leave the groups accepted")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-growth", action="store_true")
    p.add_argument(
        "--quiet-wait",
        type=float,
        help="seconds each timed section waits at most for the machine to be idle (default 30, quick 2)",
    )
    p.add_argument(
        "--profile-relay",
        metavar="DIR",
        help="run the relay under cProfile in the throughput runs and write DIR/relay-*.prof (slows it)",
    )
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp folders (relay logs, databases)")
    p.add_argument(
        "--joins", action="store_true", help="also run the join benchmarks (python -m benchmarks.joins)"
    )
    joins.add_arguments(p)
    p.add_argument(
        "--fanout", action="store_true", help="also run the fan-out benchmarks (python -m benchmarks.fanout)"
    )
    fanout.add_arguments(p)
    args = p.parse_args(argv)
    quick = args.quick
    args.groups = args.groups or (1000 if quick else 10_000)
    args.invitations = args.invitations or (400 if quick else 5000)
    args.round_trips = args.round_trips or (800 if quick else 10_000)
    args.repeat = args.repeat or (1 if quick else 3)
    args.warmup = 64 if quick else 256
    if args.quiet_wait is None:
        args.quiet_wait = 2.0 if quick else 30.0
    args.process_counts = [int(x) for x in args.processes.split(",") if x.strip()]
    if args.repeat < 1 or args.owners < 1 or not args.process_counts:
        p.error("--repeat, --owners and --processes need positive numbers")
    if args.joins:
        joins.resolve(args)
    if args.fanout:
        fanout.resolve(args)
    return args


def temp_folders() -> tuple[Path, Path]:
    """Server data on the real disk (its fsyncs count); owner state files in tmpfs when there is one.

    Owners' state files are the owners' business, on their own machines: written to tmpfs here,
    their fsyncs do not compete with the relay's on the one disk of this machine.
    """
    work = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    shm = Path("/dev/shm")
    owners_root = shm if shm.is_dir() and os.access(shm, os.W_OK) else work
    owners = Path(tempfile.mkdtemp(prefix="relay-bench-owners-", dir=owners_root))
    return work, owners


def fmt_bytes(n: float) -> str:
    sign, n = ("-" if n < 0 else ""), abs(n)
    if n < 1024:
        return f"{sign}{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{sign}{n:.1f} {unit}"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


THROUGHPUT_HEADER = [
    "load",
    "client procs x tasks",
    "operations",
    "seconds",
    "ops/s",
    "p50 / p99 ms",
    "server CPU",
    "client CPU",
    "machine busy",
    "other procs",
    "bound by",
]


def throughput_rows(runs: list[Throughput]) -> list[list[str]]:
    return [
        [
            NAMES.get(t.load, t.load),
            f"{t.processes} x {t.tasks // t.processes}",
            f"{t.result.ok}" + (f" ({t.result.errors} failed)" if t.result.errors else ""),
            f"{t.wall:.2f}",
            f"{t.rate:.0f}",
            f"{t.percentile(0.5) * 1000:.0f} / {t.percentile(0.99) * 1000:.0f}",
            f"{t.server_load:.2f}",
            f"{t.client_load:.2f}",
            f"{t.section.usage.busy:.2f}",
            f"{t.section.usage.others:.2f}",
            t.bound_by,
        ]
        for t in runs
    ]


def median_of(runs: list[Throughput], attr: str) -> float:
    return statistics.median(getattr(t, attr) for t in runs) if runs else 0.0


def comparison(runs: list[Throughput]) -> tuple[list[list[str]], list[dict[str, Any]]]:
    """Per client-process count: medians of the relay and baseline runs, and their ratio."""
    rows, data = [], []
    for procs in sorted({t.processes for t in runs}):
        relay = [t for t in runs if t.processes == procs and t.load == "invite"]
        echo = [t for t in runs if t.processes == procs and t.load == "echo"]
        if not relay or not echo:
            continue
        rate, base = median_of(relay, "rate"), median_of(echo, "rate")
        server_ms, echo_ms = median_of(relay, "server_ms"), median_of(echo, "server_ms")
        client_ms, echo_client_ms = median_of(relay, "client_ms"), median_of(echo, "client_ms")
        commits = sum(t.commits for t in relay)
        per_commit = sum(t.jobs for t in relay) / commits if commits else 0.0
        rows.append(
            [
                str(procs),
                f"{rate:.0f}"
                + (
                    f" ({min(t.rate for t in relay):.0f}-{max(t.rate for t in relay):.0f})"
                    if len(relay) > 1
                    else ""
                ),
                f"{base:.0f}",
                f"{rate / base:.2f}" if base else "-",
                f"{server_ms:.2f} / {echo_ms:.2f}",
                f"{client_ms:.2f} / {echo_client_ms:.2f}",
                f"{1000 / server_ms:.0f}" if server_ms else "-",
                f"{per_commit:.1f}" if per_commit else "-",
            ]
        )
        data.append(
            {
                "processes": procs,
                "runs": len(relay),
                "invitations_per_s": round(rate, 1),
                "echo_round_trips_per_s": round(base, 1),
                "relay_over_baseline": round(rate / base, 3) if base else None,
                "relay_cpu_ms_per_invitation": round(server_ms, 3),
                "echo_server_cpu_ms_per_round_trip": round(echo_ms, 3),
                "client_cpu_ms_per_invitation": round(client_ms, 3),
                "relay_invitations_per_core_s": round(1000 / server_ms, 1) if server_ms else None,
                "invitations_per_commit": round(per_commit, 2),
            }
        )
    return rows, data


COMPARISON_HEADER = [
    "client procs",
    "invitations/s",
    "echo round trips/s",
    "relay / baseline",
    "server CPU ms/op (relay / echo)",
    "client CPU ms/op (relay / echo)",
    "relay invitations/s per core",
    "invitations per commit",
]


def growth_rows(grown: Growth) -> list[list[str]]:
    before, rows = grown.snapshots[0], []
    for snap in grown.snapshots[1:]:
        rss, db, total = grown.per_group(snap)
        rows.append(
            [
                snap.label,
                str(snap.groups),
                f"{fmt_bytes(before.rss)} -> {fmt_bytes(snap.rss)}",
                f"{rss:.0f}",
                f"{fmt_bytes(before.db['relay.db'])} -> {fmt_bytes(snap.db['relay.db'])}",
                f"{fmt_bytes(before.db['relay.db-wal'])} -> {fmt_bytes(snap.db['relay.db-wal'])}",
                f"{db:.0f}",
                f"{total:.0f}",
            ]
        )
    return rows


GROWTH_HEADER = [
    "groups",
    "added",
    "relay RSS",
    "RSS B/group",
    "relay.db",
    "relay.db-wal",
    "db B/group",
    "db+wal B/group",
]


def report(
    args: argparse.Namespace, runs: list[Throughput], grown: Growth | None, capacity: list[float]
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine.description(),
        "python": sys.version.split()[0],
        "owners": args.owners,
        "parallel_capacity_cores": [round(c, 2) for c in capacity],
    }
    print(f"chat-relay benchmarks, {out['date']}, {out['machine']}, Python {out['python']}")
    if capacity:
        print(
            "Cores two CPU-bound processes really got (before / after): "
            + " / ".join(f"{c:.2f}" for c in capacity)
        )
    print(
        "CPU columns are cores busy on average (1.00 = one core): the server process, the client\n"
        "process(es), the whole machine (/proc/stat ticks), and processes outside the benchmark."
    )
    print()
    if runs:
        print(f"Throughput ({args.owners} concurrent tasks, each operation on a fresh connection)")
        print()
        print(table(THROUGHPUT_HEADER, throughput_rows(runs)))
        print()
        rows, data = comparison(runs)
        if rows:
            if args.repeat > 1:
                print(f"Medians of {args.repeat} runs (range of invitations/s in brackets)")
                print()
            print(table(COMPARISON_HEADER, rows))
            print()
        out["throughput"] = [t.summary() for t in runs]
        out["comparison"] = data
    if grown is not None:
        print(
            f"Growth of the idle relay (baseline after a {args.warmup}-invitation warm-up; "
            "no connection open when measured)"
        )
        print()
        print(table(GROWTH_HEADER, growth_rows(grown)))
        print()
        print(table(THROUGHPUT_HEADER, throughput_rows(grown.loads)))
        print()
        if grown.group_states:
            states = ", ".join(f"{k} {v:.0f}" for k, v in sorted(grown.group_states.items()) if v)
            print(f"Groups on the relay at the end (warm-up included): {states}")
            print()
        out["growth"] = grown.summary()
    verdicts = []
    _, data = comparison(runs)
    if data:
        best = max(data, key=lambda d: d["invitations_per_s"])
        met = "met" if best["invitations_per_s"] >= AIM_RATE else "MISSED"
        verdicts.append(
            f"invitations/s: {best['invitations_per_s']:.0f} (best median, {best['processes']} client "
            f"process(es)); aim >= {AIM_RATE:.0f}: {met}"
        )
        out["best_rate"] = best["invitations_per_s"]
    if grown is not None and len(grown.snapshots) > 1:
        rss, _, total = grown.per_group(grown.snapshots[1])
        met = "met" if rss < AIM_MEMORY else "MISSED"
        verdicts.append(
            f"relay memory per idle (accepted) group: {rss:.0f} B; aim < {AIM_MEMORY:.0f} B: {met}; "
            f"database: {total:.0f} B per group"
            + (
                " (fewer than 10,000 groups: SQLite's bounded page cache, about 2 MiB, and the WAL"
                " dominate these figures)"
                if grown.snapshots[1].groups < 10_000
                else ""
            )
        )
    disturbed = [t for t in [*runs, *(grown.loads if grown else [])] if t.section.usage.others > 0.1]
    if disturbed:
        verdicts.append(
            "WARNING: other processes used CPU during "
            + ", ".join(f"{t.load} x{t.processes} ({t.section.usage.others:.2f} cores)" for t in disturbed)
            + "; those rates are low. Re-run on a quiet machine."
        )
    if capacity and min(capacity) < 1.8:
        verdicts.append(
            f"WARNING: two CPU-bound processes got only {min(capacity):.2f} cores at one point "
            "(host contention on a virtual machine?); rates vary with it."
        )
    if args.profile_relay:
        verdicts.append(f"NOTE: the relay ran under cProfile (slower); profiles in {args.profile_relay}")
    for verdict in verdicts:
        print(verdict)
    out["verdicts"] = verdicts
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work, owners = temp_folders()
    runs: list[Throughput] = []
    grown: Growth | None = None
    capacity: list[float] = []
    max_groups = 10 * (args.invitations + args.groups + args.warmup) + 2 * args.prefill + 1000
    profiles = Path(args.profile_relay).resolve() if args.profile_relay else None
    if profiles is not None:
        profiles.mkdir(parents=True, exist_ok=True)
    try:
        capacity.append(machine.parallel_capacity())
        if not args.skip_throughput:
            for attempt in range(args.repeat):
                for procs in args.process_counts:
                    for load, count in (("echo", args.round_trips), ("invite", args.invitations)):
                        name = f"{load}-{procs}-{attempt}"
                        print(f"... {name}: {count} operations, {procs} client process(es)", file=sys.stderr)
                        runs.append(
                            throughput(
                                load,
                                processes=procs,
                                tasks=args.owners,
                                count=count,
                                warmup=args.warmup,
                                workdir=work / name,
                                states=owners / name,
                                max_groups=max_groups,
                                quiet_wait=args.quiet_wait,
                                profile=profiles / f"relay-{name}.prof" if profiles else None,
                                prefilled=args.prefill if load == "invite" else 0,
                            )
                        )
        if not args.skip_growth:
            print(f"... growth: {args.groups} groups", file=sys.stderr)
            grown = growth(
                groups=args.groups,
                tasks=args.owners,
                warmup=args.warmup,
                workdir=work / "growth",
                states=owners / "growth",
                activate=not args.no_activate,
                quiet_wait=args.quiet_wait,
            )
        capacity.append(machine.parallel_capacity())
        result = report(args, runs, grown, capacity)
        if args.joins:
            print()
            result["joins"] = joins.run(args)
        if args.fanout:
            print()
            result["fanout"] = fanout.run(args)
    finally:
        if args.keep:
            print(f"kept: {work} (servers) and {owners} (owner states)", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(owners, ignore_errors=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    failed = sum(t.result.errors for t in [*runs, *(grown.loads if grown else [])])
    failed += result.get("joins", {}).get("errors", 0)
    failed += result.get("fanout", {}).get("errors", 0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
