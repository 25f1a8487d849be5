"""The reader's rules for a group's timeline of member messages across its relays, sans I/O.

A :class:`TimelineReader` takes what relays hand a member about the timeline — the
``subscribed`` answer's ``timeline_pos``/``timeline_first``, ``timeline`` frames (one
:class:`TimelineItem` each), signed heads, and the owner events and profiles the
:class:`relay.protocol.follow.Follower` verified — one input at a time, tagged with the relay
it came from, and returns what follows: :class:`MessageAccepted` (each message once, by id,
whichever relay delivered it first), :class:`CertAccepted`, :class:`ModerationAccepted`, and
:class:`relay.protocol.follow.Finding` values naming a relay and what it did
(docs/protocol.md, "What a member is told").

Each relay orders its own timeline, so everything about places is judged per relay: places
run on without a gap, the running hash matches the relay's own signed heads, a message comes
after a valid cert of its author *in that relay's timeline* (a :class:`Roster` per relay),
an emptied place (a removed message) is matched by a signed removal in that relay's
timeline.  Each member's own chain is judged per relay (gaps, reorders, broken links) and
across relays (two different messages at one of the author's sequence numbers: a fork).

Pure: no trio, no sockets, no clock; every map is bounded by ``window`` or ``max_authors``.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from relay.protocol import crypto
from relay.protocol.errors import ErrorCode, ProtocolError
from relay.protocol.events import VerifiedEvent
from relay.protocol.follow import FINDING_OF_ERROR, Finding, FindingCode, FindingsTold
from relay.protocol.heads import VerifiedHead
from relay.protocol.messages import Signed, TimelineItem
from relay.protocol.profile import VerifiedProfile
from relay.protocol.timeline import (
    ACTION_REMOVE_MESSAGE,
    ENTRY_KINDS,
    KIND_CERT,
    KIND_MESSAGE,
    TIMELINE_GENESIS,
    Roster,
    VerifiedCert,
    VerifiedMessage,
    VerifiedModeration,
    signed_id,
    timeline_hash,
    verify_cert,
    verify_message,
    verify_moderation,
)

_FROM_ERROR = {**FINDING_OF_ERROR, ErrorCode.NOT_A_MODERATOR: FindingCode.NOT_A_MODERATOR}


@dataclass(frozen=True, slots=True)
class MessageAccepted:
    """A member message the reader may show: verified, under a valid cert, and new.

    ``author_name``/``author_role`` come from the author's cert; ``pos``/``after`` are the
    place ``relay`` (the first to deliver it) gave it.
    """

    message: VerifiedMessage
    author_name: str
    author_role: str
    pos: int
    after: int
    relay: str


@dataclass(frozen=True, slots=True)
class CertAccepted:
    """An owner-signed member cert, seen for the first time (at ``pos`` of ``relay``)."""

    cert: VerifiedCert
    pos: int
    relay: str


@dataclass(frozen=True, slots=True)
class ModerationAccepted:
    """A moderation its signer may make, seen for the first time: a removed message is not
    shown any more (if it was shown, the reader hides it)."""

    moderation: VerifiedModeration
    pos: int
    relay: str


K = TypeVar("K")
V = TypeVar("V")

TimelineOutput = MessageAccepted | CertAccepted | ModerationAccepted | Finding


@dataclass(slots=True)
class _Author:
    seq: int
    id: bytes
    signed: Signed


def _bounded_put(table: OrderedDict[K, V], key: K, value: V, limit: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > limit:
        table.popitem(last=False)


@dataclass(slots=True)
class _View:
    """What one relay's timeline stream showed so far."""

    roster: Roster
    announced: int | None = None  # timeline_pos of its ``subscribed`` answer (history ends there)
    first: int = 0
    since: int | None = None
    expected: int | None = None  # the first place this stream must send
    last_pos: int | None = None
    hash: bytes | None = None  # the running hash at ``last_pos`` (None: not known)
    after: int = 0
    complete: bool = False  # the stream started at place 1 and skipped none: a missing cert is a lie
    history_done: bool = False
    authors: OrderedDict[bytes, _Author] = field(default_factory=OrderedDict)
    hashes: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    heads: OrderedDict[int, VerifiedHead] = field(default_factory=OrderedDict)  # signed, not yet reached
    seen_heads: OrderedDict[int, VerifiedHead] = field(default_factory=OrderedDict)
    tombstones: OrderedDict[bytes, int] = field(default_factory=OrderedDict)  # emptied, removal unseen
    emptied: OrderedDict[bytes, int] = field(default_factory=OrderedDict)  # every emptied place's id
    served: OrderedDict[bytes, Signed] = field(default_factory=OrderedDict)  # content sent in history


@dataclass
class TimelineReader:
    """One member's view of one group's timeline across its relays.

    ``profile``: the newest verified profile (owners are the keys certs are checked against;
    an owner of any profile version the reader verified still counts, since a removed owner's
    certs stay valid until a moderation says otherwise).
    """

    channel: bytes
    profile: VerifiedProfile
    relays: Iterable[str] = ()
    window: int = 4096
    max_authors: int = 100_000
    _views: dict[str, _View] = field(init=False, default_factory=dict)
    _owners: frozenset[bytes] = field(init=False, default=frozenset())
    _accepted: OrderedDict[bytes, None] = field(init=False, default_factory=OrderedDict)
    _entries: OrderedDict[bytes, None] = field(init=False, default_factory=OrderedDict)
    _at: OrderedDict[bytes, VerifiedMessage] = field(init=False, default_factory=OrderedDict)
    _authors_of: OrderedDict[bytes, bytes] = field(init=False, default_factory=OrderedDict)
    _removed: OrderedDict[bytes, VerifiedModeration] = field(init=False, default_factory=OrderedDict)
    _certs: OrderedDict[bytes, VerifiedCert] = field(init=False, default_factory=OrderedDict)
    _owner_events: OrderedDict[bytes, None] = field(init=False, default_factory=OrderedDict)
    _told: FindingsTold = field(init=False)

    def __post_init__(self) -> None:
        self._told = FindingsTold(self.window)
        self._owners = self.profile.owners
        for relay in self.relays:
            self._view(relay)

    # --- inputs ---------------------------------------------------------------------------

    def subscribed(
        self,
        relay: str,
        *,
        timeline_pos: int,
        timeline_first: int,
        since: int | None = None,
        since_hash: bytes | None = None,
    ) -> list[TimelineOutput]:
        """A relay's answer to ``subscribe``: its timeline's history runs up to ``timeline_pos``.

        ``since``/``since_hash``: the place this stream was asked to start after, and the
        running hash there if the reader kept it (without it, the hash is checked only on a
        stream from place 1).
        """
        view = self._view(relay)
        continuing = since is not None and since == view.last_pos and view.hash is not None
        if not continuing:
            view.complete = False
            view.hash = since_hash if since is not None else None
        view.announced, view.first, view.since = timeline_pos, timeline_first, since
        view.last_pos, view.history_done = None, False
        if since is not None:
            view.expected = max(since + 1, timeline_first)
        elif timeline_first > 0:
            view.expected = timeline_first
        else:
            view.expected = 1 if timeline_pos == 0 else None
        if timeline_pos == 0 or (since is not None and timeline_pos <= since):
            view.history_done = True
        return []

    def item(self, relay: str, item: TimelineItem) -> list[TimelineOutput]:
        """One ``timeline`` frame from ``relay``'s stream."""
        view = self._view(relay)
        out, in_order = self._place(relay, view, item)
        if not in_order:
            return out
        if view.announced is not None and item.pos >= view.announced:
            view.history_done = True
        if item.entry is None:
            out += self._emptied(relay, view, item)
        elif item.kind not in ENTRY_KINDS:
            out += self._find(
                relay, FindingCode.BAD_EVENT, f"place {item.pos} holds an unknown kind {item.kind!r}"
            )
        elif not crypto.same_secret(signed_id(item.kind, item.entry), item.id):
            out += self._find(
                relay,
                FindingCode.BAD_EVENT,
                f"place {item.pos} names another id than its entry's",
                seq=item.pos,
                proof=(item.entry,),
            )
        elif item.kind == KIND_CERT:
            out += self._cert(relay, view, item, item.entry)
        elif item.kind == KIND_MESSAGE:
            out += self._message(relay, view, item, item.entry)
        else:
            out += self._moderation(relay, view, item, item.entry)
        return out

    def head(self, relay: str, head: VerifiedHead) -> list[TimelineOutput]:
        """A relay's signed head: its timeline part is checked against the hash the reader
        computed at that place (now, or once the place arrives)."""
        view = self._view(relay)
        pos, signed_hash = head.head.timeline_pos, head.head.timeline_hash
        if pos == 0:
            if signed_hash != TIMELINE_GENESIS:
                return self._find(
                    relay,
                    FindingCode.BAD_HEAD,
                    "a head of an empty timeline with a hash",
                    proof=(head.signed,),
                )
            return []
        out: list[TimelineOutput] = []
        earlier = view.seen_heads.get(pos)
        if earlier is not None and earlier.head.timeline_hash != signed_hash:
            out += self._find(
                relay,
                FindingCode.FORK,
                f"two signed heads of this relay at timeline place {pos} differ: two timelines",
                seq=pos,
                proof=(earlier.signed, head.signed),
                key=("head", pos),
            )
        else:
            _bounded_put(view.seen_heads, pos, head, self.window)
        known = view.hashes.get(pos)
        if known is not None:
            out += self._check_head(relay, pos, known, head)
        elif view.last_pos is None or pos > view.last_pos:
            _bounded_put(view.heads, pos, head, self.window)
        return out

    def owner_event(self, event: VerifiedEvent) -> list[TimelineOutput]:
        """An owner event the Follower accepted: comments in a channel reply to these."""
        _bounded_put(self._owner_events, event.id, None, self.window)
        return []

    def profile_adopted(self, profile: VerifiedProfile) -> list[TimelineOutput]:
        """A newer verified profile: its owners certify from now (earlier owners' certs stay)."""
        self.profile = profile
        self._owners = self._owners | profile.owners
        return []

    def history_done(self, relay: str) -> list[TimelineOutput]:
        """The relay sent nothing more for a while after ``subscribed``: its history is over.

        A relay that announced a place it never sent has left places out.
        """
        view = self._view(relay)
        view.history_done = True
        sent = view.last_pos if view.last_pos is not None else (view.since or 0)
        promised = view.announced or 0
        if promised > sent:
            return self._find(
                relay,
                FindingCode.TIMELINE_GAP,
                f"the relay's timeline reaches place {promised} but it sent places only up to {sent}",
                seq=sent + 1,
            )
        return []

    def finish(self, now: float = 0.0) -> list[TimelineOutput]:
        """The end of a read: emptied places no signed removal at their relay explains
        (``now`` is unused; it keeps the call like :meth:`Follower.finish`)."""
        out: list[TimelineOutput] = []
        for relay, view in self._views.items():
            for ident, pos in view.tombstones.items():
                out += self._find(
                    relay,
                    FindingCode.WITHHELD_MESSAGE,
                    f"place {pos} was emptied, and the relay showed no signed removal of it",
                    seq=pos,
                    key=("withheld", ident),
                )
        return out

    def resubscribe(self, relay: str) -> int | None:
        """A new stream from ``relay`` (after a reconnection): it starts after the last place
        this one showed; returns the ``timeline_since`` to subscribe with."""
        view = self._view(relay)
        return view.last_pos

    def position(self, relay: str) -> tuple[int, bytes] | None:
        """The last place ``relay`` sent and the running hash there (None: unknown), for a
        reader that saves its state and starts after it next time."""
        view = self._views.get(relay)
        if view is None or view.last_pos is None or view.hash is None:
            return None
        return view.last_pos, view.hash

    # --- rules ------------------------------------------------------------------------------

    def _view(self, relay: str) -> _View:
        view = self._views.get(relay)
        if view is None:
            view = self._views[relay] = _View(roster=Roster(max_removed=self.window))
        return view

    def _place(self, relay: str, view: _View, item: TimelineItem) -> tuple[list[TimelineOutput], bool]:
        """Places run on one by one from where the stream started, and the running hash
        follows them.  False: the item is out of order, and ignored."""
        pos, out = item.pos, []
        if view.last_pos is not None and pos <= view.last_pos:
            out += self._find(
                relay, FindingCode.OUT_OF_ORDER, f"place {pos} came after place {view.last_pos}", seq=pos
            )
            return out, False
        expected = view.expected if view.last_pos is None else view.last_pos + 1
        if view.last_pos is None:  # the first place of this stream
            if pos == 1:
                view.hash, view.complete = TIMELINE_GENESIS, True
            elif view.since is None or pos != view.since + 1:
                view.hash = None
        if expected is not None and pos > expected:
            out += self._find(
                relay,
                FindingCode.TIMELINE_GAP,
                f"the relay's timeline skips from place {expected - 1} to {pos}",
                seq=expected,
            )
            view.hash, view.complete = None, False
        if item.after < view.after:
            out += self._find(
                relay,
                FindingCode.OUT_OF_ORDER,
                f"place {pos} is placed after owner event {item.after}, an earlier place after {view.after}",
                seq=pos,
            )
        view.after = max(view.after, item.after)
        view.last_pos = pos
        if view.hash is not None:
            view.hash = timeline_hash(view.hash, pos, item.after, item.kind, item.id)
            _bounded_put(view.hashes, pos, view.hash, self.window)
            waiting = view.heads.pop(pos, None)
            if waiting is not None:
                out += self._check_head(relay, pos, view.hash, waiting)
        return out, True

    def _check_head(self, relay: str, pos: int, computed: bytes, head: VerifiedHead) -> list[TimelineOutput]:
        if crypto.same_secret(computed, head.head.timeline_hash):
            return []
        return self._find(
            relay,
            FindingCode.BAD_HEAD,
            f"the relay's signed head at timeline place {pos} does not match the places it sent",
            seq=pos,
            proof=(head.signed,),
            key=("head", pos),
        )

    def _emptied(self, relay: str, view: _View, item: TimelineItem) -> list[TimelineOutput]:
        if item.kind != KIND_MESSAGE:
            return self._find(
                relay,
                FindingCode.WITHHELD_MESSAGE,
                f"place {item.pos} ({item.kind}) is served empty; only a removed message may be",
                seq=item.pos,
            )
        _bounded_put(view.emptied, item.id, item.pos, self.window)
        if not view.roster.removed(item.id):
            _bounded_put(view.tombstones, item.id, item.pos, self.window)
        return []

    def _cert(self, relay: str, view: _View, item: TimelineItem, signed: Signed) -> list[TimelineOutput]:
        try:
            cert = verify_cert(signed, channel=self.channel, owners=self._owners)
        except ProtocolError as exc:
            return self._bad(relay, item, signed, exc)
        with contextlib.suppress(ProtocolError):
            # superseded, or a banned key: it admits nobody, and hides no one either
            view.roster.apply_cert(cert)
        current = self._certs.get(cert.member)
        if current is None or cert.cert.issued_at > current.cert.issued_at:
            _bounded_put(self._certs, cert.member, cert, self.max_authors)
        if cert.id in self._entries:
            return []
        _bounded_put(self._entries, cert.id, None, self.window)
        return [CertAccepted(cert, item.pos, relay)]

    def _moderation(
        self, relay: str, view: _View, item: TimelineItem, signed: Signed
    ) -> list[TimelineOutput]:
        out: list[TimelineOutput] = []
        try:
            moderation = verify_moderation(
                signed,
                channel=self.channel,
                owners=self._owners,
                moderators=view.roster.moderators(),
                author=None,
            )
        except ProtocolError as exc:
            return self._bad(relay, item, signed, exc)
        if moderation.action == ACTION_REMOVE_MESSAGE:
            author = self._authors_of.get(moderation.subject)
            if (
                author is not None
                and moderation.signed.signer not in self._owners
                and (author in self._owners or author in view.roster.moderators())
            ):
                return self._find(
                    relay,
                    FindingCode.NOT_A_MODERATOR,
                    f"place {item.pos}: a moderator removes a moderator's message",
                    seq=item.pos,
                    proof=(signed,),
                )
        view.roster.apply_moderation(moderation)
        if moderation.action == ACTION_REMOVE_MESSAGE:
            subject = moderation.subject
            view.tombstones.pop(subject, None)
            served = view.served.get(subject)
            if served is not None and view.announced is not None and item.pos <= view.announced:
                # The removal was placed before the relay answered ``subscribed``, so the
                # history it then sent had to show the place empty.
                out += self._find(
                    relay,
                    FindingCode.SERVED_REMOVED,
                    f"the relay served message content its history also shows removed (place {item.pos})",
                    seq=item.pos,
                    proof=(signed, served),
                    key=("removed", subject),
                )
            _bounded_put(self._removed, subject, moderation, self.window)
        if moderation.id in self._entries:
            return out
        _bounded_put(self._entries, moderation.id, None, self.window)
        return [*out, ModerationAccepted(moderation, item.pos, relay)]

    def _message(self, relay: str, view: _View, item: TimelineItem, signed: Signed) -> list[TimelineOutput]:
        try:
            message = verify_message(signed, channel=self.channel)
        except ProtocolError as exc:
            return self._bad(relay, item, signed, exc)
        author, out = message.author, []
        _bounded_put(self._authors_of, message.id, author, self.window)
        out += self._author_chain(relay, view, message)
        removal = self._removed.get(message.id)
        if removal is not None or view.roster.removed(message.id):
            proof = (removal.signed, signed) if removal is not None else (signed,)
            return out + self._find(
                relay,
                FindingCode.SERVED_REMOVED,
                f"place {item.pos} serves a message whose signed removal the reader holds",
                seq=item.pos,
                proof=proof,
                key=("removed", message.id),
            )
        if not view.history_done:
            _bounded_put(view.served, message.id, signed, self.window)
        entry = view.roster.entry(author)
        cert = entry.cert if entry is not None else None
        try:
            view.roster.may_post(author)
        except ProtocolError as exc:
            # A relay whose whole timeline this reader saw, or that showed this member's removal,
            # had to refuse the message; elsewhere the cert may merely be older than its history.
            if view.complete or entry is not None:
                return out + self._find(
                    relay,
                    FindingCode.UNCERTIFIED_MEMBER,
                    f"place {item.pos}: a message from a key with no valid cert before it in this "
                    f"relay's timeline ({exc.reason})",
                    seq=item.pos,
                    proof=(signed,),
                    key=("uncertified", message.id),
                )
            cert = self._certs.get(author)
            if cert is None:
                return out + self._find(
                    relay,
                    FindingCode.CERT_UNSEEN,
                    f"place {item.pos}: the author's cert is older than the relay's history; "
                    "the author's messages are not shown",
                    seq=item.pos,
                    key=("unseen", author),
                )
        assert cert is not None
        reply_to = message.message.reply_to
        if (
            self.profile.profile.kind != "group"
            and reply_to
            and reply_to in self._authors_of
            and reply_to not in self._owner_events
        ):
            out += self._find(
                relay,
                FindingCode.BAD_REPLY,
                f"place {item.pos}: a comment replies to a comment, not to an owner's post",
                seq=item.pos,
                proof=(signed,),
            )
        if message.id in self._accepted:
            return out
        _bounded_put(self._accepted, message.id, None, self.window)
        return [*out, MessageAccepted(message, cert.cert.name, cert.cert.role, item.pos, item.after, relay)]

    def _author_chain(self, relay: str, view: _View, message: VerifiedMessage) -> list[TimelineOutput]:
        """The author's chain in this relay's stream, and across relays (a fork)."""
        author, seq, prev, out = message.author, message.seq, message.message.prev, []
        slot = author + seq.to_bytes(8, "big")
        other = self._at.get(slot)
        if other is not None and not crypto.same_secret(other.id, message.id):
            out += self._find(
                relay,
                FindingCode.FORK,
                f"two different messages of one member at its seq {seq}; both are kept as proof",
                seq=seq,
                proof=(other.signed, message.signed),
                key=("fork", slot),
            )
        elif other is None:
            _bounded_put(self._at, slot, message, self.window)
        last = view.authors.get(author)
        skipped_removed = prev in view.emptied
        if last is None:
            if view.complete and seq != 1 and not skipped_removed:
                out += self._find(
                    relay,
                    FindingCode.EVENT_GAP,
                    f"the member's message {seq} is the first this relay shows; its earlier ones exist",
                    seq=1,
                    proof=(message.signed,),
                    key=("gap", author, 1),
                )
        elif seq <= last.seq:
            if seq < last.seq or not crypto.same_secret(last.id, message.id):
                out += self._find(
                    relay,
                    FindingCode.OUT_OF_ORDER,
                    f"the member's message {seq} came after its message {last.seq} in this relay's timeline",
                    seq=seq,
                    key=("order", author, seq),
                )
            return out
        elif seq > last.seq + 1 and not skipped_removed:
            out += self._find(
                relay,
                FindingCode.EVENT_GAP,
                f"the relay's timeline skips the member's messages {last.seq + 1}..{seq - 1}",
                seq=last.seq + 1,
                proof=(last.signed, message.signed),
                key=("gap", author, last.seq + 1),
            )
        elif seq == last.seq + 1 and not crypto.same_secret(prev, last.id):
            out += self._find(
                relay,
                FindingCode.CHAIN_BROKEN,
                f"the member's message {seq} does not chain onto the message {last.seq} this relay showed",
                seq=seq,
                proof=(last.signed, message.signed),
                key=("chain", author, seq),
            )
        _bounded_put(view.authors, author, _Author(seq, message.id, message.signed), self.max_authors)
        return out

    def _bad(
        self, relay: str, item: TimelineItem, signed: Signed, exc: ProtocolError
    ) -> list[TimelineOutput]:
        code = _FROM_ERROR.get(exc.code, FindingCode.BAD_EVENT)
        return self._find(relay, code, f"place {item.pos}: {exc.reason}", seq=item.pos, proof=(signed,))

    def _find(
        self,
        relay: str,
        code: FindingCode,
        detail: str,
        *,
        seq: int | None = None,
        proof: tuple[Signed, ...] = (),
        key: object = None,
    ) -> list[TimelineOutput]:
        """A finding, reported once per relay, code and place (or ``key``)."""
        finding = self._told.once(relay, code, detail, seq=seq, proof=proof, key=key)
        return [] if finding is None else [finding]
