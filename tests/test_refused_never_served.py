"""An event the relay refused never reaches a member, by any path (issue 13, attack class 1).

An owner (anyone can make a channel) who sends a second, different event for a sequence
number already taken is refused (``equivocation``).  Were the refused event served anyway
(live, from the fan-out's cache of recent events during catch-up, from history, or in a
head), members would hold two signed events at one sequence number and accuse this honest
relay of a fork.  Each path is taken here against the real daemon.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ENGINES
from relayproc import RelayFactory
from traffic import (
    Poster,
    active_channel,
    group_session,
    join_member,
    metric,
    next_frame,
    raw_feed,
    read_events,
    subscribe,
)

from relay.protocol.events import ChainHead, event_id, make_event
from relay.protocol.messages import EventFrame, HeadAnswer, HeadRequest, Post, Signed

# Every test here runs on both databases: SQLite, and a real PostgreSQL server.
pytestmark = pytest.mark.parametrize("engine", ENGINES, indirect=True)


async def test_a_refused_event_reaches_no_member_by_any_path(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    # Small buffers and pages: the slow member lags into catch-up, and a later subscriber
    # catches up one stored event at a time, then from the cache of recent events.
    relay = relay_factory(events={"send_buffer_frames": 4, "catch_up_page": 1, "recent_cache": 1000})
    owner, _, address_id = await active_channel(relay, tmp_path)
    slow = await join_member(relay, owner, address_id)
    quick = await join_member(relay, owner, address_id)
    late = await join_member(relay, owner, address_id)
    poster = Poster(owner)
    refused: list[Signed] = []
    async with (
        group_session(relay, address_id) as owner_session,
        raw_feed(relay, address_id, owner, slow, receive_buffer=4096) as slow_feed,
        group_session(relay, address_id) as quick_feed,
    ):
        await subscribe(quick_feed, relay, owner, address_id, quick)
        body = b"y" * 20_000
        for n in range(1, 121):
            await poster.post(owner_session, body)
            assert await read_events(quick_feed, 1) == poster.events[-1:]
            if n % 40 == 0:
                # A second event at a taken sequence number, while it is in the recent cache.
                taken = poster.events[n // 2 - 1]
                other = make_event(
                    owner.owner_key,
                    channel=owner.channel,
                    after=ChainHead(n // 2 - 1, event_id(poster.events[n // 2 - 2].body)),
                    body=b"the other history",
                    now=poster.head.created_at,
                )
                assert other.body != taken.body
                await owner_session.expect_error(Post(event=other), "equivocation")
                refused.append(other)
        assert metric(relay, "relay_feed_lagging_total") >= 1  # the slow member did lag
        # The member that lagged catches up (from the cache and the store): every accepted
        # event once, in order, and nothing else.
        assert await slow_feed.read_all(len(poster.events)) == poster.events
        # A member who subscribes afterwards, from the start: one stored page, then the cache.
        async with group_session(relay, address_id) as late_feed:
            await subscribe(late_feed, relay, owner, address_id, late, since=0)
            assert await read_events(late_feed, len(poster.events), timeout=20) == poster.events
            # The head names the accepted event, and the event sent with it is that one.
            head = await late_feed.request(HeadRequest())
            assert isinstance(head, HeadAnswer) and head.event == poster.events[-1]
        # The live member was sent no refused event either (its next frame is the next post).
        await poster.post(owner_session, b"after")
        frame = await next_frame(quick_feed, EventFrame)
        assert isinstance(frame, EventFrame) and frame.event == poster.events[-1]
    assert len(refused) == 3 and metric(relay, "relay_equivocations_total") == 3
