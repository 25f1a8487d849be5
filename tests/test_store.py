"""The SQLite layer on a real file: migrations, the per-state counts the triggers keep; and the
group-commit writer's guarantees on both engines (PostgreSQL: the tests' own server)."""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from relay.protocol.state import GroupState
from relay.store import groups
from relay.store.conn import Conn
from relay.store.db import Database, Writer
from relay.store.errors import StoreError
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


# --- the group-commit writer, on both engines (relay.store.db.Writer) ---------------------


class Engine:
    """A new database of one engine: ``open`` gives its group-commit writer, ``stored`` the
    channels committed (read through a connection of its own)."""

    def __init__(self, name: str, tmp_path: Path, pg_url: str | None) -> None:
        self.name, self.path, self.url = name, tmp_path / "relay.db", pg_url

    def open(self, **options: Any) -> Writer[Any]:
        if self.url is None:
            return Database(self.path, **options)
        from relay.store.postgres import PostgresDatabase

        return PostgresDatabase(self.url, **options)

    def stored(self) -> set[int]:
        if self.url is None:
            conn = connect(self.path)
            try:
                return {int.from_bytes(c, "big") for (c,) in conn.execute("SELECT channel FROM groups")}
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.url) as pg:
            return {int.from_bytes(c, "big") for (c,) in pg.execute("SELECT channel FROM groups")}


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return Engine(request.param, tmp_path, url)


def _insert_group(n: int, *, fail: bool = False) -> Callable[[Conn], int]:
    """A job that writes a group row, then (with ``fail``) raises after writing it."""

    def job(conn: Conn) -> int:
        record = groups.insert(conn, new_group(n), state=GroupState.ACTIVE, now=n)
        if fail:
            raise ValueError(f"job {n} failed after writing")
        return record.id

    return job


def _duplicate_of(n: int, first: int) -> Callable[[Conn], int]:
    """A job that writes a group row, then gives it job ``first``'s address: a database error
    (a unique violation)."""

    def job(conn: Conn) -> int:
        group_id = _insert_group(n)(conn)
        groups.issue_address(conn, first, f"address-{first}", now=n, deadline=n + 60)
        groups.issue_address(conn, group_id, f"address-{first}", now=n, deadline=n + 60)
        return group_id

    return job


async def behind_a_held_job(
    engine: Engine, jobs: list[Callable[[Conn], int]]
) -> tuple[list[int], dict[int, object]]:
    """Run ``jobs`` queued, in order, behind a job that holds the writer (job 0): the batch
    sizes committed, and each job's result or error by its number (1 on)."""
    batches: list[int] = []
    db = engine.open(on_commit=lambda seconds, jobs: batches.append(jobs))
    gate, running = threading.Event(), threading.Event()
    results: dict[int, object] = {}

    def held_job(conn: Conn) -> int:
        running.set()
        gate.wait(10)  # keeps the writer busy while the next jobs queue up behind it
        return _insert_group(0)(conn)

    async def call(n: int, fn: Callable[[Conn], int]) -> None:
        try:
            results[n] = await db.transact(fn)
        except (ValueError, StoreError) as exc:
            results[n] = exc

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as writer:
                await writer.start(db.serve)
                async with trio.open_nursery() as callers:
                    callers.start_soon(call, 0, held_job)
                    await trio.to_thread.run_sync(running.wait, 10)  # the writer holds it
                    for n, job in enumerate(jobs, start=1):
                        callers.start_soon(call, n, job)
                        await trio.testing.wait_all_tasks_blocked()
                    gate.set()
                writer.cancel_scope.cancel()
    finally:
        db.close()
    return batches, results


async def test_a_failing_job_rolls_back_alone_in_a_shared_commit(engine: Engine) -> None:
    # queued in this order, the failing ones in the middle
    jobs = [_duplicate_of(n + 10, first=1) if n == 5 else _insert_group(n, fail=n == 3) for n in range(1, 7)]
    batches, results = await behind_a_held_job(engine, jobs)
    assert batches == [1, 6]  # jobs 1-6 shared one commit
    assert isinstance(results[3], ValueError)
    # A unique violation: the store's own error (not the engine's), the engine's as its cause.
    assert type(results[5]) is StoreError
    assert "unique" in str(results[5].__cause__).lower()
    assert all(isinstance(results[n], int) for n in (0, 1, 2, 4, 6))
    assert engine.stored() == {0, 1, 2, 4, 6}  # jobs 3 and 5 rolled back (job 5's first row too)


async def test_jobs_failing_before_or_at_their_first_statement_roll_back_alone(engine: Engine) -> None:
    """PostgreSQL sends a job's savepoint with its first statement: a job that fails before
    sending any must not roll back to the previous job's savepoint, and one whose first
    statement fails must still roll back to its own."""

    def fails_at_once(conn: Conn) -> int:
        raise ValueError("refused before any statement")

    def sends_nothing(conn: Conn) -> int:
        return -1

    def duplicate_channel(conn: Conn) -> int:
        # Written out: the store's own insert skips a taken channel (see groups.insert).
        conn.execute(
            "INSERT INTO groups (channel, service_group, state, profile, profile_version, kind, name, "
            "invited_at, updated_at) VALUES (?, ?, 'active', ?, 1, 'channel', 'again', 0, 0)",
            (new_group(1).channel, bytes(16), b"profile"),
        )
        return -2

    jobs: list[Callable[[Conn], int]] = [
        _insert_group(1),
        fails_at_once,
        _insert_group(2),
        duplicate_channel,  # its first statement fails
        sends_nothing,
        _insert_group(3),
        fails_at_once,
    ]
    batches, results = await behind_a_held_job(engine, jobs)
    assert batches == [1, len(jobs)]
    assert isinstance(results[2], ValueError) and isinstance(results[7], ValueError)
    assert type(results[4]) is StoreError
    assert results[5] == -1
    assert engine.stored() == {0, 1, 2, 3}


async def test_a_caller_cancelled_while_its_job_is_queued_still_learns_the_outcome(engine: Engine) -> None:
    db = engine.open()
    outcome: list[int] = []
    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as writer:
                await writer.start(db.serve)
                with trio.CancelScope() as scope:
                    scope.cancel()  # already cancelled when the job is queued
                    outcome.append(await db.transact(_insert_group(7)))
                    await trio.lowlevel.checkpoint()  # the cancellation arrives here, not before
                writer.cancel_scope.cancel()
    finally:
        db.close()
    assert scope.cancelled_caught
    assert len(outcome) == 1
    assert engine.stored() == {7}


def test_stopping_the_writer_runs_every_job_already_queued(engine: Engine) -> None:
    db = engine.open()
    gate, running = threading.Event(), threading.Event()
    answered: list[int] = []

    def held_job(conn: Conn) -> int:
        running.set()
        gate.wait(10)
        return _insert_group(0)(conn)

    async def call(fn: Callable[[Conn], int]) -> None:
        await db.transact(fn)
        answered.append(1)

    async def scenario() -> None:
        async with trio.open_nursery() as outer, trio.open_nursery() as writer:
            await writer.start(db.serve)
            outer.start_soon(call, held_job)
            await trio.to_thread.run_sync(running.wait, 10)  # the writer holds it
            for n in range(1, 4):
                outer.start_soon(call, _insert_group(n))
            await trio.testing.wait_all_tasks_blocked()
            writer.cancel_scope.cancel()  # told to stop with four jobs pending
            gate.set()

    # In a thread of its own: a dropped job leaves its caller waiting for good (the wait is
    # not cancellable), and this test must then fail, not hang.
    runner = threading.Thread(target=trio.run, args=(scenario,), daemon=True)
    runner.start()
    runner.join(20)
    db.close()
    assert not runner.is_alive(), "a caller still waits: a queued job was dropped"
    assert len(answered) == 4
    assert engine.stored() == {0, 1, 2, 3}
