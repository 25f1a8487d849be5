"""Channel traffic end to end, against real relays: owners post, members read from every relay.

Honest relays only here (the lying ones are in test_liars.py): each post is shown
once however many relays carry it; a relay that missed posts is reported behind and
repaired by the owner's next post; ``since`` and ``follow`` work; direct invitations
pass only when the owners allow them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from conftest import ENGINES
from relayproc import RelayFactory, RunningRelay
from test_flow import new_owner

from relay.client import add_relay, publish
from relay.client.direct import invite
from relay.client.errors import RelayError
from relay.client.member import MemberState, join
from relay.client.owner import OwnerState
from relay.client.posting import post
from relay.client.reader import InvitationReceived, ReadItem, RelayTrouble, read
from relay.protocol.follow import Accepted, Finding

# Every test here runs on both databases: SQLite, and a real PostgreSQL server.
pytestmark = pytest.mark.parametrize("engine", ENGINES, indirect=True)


async def channel(relays: list[RunningRelay], tmp_path: Path, **fields: object) -> tuple[OwnerState, Path]:
    state, path = new_owner(tmp_path)
    for key, value in fields.items():
        setattr(state, key, value)
    for relay in relays:
        await add_relay(state, path, relay.address)
    await publish(state, path)
    return state, path


async def member(owner: OwnerState, tmp_path: Path, name: str = "Ada") -> tuple[MemberState, Path]:
    state = MemberState.new(str(owner.link()), name=name)
    path = tmp_path / f"member-{name}.json"
    await join(state, path)
    assert {r.status for r in state.relays} == {"admitted"}, state.relays
    return state, path


async def read_all(state: MemberState, path: Path, **kw: object) -> list[ReadItem]:
    async with read(state, path, **kw) as items:  # type: ignore[arg-type]
        return [item async for item in items]


def posts(items: list[ReadItem]) -> list[bytes]:
    return [i.event.event.body for i in items if isinstance(i, Accepted)]


def told(items: list[ReadItem]) -> set[tuple[str, str]]:
    return {(i.relay, i.code.value) for i in items if isinstance(i, Finding)}


async def test_posts_reach_a_member_from_three_relays_once_each(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relays = [relay_factory(), relay_factory(), relay_factory()]
    owner, opath = await channel(relays, tmp_path)
    for text in (b"one", b"two", b"three"):
        outcome = await post(owner, opath, text)
        assert [r.status for r in outcome.relays] == ["stored"] * 3
    assert outcome.seq == 3
    ada, apath = await member(owner, tmp_path)
    items = await read_all(ada, apath)
    assert posts(items) == [b"one", b"two", b"three"]
    assert told(items) == set() and not [i for i in items if isinstance(i, RelayTrouble)]
    assert MemberState.load(apath).last_seq == 3  # remembered: the next read starts after it
    await post(owner, opath, b"four")
    assert posts(await read_all(ada, apath)) == [b"four"]
    assert posts(await read_all(ada, apath, since=1)) == [b"two", b"three", b"four"]
    assert posts(await read_all(ada, apath)) == []


async def test_a_relay_that_missed_posts_is_behind_and_the_next_post_repairs_it(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    a, b = relay_factory(), relay_factory()
    owner, opath = await channel([a, b], tmp_path)
    await post(owner, opath, b"one")
    b.listen_on = b.listen  # same address after the restart
    b.stop()
    first = await post(owner, opath, b"two while b is down")
    second = await post(owner, opath, b"three while b is down")
    assert [r.status for r in second.relays] == ["stored", "error"] and first.relays[1].code == "unreachable"
    b.start()
    ada, apath = await member(owner, tmp_path)
    items = await read_all(ada, apath)
    assert posts(items) == [b"one", b"two while b is down", b"three while b is down"]
    gb = str(owner.relays[1].group_address)
    assert told(items) == {(gb, "relay_behind")}
    behind = next(i for i in items if isinstance(i, Finding))
    assert not behind.is_lie and "at 1" in behind.detail
    # the owner's next post finds b at event 1: b answers event_gap and is sent 2 and 3 first
    outcome = await post(owner, opath, b"four")
    assert [(r.status, r.repaired) for r in outcome.relays] == [("stored", 0), ("stored", 2)]
    items = await read_all(ada, apath, since=0)
    assert len(posts(items)) == 4 and told(items) == set()


async def test_follow_shows_live_posts_as_they_come(relay_factory: RelayFactory, tmp_path: Path) -> None:
    a, b = relay_factory(), relay_factory()
    owner, opath = await channel([a, b], tmp_path)
    await post(owner, opath, b"before")
    ada, apath = await member(owner, tmp_path)
    seen: list[bytes] = []
    with trio.fail_after(20):
        async with read(ada, apath, follow=True) as items:
            async for item in items:
                assert not isinstance(item, Finding | RelayTrouble), item
                if isinstance(item, Accepted):
                    seen.append(item.event.event.body)
                    if item.event.seq == 1:
                        await post(owner, opath, b"live one")
                        await post(owner, opath, b"live two")
                    if len(seen) == 3:
                        break
    assert seen == [b"before", b"live one", b"live two"]
    assert MemberState.load(apath).last_seq == 3


async def test_direct_invitations_pass_only_when_the_owners_allow_them(
    relay: RunningRelay, tmp_path: Path
) -> None:
    owner, opath = await channel([relay], tmp_path)
    ada, apath = await member(owner, tmp_path, "Ada")
    bob, bpath = await member(owner, tmp_path, "Bob")
    with pytest.raises(RelayError) as refused:
        await invite(ada, bob.member_id, contact="ada@example.org")
    assert refused.value.code == "direct_messages_off"
    owner.direct_messages = True
    await publish(owner, opath)
    sent = await invite(ada, bob.member_id, contact="ada@example.org", note="coffee?")
    assert sent["delivery"] in ("stored", "delivered")
    items = await read_all(bob, bpath)
    [received] = [i for i in items if isinstance(i, InvitationReceived)]
    assert (received.sender, received.contact, received.note) == (ada.member_id, "ada@example.org", "coffee?")
    assert MemberState.load(bpath).invitations[0]["sender"] == ada.member_id
    # the same on the command line: Bob invites Ada back, Ada lists what she received
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    cli = [sys.executable, "-m", "relay", "member"]
    sent_back = await trio.run_process(
        [*cli, "invite", "--state", str(bpath), ada.member_id, "--contact", "bob@example.org", "--json"],
        capture_stdout=True,
        env=env,
    )
    assert json.loads(sent_back.stdout)["delivery"] in ("stored", "delivered")
    await trio.run_process(
        [*cli, "read", "--state", str(apath)], capture_stdout=True, capture_stderr=True, env=env
    )
    listed = await trio.run_process(
        [*cli, "invitations", "--state", str(apath), "--json"], capture_stdout=True, env=env
    )
    [back] = json.loads(listed.stdout)["invitations"]
    assert (back["sender"], back["contact"]) == (bob.member_id, "bob@example.org")


def test_post_and_read_on_the_command_line(relay: RunningRelay, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}

    def relay_cmd(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "relay", *argv],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert relay_cmd("owner", "create", "--state", "owner.json", "--name", "CLI").returncode == 0
    assert relay_cmd("owner", "add-relay", "--state", "owner.json", relay.address).returncode == 0
    assert relay_cmd("owner", "publish", "--state", "owner.json").returncode == 0
    posted = relay_cmd("owner", "post", "--state", "owner.json", "hello, members", "--json")
    assert posted.returncode == 0, posted.stderr + posted.stdout
    assert json.loads(posted.stdout)["seq"] == 1
    (tmp_path / "note.md").write_text("# second\n")
    posted = relay_cmd(
        "owner", "post", "--state", "owner.json", "--file", "note.md", "--content-type", "text/markdown"
    )
    assert posted.returncode == 0, posted.stdout
    link = relay_cmd("owner", "link", "--state", "owner.json").stdout.strip()
    assert relay_cmd("member", "join", "--state", "m.json", link).returncode == 0
    shown = relay_cmd("member", "read", "--state", "m.json")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == ["#1 hello, members", "#2 # second"]
    again = relay_cmd("member", "read", "--state", "m.json", "--since", "1", "--json")
    assert [e["text"] for e in json.loads(again.stdout)["events"]] == ["# second\n"]
    usage = relay_cmd("owner", "post", "--state", "owner.json")
    assert usage.returncode == 2 and "TEXT or with --file" in usage.stderr and not usage.stdout


async def test_two_owners_post_in_turn_and_a_removed_owners_posts_stay_history(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    from relay.client.owners import add_owner, adopt, new_key, remove_owner, write_share

    a, b = relay_factory(), relay_factory()
    owner, opath = await channel([a, b], tmp_path)
    co_path = tmp_path / "co.json"
    await add_owner(owner, opath, new_key(co_path))
    write_share(owner, tmp_path / "share.json")
    co = adopt(co_path, tmp_path / "share.json")
    await post(owner, opath, b"from the first owner")
    second = await post(co, co_path, b"from the co-owner")  # chains onto the first owner's post
    assert second.seq == 2 and [r.status for r in second.relays] == ["stored", "stored"]
    ada, apath = await member(owner, tmp_path)
    assert posts(await read_all(ada, apath)) == [b"from the first owner", b"from the co-owner"]

    # the co-owner is removed: its event 2 is history nothing vouches for yet...
    await remove_owner(owner, opath, new_key_of(co))
    newcomer, npath = await member(owner, tmp_path, "Newcomer")
    items = await read_all(newcomer, npath)
    assert posts(items) == [b"from the first owner"]
    assert {code for _, code in told(items)} == {"unauthorised_owner"}
    # ...until a current owner's event chains over it
    await post(owner, opath, b"the first owner again")
    items = await read_all(newcomer, npath, since=0)
    assert posts(items) == [b"from the first owner", b"from the co-owner", b"the first owner again"]
    assert told(items) == set()
    # and a live event by the removed owner is refused by the relays themselves
    refused = await post(co, co_path, b"still here?")
    assert {r.code for r in refused.relays} == {"unauthorised_owner"}


def new_key_of(state: OwnerState) -> str:
    from relay.protocol import crypto
    from relay.protocol.encoding import b64e

    return b64e(crypto.public_bytes(state.owner_key))


async def test_a_post_is_refused_before_anything_is_sent(relay: RunningRelay, tmp_path: Path) -> None:
    owner, opath = new_owner(tmp_path)
    with pytest.raises(RelayError) as none:
        await post(owner, opath, b"nobody listens")
    assert none.value.code == "no_relay"
    owner, opath = await channel([relay], tmp_path)
    with pytest.raises(RelayError) as big:
        await post(owner, opath, b"x" * 70_000)
    assert big.value.code == "event_too_large"
    assert OwnerState.load(opath).history == []  # nothing signed, nothing kept


async def test_follow_on_the_command_line_prints_json_lines_and_stops_on_ctrl_c(
    relay: RunningRelay, tmp_path: Path
) -> None:
    import signal

    owner, opath = await channel([relay], tmp_path)
    await post(owner, opath, b"first")
    _, apath = await member(owner, tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "member", "read", "--state", str(apath), "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [json.loads(await trio.to_thread.run_sync(proc.stdout.readline))]
        await post(owner, opath, b"second, live")
        lines.append(json.loads(await trio.to_thread.run_sync(proc.stdout.readline)))
        assert [(line["type"], line["seq"], line["text"]) for line in lines] == [
            ("post", 1, "first"),
            ("post", 2, "second, live"),
        ]
    finally:
        proc.send_signal(signal.SIGINT)
        code = await trio.to_thread.run_sync(proc.wait, 20)
    # Ctrl-C ends a follow the way it ends any command: 130, and (with --json) a last object
    # saying where it stopped
    rest = proc.stdout.read() if proc.stdout else ""
    assert code == 130, proc.stderr.read() if proc.stderr else ""
    stopped = json.loads(rest.splitlines()[-1])
    assert stopped["status"] == "interrupted" and "#2" in stopped["reason"], rest
    assert MemberState.load(apath).last_seq == 2  # saved on the way out


async def test_follow_reconnects_to_a_relay_that_restarted(relay: RunningRelay, tmp_path: Path) -> None:
    owner, opath = await channel([relay], tmp_path)
    await post(owner, opath, b"before the restart")
    ada, apath = await member(owner, tmp_path)
    relay.listen_on = relay.listen
    seen: list[bytes] = []
    troubles: list[RelayTrouble] = []
    with trio.fail_after(30):
        async with read(ada, apath, follow=True) as items:
            async for item in items:
                assert not isinstance(item, Finding), item
                if isinstance(item, RelayTrouble):
                    troubles.append(item)
                if isinstance(item, Accepted):
                    seen.append(item.event.event.body)
                    if len(seen) == 1:
                        await trio.to_thread.run_sync(relay.restart)
                        await post(owner, opath, b"after the restart")
                    if len(seen) == 2:
                        break
    assert seen == [b"before the restart", b"after the restart"]
    # told it went away (and, if the restart caught it, that discovery failed), never a lie
    assert {t.code for t in troubles} == {"unreachable"}
    assert any(t.reason.endswith("; reconnecting") for t in troubles), troubles
