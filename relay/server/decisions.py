"""What goes beside a decision on a join request, wherever it is made.

A join request is decided in four places: at intake (an active group with nothing
queued), by the join worker (held requests), by an owner's approval or refusal, and
by expiry.  Each writes the same things in the decision's own transaction: an entry
in the owners' service log when the owners must act (``member_pending``), and the
per-group bound on remembered refusals.  This module is that one place, so that the
four paths cannot drift apart; the rules themselves are ``relay.protocol.admission``.

Runs on the database thread, inside the decision's transaction: bound hits are handed
to the trio thread (``Bounds.hit_from_thread``).  Must not: decide anything, or log or
touch metrics from the database thread.
"""

from __future__ import annotations

from relay.protocol.admission import Decision, GroupRules, JoinState
from relay.protocol.encoding import b64e
from relay.server.bounds import Bounds
from relay.server.config import MembersConfig
from relay.store import groups, joins
from relay.store.conn import Conn
from relay.store.groups import GroupRecord


def member_id(key: bytes) -> str:
    """How owners and operators name a member: the key in base64url (it is not a secret)."""
    return b64e(key)


def rules_of(record: GroupRecord | joins.IntakeView, members: int, operator_cap: int) -> GroupRules:
    """The rules a decision applies, from the group's row and its member count."""
    owners_cap = record.max_members
    cap = min(owners_cap, operator_cap) if owners_cap else operator_cap
    return GroupRules(
        state=record.state,
        reason_code=record.reason_code,
        reason=record.reason,
        admission=record.admission,
        max_members=cap,
        admission_suspended=record.admission_suspended,
        members=members,
    )


class Decisions:
    def __init__(self, config: MembersConfig, bounds: Bounds, *, log_keep: int) -> None:
        self.config = config
        self.bounds = bounds
        self.log_keep = log_keep

    def write(
        self,
        conn: Conn,
        group_id: int,
        member_key: bytes,
        name: str,
        decision: Decision,
        now: int,
    ) -> None:
        """In the decision's transaction: the owners' log entry, and the refusal bound."""
        if decision.state is JoinState.PENDING_APPROVAL:
            groups.append_log(
                conn,
                group_id,
                now,
                "member_pending",
                f"{name!r} ({member_id(member_key)}) asks to join",
                keep=self.log_keep,
            )
        elif decision.state is JoinState.REFUSED:
            self.forget_old_refusals(conn, group_id)

    def forget_old_refusals(self, conn: Conn, group_id: int) -> None:
        """Remembered refusals are bounded per group."""
        dropped = joins.prune_refused(conn, group_id, self.config.max_refused_per_group)
        if dropped:
            self.bounds.hit_from_thread(
                "refused_per_group", self.config.max_refused_per_group, dropped, group=group_id
            )
