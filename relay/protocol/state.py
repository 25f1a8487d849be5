"""The group state machine: which state changes are allowed, and why others are refused.

States (see docs/protocol.md):

    invited ──approve──> accepted ──activate──> active ──suspend──> suspended
       │                    │                     │ <──resume──────     │
       └─reject─> rejected  └─timeout/remove─> removed <──unlist/remove─┘

``rejected`` and ``removed`` are terminal: a repeated invitation for such a
channel gets the same refusal, unless the owners closed the group themselves
(:data:`OWNERS_CLOSED`).  Pure code: callers apply the returned state.
"""

from __future__ import annotations

import enum

from relay.protocol.errors import ErrorCode, RemoteProtocolError


class GroupState(enum.StrEnum):
    INVITED = "invited"
    ACCEPTED = "accepted"
    ACTIVE = "active"
    REJECTED = "rejected"
    SUSPENDED = "suspended"
    REMOVED = "removed"

    @property
    def terminal(self) -> bool:
        return self in (GroupState.REJECTED, GroupState.REMOVED)

    @property
    def has_address(self) -> bool:
        return self in (GroupState.ACCEPTED, GroupState.ACTIVE, GroupState.SUSPENDED)


# Reason codes of removals the owners caused (they unlisted the relay, or never activated the
# group in time).  After one, a new service group may bring the channel back with a new
# address; refusals by policy or by the operator stay remembered.
OWNERS_CLOSED = frozenset({ErrorCode.NOT_LISTED.value, ErrorCode.ACTIVATION_TIMEOUT.value})


class Transition(enum.StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    ACTIVATE = "activate"
    UNLIST = "unlist"  # a newer profile no longer lists this relay
    TIMEOUT = "timeout"
    SUSPEND = "suspend"
    RESUME = "resume"
    REMOVE = "remove"


_S, _T = GroupState, Transition
_TABLE: dict[tuple[GroupState, Transition], GroupState] = {
    (_S.INVITED, _T.APPROVE): _S.ACCEPTED,
    (_S.INVITED, _T.REJECT): _S.REJECTED,
    (_S.INVITED, _T.REMOVE): _S.REMOVED,
    (_S.ACCEPTED, _T.ACTIVATE): _S.ACTIVE,
    (_S.ACCEPTED, _T.TIMEOUT): _S.REMOVED,
    (_S.ACCEPTED, _T.UNLIST): _S.ACCEPTED,
    (_S.ACCEPTED, _T.REMOVE): _S.REMOVED,
    (_S.ACTIVE, _T.ACTIVATE): _S.ACTIVE,
    (_S.ACTIVE, _T.UNLIST): _S.REMOVED,
    (_S.ACTIVE, _T.SUSPEND): _S.SUSPENDED,
    (_S.ACTIVE, _T.REMOVE): _S.REMOVED,
    (_S.SUSPENDED, _T.ACTIVATE): _S.SUSPENDED,
    (_S.SUSPENDED, _T.RESUME): _S.ACTIVE,
    (_S.SUSPENDED, _T.UNLIST): _S.REMOVED,
    (_S.SUSPENDED, _T.REMOVE): _S.REMOVED,
}


def transition(state: GroupState, event: Transition) -> GroupState:
    """The state after ``event``, or ``out_of_order`` / ``group_closed`` with the reason."""
    after = _TABLE.get((state, event))
    if after is not None:
        return after
    if state.terminal:
        raise RemoteProtocolError(
            ErrorCode.GROUP_CLOSED, f"the group is {state.value}; it cannot {event.value}"
        )
    raise RemoteProtocolError(ErrorCode.OUT_OF_ORDER, f"a group that is {state.value} cannot {event.value}")
