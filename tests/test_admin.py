"""Operator actions against the real daemon: suspend, resume, remove, stats and online backups."""

from __future__ import annotations

import sqlite3
import stat
import time
from pathlib import Path

import httpx
import trio
from relayproc import RelayFactory, RunningRelay
from test_cli import run, run_json
from wire import ONE_SOURCE_UNBOUNDED

from relay import __version__
from relay.client import add_relay, create_channel, publish, read_log
from relay.client.owner import OwnerState
from relay.protocol.encoding import b64e


def new_owner(tmp_path: Path, name: str) -> tuple[OwnerState, Path]:
    state = create_channel(name)
    path = tmp_path / f"owner-{b64e(state.channel)[:8]}.json"
    state.save(path)
    return state, path


def post(relay: RunningRelay, path: str, body: object = None) -> httpx.Response:
    return relay.admin_post(path, body)


async def test_suspend_resume_remove(relay: RunningRelay, tmp_path: Path) -> None:
    active, active_path = new_owner(tmp_path, "Active")
    await add_relay(active, active_path, relay.address)
    await publish(active, active_path)
    pending, pending_path = new_owner(tmp_path, "Accepted only")
    await add_relay(pending, pending_path, relay.address)
    data = ("--data", str(relay.data))

    code, out = run_json("admin", "suspend", "1", "--reason", "abuse report", *data)
    assert code == 0 and out["group"]["state"] == "suspended"  # type: ignore[index]
    assert out["group"]["reason_code"] == "suspended_by_operator"  # type: ignore[index]
    # impossible changes are refused with the wire code, and change nothing
    for action, gid, status, error in (
        ("suspend", 1, 409, "out_of_order"),  # already suspended
        ("suspend", 2, 409, "out_of_order"),  # accepted, not active
        ("resume", 2, 409, "out_of_order"),
        ("remove", 99, 404, "unknown_group"),
    ):
        answer = post(relay, f"/admin/groups/{gid}/{action}")
        assert (answer.status_code, answer.json()["error"]) == (status, error), (action, gid)
    code, out = run_json("admin", "resume", "1", *data)
    assert code == 0 and out["group"]["state"] == "active" and out["group"]["reason_code"] is None  # type: ignore[index]
    code, out = run_json("admin", "resume", "1", *data)
    assert code == 1 and out["code"] == "out_of_order"

    code, out = run_json("admin", "remove", "1", "--reason", "terms of service", *data)
    assert code == 0 and out["group"]["state"] == "removed"  # type: ignore[index]
    removed = out["group"]
    assert isinstance(removed, dict)
    assert (removed["reason_code"], removed["reason"]) == ("removed_by_operator", "terms of service")
    answer = post(relay, "/admin/groups/1/resume")
    assert (answer.status_code, answer.json()["error"]) == (409, "group_closed")
    code, out = run_json("admin", "remove", "2", *data)  # an accepted group may be removed too
    assert code == 0 and out["group"]["state"] == "removed"  # type: ignore[index]

    # the owners see every step in their service log, and the removal is remembered
    (log,) = await read_log(active)
    events = [(e["event"], e["detail"]) for e in log["entries"]]  # type: ignore[union-attr]
    assert events[-3:] == [
        ("suspended", "suspended by the operator: abuse report"),
        ("active", "resumed by the operator"),
        ("removed", "removed by the operator: terms of service"),
    ]
    again = await add_relay(active, active_path, relay.address)
    assert (again.status, again.code) == ("refused", "removed_by_operator")
    for event in ("group.suspended", "group.resumed", "group.removed"):
        assert relay.wait_for_event(event)["group"] in (1, 2)
    metrics = httpx.get(f"{relay.admin_url}/metrics").text
    assert 'relay_operator_actions_total{action="remove"} 2' in metrics


def test_stats(relay: RunningRelay) -> None:
    code, out = run_json(
        "admin", "stats", "--admin", relay.admin_listen, env={"RELAY_ADMIN_TOKEN": relay.admin_token}
    )
    assert code == 0 and out["version"] == __version__
    states = ("invited", "accepted", "active", "rejected", "suspended", "removed")
    assert out["groups"] == dict.fromkeys(states, 0)
    assert out["connections"] == {"open": 0, "total": 0}
    assert 0 <= float(out["uptime_seconds"]) < 60 and abs(int(out["started"]) - time.time()) < 60  # type: ignore[arg-type]
    assert set(out["db"]) == {"commits", "jobs", "largest_batch", "commit_seconds", "queue_full"}  # type: ignore[arg-type]
    assert out["members"] == {"admitted": 0, "held": 0, "pending_approval": 0}
    traffic = ("stored", "bytes", "pruned", "equivocations", "inbox", "subscribers")
    assert out["events"] == dict.fromkeys(traffic, 0)
    assert out["timeline"] == {"places": 0, "bytes": 0, "pruned": 0}
    code, text, _ = run("admin", "stats", "--data", str(relay.data))  # the human form too
    assert code == 0 and "uptime_seconds: " in text and '"active": 0' in text


FILLER_GROUP = 10**9  # stored posts of a group that is not in the groups table: bulk only
FILLER_BYTES = 96 * 1024 * 1024


def grow(database: Path, size: int) -> None:
    """Make a relay's database about ``size`` bytes larger with stored posts, as a relay that
    has served for a while (the relay is stopped meanwhile)."""
    now = int(time.time())
    with sqlite3.connect(database) as db:
        db.execute(
            "WITH RECURSIVE n(seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM n WHERE seq < ?) "
            "INSERT INTO events (group_id, seq, id, event, created_at, stored_at, size) "
            "SELECT ?, seq, randomblob(32), randomblob(4096), ?, ?, 4096 FROM n",
            (size // 4096, FILLER_GROUP, now, now),
        )
    db.close()


async def test_backup_while_owners_keep_inviting(relay_factory: RelayFactory, tmp_path: Path) -> None:
    # Four owners on 127.0.0.1 invite non-stop: hundreds of never-activated channels from one
    # source, past the default budgets per source.
    relay = relay_factory(
        server=ONE_SOURCE_UNBOUNDED,
        policy={"invitations_per_ip_per_minute": 1e6, "max_pending_groups_per_ip": 10**6},
    )
    # A database of 96 MiB: its backup takes long enough to see what happens meanwhile.
    relay.stop()
    grow(relay.data / "relay.db", FILLER_BYTES)
    relay.start()
    invited = 0
    stop = trio.Event()

    async def keep_inviting(n: int) -> None:
        nonlocal invited
        while not stop.is_set():
            state, path = new_owner(tmp_path, f"channel {n} {invited}")
            assert (await add_relay(state, path, relay.address)).status == "accepted"
            invited += 1

    backups = relay.data / "backups"  # storage.backup_dir's default, made at the first backup
    assert not backups.exists()
    async with trio.open_nursery() as nursery:
        for n in range(4):
            nursery.start_soon(keep_inviting, n)
        while invited < 20:
            await trio.sleep(0.01)
        # a bare file name goes into the relay's backup folder, wherever the command runs
        code, out, err = await trio.to_thread.run_sync(
            lambda: run("admin", "backup", "relay.db", "--data", str(relay.data), "--json", cwd=tmp_path)
        )
        stop.set()
    assert code == 0, (out, err)
    target = backups / "relay.db"
    assert str(target.resolve()) in out

    # Owners were served during the backup, as the relay's own log orders things (not the
    # command's start-up time): more invitations answered between its start and its end than
    # the four owners can have had in flight when it started, so at least one owner sent an
    # invitation after the backup began and had it committed and answered before it ended.
    written = relay.wait_for_event("backup.written")
    events = [line["event"] for line in relay.lines]
    began, ended = events.index("backup.started"), events.index("backup.written")
    answered = events[began:ended].count("invitation.accepted")
    assert answered > 4, (answered, written)
    assert written["bytes"] == target.stat().st_size > FILLER_BYTES

    assert stat.S_IMODE(backups.stat().st_mode) == 0o700
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with sqlite3.connect(target) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (count,) = db.execute("SELECT count(*) FROM groups").fetchone()
    db.close()
    # a snapshot: every group answered before the backup began, and none that did not exist
    assert events[:began].count("invitation.accepted") <= count <= invited
    assert not (backups / "relay.db-wal").exists()  # a self-contained file

    # a relative path with a folder is made absolute by the command: inside the folder, fine
    code, out, err = run("admin", "backup", "./second.db", "--data", str(relay.data), "--json", cwd=backups)
    assert code == 0 and (backups / "second.db").exists(), (out, err)

    folder = str(backups.resolve())
    for body, error, reason in (
        ({"path": "sub/relative.db"}, "bad_backup_path", "outside the backup folder"),
        ({"path": str(target)}, "bad_backup_path", "already exists"),
        ({"path": str(backups / "nowhere" / "x.db")}, "bad_backup_path", "does not exist"),
        ({}, "bad_backup_path", "path"),
        ([1], "bad_request", "JSON object"),
    ):
        answer = post(relay, "/admin/backup", body)
        assert answer.status_code == 400, (body, answer.text)
        assert (answer.json()["error"], answer.json().get("folder", folder)) == (error, folder), answer.text
        assert reason in answer.json()["reason"], (body, answer.text)
    code, out = run_json("admin", "backup", str(target), "--data", str(relay.data))
    assert code == 1 and "already exists" in str(out["reason"]) and out["code"] == "bad_backup_path"
