"""``python -m benchmarks.groups``: member messages in a group measured (issue 16; see
``benchmarks/README.md``).

A group of ``--members`` (1,000) connected, subscribed members (held by the member load
processes of :mod:`benchmarks.fanout_members`, which count every frame carrying a stamp,
whether an owner event or a timeline place) of whom ``--posters`` (50) certified members post
at a fixed total rate of ``--rate`` (50) messages per second, each on its own connection, each
message signed as it is sent (the stamp is its send time).  The baseline, in the same run and
on the same machine: the same number of members in a channel, and the same traffic (the same
rate, the same body size) as owner posts from one owner connection.  Each runs on a fresh
relay of its own.  Measured: deliveries per second, p50/p99 publish-to-delivery latency, and
the relay's CPU per message (its CPU time over the timed section divided by the messages
sent); aims: p99 under 50 ms, and a member message costing the relay at most 1.5 times an
owner post.

This module measures; it asserts no figure (tests/test_benchmarks_groups.py runs the quick
mode), and must not change what the relay does beyond its configuration file.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

from benchmarks import runs
from benchmarks.daemon import Daemon
from benchmarks.fanout import (
    ANSWER_TIMEOUT,
    Cpu,
    Crowd,
    Publisher,
    Target,
    group_target,
    quiet,
    relay_daemon,
    table,
)
from benchmarks.fanout_members import stamp

AIM_P99_MS = 50.0
AIM_COST = 1.5  # a member message's relay CPU, in owner posts


def groups_daemon(workdir: Path) -> Daemon:
    """The fan-out benchmark's relay, and a member pace floor no poster reaches (each poster
    sends ``rate / posters`` messages per second: 60 a minute at the defaults)."""
    return relay_daemon(workdir, extra="[groups]\nmessages_per_minute = 100000\n")


class MemberPoster(Publisher):
    """One certified member's connection: each message signed as it is sent, chained onto the
    member's last; a reader task counts the ``member_post_result`` answers."""

    def __init__(self, target: Target, key: Any, body_bytes: int) -> None:
        from relay.protocol.timeline import AuthorHead

        super().__init__(target, body_bytes)
        self.key = key
        self.author = AuthorHead()

    def message_frame(self, index: int) -> bytes:
        from benchmarks import wsframe
        from relay.protocol.encoding import encode
        from relay.protocol.messages import MemberPost
        from relay.protocol.timeline import AuthorHead, make_message, stored_message

        signed = make_message(
            self.key,
            channel=self.target.channel,
            after=self.author,
            body=stamp(index, time.monotonic_ns()) + self.filler,
            now=int(time.time()),
        )
        self.author = AuthorHead.of(stored_message(signed))
        return wsframe.frame(encode(MemberPost(message=signed)), masked=True)

    def take_answer(self, answer: Any, now: int) -> None:
        """One answer: a member message stored, or an error (no latency: the members' count)."""
        if answer.get("type") == "member_post_result" and answer.get("status") == "stored":
            self.acked += 1
        else:
            self.count_error(answer)


async def make_target(daemon: Daemon, folder: Path, kind: str, posters: int) -> tuple[Target, list[Any]]:
    """A new auto-admit group (or channel), invited and activated with the real owner client;
    for a group, ``posters`` members joined and certified with the real member and owner
    clients.  Returns the target and the posters' keys."""
    from benchmarks.members import new_group
    from relay.client.member import MemberState, join
    from relay.client.moderation import certify

    group = await new_group(daemon.ready["address"], folder, kind, activate=True, kind=kind)
    owner, path = group.owner, group.path
    target = group_target(daemon, group)
    keys: list[Any] = []
    if kind == "group" and posters:
        states = [MemberState.new(str(owner.link()), name=f"poster{i}") for i in range(posters)]

        async def one(i: int, state: MemberState) -> None:
            await join(state, folder / f"poster{i}.json", timeout=ANSWER_TIMEOUT)

        async with trio.open_nursery() as nursery:
            for i, state in enumerate(states):
                nursery.start_soon(one, i, state)
        done = await certify(owner, path, members=[s.member_id for s in states], timeout=ANSWER_TIMEOUT)
        if len(done.certified) != posters or not all(c.stored for c in done.certified):
            raise RuntimeError(f"certified {len(done.certified)} of {posters} posters: {done.relays}")
        keys = [s.member_key for s in states]
    return target, keys


async def fixed_rate(
    target: Target, crowd: Crowd, posters: list[Publisher], args: argparse.Namespace
) -> dict[str, Any]:
    """``rate`` messages per second on a fixed schedule, round robin over the posters (one
    owner publisher for the channel); warm-up, quiet wait, then ``seconds`` timed."""
    interval = 1.0 / args.rate
    index = [0]

    async def run_for(duration: float) -> tuple[int, int, int]:
        start = trio.current_time()
        n = max(1, int(duration * args.rate))
        first, late = index[0] + 1, 0
        for i in range(n):
            due = start + i * interval
            await trio.sleep_until(due)
            if trio.current_time() - due > 0.005:
                late += 1
            index[0] += 1
            poster = posters[index[0] % len(posters)]
            if isinstance(poster, MemberPoster):
                frame = poster.message_frame(index[0])
            else:
                _, frame = poster.stamped()
            await poster.send(frame)
        if not await crowd.wait_done(index[0], ANSWER_TIMEOUT):
            raise RuntimeError(f"members did not receive up to {index[0]} (at {crowd.done})")
        return first, index[0], late

    await run_for(args.warmup)
    await quiet(args.quiet_wait)
    await crowd.record(index[0] + 1)
    cpu0 = Cpu.now(target, crowd, [])
    first, last, late = await run_for(args.seconds)
    cpu = cpu0.until(Cpu.now(target, crowd, []))
    latency = await crowd.report()
    messages = last - first + 1
    server_cpu = cpu["server_cores"] * cpu["wall"]
    return {
        "messages": messages,
        "expected_deliveries": messages * crowd.members,
        "rate": latency.deliveries / cpu["wall"],
        "late_sends": late,
        "server_cpu_ms_per_message": 1000.0 * server_cpu / messages,
        **latency.summary(),
        **cpu,
    }


async def configuration(kind: str, daemon: Daemon, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    posters = args.posters if kind == "group" else 0
    target, keys = await make_target(daemon, folder, kind, posters)
    out: dict[str, Any] = {"kind": kind, "members": args.members, "posters": max(1, len(keys))}
    async with trio.open_nursery() as nursery:
        crowd = Crowd(target, args.members, args.workers, f"{kind}-")
        pubs: list[Publisher] = []
        try:
            setup = await crowd.start(nursery)
            out["setup"] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in setup.items()}
            if setup["live"] != args.members:
                raise RuntimeError(
                    f"only {setup['live']} of {args.members} members live: {setup['error_samples']}"
                )
            pubs = [MemberPoster(target, key, args.body_bytes) for key in keys] or [
                Publisher(target, args.body_bytes)
            ]
            for pub in pubs:
                await pub.open()
                nursery.start_soon(pub.read_answers)
            out["fixed"] = await fixed_rate(target, crowd, pubs, args)
            await trio.sleep(0.2)  # the last answers
            out["acked"] = sum(p.acked for p in pubs)
            out["post_errors"] = sum(p.errors for p in pubs)
            out["post_error_samples"] = [s for p in pubs for s in p.error_samples][:5]
            print(
                f"    {kind}: p99 {out['fixed']['p99_ms']:.1f} ms, "
                f"{out['fixed']['server_cpu_ms_per_message']:.2f} ms relay CPU per message",
                file=sys.stderr,
            )
        finally:
            for pub in pubs:
                await pub.aclose()
            await crowd.stop()
            nursery.cancel_scope.cancel()
    return out


def run_configurations(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    results = []
    for kind in ("channel", "group"):  # the baseline first
        print(f"... {kind}: {args.members} members", file=sys.stderr)
        daemon = groups_daemon(work / kind).start()
        try:
            results.append(trio.run(partial(configuration, kind, daemon, work / kind / "clients", args)))
        finally:
            status = daemon.stop()
        if status not in (0, -15):
            raise RuntimeError(f"{kind}: the relay exited with status {status}; log in {daemon.log_path}")
    return results


def report(out: dict[str, Any], args: argparse.Namespace) -> list[str]:
    print(f"chat-relay group benchmark, {out['date']}, {out['machine']}, Python {out['python']}")
    print(
        f"{args.members} members; {args.rate:g} messages/s for {args.seconds:g} s, {args.body_bytes}-byte "
        f"bodies; group: {args.posters} posting members; baseline: owner posts in a channel"
    )
    rows = []
    by = {r["kind"]: r for r in out["results"]}
    for kind, label in (("channel", "owner posts, channel (baseline)"), ("group", "member messages, group")):
        r = by.get(kind)
        if r is None:
            continue
        f = r["fixed"]
        rows.append(
            [
                label,
                str(r["posters"]),
                f"{f['rate']:,.0f}",
                f"{f['p50_ms']:.1f}",
                f"{f['p99_ms']:.1f}",
                f"{f['server_cpu_ms_per_message']:.2f}",
                f"{f['server_cores']:.2f}",
                f"{f['machine_busy']:.2f}",
                f"{f['other_procs']:.2f}",
            ]
        )
    print(
        table(
            [
                "traffic",
                "posters",
                "deliveries/s",
                "p50 ms",
                "p99 ms",
                "relay CPU ms/msg",
                "server CPU",
                "machine busy",
                "other procs",
            ],
            rows,
        )
    )
    verdicts = []
    group, channel = by.get("group"), by.get("channel")
    if group is not None:
        p99 = group["fixed"]["p99_ms"]
        verdicts.append(
            f"p99 {p99:.1f} ms (aim < {AIM_P99_MS:g}): {'met' if p99 < AIM_P99_MS else 'NOT met'}"
        )
    if group is not None and channel is not None and channel["fixed"]["server_cpu_ms_per_message"]:
        ratio = group["fixed"]["server_cpu_ms_per_message"] / channel["fixed"]["server_cpu_ms_per_message"]
        out["cost_ratio"] = ratio
        verdicts.append(
            f"a member message costs the relay {ratio:.2f} owner posts (aim <= {AIM_COST:g}): "
            f"{'met' if ratio <= AIM_COST else 'NOT met'}"
        )
    for v in verdicts:
        print(v)
    return verdicts


def errors_of(out: dict[str, Any]) -> int:
    total = 0
    for r in out.get("results") or []:
        f = r["fixed"]
        total += r["setup"]["errors"] + r["post_errors"] + f["members_closed"]
        total += max(0, f["expected_deliveries"] - f["deliveries"])
    return total


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--members", type=int, help="connected members (default 1000)")
    p.add_argument("--posters", type=int, help="posting members in the group (default 50)")
    p.add_argument("--rate", type=float, default=50.0, help="messages per second in all (default 50)")
    p.add_argument("--seconds", type=float, help="timed seconds (default 20)")
    p.add_argument("--workers", type=int, default=1, help="member load processes (default 1)")
    p.add_argument("--body-bytes", type=int, default=200, help="message body size (default 200)")


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    quick = args.quick
    args.members = args.members or (20 if quick else 1000)
    args.posters = args.posters or (5 if quick else 50)
    args.seconds = args.seconds or (1.0 if quick else 20.0)
    args.warmup = 0.3 if quick else 2.0
    if args.quiet_wait is None:
        args.quiet_wait = 1.0 if quick else 30.0
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = runs.run_header(args)
    with runs.work_folder("relay-bench-groups-", keep=args.keep) as work:
        out["results"] = run_configurations(args, work)
        out["verdicts"] = report(out, args)
        out["errors"] = errors_of(out)
    return out


def main(argv: list[str] | None = None) -> int:
    return runs.standalone_main(
        argv,
        prog="python -m benchmarks.groups",
        description="Member messages in a group, against owner posts in a channel.",
        add_arguments=add_arguments,
        resolve=resolve,
        run=run,
    )


if __name__ == "__main__":
    sys.exit(main())
