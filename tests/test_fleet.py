"""Several ``relay serve`` processes on one PostgreSQL database act as one relay (issue 15).

Real daemons (tests/relayproc.py) sharing one database on a real PostgreSQL server (the
``pg_server`` fixture) and one identity (``identity.key`` and ``admin.token`` copied into each
process's data folder), each on a port of its own.  Members and owners talk to different
processes; the checks are what members see (every post once, in order), what the database
holds (one decision per request, one group per channel) and how fast a change made on one
process takes effect on the others.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trio
from pgserver import PgServer
from relayproc import RunningRelay
from test_flow import new_owner
from traffic import (
    Member,
    Poster,
    active_channel,
    group_session,
    join_request,
    metric,
    subscribe,
    subscribe_frame,
)
from trio_websocket import ConnectionClosed, HandshakeError
from wire import check_error

from relay.client import add_relay, publish
from relay.client.owner import OwnerState, RelayEntry
from relay.protocol.addresses import parse_address
from relay.protocol.encoding import b64e
from relay.protocol.events import stored_event
from relay.protocol.messages import Error, EventFrame, JoinResult, Post, PostResult, Signed, Subscribed


def start_fleet(tmp_path: Path, url: str, n: int) -> list[RunningRelay]:
    """``n`` processes on the database ``url`` with one identity: the first makes it, the
    others get copies of ``identity.key`` and ``admin.token``."""
    relays = [RunningRelay(data=tmp_path / f"p{i}", env={"RELAY_STORAGE_URL": url}) for i in range(n)]
    relays[0].start()
    for relay in relays[1:]:
        relay.data.mkdir(mode=0o700)
        for name in ("identity.key", "admin.token"):
            shutil.copy2(relays[0].data / name, relay.data / name)
        relay.start()
    processes = {r.wait_for_event("relay.ready")["process"] for r in relays}
    assert len(processes) == n and all(len(p) == 8 for p in processes)  # a random id each
    assert len({r.address.split("#")[1] for r in relays}) == 1  # one identity
    return relays


@pytest.fixture(scope="module")
def fleet_db(pg_server: PgServer) -> str:
    if not pg_server.running():
        pg_server.start()
    return pg_server.create_database()


@pytest.fixture(scope="module")
def fleet(fleet_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningRelay]]:
    """Three processes for the tests that leave them running."""
    relays = start_fleet(tmp_path_factory.mktemp("fleet"), fleet_db, 3)
    yield relays
    for relay in relays:
        relay.kill()


def rows(url: str, sql: str, *params: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return list(conn.execute(sql, params).fetchall())


def seq_of(frame: EventFrame) -> int:
    return stored_event(frame.event).seq


async def join_at(relay: RunningRelay, owner: OwnerState, address_id: str, member: Member) -> JoinResult:
    async with group_session(relay, address_id) as session:
        answer = await session.request(
            join_request(relay, owner, address_id, member, session=session.challenge)
        )
    assert isinstance(answer, JoinResult), answer
    return answer


async def test_members_on_two_processes_get_every_post_of_a_third_once_in_order(
    fleet: list[RunningRelay], tmp_path: Path
) -> None:
    p0, p1, p2 = fleet
    owner, _, address_id = await active_channel(p2, tmp_path)
    members = [Member() for _ in range(4)]
    for i, member in enumerate(members):
        assert (await join_at(fleet[i % 3], owner, address_id, member)).status == "admitted"
    poster = Poster(owner)
    n = 40
    got: dict[int, list[int]] = {}

    async def reader(i: int, relay: RunningRelay, member: Member, ready: trio.Event) -> None:
        async with group_session(relay, address_id) as session:
            await subscribe(session, relay, owner, address_id, member)
            ready.set()
            seen = got.setdefault(i, [])
            while len(seen) < n:
                frame = await session.recv(10)
                if isinstance(frame, EventFrame):
                    seen.append(seq_of(frame))
            with pytest.raises(trio.TooSlowError):  # and nothing more: no duplicate at the end
                await session.recv(0.5)

    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            for i, (relay, member) in enumerate(zip((p0, p1, p0, p1), members, strict=True)):
                ready = trio.Event()
                nursery.start_soon(reader, i, relay, member, ready)
                await ready.wait()
            async with group_session(p2, address_id) as session:
                for _ in range(n):
                    await poster.post(session)
    assert got == {i: list(range(1, n + 1)) for i in range(4)}


async def test_joins_held_before_activation_are_decided_once_across_the_fleet(
    fleet: list[RunningRelay], fleet_db: str, tmp_path: Path
) -> None:
    p1 = fleet[1]
    owner, opath = new_owner(tmp_path)
    await add_relay(owner, opath, p1.address)  # an address, not active yet
    entry = owner.relay(p1.address)
    assert entry is not None and entry.group_address is not None
    address_id = parse_address(entry.group_address).address_id
    assert address_id is not None
    members = [Member() for _ in range(24)]
    decided_before = sum(metric(r, "relay_queue_decided_total") for r in fleet)

    async def hold(i: int, member: Member) -> None:
        assert (await join_at(fleet[i % 2 * 2], owner, address_id, member)).status == "held"  # p0, p2

    async with trio.open_nursery() as nursery:
        for i, member in enumerate(members):
            nursery.start_soon(hold, i, member)
    await publish(owner, opath)  # the activation, through p1: every worker hears of it
    (group_id,) = rows(fleet_db, "SELECT id FROM groups WHERE address_id = %s", address_id)[0]
    with trio.fail_after(10):
        while rows(fleet_db, "SELECT 1 FROM join_requests WHERE group_id = %s AND status = 'held'", group_id):
            await trio.sleep(0.05)
    statuses = rows(fleet_db, "SELECT status, decided_at FROM join_requests WHERE group_id = %s", group_id)
    assert len(statuses) == len(members) and {s for s, at in statuses} == {"admitted"}
    assert all(at is not None for _, at in statuses)
    # decided once each: the fleet counted as many decisions as there were requests
    with trio.fail_after(5):
        while sum(metric(r, "relay_queue_decided_total") for r in fleet) - decided_before < len(members):
            await trio.sleep(0.05)
    await trio.sleep(0.5)  # a second decision would land meanwhile
    assert sum(metric(r, "relay_queue_decided_total") for r in fleet) - decided_before == len(members)
    logged = rows(fleet_db, "SELECT event FROM service_log WHERE group_id = %s", group_id)
    assert [e for (e,) in logged].count("active") == 1 and [e for (e,) in logged].count("address_issued") == 1


async def test_concurrent_first_invitations_at_two_processes_give_one_address(
    fleet: list[RunningRelay], fleet_db: str, tmp_path: Path
) -> None:
    p0, p1, _ = fleet
    for round_ in range(6):
        owner, opath = new_owner(tmp_path, name=f"Race {round_}")
        service_group = b64e(bytes([round_ + 1]) * 16)
        for relay in (p0, p1):  # one service group, chosen before anything is sent
            owner.relays.append(RelayEntry(contact=relay.address, service_group=service_group))
        owner.save(opath)
        addresses: list[str] = []

        async def invite(relay: RunningRelay, opath: Path, addresses: list[str]) -> None:
            copy = OwnerState.load(opath)
            result = await add_relay(copy, tmp_path / f"unused-{relay.listen}.json", relay.address)
            assert result.group_address is not None, result
            found = parse_address(result.group_address).address_id
            assert found is not None
            addresses.append(found)

        async with trio.open_nursery() as nursery:
            for relay in (p0, p1, p0, p1):
                nursery.start_soon(invite, relay, opath, addresses)
        assert len(set(addresses)) == 1, addresses
        assert len(rows(fleet_db, "SELECT id FROM groups WHERE channel = %s", owner.channel)) == 1


async def test_a_suspension_on_one_process_ends_feeds_on_the_others_within_a_second(
    fleet: list[RunningRelay], fleet_db: str, tmp_path: Path
) -> None:
    p0, p1, p2 = fleet
    owner, _, address_id = await active_channel(p0, tmp_path)
    members = [Member(), Member()]
    for member in members:
        assert (await join_at(p0, owner, address_id, member)).status == "admitted"
    (group_id,) = rows(fleet_db, "SELECT id FROM groups WHERE address_id = %s", address_id)[0]
    async with group_session(p1, address_id) as s1, group_session(p2, address_id) as s2:
        await subscribe(s1, p1, owner, address_id, members[0])
        await subscribe(s2, p2, owner, address_id, members[1])
        started = time.monotonic()
        assert p0.admin_post(f"/admin/groups/{group_id}/suspend", {"reason": "a test"}).status_code == 200
        for session in (s1, s2):
            check_error(await session.recv(1.0), "group_not_active")
            await session.expect_closed(1.0)
        assert time.monotonic() - started < 1.5
        # and a new subscription at another process is refused at once
        async with group_session(p2, address_id) as again:
            frame = subscribe_frame(p2, owner, address_id, members[1], session=again.challenge)
            await again.expect_error(frame, "group_not_active")
    assert p2.admin_post(f"/admin/groups/{group_id}/resume").status_code == 200
    async with group_session(p1, address_id) as s1:
        with trio.fail_after(2):
            while True:  # resumed on p0's and p1's views within a moment
                answer = await s1.request(
                    subscribe_frame(p1, owner, address_id, members[0], session=s1.challenge)
                )
                if isinstance(answer, Subscribed):
                    break
                await trio.sleep(0.05)


class Stream:
    """An owner posting without pause to a list of processes, each post acknowledged once
    stored; a post the process could not take (it died, the database is down) is sent again,
    to the next process if its own is gone."""

    def __init__(self, owner: OwnerState, address_id: str, targets: list[RunningRelay]) -> None:
        self.poster = Poster(owner)
        self.address_id = address_id
        self.targets = targets
        self.acknowledged: list[int] = []
        self.unavailable = 0
        self.stop = trio.Event()
        # The post being sent: sent again as it is until acknowledged (it may have been stored
        # by a process that died before answering; another event at its seq would equivocate).
        self.pending: Signed | None = None

    async def run(self, limit: int) -> None:
        turn = 0
        while not self.stop.is_set() and len(self.acknowledged) < limit:
            relay = self.targets[turn % len(self.targets)]
            try:
                async with group_session(relay, self.address_id) as session:
                    while not self.stop.is_set() and len(self.acknowledged) < limit:
                        if self.pending is None:
                            self.pending = self.poster.next()
                        signed = self.pending
                        while True:
                            answer = await session.request(Post(event=signed), timeout=10)
                            if isinstance(answer, PostResult):
                                break
                            assert isinstance(answer, Error) and answer.code == "unavailable", answer
                            self.unavailable += 1
                            await trio.sleep(0.05)
                        assert answer.status in ("stored", "duplicate"), answer
                        self.poster.accept(signed)
                        self.pending = None
                        self.acknowledged.append(answer.seq)
                        await trio.sleep(0.01)
            except (OSError, ConnectionClosed, HandshakeError, trio.TooSlowError):
                turn += 1
                await trio.sleep(0.05)


async def follow(
    targets: list[RunningRelay],
    owner: OwnerState,
    address_id: str,
    member: Member,
    seen: list[int],
    until: int,
) -> None:
    """A member reading every event once, reconnecting (to the next process if its own is
    gone) with ``since`` = the last event it got; a gap or duplicate fails at once."""
    turn = 0
    while len(seen) < until:
        relay = targets[turn % len(targets)]
        try:
            async with group_session(relay, address_id) as session:
                last = seen[-1] if seen else 0
                answer = await session.request(
                    subscribe_frame(relay, owner, address_id, member, since=last, session=session.challenge)
                )
                assert isinstance(answer, Subscribed), answer
                while len(seen) < until:
                    frame = await session.recv(15)
                    if isinstance(frame, EventFrame):
                        seq = seq_of(frame)
                        assert seq == (seen[-1] if seen else 0) + 1, (seen[-3:], seq)
                        seen.append(seq)
        except (OSError, ConnectionClosed, HandshakeError):
            turn += 1
            await trio.sleep(0.05)


async def test_a_process_killed_under_posts_loses_nothing_acknowledged_and_members_see_no_gap(
    pg_url: str, tmp_path: Path
) -> None:
    p0, p1 = start_fleet(tmp_path, pg_url, 2)
    try:
        owner, _, address_id = await active_channel(p0, tmp_path)
        members = [Member() for _ in range(3)]
        for member in members:
            assert (await join_at(p0, owner, address_id, member)).status == "admitted"
        total = 120
        stream = Stream(owner, address_id, [p1, p0])  # posts to the process that dies
        seen: list[list[int]] = [[], [], []]
        p1.listen_on = p1.listen  # back on its port after the restart
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow, [p0], owner, address_id, members[0], seen[0], total)
                nursery.start_soon(follow, [p1, p0], owner, address_id, members[1], seen[1], total)
                nursery.start_soon(follow, [p1], owner, address_id, members[2], seen[2], total)
                nursery.start_soon(stream.run, total)
                while len(stream.acknowledged) < 40:
                    await trio.sleep(0.02)
                p1.kill()  # SIGKILL: no drain, no goodbye
                await trio.sleep(0.3)
                await trio.to_thread.run_sync(p1.start)
        stored = rows(pg_url, "SELECT seq FROM events ORDER BY seq")
        assert [s for (s,) in stored] == list(range(1, total + 1))
        assert stream.acknowledged == list(range(1, total + 1))
        assert seen == [list(range(1, total + 1))] * 3
    finally:
        p0.kill()
        p1.kill()


async def test_a_database_restart_under_posts_answers_unavailable_then_serves_everything(
    pg_server: PgServer, pg_url: str, tmp_path: Path
) -> None:
    p0, p1 = start_fleet(tmp_path, pg_url, 2)
    try:
        owner, _, address_id = await active_channel(p0, tmp_path)
        members = [Member(), Member()]
        for member in members:
            assert (await join_at(p1, owner, address_id, member)).status == "admitted"
        total = 80
        stream = Stream(owner, address_id, [p1])
        seen: list[list[int]] = [[], []]
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(follow, [p0], owner, address_id, members[0], seen[0], total)
                nursery.start_soon(follow, [p1], owner, address_id, members[1], seen[1], total)
                nursery.start_soon(stream.run, total)
                while len(stream.acknowledged) < 30:
                    await trio.sleep(0.02)
                await trio.to_thread.run_sync(pg_server.stop)
                await trio.sleep(1.0)
                await trio.to_thread.run_sync(pg_server.start)
        assert stream.unavailable > 0  # typed answers while the database was away
        assert stream.acknowledged == list(range(1, total + 1))
        assert [s for (s,) in rows(pg_url, "SELECT seq FROM events ORDER BY seq")] == list(
            range(1, total + 1)
        )
        assert seen == [list(range(1, total + 1))] * 2
        for relay in (p0, p1):  # the listening connection came back, and said so
            relay.wait_for_event("fleet.resync", timeout=5)
    finally:
        if not pg_server.running():
            pg_server.start()
        p0.kill()
        p1.kill()


async def test_a_deadlock_with_another_process_reruns_the_batch_instead_of_failing_it(pg_url: str) -> None:
    """Another process holds group 2's chain and then asks for group 1's, which this writer's
    batch holds while it waits for group 2: PostgreSQL gives one of them up (this writer, whose
    wait began first), and the writer runs the batch's jobs again, one per transaction."""
    import threading

    from relay.store import fleet as fleetstore
    from relay.store.postgres import PostgresDatabase

    db = PostgresDatabase(pg_url)
    other = psycopg.connect(pg_url, autocommit=True)
    other.execute("SET deadlock_timeout = '10s'")  # this side waits: the writer detects it
    other.execute("BEGIN")
    other.execute("SELECT pg_advisory_xact_lock(1, 2)")

    def cross() -> None:
        with psycopg.connect(pg_url) as watcher:  # the writer waits for group 2: now ask for 1
            while not watcher.execute(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchall():
                time.sleep(0.02)
        other.execute("SELECT pg_advisory_xact_lock(1, 1)")
        other.execute("COMMIT")

    def lock(group: int) -> object:
        return lambda conn: fleetstore.lock_chain(conn, group) or group

    thread = threading.Thread(target=cross)
    thread.start()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(db.serve)
            first = await db.submit(lambda conn: time.sleep(0.2))  # the next two queue behind it
            one = await db.submit(lock(1))
            two = await db.submit(lock(2))
            with trio.fail_after(15):
                assert [await db.result(job) for job in (first, one, two)] == [None, 1, 2]
            nursery.cancel_scope.cancel()
        assert db.stats.unavailable == 0
    finally:
        await trio.to_thread.run_sync(thread.join)
        other.close()
        db.close()
