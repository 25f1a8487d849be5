"""The join worker: decides held requests, in arrival order, fairly across groups.

Each group has its own queue (its held rows, by id).  The worker keeps a
round-robin list of groups with work and, per transaction, takes up to
``worker_slice`` requests from each of a few groups, so a flood on one group
delays another group's requests by one slice at most.  Every decision is
committed with the request's new status in one transaction: after a crash the
request is either still held (and decided again, with the same result) or
decided, never both; effects are idempotent because a member key has one row
per group.  A request whose processing fails is retried with exponential
back-off and, after ``max_attempts``, dead-lettered for the operator; every failed
attempt is logged with its exception and traceback (``queue.attempt_failed``, the last one
``queue.dead_letter``), since a request that fails is a damaged row or a bug.  Held
and dead requests older than ``max_request_age`` are refused as expired.

Time: the back-off deadlines are dates in the database (wall milliseconds, so they
survive a restart) and the waits are on trio's clock; both come from the service's
:class:`relay.server.clock.Clock`.

With several relay processes on one database, a group's queue is taken by one process at a
time (``relay.store.fleet.try_lock_joins``, for the length of the transaction); a process
that finds it taken looks at the group again a moment later.

Must not: decide anything itself (``relay.protocol.admission`` does), or hold
a request in memory only: the database is the queue; memory only says where to
look next.
"""

from __future__ import annotations

import contextlib
import heapq
from collections import deque
from dataclasses import dataclass, field, replace
from functools import partial

import structlog
import trio

from relay.protocol import admission
from relay.protocol.admission import JoinState
from relay.protocol.errors import ErrorCode
from relay.protocol.membership import stored_join
from relay.protocol.state import GroupState
from relay.server.config import MembersConfig
from relay.server.decisions import Decisions, rules_of
from relay.server.metrics import Metrics
from relay.server.service import GroupService
from relay.server.signals import GroupSignals
from relay.store import fleet, groups, joins
from relay.store.conn import Conn, savepoint
from relay.store.errors import StoreError, StoreUnavailable

log = structlog.get_logger("relay.worker")

GROUPS_PER_TURN = 8
# A group another relay process is deciding right now is looked at again this much later
# (that process may have read its queue before this process's newest request arrived).
TAKEN_RETRY_MS = 250
EXPIRY_BATCH = 1000


@dataclass(frozen=True)
class Failure:
    """One failed attempt at a held request, told on the trio thread after the commit."""

    group: int
    request: int
    attempt: int
    dead: bool
    retry_in: float  # seconds until the next attempt (none when dead)
    error: BaseException  # with its traceback, for the log


@dataclass
class Turn:
    """What one transaction of the worker did."""

    decided: list[tuple[int, bytes, JoinState, str | None]] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    more: list[int] = field(default_factory=list)  # groups with requests due now
    later: dict[int, int] = field(default_factory=dict)  # group -> ms when a back-off ends


class JoinWorker:
    """Decides held requests; woken by ``requests_waiting`` and ``state_changed`` (see
    :mod:`relay.server.signals`), it tells each decision with ``decided``."""

    def __init__(
        self,
        service: GroupService,
        config: MembersConfig,
        metrics: Metrics,
        *,
        signals: GroupSignals,
        decisions: Decisions,
    ) -> None:
        self.service = service
        self.db = service.db
        self.config = config
        self.metrics = metrics
        self.signals = signals
        self.decisions = decisions
        self.clock = service.clock
        signals.requests_waiting.connect(self.mark)
        signals.state_changed.connect(lambda group_id, state: self.mark(group_id))
        self._ready: deque[int] = deque()
        self._queued: set[int] = set()
        self._later: list[tuple[int, int]] = []  # heap of (due ms, group)
        self._wake = trio.Event()

    def mark(self, group_id: int) -> None:
        """Look at this group soon: it has new held work, or its state changed."""
        if group_id not in self._queued:
            self._queued.add(group_id)
            self._ready.append(group_id)
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Only the groups with held rows are read back: memory says where to look, the
        # database holds the queue, so a restart with many held requests is quick to be ready.
        for group_id in await self.db.transact(joins.groups_with_held):
            self.mark(group_id)
        task_status.started()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._expire_loop)
            await self._decide_loop()

    async def _decide_loop(self) -> None:
        failures = 0
        while True:
            self._release_due()
            picks = [self._ready.popleft() for _ in range(min(GROUPS_PER_TURN, len(self._ready)))]
            if not picks:
                self._wake = trio.Event()
                wait = (self._later[0][0] - self.clock.now_ms()) / 1000 if self._later else 3600.0
                with trio.move_on_after(max(wait, 0.0)):
                    await self._wake.wait()
                continue
            self._queued.difference_update(picks)
            now_ms = self.clock.now_ms()
            now = now_ms // 1000
            try:
                turn = await self.db.transact(partial(self._turn, picks=picks, now=now, now_ms=now_ms))
            except StoreError as exc:
                # The whole transaction rolled back: nothing was decided, so nothing is lost.
                failures += 1
                delay = min(self.config.retry_max, self.config.retry_base * 2 ** (failures - 1))
                log.error("queue.turn_failed", error=str(exc), retry_in=delay)
                self.metrics.inc("relay_queue_turn_failures_total")
                for group_id in picks:
                    self.mark(group_id)
                await trio.sleep(delay)
                continue
            failures = 0
            self._after(turn)

    def _release_due(self) -> None:
        now = self.clock.now_ms()
        while self._later and self._later[0][0] <= now:
            _, group_id = heapq.heappop(self._later)
            self.mark(group_id)

    def _turn(self, conn: Conn, *, picks: list[int], now: int, now_ms: int) -> Turn:
        turn = Turn()
        for group_id in picks:
            # With several relay processes on one database, one decides a group at a time
            # (each request exactly once, in arrival order); the others look again later.
            if not fleet.try_lock_joins(conn, group_id):
                turn.later[group_id] = now_ms + TAKEN_RETRY_MS
                continue
            record = groups.by_id(conn, group_id)
            if record is None:
                continue
            # Held until the group is active (or closed, and they are refused with its reason).
            if record.state is not GroupState.ACTIVE and not record.state.terminal:
                continue
            rules = rules_of(record, joins.counts(conn, group_id).members, self.config.max_per_group)
            for row in joins.due(conn, group_id, now_ms, self.config.worker_slice):
                try:
                    with savepoint(conn, "request"):  # a failing request is undone alone
                        stored_join(row.request)  # a damaged row fails here, and is retried
                        decision = admission.decide(rules)
                        joins.set_decision(conn, row.id, decision, now)
                        self.decisions.write(conn, group_id, row.member_key, row.name, decision, now)
                except Exception as exc:
                    attempt = row.attempts + 1
                    dead = attempt >= self.config.max_attempts
                    backoff = min(self.config.retry_max, self.config.retry_base * 2 ** (attempt - 1))
                    joins.record_failure(conn, row.id, repr(exc), now_ms + int(backoff * 1000), dead=dead)
                    retry_in = 0.0 if dead else backoff
                    turn.failed.append(Failure(group_id, row.id, attempt, dead, retry_in, exc))
                    continue
                if decision.state is JoinState.ADMITTED:
                    rules = _one_more_member(rules)
                turn.decided.append((group_id, row.member_key, decision.state, decision.code))
            due = joins.next_due_ms(conn, group_id)
            if due is not None:
                if due <= now_ms:
                    turn.more.append(group_id)
                else:
                    turn.later[group_id] = due
        return turn

    def _after(self, turn: Turn) -> None:
        for group_id, member_key, state, code in turn.decided:
            self.signals.decided.send(group_id, member_key)
            self.metrics.inc("relay_queue_decided_total", outcome=state.value)
            if state is JoinState.REFUSED and code:
                self.metrics.inc("relay_admission_refusals_total", code=code)
        for failure in turn.failed:
            self.metrics.inc("relay_queue_failures_total")
            # Logged here, on the trio thread, not where it was caught (the database thread).
            if failure.dead:
                self.metrics.inc("relay_queue_dead_letters_total")
                log.error(
                    "queue.dead_letter",
                    group=failure.group,
                    request=failure.request,
                    attempt=failure.attempt,
                    exc_info=failure.error,
                )
            else:
                log.warning(
                    "queue.attempt_failed",
                    group=failure.group,
                    request=failure.request,
                    attempt=failure.attempt,
                    retry_in=failure.retry_in,
                    exc_info=failure.error,
                )
        if turn.decided:
            log.debug("queue.turn", decided=len(turn.decided))
        for group_id in turn.more:
            self.mark(group_id)
        for group_id, due in turn.later.items():
            heapq.heappush(self._later, (due, group_id))

    async def _expire_loop(self) -> None:
        """Refuse what has waited longer than the age limit: held requests of a group that
        never became active, and dead letters nobody retried."""
        interval = min(60.0, max(0.5, self.config.max_request_age / 10))
        while True:
            await trio.sleep(interval)
            with contextlib.suppress(StoreUnavailable):  # logged by the store; next round, then
                while await self.expire_old() == EXPIRY_BATCH:
                    pass

    async def expire_old(self) -> int:
        now = self.service.now()
        max_age = self.config.max_request_age
        decision = admission.Decision(
            JoinState.REFUSED,
            ErrorCode.REQUEST_EXPIRED.value,
            f"not decided within {max_age} s (the group never became active, or processing kept failing)",
        )

        def apply(conn: Conn) -> list[tuple[int, bytes]]:
            rows = joins.expired(conn, now - max_age, EXPIRY_BATCH)
            if fleet.shared(conn):
                # Another process may be deciding (or expiring) these: only the groups this
                # transaction takes, and only rows still undecided once taken.
                taken = {g for g in {row.group_id for row in rows} if fleet.try_lock_joins(conn, g)}
                rows = [row for row in rows if row.group_id in taken and _still_waiting(conn, row.id)]
            for row in rows:
                joins.set_decision(conn, row.id, decision, now)
            for group_id in {row.group_id for row in rows}:
                self.decisions.forget_old_refusals(conn, group_id)
            return [(row.group_id, row.member_key) for row in rows]

        expired = await self.db.transact(apply)
        for group_id, member_key in expired:
            self.signals.decided.send(group_id, member_key)
        if expired:
            self.metrics.inc("relay_queue_expired_total", len(expired))
            log.info("queue.expired", requests=len(expired))
        return len(expired)


def _still_waiting(conn: Conn, request_id: int) -> bool:
    row = joins.by_id(conn, request_id)
    return row is not None and row.status in (JoinState.HELD, JoinState.DEAD)


def _one_more_member(rules: admission.GroupRules) -> admission.GroupRules:
    return replace(rules, members=rules.members + 1)
