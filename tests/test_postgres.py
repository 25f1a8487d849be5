"""The PostgreSQL store against a real server (``pg_server`` in conftest.py, ``pgserver.py``):
its schema (SQLite's, created once, safe to open twice at once), the group-commit writer's
guarantees on it, the trigger-kept counts on both engines, and a server restart under writes."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog.testing
import trio
import trio.testing
from pgserver import PgServer
from test_store import new_group

from relay.protocol.admission import Decision, JoinState
from relay.protocol.state import GroupState
from relay.store import events, fleet, groups, joins, migrations, pgschema
from relay.store.conn import Conn, send_later
from relay.store.db import Job
from relay.store.errors import StoreError, StoreUnavailable
from relay.store.pgurl import redacted
from relay.store.postgres import PgConn, PostgresDatabase, connect, rewrite

INSERT = (
    "INSERT INTO groups (channel, service_group, state, profile, profile_version, kind, name, "
    "invited_at, updated_at) VALUES (?, ?, 'active', ?, 1, 'channel', ?, ?, ?) RETURNING id"
)


def _insert(n: int, *, fail: bool = False) -> Callable[[Conn], int]:
    """A job that writes a group row (portable SQL), then (with ``fail``) raises after writing it."""

    def job(conn: Conn) -> int:
        (group_id,) = conn.execute(INSERT, (n.to_bytes(32, "big"), bytes(16), b"p", f"g{n}", n, n)).fetchone()
        if fail:
            raise ValueError(f"job {n} failed after writing")
        return int(group_id)

    return job


def _stored(url: str) -> set[int]:
    with psycopg.connect(url) as conn:
        return {int.from_bytes(c, "big") for (c,) in conn.execute("SELECT channel FROM groups")}


# --- the schema -----------------------------------------------------------------------------


def _sqlite_schema(path: Path) -> tuple[dict[str, list[tuple[str, str]]], set[str]]:
    conn = sqlite3.connect(path, isolation_level=None)
    migrations.migrate(conn)
    tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    columns = {t: [(r[1], r[2]) for r in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
    indexes = {
        i
        for (i,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_autoindex%'"
        )
    }
    conn.close()
    return columns, indexes


def _pg_schema(url: str) -> tuple[dict[str, list[tuple[str, str]]], set[str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'public' AND table_name <> 'schema_version' "
            "ORDER BY table_name, ordinal_position"
        ).fetchall()
        # Primary keys and UNIQUE columns are constraints with indexes of their own on both engines.
        indexes = {
            i
            for (i,) in conn.execute(
                "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' AND indexname NOT IN "
                "(SELECT conname FROM pg_constraint)"
            )
        }
    columns: dict[str, list[tuple[str, str]]] = {}
    for table, column, kind in rows:
        columns.setdefault(table, []).append((column, kind))
    return columns, indexes


def test_the_schema_is_sqlites_latest_in_postgresql_types(pg_url: str, tmp_path: Path) -> None:
    assert pgschema.LATEST == migrations.LATEST  # a migration added to one engine only
    sqlite_columns, sqlite_indexes = _sqlite_schema(tmp_path / "relay.db")
    PostgresDatabase(pg_url).close()
    pg_columns, pg_indexes = _pg_schema(pg_url)
    types = {"INTEGER": "bigint", "BLOB": "bytea", "TEXT": "text"}
    assert pg_columns == {
        table: [(name, types[kind]) for name, kind in columns] for table, columns in sqlite_columns.items()
    }
    assert pg_indexes == sqlite_indexes


# Every migration applied, once each.
VERSIONS = [(version,) for version, _ in pgschema.MIGRATIONS]


def test_reopening_keeps_the_schema_and_the_rows(pg_url: str) -> None:
    db = PostgresDatabase(pg_url)
    db.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        PgConn(conn).execute(INSERT, (b"c", b"s", b"p", "g", 1, 1))
        assert pgschema.migrate(conn) == pgschema.LATEST  # found the latest: nothing applied
    PostgresDatabase(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == VERSIONS
        assert conn.execute("SELECT count(*) FROM groups").fetchone() == (1,)


def test_two_processes_opening_a_new_database_at_once_create_it_once(pg_url: str) -> None:
    opened: list[PostgresDatabase] = []
    failed: list[BaseException] = []
    start = threading.Barrier(4)

    def open_it() -> None:
        start.wait(10)
        try:
            opened.append(PostgresDatabase(pg_url))
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for db in opened:
        db.close()
    assert failed == []
    assert len(opened) == 4
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == VERSIONS


def test_a_schema_newer_than_this_relay_is_refused(pg_url: str) -> None:
    PostgresDatabase(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (pgschema.LATEST + 1,))
    with pytest.raises(RuntimeError, match="newer than this relay knows"):
        PostgresDatabase(pg_url)


def test_an_unreachable_server_is_unavailable_and_the_password_is_not_told(pg_server: PgServer) -> None:
    url = f"postgresql://relay:s3cret@127.0.0.1:{_closed_port()}/postgres"
    with pytest.raises(StoreUnavailable) as caught:
        PostgresDatabase(url)
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)
    assert "s3cret" not in str(caught.value)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_urls_are_logged_without_their_password() -> None:
    assert redacted("postgresql://relay:s3cret@db:5432/relay") == "postgresql://relay:***@db:5432/relay"
    assert redacted("postgresql://relay@db/relay?password=s3cret&sslmode=require") == (
        "postgresql://relay@db/relay?password=***&sslmode=require"
    )
    assert redacted("host=db user=relay password='s e c' dbname=relay") == (
        "host=db user=relay password=*** dbname=relay"
    )
    assert redacted("postgresql://relay@db/relay") == "postgresql://relay@db/relay"


def test_statements_are_rewritten_for_psycopg() -> None:
    assert rewrite(
        "SELECT id FROM groups INDEXED BY groups_closed_by_age WHERE name LIKE 'a%?' AND id > ? LIMIT ?"
    ) == ("SELECT id FROM groups WHERE name LIKE 'a%%?' AND id > %s LIMIT %s")


async def test_a_backup_is_refused_with_the_operators_tools_named(pg_url: str, tmp_path: Path) -> None:
    db = PostgresDatabase(pg_url)
    try:
        with pytest.raises(match="pg_dump") as caught:
            await db.backup(tmp_path / "copy.db")
        assert isinstance(caught.value, StoreError)
    finally:
        db.close()


# --- the group-commit writer on PostgreSQL (tests/test_store.py runs its other guarantees on
# both engines) ------------------------------------------------------------------------------


async def test_hooks_run_in_commit_order_after_the_commit_and_before_the_answer(pg_url: str) -> None:
    db = PostgresDatabase(pg_url)
    seen: list[tuple[str, int, bool]] = []
    reader = psycopg.connect(pg_url, autocommit=True)  # another session sees committed rows only

    def visible(n: int) -> bool:
        row = reader.execute("SELECT 1 FROM groups WHERE channel = %s", (n.to_bytes(32, "big"),)).fetchone()
        return row is not None

    async def call(n: int) -> None:
        await db.transact(_insert(n), on_commit=lambda _: seen.append(("hook", n, visible(n))))
        seen.append(("answer", n, visible(n)))

    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as writer:
                await writer.start(db.serve)
                async with trio.open_nursery() as callers:
                    for n in range(20):
                        callers.start_soon(call, n)
                        if n % 5 == 4:
                            await trio.testing.wait_all_tasks_blocked()
                writer.cancel_scope.cancel()
    finally:
        reader.close()
        db.close()
    hooks = [n for kind, n, _ in seen if kind == "hook"]
    ids = _ids_in_commit_order(pg_url)
    assert hooks == ids  # the hooks ran in the order the jobs ran
    assert all(committed for _, _, committed in seen)  # every hook and answer saw its row committed
    for n in range(20):  # each answer came after its own hook
        assert seen.index(("hook", n, True)) < seen.index(("answer", n, True))


def _ids_in_commit_order(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT channel FROM groups ORDER BY id").fetchall()
    return [int.from_bytes(c, "big") for (c,) in rows]


# --- the trigger-kept counts, on both engines ----------------------------------------------


def _sqlite_conn(tmp_path: Path) -> Iterator[Conn]:
    conn = sqlite3.connect(tmp_path / "relay.db", isolation_level=None)
    conn.execute("PRAGMA foreign_keys=ON")
    migrations.migrate(conn)
    yield conn
    conn.close()


def _pg_conn(url: str) -> Iterator[Conn]:
    PostgresDatabase(url).close()  # the schema
    raw = connect(url)  # the engine's own adaptation of Python values, as the writer's
    yield PgConn(raw)
    raw.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Conn]:
    """A connection in autocommit mode on a new database of either engine."""
    if request.param == "sqlite":
        yield from _sqlite_conn(tmp_path)
    else:
        yield from _pg_conn(request.getfixturevalue("pg_url"))


def _true_group_counts(conn: Conn) -> dict[str, int]:
    counted = dict.fromkeys((s.value for s in GroupState), 0)
    counted.update((s, int(n)) for s, n in conn.execute("SELECT state, count(*) FROM groups GROUP BY state"))
    return counted


def _true_queue(conn: Conn, group_id: int) -> joins.QueueCounts:
    by_status = dict.fromkeys((s.value for s in JoinState), 0)
    by_status.update(
        (s, int(n))
        for s, n in conn.execute(
            "SELECT status, count(*) FROM join_requests WHERE group_id = ? GROUP BY status", (group_id,)
        )
    )
    return joins.QueueCounts(
        held=by_status["held"],
        pending=by_status["pending_approval"],
        dead=by_status["dead"],
        members=by_status["admitted"],
        refused=by_status["refused"],
    )


def test_counts_follow_every_group_and_join_change(store_conn: Conn) -> None:
    conn = store_conn
    rng = random.Random(15)
    states, decisions = list(GroupState), [Decision(s) for s in JoinState]
    group_ids: list[int] = []
    join_ids: list[int] = []
    for n in range(400):
        action = rng.random()
        if action < 0.15 or not group_ids:
            record = groups.insert(conn, new_group(n), state=rng.choice(states), now=n)
            assert isinstance(record.id, int) and isinstance(record.channel, bytes)
            group_ids.append(record.id)
        elif action < 0.3:
            groups.set_state(conn, rng.choice(group_ids), rng.choice(states), n)
        elif action < 0.6:
            new = joins.NewJoin(rng.choice(group_ids), n.to_bytes(32, "big"), b"request", f"member {n}")
            join_ids.append(joins.insert(conn, new, rng.choice(decisions), n))
        elif action < 0.8 and join_ids:
            joins.set_decision(conn, rng.choice(join_ids), rng.choice(decisions), n)
        elif action < 0.85 and join_ids:
            joins.delete(conn, join_ids.pop(rng.randrange(len(join_ids))))
        elif action < 0.9:
            joins.prune_refused(conn, rng.choice(group_ids), keep=rng.randrange(0, 3))
        elif action < 0.95:
            groups.delete(conn, group_ids.pop(rng.randrange(len(group_ids))))
        else:
            groups.prune_closed(conn, keep=rng.randrange(0, 10))
        if action >= 0.85:  # rows may have gone with a group or a prune
            group_ids = [int(i) for (i,) in conn.execute("SELECT id FROM groups")]
            join_ids = [int(i) for (i,) in conn.execute("SELECT id FROM join_requests")]
        assert groups.count_by_state(conn) == _true_group_counts(conn), n
        for group_id in group_ids:
            assert joins.counts(conn, group_id) == _true_queue(conn, group_id), (n, group_id)
    assert sum(joins.counts(conn, g).members for g in group_ids) > 0  # the sequence admitted some
    assert groups.count_live(conn) == sum(
        n for state, n in _true_group_counts(conn).items() if state not in ("rejected", "removed")
    )


# --- a server restart under writes ---------------------------------------------------------


async def test_a_server_restart_under_writes_is_unavailable_then_served(
    pg_server: PgServer, pg_url: str
) -> None:
    db = PostgresDatabase(pg_url)
    acknowledged: set[int] = set()
    unavailable: list[StoreUnavailable] = []
    other: list[BaseException] = []
    counter = iter(range(1_000_000))
    restarted = trio.Event()
    after_restart: list[int] = []

    async def writer_of_posts() -> None:
        while len(after_restart) < 50:
            n = next(counter)
            try:
                await db.transact(_insert(n))
            except StoreUnavailable as exc:
                unavailable.append(exc)
                await trio.sleep(0.01)
                continue
            except BaseException as exc:
                other.append(exc)
                raise
            acknowledged.add(n)
            if restarted.is_set():
                after_restart.append(n)

    async def restart() -> None:
        while len(acknowledged) < 100:  # writes under way
            await trio.sleep(0.01)
        await trio.to_thread.run_sync(pg_server.stop)
        await trio.sleep(0.5)  # down for a while: every write now is answered unavailable
        assert unavailable, "no write was refused while the server was down"
        await trio.to_thread.run_sync(pg_server.start)
        restarted.set()

    try:
        with trio.fail_after(60), structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as writer:
                await writer.start(db.serve)
                async with trio.open_nursery() as load:
                    load.start_soon(restart)
                    for _ in range(8):
                        load.start_soon(writer_of_posts)
                writer.cancel_scope.cancel()
    finally:
        db.close()
        if not pg_server.running():
            pg_server.start()
    assert other == []
    assert unavailable and all("nothing was kept" in str(e) for e in unavailable)
    assert len(after_restart) >= 50  # full service after, on a connection opened by itself
    assert acknowledged <= _stored(pg_url)  # nothing acknowledged was lost
    assert db.stats.unavailable == len(unavailable)
    events = [line["event"] for line in logs]
    assert "store.unavailable" in events
    assert events.count("store.reconnected") >= 1


async def test_a_restart_while_the_writer_is_idle_costs_no_request_an_error(
    pg_server: PgServer, pg_url: str
) -> None:
    db = PostgresDatabase(pg_url)
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as writer:
                await writer.start(db.serve)
                assert await db.transact(_insert(1)) > 0
                await trio.to_thread.run_sync(pg_server.stop)
                await trio.to_thread.run_sync(pg_server.start)
                # The old connection died unused: the batch's BEGIN finds it gone and the
                # batch runs on a new one, nothing of it having been sent.
                assert await db.transact(_insert(2)) > 0
                writer.cancel_scope.cancel()
    finally:
        db.close()
        if not pg_server.running():
            pg_server.start()
    assert db.stats.unavailable == 0
    assert _stored(pg_url) == {1, 2}


def _post(conn: PgConn, group_id: int, seq: int, announcement: str | None = None) -> events.HeadRow:
    """What a post's transaction does to the store (relay.server.events): the chain lock, the
    stale check's row and the head, then the event; returns the head it read."""
    fleet.lock_chain(conn, group_id)
    current, head = events.state_and_head(conn, group_id)
    assert current == (GroupState.ACTIVE, 1)
    events.append(
        conn,
        group_id,
        head,
        seq=seq,
        event_id=bytes([seq]) * 32,
        event=b"event %d" % seq,
        created_at=seq,
        now=seq,
        announcement=announcement,
    )
    return head


def test_a_post_reads_the_head_only_once_it_holds_the_chain_lock(pg_url: str) -> None:
    """The chain lock goes to the server with the head read (one round trip), yet the head is
    read after the lock was granted: the second of two posts from two processes sees the
    first one's event, not the head from before it (one statement taking the lock and reading
    the head would: its snapshot is older than the wait)."""
    PostgresDatabase(pg_url).close()  # the schema
    first, second = PgConn(connect(pg_url)), PgConn(connect(pg_url))
    try:
        group = groups.insert(first, new_group(1), state=GroupState.ACTIVE, now=0)
        assert group is not None
        first.execute("BEGIN")
        assert _post(first, group.id, 1).head_seq == 0
        seen: list[events.HeadRow] = []

        def post_second() -> None:
            second.execute("BEGIN")
            seen.append(_post(second, group.id, 2))
            second.execute("COMMIT")

        thread = threading.Thread(target=post_second)
        thread.start()
        with psycopg.connect(pg_url) as watcher:  # the second post waits for the lock
            deadline = time.monotonic() + 10
            while not watcher.execute(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchall():
                assert time.monotonic() < deadline
                time.sleep(0.02)
        first.execute("COMMIT")
        thread.join(10)
        assert [h.head_seq for h in seen] == [1]
        assert events.read_after(first, group.id, 0, 10) == [(1, b"event 1"), (2, b"event 2")]
    finally:
        first.raw.close()
        second.raw.close()


def test_an_event_is_announced_once_with_its_row_and_never_when_undone(pg_url: str) -> None:
    """The row, the head and the announcement are one statement: a post undone (its job's
    savepoint rolled back) leaves no row and no announcement; a committed one exactly one."""
    PostgresDatabase(pg_url).close()
    conn = PgConn(connect(pg_url))
    listener = psycopg.connect(pg_url, autocommit=True)
    try:
        listener.execute(f"LISTEN {fleet.CHANNEL}")
        group = groups.insert(conn, new_group(1), state=GroupState.ACTIVE, now=0)
        assert group is not None
        conn.execute("BEGIN")
        conn.defer_savepoint()
        _post(conn, group.id, 1, announcement="p:e:1:1")
        conn.roll_back_job()
        conn.defer_savepoint()
        assert _post(conn, group.id, 1, announcement="p:e:1:1") == events.HeadRow()
        conn.execute("COMMIT")
        heard = [n.payload for n in listener.notifies(timeout=0.5)]
        assert heard == ["p:e:1:1"]
        assert events.head(conn, group.id).count == 1
        assert events.read_after(conn, group.id, 0, 10) == [(1, b"event 1")]
    finally:
        listener.close()
        conn.raw.close()


def test_posts_stored_together_announce_each_group_s_newest_event_once(pg_url: str) -> None:
    """A batch's events are announced one per group, the newest: a process that hears "group G
    has event N" reads what it misses up to N, and each announcement wakes every listener."""
    PostgresDatabase(pg_url).close()
    conn = PgConn(connect(pg_url))
    listener = psycopg.connect(pg_url, autocommit=True)
    try:
        listener.execute(f"LISTEN {fleet.CHANNEL}")
        made = [groups.insert(conn, new_group(n), state=GroupState.ACTIVE, now=0) for n in (1, 2)]
        ids = [group.id for group in made if group is not None]
        heads = {group_id: events.HeadRow() for group_id in ids}
        new: list[events.NewEvent] = []
        for group_id, count in zip(ids, (3, 2), strict=True):
            for seq in range(1, count + 1):
                row = events.NewEvent(
                    group_id, seq, bytes([seq]) * 32, b"event %d" % seq, seq, seq, f"p:e:{group_id}:{seq}"
                )
                heads[group_id] = events.next_head(heads[group_id], row)
                new.append(row)
        conn.execute("BEGIN")
        events.append_many(conn, new, heads)
        conn.execute("COMMIT")
        heard = sorted(n.payload for n in listener.notifies(timeout=0.5))
        assert heard == sorted([f"p:e:{ids[0]}:3", f"p:e:{ids[1]}:2"])
        assert [events.head(conn, group_id).count for group_id in ids] == [3, 2]
    finally:
        listener.close()
        conn.raw.close()


# --- batches: consecutive jobs of one kind sharing their statements (relay.store.db.Batch) ---


class _Groups:
    """A :class:`relay.store.db.Batch` of group rows: every job's row in one statement.  An
    item is (channel number, refused): a refused job gets its error and writes nothing (as
    its ``fn`` does alone); ``alone_at``: the channel whose job the batch leaves to run alone;
    ``sabotage``: a statement run first, to fail the batch (once); ``later``: one sent last
    with :func:`relay.store.conn.send_later` (with the COMMIT), to fail it there (once)."""

    def __init__(
        self, alone_at: int | None = None, sabotage: str | None = None, later: str | None = None
    ) -> None:
        self.alone_at = alone_at
        self.sabotage = sabotage
        self.later = later
        self.runs: list[list[int]] = []

    def run(self, conn: Conn, jobs: Sequence[Job[Any]]) -> int:
        items: list[tuple[int, bool]] = [job.item for job in jobs]
        self.runs.append([n for n, _ in items])
        if self.sabotage is not None:
            sql, self.sabotage = self.sabotage, None
            conn.execute(sql)
        taken = items[: items.index((self.alone_at, False))] if (self.alone_at, False) in items else items
        rows = [n for n, refused in taken if not refused]
        ids: dict[int, int] = {}
        if rows:
            for channel, group_id in conn.execute(
                "INSERT INTO groups (channel, service_group, state, profile, profile_version, kind, name, "
                "invited_at, updated_at) SELECT c, ?, 'active', ?, 1, 'channel', 'g', 0, 0 "
                "FROM unnest(CAST(? AS bytea[])) AS c RETURNING channel, id",
                (bytes(16), b"p", [n.to_bytes(32, "big") for n in rows]),
            ):
                ids[int.from_bytes(channel, "big")] = int(group_id)
        for job, (n, refused) in zip(jobs, taken, strict=False):
            if refused:
                job.error = ValueError(f"job {n} refused")
            else:
                job.result = ids[n]
        if self.later is not None:
            sql, self.later = self.later, None
            send_later(conn, sql)
        return len(taken)


def _batched(n: int, *, refused: bool = False) -> Callable[[Conn], int]:
    """The job's ``fn`` (what it does alone): its group row, or refused before writing."""
    if not refused:
        return _insert(n)

    def job(conn: Conn) -> int:
        raise ValueError(f"job {n} refused")

    return job


async def _run_batch(db: PostgresDatabase, batch: _Groups, items: list[tuple[int, bool]]) -> list[object]:
    """Queue every job before the writer starts, so they run in one writer batch; their
    results (or errors) in order."""
    jobs = [await db.submit(_batched(n, refused=r), batch=batch, item=(n, r)) for n, r in items]
    outcomes: list[object] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as writer:
            await writer.start(db.serve)
            for job in jobs:
                try:
                    outcomes.append(await db.result(job))
                except Exception as exc:
                    outcomes.append(exc)
            writer.cancel_scope.cancel()
    return outcomes


async def test_a_batch_runs_its_jobs_together_and_a_refused_one_writes_nothing(pg_url: str) -> None:
    db = PostgresDatabase(pg_url)
    batch = _Groups()
    try:
        with structlog.testing.capture_logs() as logs:
            outcomes = await _run_batch(db, batch, [(n, n == 3) for n in range(1, 7)])
    finally:
        db.close()
    assert batch.runs == [[1, 2, 3, 4, 5, 6]]  # one run for all six
    assert [type(o) for o in outcomes] == [int, int, ValueError, int, int, int]
    assert _stored(pg_url) == {1, 2, 4, 5, 6}
    assert _ids_in_commit_order(pg_url) == [1, 2, 4, 5, 6]
    assert not [line for line in logs if line["event"] == "store.batch_failed"]
    assert db.stats.commits == 1


async def test_a_job_the_batch_leaves_runs_alone_in_its_place(pg_url: str) -> None:
    db = PostgresDatabase(pg_url)
    batch = _Groups(alone_at=3)
    try:
        outcomes = await _run_batch(db, batch, [(n, False) for n in range(1, 6)])
    finally:
        db.close()
    assert batch.runs == [[1, 2, 3, 4, 5], [4, 5]]  # 1 and 2 together, 3 alone, then 4 and 5
    assert all(isinstance(o, int) for o in outcomes)
    assert _ids_in_commit_order(pg_url) == [1, 2, 3, 4, 5]


async def test_a_failed_batch_statement_fails_only_the_job_at_fault(pg_url: str) -> None:
    db = PostgresDatabase(pg_url)
    try:
        assert await _run_batch(db, _Groups(), [(2, False)]) == [await _first_id(pg_url)]
        # Channel 2 is taken: the batch's one statement fails, and every job runs again alone.
        with structlog.testing.capture_logs() as logs:
            outcomes = await _run_batch(db, _Groups(), [(1, False), (2, False), (3, True), (4, False)])
    finally:
        db.close()
    assert [type(o) for o in outcomes] == [int, StoreError, ValueError, int]
    assert "duplicate key" in str(outcomes[1])
    assert _ids_in_commit_order(pg_url) == [2, 1, 4]
    failed = [line for line in logs if line["event"] == "store.batch_failed"]
    assert len(failed) == 1 and failed[0]["jobs"] == 4


async def test_a_statement_failing_with_the_commit_fails_no_job(pg_url: str) -> None:
    # A batch's last write goes with the COMMIT (send_later): if it fails there, nothing of
    # the transaction stays, and each job runs again in a transaction of its own.
    batch = _Groups(later="DO $$BEGIN RAISE EXCEPTION 'forced at commit'; END$$")
    with structlog.testing.capture_logs() as logs:
        db = await _each_job_again_alone(pg_url, batch)
    assert db.stats.unavailable == 0
    assert [line["jobs"] for line in logs if line["event"] == "store.batch_failed"] == [4]
    assert not [line for line in logs if line["event"] == "store.commit_failed"]


async def _each_job_again_alone(pg_url: str, batch: _Groups) -> PostgresDatabase:
    """Jobs 1 to 4 in ``batch`` (job 2's own work raising ValueError) on a database of their
    own, closed after; ``batch`` makes the batch's transaction fail, so nothing of it stays
    and each job runs again in a transaction of its own: 1, 3 and 4 stored, 2 failed."""
    db = PostgresDatabase(pg_url)
    try:
        outcomes = await _run_batch(db, batch, [(n, n == 2) for n in range(1, 5)])
    finally:
        db.close()
    assert [type(o) for o in outcomes] == [int, ValueError, int, int]
    assert batch.runs == [[1, 2, 3, 4]]  # then each alone, through its fn
    assert _ids_in_commit_order(pg_url) == [1, 3, 4]
    return db


async def _first_id(url: str) -> int:
    with psycopg.connect(url) as conn:
        (group_id,) = conn.execute("SELECT min(id) FROM groups").fetchone()
    return int(group_id)


async def test_a_conflict_in_a_batch_runs_its_jobs_one_per_transaction(pg_url: str) -> None:
    # A deadlock with another process (forced here with its error code): nothing of the batch
    # stays, and each job runs again in a transaction of its own.
    batch = _Groups(sabotage="DO $$BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40P01'; END$$")
    db = await _each_job_again_alone(pg_url, batch)
    assert db.stats.commits == 1 and db.stats.unavailable == 0


async def test_a_connection_lost_in_a_batch_answers_every_job_unavailable(pg_url: str) -> None:
    db = PostgresDatabase(pg_url)
    batch = _Groups(sabotage="SELECT pg_terminate_backend(pg_backend_pid())")
    try:
        outcomes = await _run_batch(db, batch, [(n, False) for n in range(1, 5)])
        assert all(isinstance(o, StoreUnavailable) for o in outcomes)
        assert _stored(pg_url) == set()  # nothing of the batch was written
        with trio.fail_after(10):  # the next batch runs on a new connection (after the back-off)
            while True:
                retried = await _run_batch(db, batch, [(n, False) for n in range(5, 7)])
                if not isinstance(retried[0], StoreUnavailable):
                    break
                await trio.sleep(0.1)
    finally:
        db.close()
    assert all(isinstance(o, int) for o in retried)
    assert _stored(pg_url) == {5, 6}
