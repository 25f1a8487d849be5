"""A relay in a hostile world (issue 13): ``python -m benchmarks.abuse``.

For every attack class of the issue, in one run, against a fresh relay each time (``relay
serve`` on loopback with a temp data folder on the real disk, its DEFAULT configuration: the
per-source budgets are the defences under test):

1. the well-behaved client (:mod:`benchmarks.abuse_client`, a process of its own on
   ``127.0.0.2``) runs alone on the idle relay: sessions with one request each at a fixed rate
   (head, join, post) and a subscribed member that must get every post; its latencies and
   failures are the baseline;
2. the same client again while the attack runs (:mod:`benchmarks.abuse_attacks`, a process of
   its own on ``127.0.0.1``: another host), with the relay's CPU and RSS sampled (psutil)
   and what the attack cost its host (connections, bytes/s, CPU);
3. the attack stops, and the relay's RSS is sampled for ``--after`` seconds (30): its value at
   the end, and how long it took to come back within 10 % of the figure before the attack.

One table, one row per attack: the attacker's cost, the relay's CPU during the attack, its RSS
before / at the peak during / at the end of the wait after (and the seconds it took to come
back), the well-behaved p50/p99 idle against during (the ratio of the p99s), the failures,
and whether the issue's aims were met: 0 failures, p99 under 3 times the idle p99, RSS back
within 10 % within 30 s (and no breach: an answer that means the attack worked).  ``--json``
writes every figure; the exit status is 1 if any well-behaved request failed (or an attack
could not run at all).

Must not: change the relay's configuration beyond what the benchmark needs to run at all (it
needs nothing: the relay runs without a configuration file), or tune an attack to hide a
result.  The README (benchmarks/README.md, "A relay in a hostile world") says what each attack
does and why it is bounded the way it is.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import trio
from cryptography.hazmat.primitives.asymmetric import ed25519

from benchmarks import machine
from benchmarks.abuse_attacks import MAX_OWNERS, owner_cert
from benchmarks.daemon import RelayDaemon
from benchmarks.members import percentile
from benchmarks.runs import run_header, work_folder
from relay.client import add_relay, create_channel, publish
from relay.client.admin import AdminClient
from relay.client.connection import connecting_from, open_session
from relay.client.owner import OwnerState, signed_to_json
from relay.protocol import crypto
from relay.protocol.addresses import parse_address
from relay.protocol.encoding import b64d, b64e, encode
from relay.protocol.invitation import make_owner_request
from relay.protocol.membership import ACTION_SUBSCRIBE, make_join_request, make_member_request
from relay.protocol.messages import (
    Join,
    JoinResult,
    MemberProfile,
    OwnerCommand,
    OwnerCommandResult,
    Subscribe,
    Subscribed,
)

ATTACKER = "127.0.0.1"
WELL_BEHAVED = "127.0.0.2"
AIM_P99_RATIO = 3.0
AIM_RSS_SHARE = 0.10
AIM_RSS_SECONDS = 30.0
SAMPLE_EVERY = 0.25
SETUP_TIMEOUT = 60.0

# (name, the class, what the row shows)
ATTACKS: list[tuple[str, str]] = [
    ("liar", "1 framed as a liar: equivocations at max rate, lagging members"),
    ("owners", "2 stalling by owners: 256-copy and 16-owner certs, commands"),
    ("webpage", "3 a web page at the operator port: form POSTs, rebinding"),
    ("starve", "4 connection starvation: one key, many sessions, idle ones"),
    ("fill", "5 filling up: refused and never-activated invitations"),
    ("memory", "6 memory: partly sent 256 KiB messages (slowloris)"),
    ("replay", "7 replay: captured subscribe and owner commands"),
    ("heads", "8 60 KiB request heads in one write, connection churn"),
]


# --- child processes ---------------------------------------------------------------------------


class Child:
    """A client or attacker process: a JSON spec file in, JSON lines out, commands on stdin."""

    def __init__(self, module: str, spec: dict[str, Any], workdir: Path, name: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        path = workdir / f"{name}.spec.json"
        path.write_text(json.dumps(spec))
        self.stderr_path = workdir / f"{name}.stderr"
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, str(path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                continue
        self.lines.put(None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"{self.name}: no {event} within {timeout:g} s{self._tail()}") from None
            if item is None:
                raise RuntimeError(f"{self.name} exited (status {self.proc.poll()}){self._tail()}")
            if item.get("event") == event:
                return item

    def _tail(self) -> str:
        text = self.stderr_path.read_text(errors="replace").strip().splitlines()[-15:]
        return (":\n" + "\n".join(text)) if text else ""

    def close(self, timeout: float = 10.0) -> None:
        self.send("quit")
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


# --- sampling the relay from outside ---------------------------------------------------------------


@dataclass
class Sample:
    at: float
    rss: int
    cpu: float  # CPU seconds so far, all threads
    writer_cpu: float  # CPU seconds so far of the threads other than the trio thread (SQLite)


class Sampler:
    """The relay's RSS and CPU time every ``SAMPLE_EVERY`` seconds, in a thread of this process."""

    def __init__(self, relay: RelayDaemon) -> None:
        self.process = psutil.Process(relay.pid)
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def take(self) -> Sample:
        with self.process.oneshot():
            times = self.process.cpu_times()
            rss = self.process.memory_info().rss
            others = sum(
                t.user_time + t.system_time for t in self.process.threads() if t.id != self.process.pid
            )
        return Sample(time.monotonic(), rss, times.user + times.system, others)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            try:
                self.samples.append(self.take())
            except psutil.Error:
                return

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


# --- setting up each attack's relay -------------------------------------------------------------


@dataclass
class Setup:
    client: dict[str, Any]
    attack: dict[str, Any]
    notes: dict[str, Any] = field(default_factory=dict)


async def new_channel(relay: RelayDaemon, folder: Path, name: str, local: str, owners: int = 1) -> OwnerState:
    """A channel invited to ``relay`` from ``local`` and activated there; its state file is
    ``folder/name.json`` (the old layout: the root key in it, for the attacker's extra owners)."""
    state = create_channel(f"Abuse {name}", description="A channel of the abuse benchmark")
    if owners > 1:
        keys = [crypto.public_bytes(ed25519.Ed25519PrivateKey.generate()) for _ in range(owners - 1)]
        extra = [owner_cert(state.root_key, state.channel, key) for key in keys]
        state.certs = [state.owner_cert, *(signed_to_json(c) for c in extra)]
    path = folder / f"{name}.json"
    state.save(path)
    with connecting_from(local):
        invited = await add_relay(state, path, relay.address, timeout=SETUP_TIMEOUT)
        if invited.status != "accepted":
            raise RuntimeError(f"{name}: invitation {invited.status}: {invited.code}: {invited.reason}")
        published = await publish(state, path, timeout=SETUP_TIMEOUT)
        if [r.get("state") for r in published.relays] != ["active"]:
            raise RuntimeError(f"{name}: not activated: {published.relays}")
    return state


def group_address(state: OwnerState) -> str:
    address = state.relays[0].group_address
    assert address is not None
    return address


async def capture(relay: RelayDaemon, victim: OwnerState) -> dict[str, str]:
    """Signed requests of the well-behaved side, each sent once on the connection it was signed
    for, as someone reading the traffic would capture them: a member's ``subscribe``, and the
    owners' ``suspend_admission`` and ``list_pending`` (admission resumed afterwards)."""
    address = parse_address(group_address(victim))
    assert address.address_id is not None
    contact = parse_address(victim.relays[0].contact)
    member = ed25519.Ed25519PrivateKey.generate()
    captured: dict[str, str] = {}
    now = int(time.time())
    with connecting_from(WELL_BEHAVED):
        async with open_session(address, timeout=SETUP_TIMEOUT) as session:
            join = make_join_request(
                member,
                relay_fingerprint=address.fingerprint,
                channel=victim.channel,
                address_id=address.address_id,
                profile=MemberProfile(name="Captured member"),
                session=session.challenge,
                now=now,
            )
            joined = await session.request(Join(request=join))
            if not isinstance(joined, JoinResult) or joined.status != "admitted":
                raise RuntimeError(f"the captured member was not admitted: {joined!r}")
        async with open_session(address, timeout=SETUP_TIMEOUT) as session:
            request = make_member_request(
                member,
                relay_fingerprint=address.fingerprint,
                channel=victim.channel,
                address_id=address.address_id,
                session=session.challenge,
                now=now,
                action=ACTION_SUBSCRIBE,
            )
            frame = Subscribe(request=request)
            if not isinstance(await session.request(frame), Subscribed):
                raise RuntimeError("the captured subscribe was not answered subscribed")
            captured["subscribe"] = b64e(encode(frame))

        def command(session_challenge: bytes, action: str) -> OwnerCommand:
            return OwnerCommand(
                request=make_owner_request(
                    victim.owner_key,
                    relay_fingerprint=contact.fingerprint,
                    channel=victim.channel,
                    service_group=b64d(victim.relays[0].service_group),
                    action=action,
                    session=session_challenge,
                    now=now,
                )
            )

        for action in ("suspend_admission", "list_pending", "resume_admission"):
            async with open_session(contact, timeout=SETUP_TIMEOUT) as session:
                sent = command(session.challenge, action)
                if not isinstance(await session.request(sent), OwnerCommandResult):
                    raise RuntimeError(f"the captured {action} was not answered")
                if action != "resume_admission":  # the owners resumed: that one is not replayed
                    captured[action] = b64e(encode(sent))
    return captured


async def setup(name: str, relay: RelayDaemon, folder: Path, *, rate: float, quick: bool) -> Setup:
    victim = await new_channel(relay, folder, "well-behaved", WELL_BEHAVED)
    listen_host, port = relay.listen.rsplit(":", 1)
    client: dict[str, Any] = {
        "group_address": group_address(victim),
        "owner_state": str(folder / "well-behaved.json"),
        "rate": rate,
        "local": WELL_BEHAVED,
    }
    attack: dict[str, Any] = {
        "attack": name,
        "host": listen_host,
        "port": int(port),
        "fingerprint": b64e(parse_address(relay.address).fingerprint),
        "local": ATTACKER,
        "quick": quick,
    }
    notes: dict[str, Any] = {}
    if name in ("liar", "owners", "starve"):
        own = await new_channel(
            relay, folder, "attacker", ATTACKER, owners=MAX_OWNERS if name == "owners" else 1
        )
        attack.update(owner_state=str(folder / "attacker.json"), group_address=group_address(own))
        if name == "liar":
            channel = b64e(own.channel)
            client["watch"] = [
                {"address": group_address(own), "channel": channel, "lagging": False},
                {"address": group_address(own), "channel": channel, "lagging": True},
            ]
    if name == "webpage":
        token = (relay.data / "admin.token").read_text().strip()
        with AdminClient(relay.ready["admin_listen"], token) as admin:
            [group] = [g for g in admin.groups() if g["state"] == "active"]
        attack.update(admin=relay.ready["admin_listen"], victim_group=int(group["id"]))
        notes["victim_group"] = int(group["id"])
    if name == "replay":
        attack.update(captured=await capture(relay, victim), victim_address=group_address(victim))
    return Setup(client, attack, notes)


# --- one attack -------------------------------------------------------------------------------------


@dataclass
class Timing:
    warmup: float
    phase: float  # seconds of each client phase (idle, then during the attack)
    ramp: float  # seconds the attack runs before the client's phase starts
    after: float  # seconds the RSS is watched after the attack stopped


def latencies(phase: dict[str, Any]) -> list[float]:
    return [x for values in phase["latencies"].values() for x in values]


def run_attack(name: str, title: str, work: Path, timing: Timing, args: argparse.Namespace) -> dict[str, Any]:
    folder = work / name
    folder.mkdir(parents=True)
    load_before = os.getloadavg()
    profile = Path(args.profile_relay) / f"relay-abuse-{name}.prof" if args.profile_relay else None
    relay = relay_daemon(folder, profile).start()
    children: list[Child] = []
    sampler: Sampler | None = None
    try:
        prepared = trio.run(lambda: setup(name, relay, folder, rate=args.rate, quick=args.quick))
        # Both processes start (and the attacker prepares) at once; the attacker then waits.
        client = Child("benchmarks.abuse_client", prepared.client, folder, "client")
        children.append(client)
        attacker = Child("benchmarks.abuse_attacks", prepared.attack, folder, "attacker")
        children.append(attacker)
        client.expect("ready", SETUP_TIMEOUT)
        attacker.expect("ready", SETUP_TIMEOUT * 2)
        sampler = Sampler(relay)
        if timing.warmup:
            client.send(f"phase warmup {timing.warmup}")
            warmup = client.expect("phase", timing.warmup + 60)
        else:
            warmup = {"failures": 0, "failure_samples": []}
        client.send(f"phase idle {timing.phase}")
        idle = client.expect("phase", timing.phase + 60)
        before = sampler.take()
        metrics0 = relay.metrics()
        usage0 = machine.sample([relay.pid, client.pid, attacker.pid])
        log0 = len(relay.log_lines())
        attacker.send("go")
        started = time.monotonic()
        time.sleep(timing.ramp)
        client.send(f"phase attack {timing.phase}")
        during = client.expect("phase", timing.phase + 120)
        metrics1 = relay.metrics()
        attacker.send("stop")
        cost = attacker.expect("done", 60)
        attacker.proc.wait(30)
        stopped = time.monotonic()
        log_lines = len(relay.log_lines()) - log0
        usage = machine.Usage.between(usage0, machine.sample([relay.pid, client.pid, attacker.pid]))
        last = sampler.take()
        time.sleep(timing.after)
        end = sampler.take()
        after = sampler.between(stopped, end.at)
        client.close()
        relay_log = log_summary(relay)
    finally:
        if sampler is not None:
            sampler.stop()
        for child in children:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait(5)
        status = relay.stop()
    if status != 0:
        raise RuntimeError(f"the relay exited with status {status}; log in {relay.log_path}")
    window = [before, *sampler.between(started, stopped), last]
    wall = last.at - before.at
    back = next((s.at - stopped for s in after if s.rss <= before.rss * (1 + AIM_RSS_SHARE)), None)
    idle_lat, during_lat = latencies(idle), latencies(during)
    p99_idle, p99_during = percentile(idle_lat, 0.99), percentile(during_lat, 0.99)
    failures = warmup["failures"] + idle["failures"] + during["failures"]
    breaches = int(cost["answers"].get("breach", 0))
    ratio = p99_during / p99_idle if p99_idle else float("inf")
    # Judged only when the RSS was watched for the aim's whole 30 s (not in a --quick run),
    # unless it came back sooner.
    rss_back: bool | None = back is not None and back <= AIM_RSS_SECONDS
    if not rss_back and end.at - stopped < AIM_RSS_SECONDS:
        rss_back = None
    row = {
        "attack": name,
        "title": title,
        "load_average_before": [round(x, 2) for x in load_before],
        "attacker": {
            "seconds": cost["seconds"],
            "connections_peak": cost["connections_peak"],
            "connections_opened": cost["connections_opened"],
            "bytes_per_second": round(cost["bytes_sent"] / cost["seconds"]) if cost["seconds"] else 0,
            "cpu_cores": round(cost["cpu_seconds"] / cost["seconds"], 3) if cost["seconds"] else 0,
            "answers": cost["answers"],
            "breaches": cost["breaches"],
            "notes": cost["notes"],
        },
        "relay": {
            "cpu_cores_during": round((last.cpu - before.cpu) / wall, 3) if wall else 0,
            "writer_cpu_cores_during": round((last.writer_cpu - before.writer_cpu) / wall, 3) if wall else 0,
            "db_busy_during": round(
                (
                    metrics1.get("relay_db_commit_seconds_total", 0)
                    - metrics0.get("relay_db_commit_seconds_total", 0)
                )
                / max(during["seconds"], 0.001),
                3,
            ),
            "rss_before": before.rss,
            "rss_peak_during": max(s.rss for s in window),
            "rss_after": end.rss,
            "rss_after_seconds": round(end.at - stopped, 1),
            "rss_back_within_10pct_after_s": round(back, 1) if back is not None else None,
            "metrics_during": metric_deltas(metrics0, metrics1),
            "log_lines_per_second_during": round(log_lines / (stopped - started), 1),
            # Every sample from just before the attack to the end: seconds after "go", RSS, CPU cores
            # over the sample's interval.
            "samples": series(before, sampler.between(started, end.at), started),
            "log": relay_log,
        },
        "machine": {"busy_cores": round(usage.busy, 2), "other_processes_cores": round(usage.others, 2)},
        "well_behaved": {
            "idle": phase_summary(idle),
            "during": phase_summary(during),
            "warmup_failures": warmup["failures"],
            "warmup_failure_samples": warmup["failure_samples"],
            "p99_ratio": round(ratio, 2),
            "client_cpu_cores_during": round(during["cpu_seconds"] / during["seconds"], 3),
        },
        "failures": failures,
        "breaches": breaches,
        "setup_notes": prepared.notes,
        "aims": {
            "no_failures": failures == 0 and breaches == 0,
            "p99_under_3x_idle": ratio < AIM_P99_RATIO,
            "rss_back_within_10pct_in_30s": rss_back,
        },
    }
    verdicts = list(row["aims"].values())
    row["aims_met"] = False if False in verdicts else (None if None in verdicts else True)
    return row


def series(before: Sample, samples: list[Sample], started: float) -> list[list[float]]:
    out, last = [], before
    for sample in samples:
        cores = (sample.cpu - last.cpu) / (sample.at - last.at) if sample.at > last.at else 0.0
        out.append([round(sample.at - started, 2), round(sample.rss / 2**20, 1), round(cores, 2)])
        last = sample
    return out


def relay_daemon(folder: Path, profile: Path | None) -> RelayDaemon:
    """``relay serve`` with no configuration file: every option at its default."""
    profiler = ["cProfile", "-o", str(profile), "-m"] if profile is not None else []
    command = [
        *profiler, "relay", "serve", "--data", str(folder / "data"),
        "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
    ]  # fmt: skip
    return RelayDaemon(command=command, workdir=folder, name="relay")


def phase_summary(phase: dict[str, Any]) -> dict[str, Any]:
    lat = latencies(phase)
    kinds = {
        kind: {"n": len(v), "p50_ms": ms(percentile(v, 0.5)), "p99_ms": ms(percentile(v, 0.99))}
        for kind, v in phase["latencies"].items()
    }
    deliveries = phase["deliveries"]
    return {
        "requests": phase["requests"],
        "ok": len(lat),
        "p50_ms": ms(percentile(lat, 0.5)),
        "p99_ms": ms(percentile(lat, 0.99)),
        "max_ms": ms(max(lat, default=0.0)),
        "by_kind": kinds,
        "deliveries": len(deliveries),
        "delivery_p50_ms": ms(percentile(deliveries, 0.5)),
        "delivery_p99_ms": ms(percentile(deliveries, 0.99)),
        "watched_events": phase["watched"],
        "slowest": phase["slowest"],
        "failures": phase["failures"],
        "failure_samples": phase["failure_samples"],
    }


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


INTERESTING = (
    "relay_refusals_total",
    "relay_bounds_hit_total",
    "relay_invitations_total",
    "relay_events_total",
    "relay_equivocations_total",
    "relay_feed_lagging_total",
    "relay_feed_stalled_total",
    "relay_feeds_ended_total",
    "relay_profile_verifications_total",
    "relay_admin_refused_total",
    "relay_connections_total",
    "relay_db_commits_total",
    "relay_db_jobs_total",
    "relay_subscriptions_total",
    "relay_ping_timeouts_total",
)


def metric_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """What the relay counted during the attack (counters that moved), and its gauges after."""
    out: dict[str, float] = {}
    for key, value in after.items():
        if key.startswith(INTERESTING) and value != before.get(key, 0.0):
            out[key] = round(value - before.get(key, 0.0), 3)
        elif key.startswith(("relay_groups{", "relay_connections_open", "relay_subscribers")):
            out[key] = value
    return out


def log_summary(relay: RelayDaemon) -> dict[str, Any]:
    """Lines of the relay's log that are not JSON (a traceback), and internal errors."""
    lines = relay.log_lines()
    events: dict[str, int] = {}
    not_json = 0
    for line in lines:
        try:
            event = json.loads(line).get("event", "?")
        except (ValueError, AttributeError):
            not_json += 1
            continue
        events[event] = events.get(event, 0) + 1
    return {
        "lines": len(lines),
        "not_json": not_json,
        "internal_errors": sum(n for e, n in events.items() if "internal_error" in e),
        "events": dict(sorted(events.items(), key=lambda kv: -kv[1])[:12]),
    }


# --- the table ----------------------------------------------------------------------------------------


def mib(value: int) -> str:
    return f"{value / 2**20:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| attack | attacker cost: connections peak (opened), bytes/s, CPU | relay CPU during | "
        "relay RSS MiB before / peak during / after (s back within 10 %) | well-behaved p50 / p99 ms, "
        "idle -> during (p99 ratio) | failures | aims met? |"
    )
    lines = [head, "|" + "---|" * 7]
    for row in rows:
        a, r, w = row["attacker"], row["relay"], row["well_behaved"]
        back = r["rss_back_within_10pct_after_s"]
        back_text = f"{back:g} s" if back is not None else f"not in {r['rss_after_seconds']:g} s"
        bps = a["bytes_per_second"]
        rate = f"{bps / 1e6:.2f} MB/s" if bps >= 1e5 else f"{bps / 1e3:.1f} kB/s"
        missed = [k for k, ok in row["aims"].items() if ok is False]
        if row["aims_met"] is None:
            verdict = f"not judged (RSS watched {r['rss_after_seconds']:g} s)"
        else:
            verdict = "yes" if row["aims_met"] else "no: " + ", ".join(missed)
        fails = f"{row['failures']}" + (f" (+{row['breaches']} breaches)" if row["breaches"] else "")
        lines.append(
            f"| {row['title']} | {a['connections_peak']} ({a['connections_opened']}), {rate}, "
            f"{a['cpu_cores']:.2f} cores | {r['cpu_cores_during']:.2f} cores | "
            f"{mib(r['rss_before'])} / {mib(r['rss_peak_during'])} / {mib(r['rss_after'])} ({back_text}) | "
            f"{w['idle']['p50_ms']:g} / {w['idle']['p99_ms']:g} -> {w['during']['p50_ms']:g} / "
            f"{w['during']['p99_ms']:g} ({w['p99_ratio']:g}x) | {fails} | {verdict} |"
        )
    return "\n".join(lines)


def details(rows: list[dict[str, Any]]) -> str:
    """How the relay answered each attack: the attacker's answers, the bounds it hit, its
    database writer (busy share of the time, from relay_db_commit_seconds_total), its log."""
    head = (
        "| attack | answers the attacker got (most frequent) | bounds hit | DB writer busy | "
        "relay log lines/s | machine busy / other processes (cores) |"
    )
    lines = [head, "|" + "---|" * 6]
    for row in rows:
        a, r = row["attacker"], row["relay"]
        answers = sorted(a["answers"].items(), key=lambda kv: -kv[1])[:4]
        hits = r["metrics_during"].items()
        bounds = {k.split('"')[1]: int(v) for k, v in hits if k.startswith("relay_bounds_hit_total")}
        lines.append(
            f"| {row['attack']} | {', '.join(f'{k} {v}' for k, v in answers)} | "
            f"{', '.join(f'{k} {v}' for k, v in bounds.items()) or 'none'} | {r['db_busy_during']:.0%} | "
            f"{r['log_lines_per_second_during']:.0f} | {row['machine']['busy_cores']:.2f} / "
            f"{row['machine']['other_processes_cores']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.abuse", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: a few seconds per attack")
    p.add_argument(
        "--only", help="comma-separated attacks to run (default: all): " + ",".join(a for a, _ in ATTACKS)
    )
    p.add_argument("--seconds", type=float, help="seconds of each client phase, idle and during (default 30)")
    p.add_argument(
        "--after", type=float, help="seconds the relay's RSS is watched after an attack (default 30)"
    )
    p.add_argument("--rate", type=float, default=10.0, help="well-behaved sessions per second (default 10)")
    p.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (logs, databases)")
    p.add_argument("--profile-relay", metavar="DIR", help="run each relay under cProfile, stats in DIR")
    args = p.parse_args(argv)
    timing = Timing(
        warmup=0.5 if args.quick else 5.0,
        phase=args.seconds or (2.0 if args.quick else 30.0),
        ramp=0.5 if args.quick else 5.0,
        after=args.after if args.after is not None else (2.0 if args.quick else AIM_RSS_SECONDS),
    )
    chosen = [(a, t) for a, t in ATTACKS if not args.only or a in args.only.split(",")]
    if args.profile_relay:
        Path(args.profile_relay).mkdir(parents=True, exist_ok=True)
    header = run_header()
    header["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print(
        f"# {header['date']}, {header['machine']}, Python {header['python']}, load {header['load_average']}"
    )
    rows: list[dict[str, Any]] = []
    broken: list[dict[str, str]] = []
    with work_folder("relay-abuse-", keep=args.keep) as work:
        for name, title in chosen:
            print(f"- {title} ...", flush=True)
            try:
                row = run_attack(name, title, work, timing, args)
            except Exception as exc:  # one attack that cannot run does not lose the others' figures
                traceback.print_exc()
                print(f"  did not complete: {type(exc).__name__}: {exc}", flush=True)
                broken.append({"attack": name, "error": f"{type(exc).__name__}: {exc}"[:2000]})
                continue
            rows.append(row)
            w = row["well_behaved"]
            print(
                f"  p99 {w['idle']['p99_ms']:g} -> {w['during']['p99_ms']:g} ms, failures {row['failures']}, "
                f"breaches {row['breaches']}, aims met: {row['aims_met']}",
                flush=True,
            )
    print()
    print(table(rows))
    print()
    print(details(rows))
    failures = sum(r["failures"] for r in rows)
    out = {
        **header,
        "timing": timing.__dict__,
        "rate": args.rate,
        "attacks": rows,
        "failures": failures,
        "did_not_complete": broken,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    for row in rows:
        for phase in ("idle", "during"):
            for sample in row["well_behaved"][phase]["failure_samples"]:
                print(f"{row['attack']} ({phase}): {sample}", file=sys.stderr)
        for sample in row["attacker"]["breaches"]:
            print(f"{row['attack']} breach: {sample}", file=sys.stderr)
    for item in broken:
        print(f"{item['attack']} did not complete: {item['error']}", file=sys.stderr)
    return 1 if failures or broken else 0


if __name__ == "__main__":
    sys.exit(main())
