"""SQLite read connections beside the writer (relay.store.reads.Readers), on a real file: a read
answers from the last commit while the writer is busy, and the readers cannot write."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio

from relay.protocol.state import GroupState
from relay.store import groups
from relay.store.conn import Conn
from relay.store.db import Database
from relay.store.errors import StoreError
from relay.store.reads import Readers


def _group(n: int) -> groups.NewGroup:
    return groups.NewGroup(
        channel=n.to_bytes(32, "big"),
        service_group=bytes(16),
        profile=b"profile",
        profile_version=1,
        kind="channel",
        name=f"group {n}",
    )


async def test_a_read_does_not_wait_for_the_writer(tmp_path: Path) -> None:
    db = Database(tmp_path / "relay.db")
    readers = Readers(tmp_path / "relay.db", size=2)
    gate, running = threading.Event(), threading.Event()

    def slow_write(conn: Conn) -> int:
        groups.insert(conn, _group(2), state=GroupState.ACTIVE, now=2)
        running.set()
        gate.wait(10)  # the writer's transaction stays open, its batch unfinished
        return 2

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as writer:
                await writer.start(db.serve)
                await db.transact(lambda conn: groups.insert(conn, _group(1), state=GroupState.ACTIVE, now=1))
                async with trio.open_nursery() as callers:
                    callers.start_soon(db.transact, slow_write)
                    await trio.to_thread.run_sync(running.wait, 10)
                    # Answered from the last commit while the writer holds its batch open.
                    with trio.fail_after(2):
                        assert await readers.read(groups.count_live) == 1
                        found = await readers.read(lambda conn: groups.by_channel(conn, _group(1).channel))
                    assert found is not None and found.name == "group 1"
                    gate.set()
                assert await readers.read(groups.count_live) == 2  # the next read sees the commit
                writer.cancel_scope.cancel()
    finally:
        gate.set()
        readers.close()
        db.close()


async def test_readers_cannot_write_and_survive_errors(tmp_path: Path) -> None:
    db = Database(tmp_path / "relay.db")  # creates and migrates the file
    readers = Readers(tmp_path / "relay.db", size=1)
    try:
        with pytest.raises(StoreError):
            await readers.read(lambda conn: groups.insert(conn, _group(1), state=GroupState.ACTIVE, now=1))

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
