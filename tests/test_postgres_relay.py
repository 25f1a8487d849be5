"""The real daemon on a real PostgreSQL server (``storage.url``): start-up and its failures,
a relay moved from SQLite with ``relay migrate``, and the database restarting under load.

The flows themselves run on both engines in test_traffic.py, test_owners.py,
test_post_answers.py and test_refused_never_served.py; this module holds what only
PostgreSQL has.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

import pytest
import trio
from pgserver import PgServer
from relayproc import RelayFactory
from test_cli import run, run_json
from test_flow import new_owner
from test_traffic import channel, member, posts, read_all

from relay.client import add_relay, publish
from relay.client.errors import RelayError
from relay.client.member import MemberState, join, status
from relay.client.posting import post


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_database_stops_the_start_with_its_url_and_no_password(tmp_path: Path) -> None:
    url = f"postgresql://relay:hunter2@127.0.0.1:{free_port()}/relay?connect_timeout=2"
    code, out, err = run("serve", "--data", str(tmp_path / "d"), env={"RELAY_STORAGE_URL": url})
    assert code == 1
    assert "hunter2" not in out + err and "Traceback" not in out + err
    failed = [json.loads(line) for line in out.splitlines() if "relay.start_failed" in line]
    assert len(failed) == 1, out
    assert failed[0]["reason"].startswith("cannot use the database postgresql://relay:***@127.0.0.1:"), failed
    assert not (tmp_path / "d" / "relay.db").exists()

    code, answer = run_json("init", "--data", str(tmp_path / "e"), env={"RELAY_STORAGE_URL": url})
    assert code == 1 and answer["code"] == "database_unavailable" and "hunter2" not in json.dumps(answer)


def test_init_makes_the_schema_and_the_data_folder_holds_no_database(pg_url: str, tmp_path: Path) -> None:
    code, answer = run_json("init", "--data", str(tmp_path / "d"), env={"RELAY_STORAGE_URL": pg_url})
    assert code == 0, answer
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["admin.token", "identity.key"]
    import psycopg

    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    assert row is not None and row[0] >= 5


async def test_a_relay_moved_from_sqlite_keeps_its_groups_members_events_and_held_requests(
    relay_factory: RelayFactory, pg_url: str, tmp_path: Path
) -> None:
    relay = relay_factory()  # SQLite, the default
    owner, opath = await channel([relay], tmp_path)
    for text in (b"one", b"two"):
        await post(owner, opath, text)
    ada, apath = await member(owner, tmp_path)
    second, spath = new_owner(tmp_path, "Second channel")
    await add_relay(second, spath, relay.address)  # accepted, not active: joins are held
    bob = MemberState.new(str(second.link()), name="Bob")
    bpath = tmp_path / "member-Bob.json"
    await join(bob, bpath)
    assert [r.status for r in bob.relays] == ["held"]

    code, refused = run_json("migrate", "--data", str(relay.data), "--to", pg_url)
    assert code == 1 and "already running" in str(refused["reason"])  # the running relay holds the folder
    relay.stop()
    with sqlite3.connect(relay.data / "relay.db") as db:
        before = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("groups", "events")}
    code, moved = run_json("migrate", "--data", str(relay.data), "--to", pg_url)
    assert code == 0, moved
    rows = moved["rows"]
    assert isinstance(rows, dict)
    assert rows["groups"] == before["groups"] == 2 and rows["events"] == before["events"] == 2
    assert rows["join_requests"] == 2
    code, again = run_json("migrate", "--data", str(relay.data), "--to", pg_url)
    assert code == 1 and again["code"] == "not_copied" and "already holds 2 groups" in str(again["reason"])

    relay.env["RELAY_STORAGE_URL"] = pg_url
    relay.listen_on = relay.listen  # the same address: the owners' and members' links stay right
    relay.start()
    assert (await post(owner, opath, b"three")).seq == 3  # the chain goes on where it was
    assert posts(await read_all(ada, apath, since=0)) == [b"one", b"two", b"three"]
    await publish(second, spath)  # the held request is decided once the group is active
    await status(bob, bpath, wait=10)
    assert [r.status for r in bob.relays] == ["admitted"]
    # a new group after the copy gets an id after the copied ones
    third, tpath = new_owner(tmp_path, "Third channel")
    await add_relay(third, tpath, relay.address)
    groups = relay.admin_get("/admin/groups").json()["groups"]
    assert sorted(g["id"] for g in groups) == [1, 2, 3]


@pytest.mark.parametrize("engine", ["postgresql"], indirect=True)
async def test_a_database_restart_under_posts_is_unavailable_then_served(
    relay_factory: RelayFactory, pg_server: PgServer, tmp_path: Path
) -> None:
    relay = relay_factory()
    owner, opath = await channel([relay], tmp_path)
    ada, apath = await member(owner, tmp_path)
    acknowledged: list[bytes] = []
    in_doubt: set[bytes] = set()  # answered `unavailable`: may or may not have committed
    answers: set[str] = set()

    async def posting(until: trio.Event) -> None:
        attempt = 0
        while not until.is_set():
            text = f"post {attempt}".encode()  # one text per attempt: a retry is another event
            attempt += 1
            try:
                outcome = await post(owner, opath, text, timeout=5)
            except RelayError as exc:
                answers.add(type(exc).__name__)
                in_doubt.add(text)
            else:
                status_ = outcome.relays[0]
                answers.add(status_.code or status_.status)
                if status_.status == "stored":
                    acknowledged.append(text)
                else:
                    in_doubt.add(text)
            await trio.sleep(0.02)

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(posting, done)
        await trio.sleep(0.5)
        await trio.to_thread.run_sync(pg_server.stop)
        await trio.sleep(1.0)
        await trio.to_thread.run_sync(pg_server.start)
        with trio.fail_after(20):
            while len(acknowledged) < 5 or "unavailable" not in answers:
                await trio.sleep(0.1)
            mark = len(acknowledged)
            while len(acknowledged) < mark + 5:  # full service after the restart
                await trio.sleep(0.1)
        done.set()
    assert "unavailable" in answers, answers
    # nothing acknowledged was lost, in order, once each; anything else stored was in doubt
    stored = posts(await read_all(ada, apath, since=0))
    assert [text for text in stored if text not in in_doubt] == acknowledged
