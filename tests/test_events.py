"""Channel traffic against the real daemon: owners post signed, chained events; members
subscribe and read them as history and live, in order and once; the relay refuses what
breaks the chain and keeps proof of an owner's equivocation."""

from __future__ import annotations

from pathlib import Path

from relayproc import RunningRelay
from traffic import Poster, active_channel, group_session, join_member, read_events, subscribe

from relay.protocol.events import event_id


async def test_post_then_read_as_history_and_live(relay: RunningRelay, tmp_path: Path) -> None:
    owner, _, address_id = await active_channel(relay, tmp_path)
    ada = await join_member(relay, owner, address_id)
    poster = Poster(owner)
    async with group_session(relay, address_id) as owner_session:
        first = await poster.post(owner_session, b"first")
        assert first.seq == 1 and first.id == event_id(poster.events[0].body)
        await poster.post(owner_session, b"second")
        async with group_session(relay, address_id) as feed:
            answer = await subscribe(feed, relay, owner, address_id, ada)
            assert (answer.head_seq, answer.first_seq, answer.profile_version) == (2, 1, 2)
            assert await read_events(feed, 2) == poster.events
            await poster.post(owner_session, b"third")
            assert await read_events(feed, 1) == poster.events[2:]
