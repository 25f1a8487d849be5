"""Pipelined posts are answered in batches (one write for the answers ready together): the
answers still come one per post, in the order the posts were sent, refusals in their place."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ENGINES
from relayproc import RunningRelay
from traffic import Poster, active_channel, group_session

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
