"""Faults outside any client's control: a full disk (issue 13, "Faults").

The relay's data folder is put on a small tmpfs this test mounts, then the disk is
filled to the last byte.  Writes must get a typed ``unavailable`` answer while reads and
fan-out go on, nothing acknowledged may be lost, and the relay must recover by itself
when space comes back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from relayproc import RunningRelay
from traffic import (
    Member,
    Poster,
    active_channel,
    group_session,
    join_member,
    join_request,
    read_events,
    subscribe,
)

from relay.protocol.messages import HeadAnswer, HeadRequest, Post, ProfileAnswer, ProfileRequest


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs mounted for this test (skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to its last byte; returns the ballast file (delete it to free the space)."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (256 * 1024, 4096, 512, 1):  # down to the last byte
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (disk / "probe").write_bytes(b"x" * 4096)
    assert full.value.errno == errno.ENOSPC
    return ballast


async def test_a_full_disk_refuses_writes_serves_reads_and_recovers(small_disk: Path, tmp_path: Path) -> None:
    relay = RunningRelay(data=small_disk / "relay").start()
    try:
        owner, _, address_id = await active_channel(relay, tmp_path)
        ada = await join_member(relay, owner, address_id, "Ada")
        bob = await join_member(relay, owner, address_id, "Bob")
        poster = Poster(owner)
        async with (
            group_session(relay, address_id) as owner_session,
            group_session(relay, address_id) as ada_feed,
        ):
            await subscribe(ada_feed, relay, owner, address_id, ada)
            for n in range(3):
                await poster.post(owner_session, f"before {n}".encode())
            assert await read_events(ada_feed, 3) == poster.events

            ballast = fill(small_disk)
            # Writes: a typed answer on the same connection, nothing stored.
            refused = poster.next(b"while full")
            error = await owner_session.expect_error(Post(event=refused), "unavailable")
            assert "ask again later" in error.reason
            async with group_session(relay, address_id, local_address="127.0.0.2") as late:
                join = join_request(relay, owner, address_id, Member(), session=late.challenge, name="Cy")
                await late.expect_error(join, "unavailable")
            # Reads go on: a member subscribes from the start, heads and profiles are served.
            async with group_session(relay, address_id, local_address="127.0.0.2") as bob_feed:
                await subscribe(bob_feed, relay, owner, address_id, bob, since=0)
                assert await read_events(bob_feed, 3) == poster.events
                head = await bob_feed.request(HeadRequest())
                assert isinstance(head, HeadAnswer) and head.event == poster.events[-1]
                assert isinstance(await bob_feed.request(ProfileRequest()), ProfileAnswer)
            assert httpx.get(f"http://{relay.listen}/").status_code == 200
            assert relay.admin_get("/admin/stats").status_code == 200
            relay.wait_for_event("store.unavailable")

            # Space comes back: the same connections work again, and the member is fed.
            os.unlink(ballast)
            await poster.post(owner_session, b"after")
            assert await read_events(ada_feed, 1) == poster.events[-1:]
            cy = await join_member(relay, owner, address_id, "Cy")
            assert cy is not None
        assert relay.stop() == 0
        # Nothing acknowledged was lost: every stored event is there after a restart.
        relay.start()
        async with group_session(relay, address_id) as again:
            await subscribe(again, relay, owner, address_id, ada, since=0)
            assert await read_events(again, 4) == poster.events
    finally:
        relay.kill()
    assert not [line for line in relay.raw_lines if "Traceback" in line]
    assert not [e for e in relay.lines if e.get("level") == "error"]


async def test_reads_in_a_batch_with_failing_writes_still_commit(small_disk: Path) -> None:
    """Group commit puts reads and writes in one transaction; on a full disk the commit fails,
    and the reads are run again alone so that they are still answered."""
    import sqlite3

    import trio

    from relay.store.db import Database
    from relay.store.errors import StoreUnavailable

    db = Database(small_disk / "relay.db")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(db.serve)
            await db.transact(lambda conn: conn.execute("CREATE TABLE t (x BLOB)"))
            await db.transact(lambda conn: conn.execute("INSERT INTO t VALUES (?)", (b"kept",)))
            ballast = fill(small_disk)

            def write(conn: sqlite3.Connection) -> None:
                conn.execute("INSERT INTO t VALUES (?)", (os.urandom(1 << 20),))

            def read(conn: sqlite3.Connection) -> list[bytes]:
                return [bytes(row[0]) for row in conn.execute("SELECT x FROM t")]

            jobs = [await db.submit(write), await db.submit(read), await db.submit(write)]
            with pytest.raises(StoreUnavailable):
                await db.result(jobs[0])
            assert await db.result(jobs[1]) == [b"kept"]
            with pytest.raises(StoreUnavailable):
                await db.result(jobs[2])
            assert db.stats.unavailable == 2
            os.unlink(ballast)
            await db.transact(write)  # space is back: writes work again
            assert len(await db.transact(read)) == 2
            nursery.cancel_scope.cancel()
    finally:
        db.close()
