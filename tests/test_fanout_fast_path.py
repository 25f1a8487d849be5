"""The fan-out's fast path (an idle member's frame written straight to its socket) never
breaks a member's stream: a member that stops reading while large events go out, so that
writes land in part and its queue overflows into catch-up, and that meanwhile asks for the
head, later reads every event once and in order, each frame whole, with the head answer
among them; a member reading all along gets the same events."""

from __future__ import annotations

from pathlib import Path

import trio
from relayproc import RelayFactory
from traffic import Poster, active_channel, group_session, join_member, subscribe

from relay.protocol.events import stored_event
from relay.protocol.messages import EventFrame, HeadAnswer, HeadRequest

POSTS = 120
BODY = 60_000  # 120 posts of 60 KB: far more than the kernel buffers and the 1 MiB send buffer


async def test_a_member_that_stops_reading_gets_every_event_whole_once_in_order(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(events={"send_buffer_bytes": 1024 * 1024})
    owner, _, address_id = await active_channel(relay, tmp_path)
    slow_member = await join_member(relay, owner, address_id, "Slow")
    quick_member = await join_member(relay, owner, address_id, "Quick")
    poster = Poster(owner)
    async with (
        group_session(relay, address_id) as owner_session,
        group_session(relay, address_id) as slow,
        group_session(relay, address_id) as quick,
    ):
        await subscribe(slow, relay, owner, address_id, slow_member)
        await subscribe(quick, relay, owner, address_id, quick_member)
        quick_seqs: list[int] = []

        async def read_quick() -> None:
            while len(quick_seqs) < POSTS:
                frame = await quick.recv(30)
                if isinstance(frame, EventFrame):
                    quick_seqs.append(stored_event(frame.event).seq)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_quick)
            for i in range(POSTS):
                await poster.post(owner_session, bytes([i % 256]) * BODY)
                if i == POSTS // 2:
                    await slow.send(HeadRequest())  # its answer must not land inside a frame
        assert quick_seqs == list(range(1, POSTS + 1))
        seqs: list[int] = []
        heads = 0
        while len(seqs) < POSTS or not heads:
            frame = await slow.recv(30)
            if isinstance(frame, HeadAnswer):
                heads += 1
            elif isinstance(frame, EventFrame):
                event = stored_event(frame.event)
                assert event.event.body == bytes([(event.seq - 1) % 256]) * BODY
                seqs.append(event.seq)
        assert seqs == list(range(1, POSTS + 1)) and heads == 1
    # The slow member's queue did overflow: the catch-up path ran, not only the fast path.
    assert relay.events("feed.lagging")
