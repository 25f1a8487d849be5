"""Groups end to end (issue 16): members post and read each other through two real relays,
owners certify and moderate, moderators moderate, and bad input gets its typed error.

Everything runs against real relay daemons (tests/relayproc.py) on loopback through the
client library (relay.client.memberpost, relay.client.moderation, relay.client.reader) and,
in the last tests, through the ``relay`` command as a user types it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from relayproc import RelayFactory, RunningRelay
from test_cli import run, run_json
from test_flow import new_owner
from test_traffic import member, read_all, told

from relay.client import add_relay, publish
from relay.client.errors import RelayError
from relay.client.member import MemberState, join
from relay.client.memberpost import post_message, resolve_reply
from relay.client.moderation import certify, member_moderate, moderate, set_role
from relay.client.owner import OwnerState, create_channel
from relay.client.posting import post
from relay.client.reader import ReadItem
from relay.protocol.addresses import ChannelLink
from relay.protocol.encoding import b64e
from relay.protocol.timeline_reader import CertAccepted, MessageAccepted, ModerationAccepted


def new_group(tmp_path: Path, name: str = "Climbing club", **kw: Any) -> tuple[OwnerState, Path]:
    state = create_channel(name, **{"kind": "group", **kw})
    path = tmp_path / f"owner-{b64e(state.channel)[:8]}.json"
    state.save(path)
    return state, path


async def group(relays: list[RunningRelay], tmp_path: Path, **kw: Any) -> tuple[OwnerState, Path]:
    owner, path = new_group(tmp_path, **kw)
    for relay in relays:
        await add_relay(owner, path, relay.address)
    await publish(owner, path)
    return owner, path


async def certified(
    owner: OwnerState, opath: Path, tmp_path: Path, *names: str
) -> list[tuple[MemberState, Path]]:
    """Members joined under ``names`` and certified by the owner, each having read its cert
    (kept in its file: it goes with the member's first message)."""
    joined = [await member(owner, tmp_path, name) for name in names]
    await certify(owner, opath)
    for state, path in joined:
        await read_all(state, path)
    return joined


def messages(items: list[ReadItem]) -> list[tuple[str, bytes]]:
    return [(i.author_name, i.message.message.body) for i in items if isinstance(i, MessageAccepted)]


def stored(outcome: object) -> list[str]:
    return [r.status for r in outcome.relays]  # type: ignore[attr-defined]


async def test_members_post_and_read_each_other_through_two_relays(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relays = [relay_factory(), relay_factory()]
    owner, opath = await group(relays, tmp_path)
    ada, apath = await member(owner, tmp_path, "Ada")
    bob, bpath = await member(owner, tmp_path, "Bob")
    # not certified yet: every relay refuses, and the chain head stays where it was
    outcome = await post_message(ada, apath, b"too early")
    assert {r.code for r in outcome.relays} == {"not_certified"} and MemberState.load(apath).author_seq == 0
    round_ = await certify(owner, opath)
    assert sorted(c.name for c in round_.certified) == ["Ada", "Bob"]
    assert all(stored(c) == ["stored", "stored"] for c in round_.certified)
    assert (await certify(owner, opath)).certified == []  # nobody is waiting any more
    # Ada posts to both relays; Bob reads it once, with her certified name, nothing found
    outcome = await post_message(ada, apath, b"hello from Ada")
    assert stored(outcome) == ["stored", "stored"] and outcome.seq == 1
    items = await read_all(bob, bpath)
    assert messages(items) == [("Ada", b"hello from Ada")]
    assert told(items) == set()
    assert {i.cert.cert.name for i in items if isinstance(i, CertAccepted)} == {"Ada", "Bob"}
    assert MemberState.load(bpath).cert  # Bob's own cert, kept for his posts
    # Bob replies to Ada's message; Ada reads both, and the next read shows nothing again
    ada_id = outcome.id
    reply = await post_message(bob, bpath, b"hi Ada", reply_to=resolve_reply(bob, ada_id))
    assert stored(reply) == ["stored", "stored"]
    items = await read_all(ada, apath)
    assert messages(items) == [("Ada", b"hello from Ada"), ("Bob", b"hi Ada")]
    [answer] = [i for i in items if isinstance(i, MessageAccepted) and i.author_name == "Bob"]
    assert b64e(answer.message.message.reply_to) == ada_id
    assert told(items) == set()
    assert messages(await read_all(ada, apath)) == []
    # owner posts and member messages side by side; Ada's chain goes on at seq 2
    await post(owner, opath, b"meet at 6")
    outcome = await post_message(ada, apath, b"see you there")
    assert outcome.seq == 2 and stored(outcome) == ["stored", "stored"]
    items = await read_all(bob, bpath)
    assert messages(items) == [("Bob", b"hi Ada"), ("Ada", b"see you there")]  # his own too, once
    assert [i.event.event.body for i in items if hasattr(i, "event")] == [b"meet at 6"]


async def test_owners_and_moderators_moderate_on_every_relay(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relays = [relay_factory(), relay_factory()]
    owner, opath = await group(relays, tmp_path)
    (ada, apath), (bob, bpath), (eve, epath) = await certified(owner, opath, tmp_path, "Ada", "Bob", "Eve")
    spam = await post_message(eve, epath, b"buy my stuff")
    keep = await post_message(ada, apath, b"a good message")
    # the owner removes Eve's message: no reader gets its content again, and no lie is found
    removed = await moderate(owner, opath, "remove_message", spam.id, reason="spam")
    assert stored(removed) == ["stored", "stored"]
    items = await read_all(bob, bpath)
    assert messages(items) == [("Ada", b"a good message")]
    assert told(items) == set()
    assert [i.moderation.moderation.action for i in items if isinstance(i, ModerationAccepted)] == [
        "remove_message"
    ]
    # Bob becomes a moderator and removes a message himself; then loses the role
    granted = await set_role(owner, opath, b64e(bob.member_key.public_key().public_bytes_raw()), "moderator")
    assert granted.role == "moderator" and stored(granted) == ["stored", "stored"]
    by_bob = await member_moderate(bob, "remove_message", keep.id)
    assert stored(by_bob) == ["stored", "stored"]
    items = await read_all(eve, epath, since=0)
    assert messages(items) == [] and told(items) == set()
    # a moderator may not ban an owner-made moderator; the owner bans Eve
    await set_role(owner, opath, b64e(bob.member_key.public_key().public_bytes_raw()), "member")
    refused = await member_moderate(bob, "ban", b64e(eve.member_key.public_key().public_bytes_raw()))
    assert {r.code for r in refused.relays} == {"not_a_moderator"}
    banned = await moderate(owner, opath, "ban", b64e(eve.member_key.public_key().public_bytes_raw()))
    assert stored(banned) == ["stored", "stored"]
    outcome = await post_message(eve, epath, b"still here?")
    assert {r.code for r in outcome.relays} == {"banned"}
    assert MemberState.load(epath).author_seq == 1  # the refused message left the chain again


async def test_bad_member_input_is_refused_before_anything_is_signed(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory()
    owner, opath = await group([relay], tmp_path, max_message_bytes=100)
    [(ada, apath)] = await certified(owner, opath, tmp_path, "Ada")
    with pytest.raises(RelayError) as info:
        await post_message(ada, apath, b"x" * 101)
    assert info.value.code == "message_too_large"
    assert MemberState.load(apath).author_seq == 0
    # the same signed bytes again: a retry, stored once
    first = await post_message(ada, apath, b"once")
    assert stored(first) == ["stored"]
    # a channel without comments takes no member messages; with comments only replies
    channel, cpath = new_owner(tmp_path, "News")
    await add_relay(channel, cpath, relay.address)
    await publish(channel, cpath)
    reader, rpath = await member(channel, tmp_path, "Reader")
    await read_all(reader, rpath)
    with pytest.raises(RelayError) as info:
        await post_message(reader, rpath, b"a comment")
    assert info.value.code == "member_posts_off"
    with pytest.raises(RelayError) as info:
        await certify(channel, cpath)
    assert info.value.code == "member_posts_off"


async def test_comments_in_a_channel_reply_to_owner_posts(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relays = [relay_factory(), relay_factory()]
    owner, opath = new_group(tmp_path, "News", kind="channel", comments=True)
    for relay in relays:
        await add_relay(owner, opath, relay.address)
    await publish(owner, opath)
    await post(owner, opath, b"the news")
    ada, apath = await member(owner, tmp_path, "Ada")
    await certify(owner, opath)
    items = await read_all(ada, apath)
    assert MemberState.load(apath).post_ids == {
        "1": b64e(next(i.event.id for i in items if hasattr(i, "event")))
    }
    with pytest.raises(RelayError) as info:
        await post_message(ada, apath, b"no reply")
    assert info.value.code == "bad_reply"
    comment = await post_message(ada, apath, b"good news", reply_to=resolve_reply(ada, "#1"))
    assert stored(comment) == ["stored", "stored"]
    # a comment on a comment is refused by the relays
    again = await post_message(ada, apath, b"me too", reply_to=resolve_reply(ada, comment.id))
    assert {r.code for r in again.relays} == {"bad_reply"}
    bob, bpath = await member(owner, tmp_path, "Bob")
    assert messages(await read_all(bob, bpath)) == [("Ada", b"good news")]


def test_group_commands_through_the_command_line(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relays = [relay_factory(), relay_factory()]
    owner, ada, bob = (str(tmp_path / f"{n}.json") for n in ("owner", "ada", "bob"))
    code, created = run_json(
        "owner", "create", "--state", owner, "--name", "Club", "--kind", "group", "--slow-mode", "0"
    )
    assert code == 0 and created["kind"] == "group"
    for relay in relays:
        assert run_json("owner", "add-relay", "--state", owner, relay.address)[0] == 0
    assert run_json("owner", "publish", "--state", owner)[0] == 0
    link = str(run_json("owner", "link", "--state", owner)[1]["link"])
    for path, name in ((ada, "Ada"), (bob, "Bob")):
        assert run_json("member", "join", "--state", path, "--name", name, link)[0] == 0
    code, certified = run_json("owner", "certify", "--state", owner, "--all")
    assert code == 0 and sorted(c["name"] for c in certified["certified"]) == ["Ada", "Bob"]  # type: ignore[union-attr]
    ada_key = json.loads(run("member", "status", "--state", ada, "--json")[1])["member"]
    code, out = run_json("owner", "certify", "--state", owner, "--member", ada_key)
    assert code == 1 and out["code"] == "not_waiting"
    code, posted = run_json("member", "post", "--state", ada, "hello club")
    assert code == 0 and posted["status"] == "stored" and posted["seq"] == 1
    code, text, err = run("member", "read", "--state", bob)
    assert code == 0, err
    assert f"Ada ({ada_key[:8]}): hello club" in text.splitlines()
    code, read = run_json("member", "read", "--state", bob, "--since", "0")
    assert code == 0 and [m["text"] for m in read["messages"]] == ["hello club"]  # type: ignore[union-attr]
    code, removed = run_json(
        "owner", "remove-message", "--state", owner, str(posted["id"]), "--reason", "off topic"
    )
    assert code == 0 and removed["action"] == "remove_message"
    code, granted = run_json("owner", "moderator", "grant", "--state", owner, ada_key)
    assert code == 0 and granted["role"] == "moderator"
    code, out = run_json("owner", "moderator", "grant", "--state", owner, "A" * 43)
    assert code == 1 and out["code"] == "unknown_member"
    bob_key = json.loads(run("member", "status", "--state", bob, "--json")[1])["member"]
    code, banned = run_json("member", "ban", "--state", ada, bob_key)
    assert code == 0 and banned["action"] == "ban"
    code, out = run_json("member", "post", "--state", bob, "am I banned?")
    assert code == 1 and out["code"] == "banned"
    code, text, err = run("member", "post", "--state", bob, "am I banned?")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "banned" in err
    code, out = run_json("member", "post", "--state", ada)
    assert code == 2 or out["code"] == "usage"


async def test_a_relay_that_missed_member_messages_is_repaired_by_the_next_one(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    a, b = relay_factory(), relay_factory()
    owner, opath = await group([a, b], tmp_path)
    [(ada, apath)] = await certified(owner, opath, tmp_path, "Ada")
    assert stored(await post_message(ada, apath, b"one")) == ["stored", "stored"]
    b.listen_on = b.listen  # same address after the restart
    b.stop()
    down = await post_message(ada, apath, b"two while b is down")
    assert stored(down) == ["stored", "error"] and down.relays[1].code == "unreachable"
    assert MemberState.load(apath).author_seq == 2  # one relay stored it: it stays in the chain
    b.start()
    # b lacks message 2: it answers event_gap, is sent what it lacks, then takes message 3
    outcome = await post_message(ada, apath, b"three")
    assert [(r.status, r.repaired) for r in outcome.relays] == [("stored", 0), ("stored", 1)]
    bob, bpath = await member(owner, tmp_path, "Bob")
    items = await read_all(bob, bpath)
    assert [m for _, m in messages(items)] == [b"one", b"two while b is down", b"three"]
    assert told(items) == set()


def test_certify_keep_certifies_members_as_they_come_until_ctrl_c(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory()
    owner, ada = str(tmp_path / "owner.json"), str(tmp_path / "ada.json")
    assert run_json("owner", "create", "--state", owner, "--name", "Club", "--kind", "group")[0] == 0
    assert run_json("owner", "add-relay", "--state", owner, relay.address)[0] == 0
    assert run_json("owner", "publish", "--state", owner)[0] == 0
    link = str(run_json("owner", "link", "--state", owner)[1]["link"])
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    keep = subprocess.Popen(
        [sys.executable, "-m", "relay", "owner", "certify", "--state", owner, "--all", "--keep", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean,
    )
    try:
        time.sleep(1.0)  # a first round finds nobody
        code, joined = run_json("member", "join", "--state", ada, "--name", "Ada", link)
        assert code == 0
        assert keep.stdout is not None
        line = json.loads(keep.stdout.readline())  # the next round certifies Ada
        assert line["type"] == "cert" and line["member"] == joined["member"] and line["name"] == "Ada"
        assert [r["status"] for r in line["relays"]] == ["stored"]
    finally:
        keep.send_signal(signal.SIGINT)
        assert keep.wait(20) == 130
    code, posted = run_json("member", "post", "--state", ada, "certified by a keeping owner")
    assert code == 0 and posted["status"] == "stored"


async def test_certify_all_leaves_a_key_only_some_relays_list_to_the_owners(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    """A member joins every relay of the link; a key only one relay lists may be that relay's
    own invention, so ``--all`` does not certify it, and says so."""
    a, b = relay_factory(), relay_factory()
    owner, opath = await group([a, b], tmp_path)
    ada, _ = await member(owner, tmp_path, "Ada")
    only_b = str(ChannelLink("group", owner.channel, (str(owner.relays[1].group_address),)))
    mallory = MemberState.new(only_b, name="Mallory")
    await join(mallory, tmp_path / "mallory.json")
    assert [r.status for r in mallory.relays] == ["admitted"]
    round_ = await certify(owner, opath)
    assert [c.name for c in round_.certified] == ["Ada"]
    assert [(u.member, u.relays) for u in round_.partial] == [(mallory.member_id, [b.address])]
    code, out = run_json("owner", "certify", "--state", str(opath), "--all")
    assert code == 0 and out["certified"] == [] and out["partial"][0]["member"] == mallory.member_id
    assert f"--member {mallory.member_id}" in out["partial"][0]["reason"]
    # the owners checked: by name it is certified (every relay gets the cert)
    named = await certify(owner, opath, members=[mallory.member_id])
    assert [(c.name, stored(c)) for c in named.certified] == [("Mallory", ["stored", "stored"])]
    assert ada.member_id not in {c.member for c in named.certified}
