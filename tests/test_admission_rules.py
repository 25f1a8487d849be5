"""The pure admission rules and the per-connection token bucket, with plain values."""

from __future__ import annotations

from dataclasses import replace

import pytest

from relay.protocol import admission
from relay.protocol.admission import Decision, GroupRules, JoinState
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.session import TokenBucket
from relay.protocol.state import GroupState

ACTIVE = GroupRules(
    state=GroupState.ACTIVE,
    reason_code=None,
    reason=None,
    admission="auto",
    max_members=0,
    admission_suspended=False,
    members=0,
)


def arrive(rules: GroupRules = ACTIVE, existing: Decision | None = None, **kw: object) -> admission.Arrival:
    args: dict[str, object] = {"same_request": False, "queued_ahead": 0, "undecided": 0, "queue_bound": 10}
    args.update(kw)
    return admission.arrive(rules, existing=existing, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "state", "code"),
    [
        ({}, JoinState.ADMITTED, None),
        ({"admission": "approval"}, JoinState.PENDING_APPROVAL, None),
        ({"admission_suspended": True}, JoinState.REFUSED, "admission_suspended"),
        ({"max_members": 2, "members": 2}, JoinState.REFUSED, "member_limit"),
        ({"max_members": 2, "members": 1}, JoinState.ADMITTED, None),
        ({"state": GroupState.ACCEPTED}, JoinState.HELD, None),
        ({"state": GroupState.SUSPENDED}, JoinState.HELD, None),
        ({"state": GroupState.REMOVED, "reason_code": "not_listed"}, JoinState.REFUSED, "not_listed"),
        ({"state": GroupState.REJECTED}, JoinState.REFUSED, "group_closed"),
    ],
)
def test_decide(change: dict[str, object], state: JoinState, code: str | None) -> None:
    decision = admission.decide(replace(ACTIVE, **change))  # type: ignore[arg-type]
    assert (decision.state, decision.code) == (state, code)
    assert decision.state is JoinState.ADMITTED or decision.reason


def test_arrival_holds_before_activation_and_behind_others() -> None:
    assert arrive(replace(ACTIVE, state=GroupState.ACCEPTED)).decision.state is JoinState.HELD
    behind = arrive(queued_ahead=3)
    assert (behind.decision.state, behind.store) == (JoinState.HELD, True)
    assert arrive().decision.state is JoinState.ADMITTED


def test_arrival_of_a_duplicate_gets_the_first_decision() -> None:
    first = Decision(JoinState.ADMITTED)
    again = arrive(replace(ACTIVE, admission_suspended=True), existing=first)
    assert again.decision is first and not again.store
    refused = Decision(JoinState.REFUSED, "refused_by_owners", "no")
    assert arrive(existing=refused).decision is refused
    # "not now" is decided afresh for a new request, but a replay of it gets the same answer
    not_now = Decision(JoinState.REFUSED, "admission_suspended", "paused")
    assert arrive(existing=not_now).decision.state is JoinState.ADMITTED
    assert arrive(existing=not_now, same_request=True).decision is not_now


def test_arrival_at_a_full_queue_or_a_closed_group() -> None:
    full = arrive(undecided=10)
    assert (full.decision.code, full.store) == ("queue_full", False)
    with pytest.raises(RemoteProtocolError) as info:
        arrive(replace(ACTIVE, state=GroupState.REMOVED, reason="unlisted"))
    assert info.value.code is ErrorCode.GROUP_CLOSED and "unlisted" in info.value.reason


def test_owners_decide_only_waiting_requests() -> None:
    assert admission.approve(ACTIVE, JoinState.PENDING_APPROVAL).state is JoinState.ADMITTED
    assert admission.refuse(JoinState.PENDING_APPROVAL, "").reason == "the owners declined"
    for call in (
        lambda: admission.approve(ACTIVE, JoinState.ADMITTED),
        lambda: admission.refuse(JoinState.HELD, "x"),
        lambda: admission.approve(replace(ACTIVE, state=GroupState.SUSPENDED), JoinState.PENDING_APPROVAL),
    ):
        with pytest.raises(RemoteProtocolError) as info:
            call()
        assert info.value.code is ErrorCode.OUT_OF_ORDER
    with pytest.raises(RemoteProtocolError) as info:
        admission.approve(replace(ACTIVE, max_members=1, members=1), JoinState.PENDING_APPROVAL)
    assert info.value.code is ErrorCode.MEMBER_LIMIT


def test_dead_letters_look_held_to_members() -> None:
    assert JoinState.DEAD.wire == "held" and JoinState.DEAD.undecided
    assert not JoinState.ADMITTED.undecided


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2, burst=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)  # one token back after half a second
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # never above burst
