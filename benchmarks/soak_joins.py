"""``python -m benchmarks.soak_joins --cycles N --seconds S``: join requests across SIGKILLs, checked.

The real relay runs on fixed loopback ports (group addresses name the port, so they survive a
restart).  ``--members`` member tasks (default 32) each keep one greeted session and send join
requests from fresh member keys back to back, three in four to an active auto-admit group and
one in four to a group that is not yet active (those are held).  In each cycle the relay is
SIGKILLed at a random moment within ``S`` seconds and started again; members reconnect and
ask again for every request that was in flight at the kill (a real client's retry: the same
member key, a request signed anew for the new connection, since a signed request is good only
on the connection it names).  Every acknowledged answer is recorded (member key -> status).

At the end the held group is activated, the worker is waited for, the relay is stopped, and
every acknowledged request is checked against the database and, for a sample, ``join_status``
over the wire:

- none lost: every acknowledged request has its row in its group;
- decisions kept: acknowledged ``admitted`` is still ``admitted``; every acknowledged ``held``
  is decided (``admitted``: nothing refuses here), none is left held or dead-lettered;
- none admitted twice: per group, distinct admitted member keys == admitted rows ==
  ``group_queues.members``, and the counts in ``group_queues`` match the rows.

A table is printed; the exit status is 1 on any violation.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from trio_websocket import ConnectionClosed, HandshakeError

from benchmarks import runs
from benchmarks.daemon import read_metrics
from benchmarks.joins import free_ports, relay_daemon, sigkill, start_timed, table
from benchmarks.members import Group, NewMember, activate_group, member_link, new_group, sign_join
from relay.protocol.encoding import encode
from relay.protocol.membership import make_member_request
from relay.protocol.messages import JoinResult, JoinStatus

HELD_SHARE = 0.25  # sessions opened to the group that is not yet active
RECONNECT_SHARE = 0.02  # after an answer, the chance a member reconnects (and picks a group again)
STATUS_SAMPLE = 200  # acknowledged requests also asked about over the wire at the end
DOWN_ERRORS = (ConnectionClosed, HandshakeError, OSError, trio.TooSlowError, trio.BrokenResourceError)


@dataclass
class Soak:
    groups: dict[str, Group] = field(default_factory=dict)
    acked: dict[bytes, tuple[str, str]] = field(default_factory=dict)  # key -> (group, status)
    keys: dict[bytes, NewMember] = field(default_factory=dict)
    sent: int = 0
    down_errors: Counter[str] = field(default_factory=Counter)
    error_answers: list[str] = field(default_factory=list)
    cycles: list[dict[str, Any]] = field(default_factory=list)
    running: bool = True


async def member_task(soak: Soak, rng: random.Random, n: int) -> None:
    """Join after join on one session; now and then reconnect (maybe to the other group).

    A request whose connection died before the answer (the relay was killed) is asked again by
    the same member key on the next connection, signed for it.
    """
    pending: tuple[str, NewMember] | None = None
    count = 0
    while soak.running:
        name = pending[0] if pending else ("held" if rng.random() < HELD_SHARE else "active")
        group = soak.groups[name]
        try:
            async with member_link(group.address, timeout=5) as link:
                while soak.running:
                    if pending is None:
                        count += 1
                        member = NewMember(ed25519.Ed25519PrivateKey.generate(), f"s{n}-{count}")
                        soak.keys[member.public] = member
                        pending = (name, member)
                    item = sign_join(group, pending[1], link.challenge, int(time.time()))
                    soak.sent += 1
                    try:
                        result = await link.join(item.frame, timeout=10)
                    except RuntimeError as exc:  # an error frame: counted as a violation
                        soak.error_answers.append(str(exc))
                        pending = None
                        continue
                    soak.acked[item.member_key] = (name, result.status)
                    pending = None
                    if rng.random() < RECONNECT_SHARE:
                        break
        except (*DOWN_ERRORS, ExceptionGroup) as exc:  # the relay is down (killed) or restarting
            soak.down_errors[type(exc).__name__] += 1
            await trio.sleep(0.05)


async def soak_run(soak: Soak, relay: Any, args: argparse.Namespace, rng: random.Random) -> None:
    async with trio.open_nursery() as nursery:
        for n in range(args.members):
            nursery.start_soon(member_task, soak, rng, n)
        for cycle in range(args.cycles):
            run_for = rng.uniform(0.2, 1.0) * args.seconds
            acked0 = len(soak.acked)
            await trio.sleep(run_for)
            await trio.to_thread.run_sync(sigkill, relay)
            acked = len(soak.acked) - acked0
            await trio.sleep(rng.uniform(0.0, 0.5))
            _, readyz = await trio.to_thread.run_sync(start_timed, relay)
            soak.cycles.append(
                {"cycle": cycle + 1, "ran_s": round(run_for, 2), "acked": acked, "ready_s": round(readyz, 3)}
            )
            print(
                f"... cycle {cycle + 1}: {acked} answers in {run_for:.1f} s, ready in {readyz:.2f} s",
                file=sys.stderr,
            )
        await trio.sleep(min(2.0, args.seconds))
        soak.running = False


async def ask_status(group: Group, members: list[NewMember]) -> dict[bytes, str]:
    address = group.address
    assert address.address_id is not None
    out = {}
    async with member_link(address) as link:
        for member in members:
            request = make_member_request(
                member.key,
                relay_fingerprint=address.fingerprint,
                channel=group.owner.channel,
                address_id=address.address_id,
                session=link.challenge,
                now=int(time.time()),
            )
            answer = await link.ask(encode(JoinStatus(request=request)))
            out[member.public] = answer.status if isinstance(answer, JoinResult) else f"error: {answer}"
    return out


async def finish(soak: Soak, relay: Any, rng: random.Random) -> tuple[float, dict[bytes, str]]:
    """Activate the held group, wait for the worker to decide everything, sample join_status."""
    await activate_group(soak.groups["held"])
    t0 = time.perf_counter()
    deadline = t0 + 300
    while time.perf_counter() < deadline:
        values = await trio.to_thread.run_sync(read_metrics, relay)
        if values.get("relay_queue_held", 0) == 0 and values.get("relay_queue_dead", 0) == 0:
            break
        await trio.sleep(0.1)
    drained = time.perf_counter() - t0
    asked: dict[bytes, str] = {}
    for name, group in soak.groups.items():
        keys = [k for k, (g, _) in soak.acked.items() if g == name]
        sample = rng.sample(keys, min(len(keys), STATUS_SAMPLE // 2))
        asked.update(await ask_status(group, [soak.keys[k] for k in sample]))
    return drained, asked


def check(soak: Soak, db_path: Path, asked: dict[bytes, str]) -> list[tuple[str, str, str, bool]]:
    """(check, expected, found, ok) for every invariant."""
    conn = sqlite3.connect(db_path)
    ids = {
        name: conn.execute("SELECT id FROM groups WHERE address_id = ?", (g.address.address_id,)).fetchone()[
            0
        ]
        for name, g in soak.groups.items()
    }
    rows = {
        (gid, key): status
        for gid, key, status in conn.execute("SELECT group_id, member_key, status FROM join_requests")
    }
    results = []
    acked_by = Counter(f"{g} {s}" for g, s in soak.acked.values())
    lost = [k for k, (g, _) in soak.acked.items() if (ids[g], k) not in rows]
    results.append(
        (
            "acknowledged requests with a row (none lost)",
            str(len(soak.acked)),
            str(len(soak.acked) - len(lost)),
            not lost,
        )
    )
    changed = [
        k for k, (g, s) in soak.acked.items() if s == "admitted" and rows.get((ids[g], k)) != "admitted"
    ]
    admitted_acks = acked_by["active admitted"] + acked_by["held admitted"]
    results.append(
        ("acknowledged admitted still admitted", str(admitted_acks), f"{len(changed)} changed", not changed)
    )
    undecided = [
        k for k, (g, s) in soak.acked.items() if s == "held" and rows.get((ids[g], k)) not in ("admitted",)
    ]
    results.append(
        (
            "acknowledged held now admitted",
            str(acked_by["held held"] + acked_by["active held"]),
            f"{len(undecided)} not",
            not undecided,
        )
    )
    (left,) = conn.execute("SELECT count(*) FROM join_requests WHERE status IN ('held', 'dead')").fetchone()
    results.append(("rows left held or dead", "0", str(left), left == 0))
    others = Counter(s for g, s in soak.acked.values() if s not in ("held", "admitted"))
    results.append(("answers other than held/admitted", "0", str(dict(others) or 0), not others))
    results.append(("error answers", "0", str(len(soak.error_answers)), not soak.error_answers))
    for name, gid in ids.items():
        admitted, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT member_key) FROM join_requests "
            "WHERE group_id = ? AND status = 'admitted'",
            (gid,),
        ).fetchone()
        members, held, pending, dead, refused = conn.execute(
            "SELECT members, held, pending, dead, refused FROM group_queues WHERE group_id = ?", (gid,)
        ).fetchone()
        by_status = dict(
            conn.execute(
                "SELECT status, count(*) FROM join_requests WHERE group_id = ? GROUP BY status", (gid,)
            )
        )
        counts_ok = (held, pending, dead, refused) == tuple(
            by_status.get(s, 0) for s in ("held", "pending_approval", "dead", "refused")
        )
        results.append(
            (
                f"{name}: admitted rows = distinct keys = group_queues.members",
                f"{admitted}",
                f"{distinct} / {members}",
                admitted == distinct == members,
            )
        )
        results.append(
            (f"{name}: group_queues counts match the rows", "yes", "yes" if counts_ok else "no", counts_ok)
        )
    wrong = {k: s for k, s in asked.items() if s != "admitted"}
    results.append(
        ("join_status of a sample says admitted", str(len(asked)), f"{len(asked) - len(wrong)}", not wrong)
    )
    conn.close()
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak_joins", description=__doc__.split("\n")[0])
    p.add_argument("--cycles", type=int, default=5, help="SIGKILL/restart cycles (default 5)")
    p.add_argument("--seconds", type=float, default=5.0, help="at most this long between kills (default 5)")
    p.add_argument("--members", type=int, default=32, help="concurrent members, 16-64 (default 32)")
    p.add_argument("--seed", type=int, help="random seed (default: time)")
    p.add_argument("--json", metavar="FILE", help="also write the results to FILE as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (relay log, database)")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    soak = Soak()
    with runs.work_folder("relay-soak-joins-", keep=args.keep) as work:
        relay = relay_daemon(work, ports=free_ports(2))
        try:
            start_timed(relay)
            contact = relay.ready["address"]
            soak.groups["active"] = trio.run(
                partial(new_group, contact, work / "owners", "active", activate=True)
            )
            soak.groups["held"] = trio.run(
                partial(new_group, contact, work / "owners", "held", activate=False)
            )
            t0 = time.perf_counter()
            trio.run(soak_run, soak, relay, args, rng)
            elapsed = time.perf_counter() - t0
            drained, asked = trio.run(finish, soak, relay, rng)
            status = relay.stop()
            results = check(soak, work / "data" / "relay.db", asked)
            results.append(("relay stopped cleanly at the end", "0", str(status), status == 0))
        finally:
            relay.kill()
    answers = Counter(f"{g} {s}" for g, s in soak.acked.values())
    cycles = soak.cycles
    print(f"Join soak: {args.cycles} SIGKILL cycles, {args.members} members, seed {seed}, {elapsed:.1f} s")
    print()
    rows = [[str(c["cycle"]), f"{c['ran_s']:.2f}", str(c["acked"]), f"{c['ready_s']:.3f}"] for c in cycles]
    print(table(["cycle", "ran s", "answers", "restart to /readyz s"], rows))
    print()
    print(
        f"Requests sent {soak.sent} (re-sent after a kill: {soak.sent - len(soak.keys)}); "
        f"acknowledged {len(soak.acked)}: {dict(answers)}; held drained in {drained:.1f} s"
    )
    print()
    print(
        table(
            ["check", "expected", "found", "ok"],
            [[c, e, f, "ok" if ok else "VIOLATED"] for c, e, f, ok in results],
        )
    )
    violations = [r for r in results if not r[3]]
    print()
    print("no violation" if not violations else f"{len(violations)} VIOLATION(S)")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "seed": seed,
                    "cycles": soak.cycles,
                    "sent": soak.sent,
                    "acknowledged": dict(answers),
                    "checks": [{"check": c, "expected": e, "found": f, "ok": ok} for c, e, f, ok in results],
                    "violations": len(violations),
                },
                indent=2,
            )
            + "\n"
        )
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
