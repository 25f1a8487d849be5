"""Pipelined posts are answered in batches (one write for the answers ready together): the
answers still come one per post, in the order the posts were sent, refusals in their place."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
from conftest import ENGINES
from relayproc import RunningRelay
from traffic import Poster, active_channel, group_session, join_member, read_events, subscribe

from relay.protocol.events import ChainHead, event_id, make_event
from relay.protocol.messages import Error, Post, PostResult, Signed

# Every test here runs on both databases: SQLite, and a real PostgreSQL server.
pytestmark = pytest.mark.parametrize("engine", ENGINES, indirect=True)


async def test_refusals_among_pipelined_posts_keep_their_place(relay: RunningRelay, tmp_path: Path) -> None:
    owner, _, address_id = await active_channel(relay, tmp_path)
    poster = Poster(owner)
    good = []
    for _ in range(60):
        signed = poster.next()
        poster.accept(signed)
        good.append(signed)
    forged = Signed(body=good[0].body, signer=good[0].signer, sig=bytes(64))  # a bad signature
    frames = [*good[:20], forged, *good[20:40], forged, *good[40:]]
    async with group_session(relay, address_id) as session:
        for signed in frames:
            await session.send(Post(event=signed))
        answers = [await session.recv(10) for _ in frames]
    kinds = ["error" if isinstance(a, Error) else a.seq if isinstance(a, PostResult) else a for a in answers]
    assert kinds == [*range(1, 21), "error", *range(21, 41), "error", *range(41, 61)]


async def test_chain_refusals_among_pipelined_posts_to_two_groups_are_never_stored_or_served(
    relay: RunningRelay, tmp_path: Path
) -> None:
    # Two owners pipeline posts at once (on PostgreSQL consecutive posts of a writer batch are
    # done together, across groups): among them events signed well but refused by the chain
    # rules (a broken chain, a gap), a duplicate and an equivocation, which need the stored
    # event.  Each answer is the one its post earns alone, in its place, and a member of each
    # group receives exactly the stored events, in order.
    channels = [await active_channel(relay, tmp_path) for _ in range(2)]
    members = [await join_member(relay, owner, address_id) for owner, _, address_id in channels]
    expected: list[list[object]] = [[], []]
    stored: list[list[Signed]] = [[], []]

    async def owner_posts(i: int) -> list[object]:
        owner, _, address_id = channels[i]
        poster = Poster(owner)
        frames: list[Signed] = []
        for n in range(1, 41):
            if n % 10 == 4:  # a broken chain: the right seq, another prev
                frames.append(
                    make_event(
                        owner.owner_key,
                        channel=owner.channel,
                        after=ChainHead(poster.head.seq, bytes(32), 0),
                        body=b"broken",
                        now=int(time.time()),
                    )
                )
                expected[i].append("chain_broken")
            elif n % 10 == 7:  # a gap: one seq too far
                ahead = Poster(owner, head=ChainHead(poster.head.seq + 1, poster.head.id, 0))
                frames.append(ahead.next(b"gap"))
                expected[i].append("event_gap")
            elif n == 25:  # a duplicate of a stored event, and a second event at its seq
                frames.append(stored[i][5])
                expected[i].append(("duplicate", 6))
                other = make_event(
                    owner.owner_key,
                    channel=owner.channel,
                    after=ChainHead(5, event_id(stored[i][4].body), 0),
                    body=b"other",
                    now=int(time.time()),
                )
                frames.append(other)
                expected[i].append("equivocation")
            signed = poster.next()
            poster.accept(signed)
            stored[i].append(signed)
            frames.append(signed)
            expected[i].append(("stored", len(stored[i])))
        async with group_session(relay, address_id) as session:
            for signed in frames:
                await session.send(Post(event=signed))
            answers = [await session.recv(10) for _ in frames]
        return [
            a.code if isinstance(a, Error) else (a.status, a.seq)
            for a in answers
            if isinstance(a, Error | PostResult)
        ]

    got: list[list[object]] = [[], []]
    async with (
        group_session(relay, channels[0][2]) as feed0,
        group_session(relay, channels[1][2]) as feed1,
    ):
        feeds = [feed0, feed1]
        for i in range(2):
            owner, _, address_id = channels[i]
            await subscribe(feeds[i], relay, owner, address_id, members[i])

        async def run(i: int) -> None:
            got[i] = await owner_posts(i)

        async with trio.open_nursery() as nursery:
            for i in range(2):
                nursery.start_soon(run, i)
        for i in range(2):
            assert got[i] == expected[i]
            assert await read_events(feeds[i], len(stored[i])) == stored[i]
            with trio.move_on_after(0.3):  # and nothing else: no refused event follows
                frame = await feeds[i].recv(1)
                raise AssertionError(f"unexpected frame {frame}")
    for i in range(2):  # history served to a new subscriber: the stored events, in order
        owner, _, address_id = channels[i]
        late = await join_member(relay, owner, address_id, name="Late")
        async with group_session(relay, address_id) as session:
            await subscribe(session, relay, owner, address_id, late, since=0)
            assert await read_events(session, len(stored[i])) == stored[i]
