"""Members at a group address (profile, join, status) and the owners' admission commands.

A join request is verified on the trio thread (signature, binding, age, size),
then stored and answered in one transaction through the group-commit writer:
the answer (``held``, ``admitted``, ``pending_approval`` or ``refused``) is
sent only after COMMIT, so nothing acknowledged can be lost.  A request to an
active group with nothing queued ahead is decided at once; anything else is
held for :class:`relay.server.worker.JoinWorker`.  The rules themselves live in
``relay.protocol.admission``; this module reads the counts and applies them (on PostgreSQL,
to a batch of arriving requests at once: :class:`_Intake`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import structlog
import trio

from relay.protocol import admission
from relay.protocol.admission import Decision, JoinState
from relay.protocol.encoding import encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.invitation import (
    ACTION_APPROVE_MEMBER,
    ACTION_LIST_UNCERTIFIED,
    ACTION_REFUSE_MEMBER,
    ACTION_RESUME_ADMISSION,
    ACTION_SUSPEND_ADMISSION,
    OWNER_COMMANDS,
    verify_owner_request,
)
from relay.protocol.membership import stored_join, verify_join_request, verify_member_request
from relay.protocol.messages import (
    Join,
    JoinResult,
    JoinStatus,
    OwnerCommand,
    OwnerCommandResult,
    PendingMember,
    ProfileAnswer,
    Signed,
)
from relay.protocol.state import GroupState
from relay.server.config import MembersConfig
from relay.server.decisions import Decisions, member_id, rules_of
from relay.server.metrics import Metrics
from relay.server.service import GroupService, decode_signed
from relay.server.signals import GroupSignals
from relay.store import groups, joins
from relay.store import timeline as timeline_store  # the owners' list of members without a cert
from relay.store.conn import Conn
from relay.store.db import Job, settle
from relay.store.groups import GroupRecord
from relay.store.joins import JoinRow

log = structlog.get_logger("relay.admission")

MAX_PENDING_LISTED = 200
MAX_LISTED_BYTES = 512 * 1024  # the members' signed join requests in one owner_result, at most


@dataclass(frozen=True, slots=True)
class GroupBinding:
    """The group a connection's address named at ``hello`` (the state is read per request)."""

    id: int
    channel: bytes
    address_id: str


def result_of(row: JoinRow) -> JoinResult:
    return JoinResult(
        status=row.status.wire,
        code=row.code,
        reason=row.reason,
        received_at=row.received_at,
        decided_at=row.decided_at,
    )


class DecisionWaiters:
    """Connections waiting for the decision on a request (``join_status`` with ``wait``).

    Bounded: past ``limit`` waiting keys a status request is answered at once instead.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._events: dict[tuple[int, bytes], tuple[trio.Event, int]] = {}

    @contextmanager
    def waiting(self, key: tuple[int, bytes]) -> Iterator[trio.Event | None]:
        if key not in self._events and len(self._events) >= self.limit:
            yield None
            return
        event, users = self._events.get(key, (trio.Event(), 0))
        self._events[key] = (event, users + 1)
        try:
            yield event
        finally:
            current = self._events.get(key)
            if current is not None and current[0] is event:
                if current[1] <= 1:
                    del self._events[key]
                else:
                    self._events[key] = (event, current[1] - 1)

    def decided(self, key: tuple[int, bytes]) -> None:
        entry = self._events.pop(key, None)
        if entry is not None:
            entry[0].set()

    def wake_all(self) -> None:
        """Shutdown: every waiting connection answers with what it has now."""
        for event, _ in self._events.values():
            event.set()
        self._events.clear()


@dataclass(frozen=True, slots=True)
class _Arrival:
    """A join request to store and decide, for :class:`_Intake`."""

    new: joins.NewJoin
    now: int


class _Intake:
    """Consecutive join requests of one writer batch, stored together on PostgreSQL
    (:class:`relay.store.db.Batch`): every request's group and existing request read in one
    statement, the admission rules applied in order with the queue counts as each stored
    request leaves them (as the triggers will), and every stored request inserted in one
    more.  A request that the member key's stored one decides, or whose decision writes more
    than its row (an owners' log entry for ``pending_approval``, the refusal bound), runs
    alone (``Admissions._arrive``), after the requests before it are stored."""

    def __init__(self, config: Callable[[], MembersConfig]) -> None:
        self.config = config  # the members' configuration as it is now

    def run(self, conn: Conn, jobs: Sequence[Job[Any]]) -> int:
        items: list[_Arrival] = [job.item for job in jobs]
        config = self.config()
        views = joins.intake_views(conn, [(item.new.group_id, item.new.member_key) for item in items])
        counts: dict[int, tuple[int, int, int]] = {}  # group id -> (members, held, undecided)
        stored: set[tuple[int, bytes]] = set()
        outcomes: list[tuple[bool, JoinRow, bool] | BaseException] = []
        rows: list[tuple[joins.NewJoin, Decision, int]] = []
        for item, view in zip(items, views, strict=True):
            new = item.new
            if view is None:
                outcomes.append(RemoteProtocolError(ErrorCode.UNKNOWN_GROUP, "no group has this address"))
                continue
            if view.banned:
                outcomes.append(_banned())
                continue
            if view.existing_id is not None or (new.group_id, new.member_key) in stored:
                break  # the key's stored request decides this one: alone
            members, held, undecided = counts.get(new.group_id, (view.members, view.held, view.undecided))
            active = view.state is GroupState.ACTIVE
            try:
                arrival = admission.arrive(
                    rules_of(view, members, config.max_per_group),
                    existing=None,
                    same_request=False,
                    queued_ahead=held,
                    undecided=undecided,
                    queue_bound=config.max_queued_per_group,
                )
            except RemoteProtocolError as exc:
                outcomes.append(exc)
                continue
            decision = arrival.decision
            if arrival.store and decision.state not in (JoinState.ADMITTED, JoinState.HELD):
                break  # its decision writes more than the row (Decisions.write): alone
            if arrival.store:
                state = decision.state
                counts[new.group_id] = (
                    members + int(state is JoinState.ADMITTED),
                    held + int(state is JoinState.HELD),
                    undecided + int(state.undecided),
                )
                stored.add((new.group_id, new.member_key))
                rows.append((new, decision, item.now))
            outcomes.append((arrival.store, joins.row_of(new, decision, item.now), active))
        if rows:
            joins.insert_rows(conn, rows)
        return settle(jobs, outcomes)  # nothing fails past here


class Admissions:
    def __init__(
        self,
        service: GroupService,
        config: MembersConfig,
        metrics: Metrics,
        *,
        signals: GroupSignals,
        decisions: Decisions,
        max_waiters: int,
    ) -> None:
        self.service = service
        self.db = service.db
        self.config = config
        self.metrics = metrics
        self.signals = signals
        self.decisions = decisions
        self._intake = _Intake(lambda: self.config)
        self.waiters = DecisionWaiters(max_waiters)
        signals.decided.connect(lambda group_id, member: self.waiters.decided((group_id, member)))

    # --- at a group address --------------------------------------------------

    async def bind(self, address_id: str) -> GroupBinding:
        record = await self.service.group_by_address(address_id)
        if record is None:
            raise RemoteProtocolError(ErrorCode.UNKNOWN_GROUP, "no group has this address")
        return GroupBinding(record.id, record.channel, address_id)

    async def profile(self, group: GroupBinding) -> ProfileAnswer:
        record = await self.db.transact(lambda conn: groups.by_id(conn, group.id))
        if record is None:
            raise RemoteProtocolError(ErrorCode.UNKNOWN_GROUP, "no group has this address")
        if record.state.terminal:
            raise RemoteProtocolError(ErrorCode.GROUP_CLOSED, f"the group is {record.state.value}")
        return ProfileAnswer(profile=decode_signed(record.profile), state=record.state.value)

    async def join(self, group: GroupBinding, frame: Join, session: bytes) -> JoinResult:
        now = self.service.now()
        verified = verify_join_request(
            frame.request,
            relay_fingerprint=self.service.identity.fingerprint,
            channel=group.channel,
            address_id=group.address_id,
            session=session,
            now=now,
            max_age=self.service.policy.policy.invitation_max_age,
            max_profile_bytes=self.config.max_profile_bytes,
        )
        new = joins.NewJoin(
            group_id=group.id,
            member_key=verified.member_key,
            request=encode(frame.request),
            name=verified.profile.name[:64],
        )
        stored, row, active = await self.db.transact(
            lambda conn: self._arrive(conn, new, now), batch=self._intake, item=_Arrival(new, now)
        )
        outcome = "duplicate" if not stored else row.status.wire
        if row.code == ErrorCode.QUEUE_FULL.value:
            outcome = "refused"
            self.decisions.bounds.hit("group_queue", self.config.max_queued_per_group, group=group.id)
        self.metrics.inc("relay_join_requests_total", outcome=outcome)
        if stored and row.status is JoinState.REFUSED and row.code:
            self.metrics.inc("relay_admission_refusals_total", code=row.code)
        if stored and row.status is JoinState.HELD and active:
            # Queued behind others: the worker takes it in turn (an inactive group's
            # activation wakes the worker through ``state_changed``).
            self.signals.requests_waiting.send(group.id)
        log.debug("member.join", group=group.id, status=row.status.value, code=row.code, stored=stored)
        return result_of(row)

    def _arrive(self, conn: Conn, new: joins.NewJoin, now: int) -> tuple[bool, JoinRow, bool]:
        """Store and decide (or answer a duplicate); returns (stored, row, group is active)."""
        view = joins.intake_view(conn, new.group_id, new.member_key)
        if view is None:
            raise RemoteProtocolError(ErrorCode.UNKNOWN_GROUP, "no group has this address")
        if view.banned:
            raise _banned()
        active = view.state is GroupState.ACTIVE
        existing = joins.by_id(conn, view.existing_id) if view.existing_id is not None else None
        existing_decision = existing.decision if existing else None
        arrival = admission.arrive(
            rules_of(view, view.members, self.config.max_per_group),
            existing=existing_decision,
            same_request=existing is not None and existing.request == new.request,
            queued_ahead=view.held,
            undecided=view.undecided,
            queue_bound=self.config.max_queued_per_group,
        )
        if not arrival.store:
            if existing is not None and arrival.decision is existing_decision:
                return False, existing, active
            # Answered, not stored (``queue_full``).
            return False, joins.row_of(new, arrival.decision, now), active
        if existing is not None:
            joins.delete(conn, existing.id)  # a "not now" refusal, asked again: decided afresh
        row = joins.insert_row(conn, new, arrival.decision, now)
        self.decisions.write(conn, new.group_id, new.member_key, new.name, arrival.decision, now)
        return True, row, active

    async def status(self, group: GroupBinding, frame: JoinStatus, session: bytes) -> JoinResult:
        verify_member_request(
            frame.request,
            relay_fingerprint=self.service.identity.fingerprint,
            channel=group.channel,
            address_id=group.address_id,
            session=session,
            now=self.service.now(),
            max_age=self.service.policy.policy.invitation_max_age,
        )
        key = (group.id, frame.request.signer)
        wait = min(frame.wait, self.config.max_status_wait)
        # Registered before reading, so a decision committed in between still wakes us.
        with self.waiters.waiting(key) as event:
            row = await self._read(key)
            if event is not None and wait > 0 and row.status.undecided:
                with trio.move_on_after(wait):
                    await event.wait()
                row = await self._read(key)
        return result_of(row)

    async def _read(self, key: tuple[int, bytes]) -> JoinRow:
        row = await self.db.transact(lambda conn: joins.by_member(conn, *key))
        if row is None:
            raise RemoteProtocolError(
                ErrorCode.UNKNOWN_MEMBER, "this relay holds no join request from this key"
            )
        return row

    # --- the owners' commands (contact address, service group) -----------------

    async def owner_command(self, frame: OwnerCommand, session: bytes) -> OwnerCommandResult:
        request = verify_owner_request(
            frame.request,
            actions=OWNER_COMMANDS,
            relay_fingerprint=self.service.identity.fingerprint,
            session=session,
            now=self.service.now(),
            max_age=self.service.policy.policy.invitation_max_age,
        )
        now = self.service.now()
        signer = frame.request.signer
        # The owner check reads the stored profile's owners (verified once, off the writer);
        # the transaction then only makes sure the group still has that profile.
        checked = self.service.check_owner(
            await self.db.transact(lambda conn: groups.by_channel(conn, request.channel)), request, signer
        )

        def apply(conn: Conn) -> tuple[OwnerCommandResult, GroupRecord, Decision | None]:
            record = groups.by_channel(conn, request.channel)
            if record is None or record.id != checked.id or record.profile_version != checked.profile_version:
                raise RemoteProtocolError(
                    ErrorCode.OUT_OF_ORDER, "the group's profile changed meanwhile; send the command again"
                )
            decision = None
            detail = ""
            if request.action in (ACTION_APPROVE_MEMBER, ACTION_REFUSE_MEMBER):
                decision = self._owners_decide(
                    conn, record, request.subject, request.action, request.note, now
                )
                detail = f"{member_id(request.subject)} {decision.state.value}"
            elif request.action in (ACTION_SUSPEND_ADMISSION, ACTION_RESUME_ADMISSION):
                suspend = request.action == ACTION_SUSPEND_ADMISSION
                if record.admission_suspended != suspend:
                    groups.set_admission_suspended(conn, record.id, suspend, now)
                    event = "admission_suspended" if suspend else "admission_resumed"
                    groups.append_log(conn, record.id, now, event, "by an owner", keep=self.service.log_keep)
                record = replace(record, admission_suspended=suspend)
                detail = "admission suspended" if suspend else "admission open"
            counts = joins.counts(conn, record.id)
            if request.action == ACTION_LIST_UNCERTIFIED:
                # Admitted members with no current cert: whom the owners may certify.
                pending = _listed(
                    (m.member, m.name, m.request, m.received_at)
                    for m in timeline_store.uncertified(conn, record.id, MAX_PENDING_LISTED)
                )
                detail = f"{len(pending)} admitted members without a cert"
            else:
                pending = _listed(
                    (r.member_key, r.name, r.request, r.received_at)
                    for r in joins.pending(conn, record.id, MAX_PENDING_LISTED)
                )
            result = OwnerCommandResult(
                state=record.state.value,
                admission="suspended" if record.admission_suspended else "open",
                members=counts.members,
                pending=pending,
                detail=detail,
            )
            return result, record, decision

        result, record, decision = await self.db.transact(apply)
        with structlog.contextvars.bound_contextvars(group=record.id):
            log.info("owner.command", action=request.action)
            if decision is not None:
                self.signals.decided.send(record.id, request.subject)
                self.metrics.inc("relay_owner_decisions_total", outcome=decision.state.value)
        return result

    def _owners_decide(
        self,
        conn: Conn,
        record: GroupRecord,
        member_key: bytes,
        action: str,
        note: str,
        now: int,
    ) -> Decision:
        row = joins.by_member(conn, record.id, member_key)
        if row is None:
            raise RemoteProtocolError(ErrorCode.UNKNOWN_MEMBER, "no join request from this member key")
        if action == ACTION_APPROVE_MEMBER:
            rules = rules_of(record, joins.counts(conn, record.id).members, self.config.max_per_group)
            decision = admission.approve(rules, row.status)
        else:
            decision = admission.refuse(row.status, note)
        joins.set_decision(conn, row.id, decision, now)
        verb = "member_admitted" if decision.state is JoinState.ADMITTED else "member_refused"
        groups.append_log(
            conn,
            record.id,
            now,
            verb,
            f"{row.name!r} ({member_id(member_key)}) by an owner",
            keep=self.service.log_keep,
        )
        self.decisions.write(conn, record.id, member_key, row.name, decision, now)
        return decision


def _banned() -> RemoteProtocolError:
    """A signed ban (relay.server.timeline): this key never joins again, here."""
    return RemoteProtocolError(ErrorCode.BANNED, "this member key is banned from the group")


def _listed(rows: Iterable[tuple[bytes, str, bytes, int]]) -> list[PendingMember]:
    """The owners' list of members (key, name, stored join request, received at), each with its
    own signed join request, up to ``MAX_LISTED_BYTES`` of requests: a client reads an answer
    of at most 1 MiB, and a relay whose operator allows large member profiles must not build
    more.  The rest is listed by the next command, once these are decided or certified."""
    listed: list[PendingMember] = []
    size = 0
    for member, name, request, received_at in rows:
        size += len(request)
        if listed and size > MAX_LISTED_BYTES:
            break
        listed.append(
            PendingMember(
                member=member,
                name=name,
                about=_about_request(request),
                received_at=received_at,
                join=_join_of(request),
            )
        )
    return listed


def _join_of(request: bytes) -> Signed | None:
    """The member's signed join request as stored, for the owners to check (None: a row that no
    longer decodes, which the owners' client then does not certify)."""
    try:
        return decode_signed(request)
    except RemoteProtocolError:
        return None


def _about_request(request: bytes) -> str:
    """The member's "about" line, from the stored request (decoded only for the owners' list)."""
    try:
        return stored_join(request).profile.about[:500]
    except RemoteProtocolError:
        return ""
