"""The member's rules for following one channel through several relays, sans I/O.

A :class:`Follower` takes what relays hand a member — signed events, signed
heads, signed profiles and the ``subscribed`` answer — one input at a time,
tagged with the relay it came from, and returns what follows from it:
:class:`Accepted` events (each once, by event id, in sequence order) and
:class:`Finding` values naming a relay and what it did wrong, with a
:class:`FindingCode` documented in docs/protocol.md ("What a member is told")
and the signed bytes that prove it where there are any.

The rules, in short: an event must be signed by an owner of the newest verified
profile, or (history only) by a former owner whose event a later current-owner
event chains over; each relay's stream must run in order without skipping a
sequence number; every accepted event must chain onto the one before; two
different events (or signed heads) at one sequence number are a fork, and both
are kept as proof; a relay whose position trails the others is behind.

Pure: no trio, no sockets, no clock reads (``now`` is a parameter); every map
is bounded by ``window`` or ``max_pending``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from relay.protocol import crypto
from relay.protocol.errors import ErrorCode, ProtocolError
from relay.protocol.events import VerifiedEvent, event_id, stored_event, verify_event
from relay.protocol.heads import VerifiedHead
from relay.protocol.messages import Signed
from relay.protocol.profile import VerifiedProfile, check_succession, verify_profile


class FindingCode(enum.StrEnum):
    """What a member is told about a relay (docs/protocol.md, "What a member is told")."""

    BAD_SIGNATURE = "bad_signature"  # an event or profile whose signature fails: altered bytes
    UNAUTHORISED_OWNER = "unauthorised_owner"  # signed by a key the root does not (or no longer) authorise
    CHANNEL_MISMATCH = "channel_mismatch"  # an event or profile of another channel
    BAD_EVENT = "bad_event"  # signed bytes that do not decode as an event, or over the size limit
    CHAIN_BROKEN = "chain_broken"  # two consecutive events of one relay's stream do not chain
    OUT_OF_ORDER = "out_of_order"  # a relay sent an event older than one it already sent
    EVENT_GAP = "event_gap"  # a relay's stream skips a sequence number that exists
    RELAY_BEHIND = "relay_behind"  # a relay's position trails the newest known event
    STALE_PROFILE = "stale_profile"  # a relay serves an older profile than the member verified
    FORK = "fork"  # two different events, heads or profiles at one sequence number (or version)
    BAD_HEAD = "bad_head"  # a signed head whose event does not match it
    HISTORY_PRUNED = "history_pruned"  # the events after --since are past every relay's retention
    # the timeline of member messages (relay/protocol/timeline_reader.py)
    TIMELINE_GAP = "timeline_gap"  # a relay's timeline skips a place, or ends before the place it signed
    UNCERTIFIED_MEMBER = "uncertified_member"  # a message placed with no valid cert before it
    SERVED_REMOVED = "served_removed"  # a message served with content after its signed removal
    WITHHELD_MESSAGE = "withheld_message"  # a place emptied with no signed removal for it
    NOT_A_MODERATOR = "not_a_moderator"  # a moderation by a key that may not make it
    BAD_REPLY = "bad_reply"  # a comment in a channel that replies to a comment, not an owner's post
    CERT_UNSEEN = "cert_unseen"  # a message whose author's cert is older than the relay's history


# Lies about the channel's content: a read that sees one exits non-zero.  Being behind is
# a fault worth a warning, not proof of a lie; so is retention (history or a cert pruned).
LIES = frozenset(FindingCode) - {
    FindingCode.RELAY_BEHIND,
    FindingCode.HISTORY_PRUNED,
    FindingCode.CERT_UNSEEN,
}

# The finding a refused event (or profile) is told as; anything else is ``bad_event``.
FINDING_OF_ERROR = {
    ErrorCode.BAD_SIGNATURE: FindingCode.BAD_SIGNATURE,
    ErrorCode.UNAUTHORISED_OWNER: FindingCode.UNAUTHORISED_OWNER,
    ErrorCode.CHANNEL_MISMATCH: FindingCode.CHANNEL_MISMATCH,
    ErrorCode.CHAIN_BROKEN: FindingCode.CHAIN_BROKEN,
}


@dataclass(frozen=True, slots=True)
class Accepted:
    """An event the member may show: verified, chained, and new.  ``relay`` delivered it first."""

    event: VerifiedEvent
    relay: str


@dataclass(frozen=True, slots=True)
class Finding:
    """A relay's lie or fault; ``proof`` holds the signed objects that show it, if any."""

    relay: str
    code: FindingCode
    detail: str
    seq: int | None = None
    proof: tuple[Signed, ...] = ()

    @property
    def is_lie(self) -> bool:
        return self.code in LIES


@dataclass(frozen=True, slots=True)
class ProfileAdopted:
    """A newer profile verified: its owners are the ones events are checked against from now."""

    profile: VerifiedProfile
    relay: str


Output = Accepted | Finding | ProfileAdopted


@dataclass(slots=True)
class FindingsTold:
    """The findings a reader told already: each once per relay, code and place (or ``key``).

    Bounded by ``limit``: past it the memory starts again, and at worst a finding is told twice.
    """

    limit: int
    _marks: set[tuple[str, FindingCode, object]] = field(default_factory=set)

    def once(
        self,
        relay: str,
        code: FindingCode,
        detail: str,
        *,
        seq: int | None = None,
        proof: tuple[Signed, ...] = (),
        key: object = None,
    ) -> Finding | None:
        """The finding, unless it was told already (None)."""
        mark = (relay, code, seq if key is None else key)
        if mark in self._marks:
            return None
        if len(self._marks) >= self.limit:
            self._marks.clear()
        self._marks.add(mark)
        return Finding(relay, code, detail, seq, proof)


@dataclass(slots=True)
class _Candidate:
    event: VerifiedEvent
    relays: list[str]
    provisional: bool  # signed by a key that is not a current owner: needs a voucher


@dataclass(slots=True)
class _RelayView:
    announced_head: int | None = None  # head_seq of its ``subscribed`` answer (history ends there)
    first_seq: int = 0
    last_seq: int | None = None  # the last event of its stream
    last: VerifiedEvent | None = None
    head_seq: int = 0  # its newest signed head
    diverged_at: int | None = None  # it showed a branch other than ours from this sequence on
    behind_since: float | None = None
    reported_behind: bool = False
    history_done: bool = False
    heard: bool = False  # it answered at all: a relay never heard from is not "behind"
    since: int | None = None  # what this stream was asked to start after


@dataclass
class Follower:
    """One member's view of one channel across its relays.

    ``after_seq``/``after_id``: the last event this member already saw (None: start at the
    first event a relay sends, as history).  ``behind_threshold``: how many events a relay
    may trail the newest known one before ``check_behind`` reports it.
    """

    channel: bytes
    profile: VerifiedProfile
    relays: Iterable[str]
    after_seq: int | None = None
    after_id: bytes | None = None
    behind_threshold: int = 0
    window: int = 4096
    max_pending: int = 4096
    _views: dict[str, _RelayView] = field(init=False, default_factory=dict)
    _delivered: dict[int, VerifiedEvent] = field(init=False, default_factory=dict)
    _pending: dict[int, dict[bytes, _Candidate]] = field(init=False, default_factory=dict)
    _heads: dict[int, tuple[str, VerifiedHead]] = field(init=False, default_factory=dict)
    _told: FindingsTold = field(init=False)
    next_seq: int | None = field(init=False, default=None)
    last_id: bytes | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._told = FindingsTold(self.window)
        self._views = {relay: _RelayView(since=self.after_seq) for relay in self.relays}
        if self.after_seq is not None:
            self.next_seq = self.after_seq + 1
            self.last_id = self.after_id

    # --- inputs ---------------------------------------------------------------------------

    def subscribed(self, relay: str, *, head_seq: int, first_seq: int, profile_version: int) -> list[Output]:
        """A relay's answer to ``subscribe``: its history runs up to ``head_seq``."""
        view = self._view(relay)
        view.announced_head, view.first_seq = head_seq, first_seq
        view.head_seq = max(view.head_seq, head_seq)
        out: list[Output] = []
        if profile_version < self.profile.profile.version:
            out += self._find(
                relay,
                FindingCode.STALE_PROFILE,
                f"the relay holds profile version {profile_version}; "
                f"version {self.profile.profile.version} is verified",
            )
        if head_seq == 0 or (view.since is not None and head_seq <= view.since):
            view.history_done = True  # nothing to send: what comes next is live
        return out

    def event(self, relay: str, signed: Signed) -> list[Output]:
        """One ``event`` frame from ``relay``'s stream."""
        view = self._view(relay)
        live = view.announced_head is not None and view.history_done
        owners = self.profile.owners
        provisional = signed.signer not in owners
        if provisional and live:
            return self._find(
                relay,
                FindingCode.UNAUTHORISED_OWNER,
                "a live event signed by a key that is not an owner of the channel",
                proof=(signed,),
                key=event_id(signed.body),
            )
        try:
            event = verify_event(
                signed, channel=self.channel, owners=frozenset({signed.signer}) if provisional else owners
            )
        except ProtocolError as exc:
            code = FINDING_OF_ERROR.get(exc.code, FindingCode.BAD_EVENT)
            self._skip_bad(view, signed)
            return self._find(relay, code, exc.reason, proof=(signed,), key=event_id(signed.body))
        out = self._check_stream(relay, view, event)
        if view.announced_head is not None and event.seq >= view.announced_head:
            view.history_done = True
        out += self._place(relay, event, provisional)
        out += self._deliver()
        return out

    def head(self, relay: str, head: VerifiedHead, event: Signed | None = None) -> list[Output]:
        """A relay's signed head (from ``head_request`` or discovery), with the event at it if sent."""
        view = self._view(relay)
        seq, hid = head.head.seq, head.head.id
        view.head_seq = max(view.head_seq, seq)
        out: list[Output] = []
        if event is not None and seq > 0 and not crypto.same_secret(event_id(event.body), hid):
            out += self._find(
                relay,
                FindingCode.BAD_HEAD,
                f"the event sent with head {seq} is not the one it names",
                seq=seq,
                proof=(head.signed, event),
            )
        if seq == 0:
            return out
        earlier = self._heads.get(seq)
        if earlier is not None and not crypto.same_secret(earlier[1].head.id, hid):
            out += self._find(
                relay,
                FindingCode.FORK,
                f"signed heads at {seq} differ: this relay's and {earlier[0]}'s",
                seq=seq,
                proof=(earlier[1].signed, head.signed),
            )
        else:
            self._heads[seq] = (relay, head)
            self._trim(self._heads)
        known = self._known_at(seq)
        if known is not None and not crypto.same_secret(known.id, hid):
            out += self._find(
                relay,
                FindingCode.FORK,
                f"the relay's signed head names another event {seq} than the one accepted",
                seq=seq,
                proof=(known.signed, head.signed),
            )
        return out

    def profile_seen(self, relay: str, signed: Signed) -> list[Output]:
        """A signed profile a relay served (``profile`` answer or push)."""
        current = self.profile
        try:
            verified = verify_profile(signed)
        except ProtocolError as exc:
            code = FINDING_OF_ERROR.get(exc.code, FindingCode.BAD_EVENT)
            return self._find(relay, code, f"the profile does not verify: {exc.reason}", proof=(signed,))
        version = verified.profile.version
        if not crypto.same_secret(verified.profile.channel, self.channel):
            return self._find(relay, FindingCode.CHANNEL_MISMATCH, "a profile of another channel")
        if version < current.profile.version:
            return self._find(
                relay,
                FindingCode.STALE_PROFILE,
                f"the relay serves profile version {version}; version {current.profile.version} is verified",
                proof=(signed,),
                key=("profile", version),
            )
        if version == current.profile.version:
            if signed.body != current.signed.body:
                return self._find(
                    relay,
                    FindingCode.FORK,
                    f"two different profiles are signed as version {version}",
                    proof=(current.signed, signed),
                    key=("profile", version),
                )
            return []
        try:
            check_succession(current, verified)
        except ProtocolError as exc:
            return self._find(
                relay, FindingCode.UNAUTHORISED_OWNER, exc.reason, proof=(signed,), key=("profile", version)
            )
        self.profile = verified
        return [ProfileAdopted(verified, relay)]

    def history_done(self, relay: str) -> list[Output]:
        """The relay sent nothing more for a while after ``subscribed``: its history is over.

        A relay that announced a head it never sent has left events out.
        """
        view = self._view(relay)
        view.history_done = True
        sent = view.last_seq if view.last_seq is not None else (view.since or 0)
        if view.announced_head is not None and sent < view.announced_head:
            return self._find(
                relay,
                FindingCode.EVENT_GAP,
                f"the relay announced head {view.announced_head} but sent events only up to {sent}",
                seq=sent + 1,
            )
        return []

    def check_behind(self, now: float, grace: float = 0.0) -> list[Output]:
        """Relays more than ``behind_threshold`` events behind the newest known event for
        longer than ``grace`` seconds (``now`` is the caller's clock)."""
        best = self.best_known()
        out: list[Output] = []
        for relay, view in self._views.items():
            if not view.heard:
                continue
            position = max(view.head_seq, view.last_seq or 0)
            if best - position <= self.behind_threshold:
                view.behind_since, view.reported_behind = None, False
                continue
            if view.behind_since is None:
                view.behind_since = now
            if now - view.behind_since >= grace and not view.reported_behind:
                view.reported_behind = True
                out.append(
                    Finding(
                        relay,
                        FindingCode.RELAY_BEHIND,
                        f"the relay is at {position}; event {best} exists",
                        position,
                    )
                )
        return out

    def finish(self, now: float) -> list[Output]:
        """The end of a read: what never resolved is reported now."""
        out: list[Output] = []
        for seq in sorted(self._pending):
            for candidate in self._pending[seq].values():
                if candidate.provisional:
                    for relay in candidate.relays:
                        out += self._find(
                            relay,
                            FindingCode.UNAUTHORISED_OWNER,
                            f"event {seq} is signed by a key that is not an owner"
                            ", and no owner's event chains over it",
                            seq=seq,
                            proof=(candidate.event.signed,),
                        )
                elif self.next_seq is not None and seq > self.next_seq:
                    for relay in candidate.relays:
                        out += self._find(
                            relay,
                            FindingCode.EVENT_GAP,
                            f"events {self.next_seq}..{seq - 1} never arrived from any relay",
                            seq=self.next_seq,
                        )
        return out + self.check_behind(now)

    # --- state ------------------------------------------------------------------------------

    def best_known(self) -> int:
        """The newest sequence number any relay proved exists (by an event or a signed head)."""
        best = (self.next_seq or 1) - 1
        if self._pending:
            best = max(best, max(self._pending))
        if self._heads:
            best = max(best, max(self._heads))
        return best

    def resubscribe(self, relay: str) -> int | None:
        """A new stream from ``relay`` (after a reconnection): it starts after the last event
        shown, and is judged afresh; returns the ``since`` to subscribe with."""
        view = self._view(relay)
        view.announced_head, view.last_seq, view.last, view.history_done = None, None, None, False
        view.since = self.delivered_seq
        return view.since

    def history_over(self, relay: str) -> bool:
        """Whether ``relay`` has sent its history up to the head it announced (or went quiet)."""
        view = self._views.get(relay)
        return view is not None and view.history_done

    @property
    def delivered_seq(self) -> int | None:
        return None if self.next_seq is None else self.next_seq - 1

    # --- rules ------------------------------------------------------------------------------

    def _view(self, relay: str) -> _RelayView:
        view = self._views.get(relay)
        if view is None:
            view = self._views[relay] = _RelayView(since=self.after_seq)
        view.heard = True
        return view

    def _check_stream(self, relay: str, view: _RelayView, event: VerifiedEvent) -> list[Output]:
        """One relay's stream runs in order, without skipping, each event chaining onto the last."""
        seq, out = event.seq, []
        if view.last_seq is None:
            expected = None if view.since is None else max(view.since + 1, view.first_seq)
            if expected is not None and seq > expected:
                out += self._find(
                    relay,
                    FindingCode.EVENT_GAP,
                    f"the relay's stream starts at {seq}; events from {expected} exist",
                    seq=expected,
                )
        elif seq <= view.last_seq:
            out += self._find(
                relay,
                FindingCode.OUT_OF_ORDER,
                f"event {seq} came after event {view.last_seq} in the relay's stream",
                seq=seq,
            )
        elif seq > view.last_seq + 1:
            out += self._find(
                relay,
                FindingCode.EVENT_GAP,
                f"the relay's stream skips from {view.last_seq} to {seq}",
                seq=view.last_seq + 1,
            )
        elif view.last is not None and not crypto.same_secret(event.event.prev, view.last.id):
            out += self._find(
                relay,
                FindingCode.CHAIN_BROKEN,
                f"event {seq} does not chain onto the event {seq - 1} this relay sent before it",
                seq=seq,
                proof=(view.last.signed, event.signed),
            )
        if view.last_seq is None or seq > view.last_seq:
            view.last_seq, view.last = seq, event
        return out

    def _skip_bad(self, view: _RelayView, signed: Signed) -> None:
        """A bad event still takes its place in the relay's stream, if it says which one it is:
        the lie is named once, not again as a gap at the next good event."""
        try:
            seq = stored_event(signed).seq
        except ProtocolError:
            return
        if view.last_seq is None or seq == view.last_seq + 1:
            view.last_seq, view.last = seq, None

    def _known_at(self, seq: int) -> VerifiedEvent | None:
        known = self._delivered.get(seq)
        if known is None:
            candidates = self._pending.get(seq)
            if candidates:
                known = next(iter(candidates.values())).event
        return known

    def _place(self, relay: str, event: VerifiedEvent, provisional: bool) -> list[Output]:
        """Keep the event until it can be delivered; a different event at a known seq is a fork."""
        seq, out = event.seq, []
        delivered = self._delivered.get(seq)
        if delivered is not None:
            if not crypto.same_secret(delivered.id, event.id):
                out += self._fork(relay, seq, delivered, event)
            return out
        if self.next_seq is not None and seq < self.next_seq:
            return out  # before where this member started, or older than the window
        if seq not in self._pending and len(self._pending) >= self.max_pending:
            # Bounded: keep the events nearest delivery; a relay sends the others again on the
            # next read (or the gap is reported at the end).
            furthest = max(self._pending)
            if seq > furthest:
                return out
            del self._pending[furthest]
        candidates = self._pending.setdefault(seq, {})
        existing = candidates.get(event.id)
        if existing is not None:
            if relay not in existing.relays:
                existing.relays.append(relay)
            return out
        if candidates:
            out += self._fork(relay, seq, next(iter(candidates.values())).event, event)
        candidates[event.id] = _Candidate(event, [relay], provisional)
        head = self._heads.get(seq)
        if head is not None and not crypto.same_secret(head[1].head.id, event.id):
            out += self._find(
                head[0],
                FindingCode.FORK,
                f"the relay's signed head names another event {seq}",
                seq=seq,
                proof=(head[1].signed, event.signed),
            )
        return out

    def _fork(self, relay: str, seq: int, ours: VerifiedEvent, theirs: VerifiedEvent) -> list[Output]:
        view = self._view(relay)
        if view.diverged_at is not None and seq > view.diverged_at:
            return []  # the rest of a branch already reported
        view.diverged_at = seq if view.diverged_at is None else min(view.diverged_at, seq)
        return self._find(
            relay,
            FindingCode.FORK,
            f"two different owner-signed events at {seq}; both are kept as proof",
            seq=seq,
            proof=(ours.signed, theirs.signed),
        )

    def _deliver(self) -> list[Output]:
        """Deliver, in order, the run of events that chains onto the last delivered one.

        A provisional event (signed by a former owner) waits until a current owner's event
        later in the run chains over it.
        """
        if self.next_seq is None:
            if not self._pending:
                return []
            self.next_seq = min(self._pending)  # no starting point given: the oldest history seen
        out = self._skip_pruned()
        run: list[_Candidate] = []
        prev_id, seq = self.last_id, self.next_seq
        while seq in self._pending:
            choice = None
            for candidate in self._pending[seq].values():
                if prev_id is None or crypto.same_secret(candidate.event.event.prev, prev_id):
                    choice = candidate
                    break
            if choice is None:
                for candidate in list(self._pending[seq].values()):
                    out += self._unchained(candidate, seq)
                del self._pending[seq]
                break
            run.append(choice)
            prev_id, seq = choice.event.id, seq + 1
        vouched = max((i for i, c in enumerate(run) if not c.provisional), default=-1)
        for candidate in run[: vouched + 1]:
            event = candidate.event
            del self._pending[event.seq]
            self._delivered[event.seq] = event
            self._trim(self._delivered)
            self.next_seq, self.last_id = event.seq + 1, event.id
            out.append(Accepted(event, candidate.relays[0]))
        return out

    def _skip_pruned(self) -> list[Output]:
        """Events no relay keeps any more (retention) cannot be shown: start after them.

        Only when every relay that answered ``subscribed`` starts past the next event, and the
        earliest event held is at that start: anything else is a gap, not retention.
        """
        assert self.next_seq is not None
        if self.next_seq in self._pending or not self._pending:
            return []
        floors = [v.first_seq for v in self._views.values() if v.announced_head is not None]
        floor = min(floors, default=0)
        first = min(self._pending)
        if floor <= self.next_seq or first != floor:
            return []
        relay = next(iter(self._pending[first].values())).relays[0]
        detail = f"events {self.next_seq}..{floor - 1} are older than any relay keeps; showing from {floor}"
        self.next_seq, self.last_id = floor, None
        return [Finding(relay, FindingCode.HISTORY_PRUNED, detail, floor)]

    def _unchained(self, candidate: _Candidate, seq: int) -> list[Output]:
        before = self._delivered.get(seq - 1)
        proof = (before.signed, candidate.event.signed) if before else (candidate.event.signed,)
        out: list[Output] = []
        for relay in candidate.relays:
            view = self._view(relay)
            if view.diverged_at is not None and seq > view.diverged_at:
                continue
            view.diverged_at = seq - 1
            out += self._find(
                relay,
                FindingCode.FORK,
                f"event {seq} chains onto another event {seq - 1} than the one accepted",
                seq=seq,
                proof=proof,
            )
        return out

    def _find(
        self,
        relay: str,
        code: FindingCode,
        detail: str,
        *,
        seq: int | None = None,
        proof: tuple[Signed, ...] = (),
        key: object = None,
    ) -> list[Output]:
        """A finding, reported once per relay, code and sequence number (or event)."""
        finding = self._told.once(relay, code, detail, seq=seq, proof=proof, key=key)
        return [] if finding is None else [finding]

    def _trim(self, table: dict[int, VerifiedEvent] | dict[int, tuple[str, VerifiedHead]]) -> None:
        while len(table) > self.window:
            del table[min(table)]
