"""The SQLite layer on a real file: migrations and the per-state counts the triggers keep."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

from relay.protocol.state import GroupState
from relay.store import groups
from relay.store.migrations import LATEST, MIGRATIONS, migrate


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def new_group(n: int) -> groups.NewGroup:
    return groups.NewGroup(
        channel=n.to_bytes(32, "big"),
        service_group=bytes(16),
        profile=b"profile",
        profile_version=1,
        kind="channel",
        name=f"group {n}",
    )


def true_counts(conn: sqlite3.Connection) -> dict[str, int]:
    counted = dict.fromkeys((s.value for s in GroupState), 0)
    counted.update(conn.execute("SELECT state, count(*) FROM groups GROUP BY state").fetchall())
    return counted


def test_counts_follow_every_change(tmp_path: Path) -> None:
    conn = connect(tmp_path / "relay.db")
    migrate(conn)
    rng = random.Random(7)
    states = list(GroupState)
    ids: list[int] = []
    for n in range(400):
        action = rng.random()
        if action < 0.5 or not ids:
            ids.append(groups.insert(conn, new_group(n), state=rng.choice(states), now=n).id)
        elif action < 0.9:
            groups.set_state(conn, rng.choice(ids), rng.choice(states), n)
        else:
            groups.prune_closed(conn, keep=rng.randrange(0, 20))
            ids = [i for (i,) in conn.execute("SELECT id FROM groups")]
        assert groups.count_by_state(conn) == true_counts(conn), n
    counts = true_counts(conn)
    assert groups.count_live(conn) == sum(
        n for state, n in counts.items() if state not in ("rejected", "removed")
    )
    assert groups.count_live(conn) > 0


def test_prune_forgets_the_oldest_closed_groups(tmp_path: Path) -> None:
    conn = connect(tmp_path / "relay.db")
    migrate(conn)
    for n in range(10):
        state = GroupState.REJECTED if n % 2 else GroupState.ACTIVE
        record = groups.insert(conn, new_group(n), state=state, now=100 - n)  # later ids are older
        groups.append_log(conn, record.id, 100 - n, "refused", "test", keep=10)
    assert groups.prune_closed(conn, keep=2) == 3
    closed = [i for (i,) in conn.execute("SELECT id FROM groups WHERE state = 'rejected' ORDER BY id")]
    assert closed == [2, 4]  # the newest two refusals stay
    assert conn.execute("SELECT count(*) FROM groups WHERE state = 'active'").fetchone() == (5,)
    orphans = conn.execute("SELECT count(*) FROM service_log WHERE group_id NOT IN (SELECT id FROM groups)")
    assert orphans.fetchone() == (0,)
    assert groups.prune_closed(conn, keep=2) == 0


def test_counts_are_filled_when_an_older_database_is_migrated(tmp_path: Path) -> None:
    conn = connect(tmp_path / "relay.db")
    version, script = MIGRATIONS[0]
    conn.executescript(script + f"; PRAGMA user_version={version};")
    for n, state in enumerate(["active", "active", "rejected", "invited"]):
        conn.execute(
            "INSERT INTO groups (channel, service_group, state, profile, profile_version, kind, name, "
            "invited_at, updated_at) VALUES (?, ?, ?, x'00', 1, 'channel', 'n', 0, 0)",
            (n.to_bytes(32, "big"), bytes(16), state),
        )
    assert migrate(conn) == 1
    assert conn.execute("PRAGMA user_version").fetchone() == (LATEST,)
    assert groups.count_by_state(conn) == true_counts(conn)
    assert groups.count_live(conn) == 3
    assert migrate(conn) == LATEST  # nothing left to apply
