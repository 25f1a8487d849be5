"""Reads beside the writer: SQLite's read connections (relay.store.reads.Readers) on a real file,
and every store's ``read`` on both engines (PostgreSQL: the tests' own server): a read answers
from the last commit while the writer is busy, reads cannot write, and a PostgreSQL restart costs
reads ``unavailable`` until the pool has reconnected."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from pgserver import PgServer
from test_store import new_group

from relay.protocol.state import GroupState
from relay.store import groups
from relay.store.conn import Conn
from relay.store.db import Database, Writer
from relay.store.errors import StoreError, StoreUnavailable
from relay.store.reads import Readers


async def test_readers_cannot_write_and_survive_errors(tmp_path: Path) -> None:
    db = Database(tmp_path / "relay.db")  # creates and migrates the file
    readers = Readers(tmp_path / "relay.db", size=1)
    try:
        with pytest.raises(StoreError):
            await readers.read(lambda conn: groups.insert(conn, new_group(1), state=GroupState.ACTIVE, now=1))

        def fails(conn: Conn) -> int:
            raise ValueError("a read's own error")

        with pytest.raises(ValueError):
            await readers.read(fails)
        assert await readers.read(groups.count_live) == 0  # the pool still serves
        with pytest.raises(ValueError):
            Readers(tmp_path / "relay.db", size=0)
    finally:
        readers.close()
        db.close()
    with pytest.raises(RuntimeError):
        await readers.read(groups.count_live)


# --- every store's ``read`` (relay.store.db.Writer.read), on both engines ---------------------


def _open(engine: str, tmp_path: Path, request: pytest.FixtureRequest, **options: Any) -> Writer[Any]:
    if engine == "sqlite":
        return Database(tmp_path / "relay.db", **options)
    from relay.store.postgres import PostgresDatabase

    return PostgresDatabase(request.getfixturevalue("pg_url"), **options)


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_a_stores_read_is_answered_while_the_writer_is_held_busy(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = _open(engine, tmp_path, request)
    gate, running = threading.Event(), threading.Event()

    def slow_write(conn: Conn) -> int:
        groups.insert(conn, new_group(2), state=GroupState.ACTIVE, now=2)
        running.set()
        gate.wait(10)
        return 2

    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as writer:
                await writer.start(db.serve)
                await db.transact(
                    lambda conn: groups.insert(conn, new_group(1), state=GroupState.ACTIVE, now=1)
                )
                async with trio.open_nursery() as callers:
                    callers.start_soon(db.transact, slow_write)
                    await trio.to_thread.run_sync(running.wait, 10)
                    # The writer's batch is open and unfinished: a job queued now would wait
                    # for it, a read does not, and sees the last commit only.
                    with trio.fail_after(5):
                        assert await db.read(groups.count_live) == 1
                        counts = await db.read(groups.count_by_state)
                    assert counts.get("active") == 1
                    assert db.in_flight == 1
                    gate.set()
                assert await db.read(groups.count_live) == 2  # the next read sees the commit
                writer.cancel_scope.cancel()
    finally:
        gate.set()
        db.close()
    assert db.read_stats().total == 3


@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
async def test_a_stores_reads_cannot_write_and_are_counted_while_they_wait(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    db = _open(engine, tmp_path, request, read_connections=1)
    gate, running = threading.Event(), threading.Event()

    def held_read(conn: Conn) -> int:
        running.set()
        gate.wait(10)
        return groups.count_live(conn)

    try:
        with trio.fail_after(20):
            with pytest.raises(StoreError):
                await db.read(lambda conn: groups.insert(conn, new_group(1), state=GroupState.ACTIVE, now=1))

            def fails(conn: Conn) -> int:
                raise ValueError("a read's own error")

            with pytest.raises(ValueError):
                await db.read(fails)
            async with trio.open_nursery() as readers:
                readers.start_soon(db.read, held_read)
                await trio.to_thread.run_sync(running.wait, 10)
                readers.start_soon(db.read, groups.count_live)
                await trio.testing.wait_all_tasks_blocked()
                stats = db.read_stats()
                assert (stats.size, stats.in_flight, stats.waiting) == (1, 1, 1)
                gate.set()
            assert db.read_stats().in_flight == db.read_stats().waiting == 0
            async with trio.open_nursery() as writer:
                await writer.start(db.serve)
                assert await db.transact(groups.count_live) == 0  # nothing was written
                writer.cancel_scope.cancel()
    finally:
        gate.set()
        db.close()


async def test_a_postgresql_restart_costs_reads_unavailable_then_they_work(
    pg_server: PgServer, pg_url: str
) -> None:
    from relay.store.postgres import PostgresDatabase

    db = PostgresDatabase(pg_url, read_connections=2)
    try:
        with trio.fail_after(60):
            assert await db.read(groups.count_live) == 0
            await trio.to_thread.run_sync(pg_server.stop)
            with pytest.raises(StoreUnavailable):  # a connection the restart cut
                await db.read(groups.count_live)
            with pytest.raises(StoreUnavailable):  # no connection to be had while it is down
                await db.read(groups.count_live)
            await trio.to_thread.run_sync(pg_server.start)
            while True:  # the pool reconnects by itself, in the background
                try:
                    assert await db.read(groups.count_live) == 0
                    break
                except StoreUnavailable:
                    await trio.sleep(0.1)
            for _ in range(5):  # and every connection it now hands out works
                assert await db.read(groups.count_live) == 0
    finally:
        db.close()
        if not pg_server.running():
            pg_server.start()
