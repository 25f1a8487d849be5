"""Join requests arriving together: on PostgreSQL the writer stores consecutive requests of a
batch in shared statements (``relay.server.admission._Intake``), on SQLite one by one; the
decisions must be the same as if each request came alone, in arrival order."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from conftest import ENGINES
from relayproc import RelayFactory
from test_groups_relay import group, joined, now, publish_entry
from traffic import Member, active_channel, group_session, join_request
from wire import check_error

from relay.protocol import timeline as rules
from relay.protocol.messages import JoinResult

# Every test here runs on both databases: SQLite, and a real PostgreSQL server.
pytestmark = pytest.mark.parametrize("engine", ENGINES, indirect=True)


async def test_requests_together_fill_the_member_limit_exactly(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    # Twelve members (one of them twice) ask at once, against a limit of five members: five
    # are admitted and no more, the others are refused with the limit's code, and the member
    # who asked twice gets one decision.
    relay = relay_factory(members={"max_per_group": 5})
    owner, _, address_id = await active_channel(relay, tmp_path)
    members = [Member() for _ in range(12)]
    askers = [*members, members[3]]
    answers: list[JoinResult | None] = [None] * len(askers)
    async with trio.open_nursery() as nursery:
        ready = trio.Event()

        async def ask(i: int) -> None:
            async with group_session(relay, address_id) as session:
                join = join_request(relay, owner, address_id, askers[i], session=session.challenge)
                await ready.wait()  # every session open first: the requests arrive together
                answer = await session.request(join)
            assert isinstance(answer, JoinResult), answer
            answers[i] = answer

        for i in range(len(askers)):
            nursery.start_soon(ask, i)
        await trio.sleep(1.0)
        ready.set()
    decided = [(a.status, a.code) for a in answers if a is not None]
    by_member = {id(askers[i]): decided[i] for i in range(len(members))}
    assert sorted(set(decided)) == [("admitted", None), ("refused", "member_limit")]
    assert sum(1 for d in by_member.values() if d == ("admitted", None)) == 5
    if by_member[id(members[3])] == ("admitted", None):  # admitted once: asked again, the same
        assert decided[-1] == ("admitted", None)


async def test_banned_keys_among_requests_together_are_refused_and_the_batch_holds(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    # Two members are banned by the owners; then they and six others ask at once.  The banned
    # keys are refused ``banned`` and the others admitted, and on PostgreSQL the writer's
    # shared statements took the run (a failing one would log ``store.batch_failed`` and
    # leave every request to run alone).
    relay = relay_factory()
    owner, address_id = await group(relay, tmp_path)
    banned = [await joined(relay, owner, address_id, name) for name in ("Ada", "Bob")]
    async with group_session(relay, address_id) as session:
        for author in banned:
            ban = rules.make_moderation(
                owner.owner_key, channel=owner.channel, action="ban", subject=author.member.public, now=now()
            )
            await publish_entry(session, ban, "moderation")
    askers = [author.member for author in banned] + [Member() for _ in range(6)]
    answers: list[object] = [None] * len(askers)
    async with trio.open_nursery() as nursery:
        ready = trio.Event()

        async def ask(i: int) -> None:
            async with group_session(relay, address_id) as session:
                join = join_request(relay, owner, address_id, askers[i], session=session.challenge)
                await ready.wait()
                answers[i] = await session.request(join)

        for i in range(len(askers)):
            nursery.start_soon(ask, i)
        await trio.sleep(1.0)
        ready.set()
    for answer in answers[:2]:
        check_error(answer, "banned")
    assert [(a.status, a.code) for a in answers[2:] if isinstance(a, JoinResult)] == [("admitted", None)] * 6
    assert relay.events("store.batch_failed") == []
