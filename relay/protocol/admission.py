"""The admission rules: what happens to a join request, on arrival and when processed.

One function decides for both the intake (a request to an active group with
nothing queued ahead of it is decided at once) and the queue worker (held
requests, in arrival order, once the group is active or closed), so the two
paths cannot drift apart.  The owners' rules come from their signed profile
(``admission``, ``max_members``); the operator's cap and the queue bound are
arguments.  Pure code: the caller reads the counts and applies the result.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.state import GroupState


class JoinState(enum.StrEnum):
    HELD = "held"
    PENDING_APPROVAL = "pending_approval"
    ADMITTED = "admitted"
    REFUSED = "refused"
    DEAD = "dead"  # kept failing; waits for the operator (members are told "held")

    @property
    def wire(self) -> str:
        """What the member is told: a dead-lettered request is still waiting, as far as they know."""
        return JoinState.HELD.value if self is JoinState.DEAD else self.value

    @property
    def undecided(self) -> bool:
        return self in (JoinState.HELD, JoinState.PENDING_APPROVAL, JoinState.DEAD)


# Refusals that say "not now" rather than "no": a later request from the same member key is
# decided afresh instead of getting the same answer again.
RETRYABLE_REFUSALS = frozenset(
    {
        ErrorCode.QUEUE_FULL.value,
        ErrorCode.ADMISSION_SUSPENDED.value,
        ErrorCode.MEMBER_LIMIT.value,
        ErrorCode.REQUEST_EXPIRED.value,
    }
)


@dataclass(frozen=True, slots=True)
class GroupRules:
    """What the decision depends on, read in the same transaction that applies it."""

    state: GroupState
    reason_code: str | None
    reason: str | None
    admission: str  # from the owner-signed profile: "auto" | "approval"
    max_members: int  # the smaller of the owners' and the operator's limits; 0 = none
    admission_suspended: bool
    members: int


@dataclass(frozen=True, slots=True)
class Decision:
    state: JoinState
    code: str | None = None
    reason: str | None = None

    @property
    def retryable(self) -> bool:
        return self.state is JoinState.REFUSED and self.code in RETRYABLE_REFUSALS


HELD_BEFORE_ACTIVE = "the group is not active yet; the request is kept and decided once it is"
HELD_BEHIND = "earlier requests are queued; this one is kept and decided in arrival order"
HELD_SUSPENDED = "the relay's operator paused this group; the request is kept until it resumes"


def decide(rules: GroupRules) -> Decision:
    """The decision for one request at the front of its group's queue."""
    if rules.state.terminal:
        return Decision(
            JoinState.REFUSED,
            rules.reason_code or ErrorCode.GROUP_CLOSED.value,
            rules.reason or f"the group is {rules.state.value}",
        )
    if rules.state is GroupState.SUSPENDED:
        return Decision(JoinState.HELD, reason=HELD_SUSPENDED)
    if rules.state is not GroupState.ACTIVE:
        return Decision(JoinState.HELD, reason=HELD_BEFORE_ACTIVE)
    if rules.admission_suspended:
        return Decision(
            JoinState.REFUSED,
            ErrorCode.ADMISSION_SUSPENDED.value,
            "the owners have paused admissions; ask again later",
        )
    if rules.max_members and rules.members >= rules.max_members:
        return Decision(
            JoinState.REFUSED,
            ErrorCode.MEMBER_LIMIT.value,
            f"the group has reached its limit of {rules.max_members} members",
        )
    if rules.admission == "approval":
        return Decision(JoinState.PENDING_APPROVAL, reason="the owners approve new members")
    return Decision(JoinState.ADMITTED)


@dataclass(frozen=True, slots=True)
class Arrival:
    """What to do with an arriving request: ``store`` it with ``decision``, or only answer."""

    decision: Decision
    store: bool


def arrive(
    rules: GroupRules,
    *,
    existing: Decision | None,
    same_request: bool,
    queued_ahead: int,
    undecided: int,
    queue_bound: int,
) -> Arrival:
    """Apply the rules to a request as it arrives (``existing``: the member key's stored one).

    - The same member key again gets its first decision again, never a second membership,
      unless that decision was a "not now" refusal and this is a new request.
    - A closed group is an error (nothing is stored); a full queue a ``queue_full`` refusal.
    - Before activation, or behind requests already queued, the request is held.
    """
    if existing is not None and (same_request or not existing.retryable):
        return Arrival(existing, store=False)
    if rules.state.terminal:
        raise RemoteProtocolError(
            ErrorCode.GROUP_CLOSED,
            f"the group is {rules.state.value}" + (f": {rules.reason}" if rules.reason else ""),
        )
    if undecided >= queue_bound:
        return Arrival(
            Decision(
                JoinState.REFUSED,
                ErrorCode.QUEUE_FULL.value,
                f"this group's queue holds its maximum of {queue_bound} undecided requests; ask again later",
            ),
            store=False,
        )
    if rules.state is GroupState.ACTIVE and queued_ahead:
        return Arrival(Decision(JoinState.HELD, reason=HELD_BEHIND), store=True)
    return Arrival(decide(rules), store=True)


def approve(rules: GroupRules, current: JoinState) -> Decision:
    """An owner admits a member whose request waits for approval."""
    _require_pending(current)
    if rules.state is not GroupState.ACTIVE:
        raise RemoteProtocolError(ErrorCode.OUT_OF_ORDER, f"the group is {rules.state.value}")
    if rules.max_members and rules.members >= rules.max_members:
        raise RemoteProtocolError(
            ErrorCode.MEMBER_LIMIT, f"the group has reached its limit of {rules.max_members} members"
        )
    return Decision(JoinState.ADMITTED)


def refuse(current: JoinState, note: str) -> Decision:
    """An owner turns down a member whose request waits for approval."""
    _require_pending(current)
    return Decision(JoinState.REFUSED, ErrorCode.REFUSED_BY_OWNERS.value, note or "the owners declined")


def _require_pending(current: JoinState) -> None:
    if current is not JoinState.PENDING_APPROVAL:
        raise RemoteProtocolError(
            ErrorCode.OUT_OF_ORDER, f"the member's request is {current.value}, not waiting for approval"
        )
