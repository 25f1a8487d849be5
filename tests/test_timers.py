"""The relay's timers, on trio's MockClock: back-off and dead letters, request expiry,
activation time-outs, staleness, budgets that refill, pruning by age, decisions waited for.

Each test runs the real relay in-process (``inprocess.py``: the real Database on a SQLite
file in the test's folder, the real JoinWorker, GroupService, sweeps and operator endpoint)
on a virtual clock, with realistic settings (minutes and hours, not the one-second limits a
test against the daemon needs), and asserts *when* things happen, to the virtual second,
not only that they eventually do.  The clocks are the only fakes.  The flows around these
timers (the client library, the command line, the daemon's JSON log) are tested against the
real daemon elsewhere.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from inprocess import Member, Owner, relay_on_mock_clock, rendered

from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.events import ChainHead, event_id, make_event
from relay.protocol.messages import Post
from relay.protocol.state import GroupState
from relay.store import events as event_store
from relay.store import groups


def since(start: float) -> float:
    return trio.current_time() - start


def body(answer: Any) -> Any:
    return json.loads(answer.body)


async def test_a_failing_request_backs_off_logs_each_failure_then_waits_as_a_dead_letter(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    members = {"max_attempts": 4, "retry_base": 2.0, "retry_max": 5.0}
    async with relay_on_mock_clock(tmp_path, mock_clock, members=members) as relay:
        owner = Owner(relay)
        assert (await owner.invite()).status == "accepted"
        ada = Member(owner)
        assert (await ada.join()).status == "held"
        # The stored request is damaged on disk (a real write to the relay's SQLite file).
        db = relay.parts.db
        (good,) = await db.transact(lambda conn: conn.execute("SELECT request FROM join_requests").fetchone())
        await db.transact(lambda conn: conn.execute("UPDATE join_requests SET request = ?", (b"\xc1",)))
        await owner.publish()  # active: the worker takes the request at once
        start = trio.current_time()
        await trio.sleep(3600)

        failed, dead = relay.events("queue.attempt_failed"), relay.events("queue.dead_letter")
        # tried at once, then after 2 s, 4 s (doubling) and 5 s (retry_max); the fourth is the last
        assert [(e["attempt"], e["retry_in"]) for e in failed] == [(1, 2.0), (2, 4.0), (3, 5.0)]
        assert [e["attempt"] for e in dead] == [4]
        assert [e["at"] - start for e in failed + dead] == pytest.approx([0, 2, 6, 11], abs=1e-3)
        # each failed attempt is logged once, with the exception and its traceback
        for line in failed + dead:
            assert line["group"] == 1 and line["request"] == 1
            text = rendered(line)["exception"]
            assert text.startswith("Traceback (most recent call last):") and "malformed" in text, text
        metrics = relay.relay.metrics
        assert metrics.get("relay_queue_failures_total") == 4
        assert metrics.get("relay_queue_dead_letters_total") == 1

        # the operator sees the dead letter, the member still waits, nothing else happens
        [row] = body(await relay.admin("GET", "/admin/held?status=dead"))["requests"]
        assert (row["status"], row["attempts"]) == ("dead", 4) and "malformed" in row["last_error"]
        assert (await ada.status()).status == "held"
        # repaired and retried by the operator: decided at once
        await db.transact(lambda conn: conn.execute("UPDATE join_requests SET request = ?", (good,)))
        retried = await relay.admin("POST", f"/admin/held/{row['id']}/retry")
        assert retried.status == 200 and body(retried)["status"] == "held"
        at = trio.current_time()
        assert (await ada.status(wait=60)).status == "admitted"
        assert since(at) == 0
        assert (await relay.admin("POST", f"/admin/held/{row['id']}/retry")).status == 404
        assert len(relay.events("queue.attempt_failed")) == 3  # no attempt failed after the retry


async def test_held_requests_expire_once_older_than_max_request_age(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    sections: dict[str, dict[str, object]] = {
        "members": {"max_request_age": 3600, "max_status_wait": 3600},
        "policy": {"activation_timeout": 86400},  # the group waits longer than its requests
    }
    async with relay_on_mock_clock(tmp_path, mock_clock, **sections) as relay:
        owner = Owner(relay)
        await owner.invite()  # never activated: requests are held
        ada, bob = Member(owner, "Ada"), Member(owner, "Bob")
        start = trio.current_time()
        assert (await ada.join()).status == "held"
        await trio.sleep(1800)
        assert (await bob.join()).status == "held"
        await trio.sleep(1800)
        assert (await ada.status()).status == "held"  # exactly the age limit: not older yet
        # the expiry pass (every max_request_age / 10, at most a minute) refuses it within a minute
        refused = await ada.status(wait=600)
        assert (refused.status, refused.code) == ("refused", "request_expired")
        assert 3600 < since(start) <= 3660
        assert (await bob.status()).status == "held"  # half an hour younger
        refused = await bob.status(wait=3600)
        assert (refused.status, refused.code) == ("refused", "request_expired")
        assert 5400 < since(start) <= 5460
        assert [e["requests"] for e in relay.events("queue.expired")] == [1, 1]
        assert relay.relay.metrics.get("relay_queue_expired_total") == 2


async def test_a_group_never_activated_is_removed_at_its_activation_timeout(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    policy = {"activation_timeout": 600, "max_pending_groups_per_ip": 1}
    async with relay_on_mock_clock(
        tmp_path, mock_clock, policy=policy, members={"max_status_wait": 600}
    ) as relay:
        service = relay.parts.service
        owner = Owner(relay)
        start = trio.current_time()
        assert (await owner.invite()).status == "accepted"
        first_address = owner.address
        ada = Member(owner)
        assert (await ada.join()).status == "held"
        # the source's one group waiting for activation is taken
        other = Owner(relay)
        with pytest.raises(RemoteProtocolError) as full:
            await other.invite()
        assert full.value.code is ErrorCode.RATE_LIMITED

        await trio.sleep(600)
        record = await service.group_by_address(owner.address_id)
        assert record is not None and record.state is GroupState.ACCEPTED  # the deadline itself
        # the sweep (every activation_timeout / 4, at most a minute) removes it within a minute,
        # and the held request is refused with the group's reason
        decided = await ada.status(wait=600)
        assert (decided.status, decided.code) == ("refused", "activation_timeout")
        assert 600 < since(start) <= 660
        [line] = relay.events("group.activation_timeout")
        assert line["group"] == record.id and line["at"] == trio.current_time()
        record = await service.group_by_address(owner.address_id)
        assert record is not None and record.state is GroupState.REMOVED
        assert record.reason_code == "activation_timeout"
        log = await relay.parts.db.transact(lambda conn: groups.read_log(conn, record.id))
        assert (log[-1].event, log[-1].detail) == ("removed", "activation time-out")

        # the address is dead: a profile listing it is refused
        with pytest.raises(RemoteProtocolError) as closed:
            await owner.publish()
        assert closed.value.code is ErrorCode.GROUP_CLOSED and "removed" in closed.value.reason
        # the same service group again gets the remembered answer ...
        again = await owner.invite()
        assert (again.status, again.code) == ("refused", "activation_timeout")
        # ... the source's budget is free again ...
        assert (await other.invite()).status == "accepted"
        # ... and a new service group starts afresh, with a new address
        owner.channel.service_group = secrets.token_bytes(16)
        fresh = await owner.invite(source="198.51.100.1")
        assert fresh.status == "accepted" and owner.address != first_address


async def test_an_invitation_is_answered_until_it_is_older_than_invitation_max_age(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with relay_on_mock_clock(tmp_path, mock_clock, policy={"invitation_max_age": 600}) as relay:
        owner = Owner(relay)
        session = secrets.token_bytes(32)
        sealed = relay.seal(owner.channel.invitation(relay.fingerprint, session=session, now=relay.now()))
        invite = relay.parts.service.invite
        first = await invite(sealed, "203.0.113.9", session)
        await trio.sleep(600)  # the same bytes on their connection, at the limit: the same answer
        assert await invite(sealed, "203.0.113.9", session) == first
        await trio.sleep(1)
        with pytest.raises(RemoteProtocolError) as stale:
            await invite(sealed, "203.0.113.9", session)
        assert stale.value.code is ErrorCode.INVITATION_STALE
        assert "601 s old; the limit is 600 s" in stale.value.reason


async def test_a_sources_invitation_budget_refills_at_its_rate(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    policy = {"invitations_per_ip_per_minute": 3, "max_pending_groups_per_ip": 100}
    async with relay_on_mock_clock(tmp_path, mock_clock, policy=policy) as relay:

        async def invited() -> str:
            try:
                return (await Owner(relay).invite()).status
            except RemoteProtocolError as exc:
                return exc.code.value

        assert [await invited() for _ in range(4)] == ["accepted"] * 3 + ["rate_limited"]
        await trio.sleep(19)  # a token comes back every 20 s
        assert await invited() == "rate_limited"
        await trio.sleep(2)
        assert [await invited(), await invited()] == ["accepted", "rate_limited"]
        await trio.sleep(60)  # a minute refills the burst of 3, no more
        assert [await invited() for _ in range(4)] == ["accepted"] * 3 + ["rate_limited"]
        # bound.hit is logged at most once per 10 s of trio's clock, carrying the hits since
        hits = relay.events("bound.hit")
        assert {e["bound"] for e in hits} == {"invitations_per_ip"}
        assert [(e["at"], e["hits"]) for e in hits] == [(0, 1), (19, 1), (81, 2)]
        assert relay.relay.metrics.get("relay_bounds_hit_total", bound="invitations_per_ip") == 4


async def test_events_older_than_max_age_are_pruned_and_the_head_is_kept(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    events = {"max_age": 3600, "prune_interval": 60}
    async with relay_on_mock_clock(tmp_path, mock_clock, events=events) as relay:
        owner = Owner(relay)
        await owner.invite()
        await owner.publish()
        binding = await owner.binding()
        head = ChainHead()

        async def post() -> int:
            nonlocal head
            key = owner.channel.owner
            signed = make_event(
                key, channel=owner.channel.channel, after=head, body=b"x" * 100, now=relay.now()
            )
            answer = await relay.parts.channels.post(binding, Post(event=signed))
            assert answer.status == "stored", answer
            head = ChainHead(answer.seq, event_id(signed.body), relay.now())
            return answer.seq

        async def kept() -> tuple[int, int]:
            row = await relay.parts.db.transact(lambda conn: event_store.head(conn, binding.id))
            return row.first_seq, row.head_seq

        start = trio.current_time()
        assert [await post() for _ in range(3)] == [1, 2, 3]
        await trio.sleep(1800)
        assert [await post() for _ in range(2)] == [4, 5]
        await trio.sleep(1800)
        assert await kept() == (1, 5)  # exactly max_age old: kept
        await trio.sleep(61)  # just after the next pruning pass (one every prune_interval)
        assert await kept() == (4, 5)
        await trio.sleep(1800)
        assert await kept() == (5, 5)  # all older than max_age, but the head is always kept
        pruned = relay.events("events.pruned")
        assert [(e["events"], e["at"] - start) for e in pruned] == [(3, 3660), (1, 5460)]
        assert relay.relay.metrics.get("relay_events_pruned_total", reason="age") == 4
        assert await post() == 6  # the chain goes on from the kept head


async def test_a_member_waiting_for_the_decision_gets_it_when_it_is_made(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    async with relay_on_mock_clock(tmp_path, mock_clock) as relay:
        owner = Owner(relay)
        await owner.invite()
        ada, bob = Member(owner, "Ada"), Member(owner, "Bob")
        assert (await ada.join()).status == (await bob.join()).status == "held"
        answers: dict[str, tuple[str, float]] = {}
        start = trio.current_time()

        async def wait_for(member: Member, wait: float) -> None:
            answer = await member.status(wait=wait)
            answers[member.name] = (answer.status, since(start))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_for, ada, 60)
            nursery.start_soon(wait_for, bob, 5)
            await trio.sleep(30)
            await owner.publish()
        # Ada's request was answered by the decision, the moment it was made; Bob's wait ended
        # first, at its own length, with what there was then
        assert answers == {"Ada": ("admitted", 30), "Bob": ("held", 5)}
