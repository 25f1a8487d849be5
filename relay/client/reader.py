"""The member reads: every relay of the channel at once, each post shown once, every lie named.

:func:`read` connects to every relay the newest verified profile lists, all at
once (one trio task per relay, one nursery), fetches and verifies each relay's
profile (the newest version wins; older ones are reported), subscribes with a
signed ``subscribe`` request, and feeds everything the relays send into one
:class:`relay.protocol.follow.Follower`.  After a relay's history it asks the
relay for its signed head on the group address, and for the channel's heads by
tag on its contact address (``discover``: an anonymous question the relay
cannot tailor to this member), so a fork shown only to this member shows.

Items come out of the receive channel :func:`read` yields: accepted events (each
once, in order), findings, relays that could not be read, profiles adopted, and
direct invitations received.  The last event shown (handed to the caller, not
merely verified and queued) is saved in the member state file, so the next read
starts after it.  Nothing here trusts a relay: the
follower decides.

In a group (or a channel with comments) the same subscription carries the relay's
timeline of member certs, messages and moderations, which a
:class:`relay.protocol.timeline_reader.TimelineReader` judges beside the follower: the
timeline is read from its first kept place every time (a message counts only after its
author's cert in that relay's timeline), the heads are asked only once both histories are
in, and member messages already shown (their ids, kept in the member file) are not shown
again.  The member's own cert, once a timeline shows it, is kept in the member file for
``relay member post``.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import trio

from relay.client.connection import RelaySession, open_session
from relay.client.errors import RelayError, RelayProtocolError, RelayUnreachable
from relay.client.member import MemberState
from relay.client.progress import waiting
from relay.protocol import crypto
from relay.protocol.addresses import RelayAddress, parse_address
from relay.protocol.direct import open_direct_invitation
from relay.protocol.encoding import b64d, b64e, decode, encode
from relay.protocol.errors import ProtocolError
from relay.protocol.follow import Accepted, Finding, FindingCode, Follower, ProfileAdopted
from relay.protocol.heads import tag, verify_head
from relay.protocol.membership import ACTION_SUBSCRIBE, make_member_request
from relay.protocol.messages import (
    DirectInviteDelivery,
    Discover,
    Discovered,
    Error,
    EventFrame,
    HeadAnswer,
    HeadRequest,
    ProfileAnswer,
    ProfileRequest,
    RelayFrame,
    Signed,
    Subscribe,
    Subscribed,
    TimelineFrame,
)
from relay.protocol.profile import VerifiedProfile, check_succession, verify_profile
from relay.protocol.timeline import MAX_CERT_BYTES, TIMELINE_GENESIS, stored_cert
from relay.protocol.timeline_reader import (
    CertAccepted,
    MessageAccepted,
    ModerationAccepted,
    TimelineReader,
)

MAX_INVITATIONS = 100  # kept in the member file, newest last
MAX_SHOWN_MESSAGES = 4096  # ids of member messages shown, kept in the member file
MAX_POST_IDS = 256  # owner posts' ids by sequence number, for ``post --reply-to #SEQ``
QUEUE = 1024  # items waiting for the reader of the channel: relays wait when it is full
RECONNECT_FIRST, RECONNECT_MAX = 0.5, 30.0  # seconds between attempts to reach a relay again


@dataclass(frozen=True, slots=True)
class RelayTrouble:
    """A relay that could not be read (unreachable, not a member there, ...): not a lie."""

    relay: str
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class InvitationReceived:
    """A sealed direct invitation from another member, opened with this member's seal key."""

    relay: str
    sender: str  # the sender's member key, b64
    contact: str
    note: str


ReadItem = (
    Accepted
    | Finding
    | ProfileAdopted
    | RelayTrouble
    | InvitationReceived
    | MessageAccepted
    | CertAccepted
    | ModerationAccepted
)


@dataclass
class _Read:
    state: MemberState
    path: Path
    since: int | None
    follow: bool
    timeout: float
    idle: float
    behind_grace: float
    send: trio.MemorySendChannel[ReadItem]
    follower: Follower | None = None
    timeline: TimelineReader | None = None  # a group, or a channel with comments
    shown_ids: set[str] = field(default_factory=set)
    profiles: dict[str, VerifiedProfile] = field(default_factory=dict)
    pending_profiles: int = 0
    profiles_ready: trio.Event = field(default_factory=trio.Event)
    dirty: bool = False

    async def emit(self, outputs: list[ReadItem]) -> None:
        for item in outputs:
            more: list[ReadItem] = []
            if isinstance(item, ProfileAdopted):
                self.state.keep_profile(item.profile)
                self.dirty = True
                if self.timeline is not None:
                    more = list(self.timeline.profile_adopted(item.profile))
            elif isinstance(item, Accepted) and self.timeline is not None:
                more = list(self.timeline.owner_event(item.event))
            elif isinstance(item, CertAccepted):
                self._own_cert(item)
            elif isinstance(item, MessageAccepted) and b64e(item.message.id) in self.shown_ids:
                continue  # shown by an earlier read
            await self.send.send(item)
            if more:
                await self.emit(more)

    def _own_cert(self, item: CertAccepted) -> None:
        """This member's own cert: kept for ``relay member post`` (the newest one)."""
        if not crypto.same_secret(item.cert.member, crypto.public_bytes(self.state.member_key)):
            return
        if self.state.cert:
            kept = decode(b64d(self.state.cert), Signed, limit=2 * MAX_CERT_BYTES, what="cert")
            if kept == item.cert.signed:
                return
            if stored_cert(kept).cert.issued_at > item.cert.cert.issued_at:
                return
        self.state.cert = b64e(encode(item.cert.signed))
        self.dirty = True

    def shown(self, item: Accepted) -> None:
        """``item`` reached the caller: the next read starts after it."""
        self.state.last_seq, self.state.last_id = item.event.seq, b64e(item.event.id)
        ids = self.state.post_ids
        ids[str(item.event.seq)] = b64e(item.event.id)
        for old in sorted(ids, key=int)[:-MAX_POST_IDS]:
            del ids[old]
        self.dirty = True

    def shown_message(self, item: MessageAccepted) -> None:
        """A member message reached the caller: later reads do not show it again."""
        ident = b64e(item.message.id)
        self.shown_ids.add(ident)
        kept = self.state.shown_messages
        kept.append(ident)
        del kept[:-MAX_SHOWN_MESSAGES]
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            self.state.save(self.path)
            self.dirty = False


class Items:
    """What :func:`read` yields: the items, in order, as an async iterator (``async for``).

    An accepted event counts as shown when the caller takes it, not when it is verified and
    queued (up to ``QUEUE`` items ahead): a caller that stops early (a closed pipe, Ctrl-C)
    leaves the position after the last event it took.
    """

    def __init__(self, receive: trio.MemoryReceiveChannel[ReadItem], run: _Read) -> None:
        self._receive = receive
        self._run = run

    def __aiter__(self) -> Items:
        return self

    async def __anext__(self) -> ReadItem:
        try:
            item = await self._receive.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None
        if isinstance(item, Accepted):
            self._run.shown(item)
        elif isinstance(item, MessageAccepted):
            self._run.shown_message(item)
        return item


@asynccontextmanager
async def read(
    state: MemberState,
    path: Path,
    *,
    since: int | None = None,
    follow: bool = False,
    timeout: float = 15.0,
    idle: float = 2.0,
    behind_grace: float = 30.0,
) -> AsyncIterator[Items]:
    """Read the channel from every relay; iterate what this yields.

    ``since``: show the events after this sequence number (default: after the last one this
    member was shown; a new member gets each relay's latest history).  Without ``follow`` the
    read ends once every relay's history and heads are in; with it, it goes on until cancelled.
    ``idle``: seconds without a frame after which a relay's history counts as over.
    """
    send, receive = trio.open_memory_channel[ReadItem](QUEUE)
    run = _Read(state, path, since, follow, timeout, idle, behind_grace, send)
    if since is None:  # an explicit --since shows the members' messages again too
        run.shown_ids = set(state.shown_messages)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_run, run)
            async with receive:
                yield Items(receive, run)
            nursery.cancel_scope.cancel()  # the caller stopped reading early
    finally:
        run.save()


async def _run(run: _Read) -> None:
    async with run.send:
        stored = run.state.verified_profile()
        addresses = list(stored.profile.relays) if stored and stored.profile.relays else []
        if not addresses:
            addresses = list(run.state.parsed_link.relays)
        run.pending_profiles = len(addresses)
        async with trio.open_nursery() as nursery:
            for address in addresses:
                nursery.start_soon(_relay, run, address)
            if run.follow:
                nursery.start_soon(_tick, run)
        if run.follower is not None:
            await run.emit(list(run.follower.finish(time.monotonic())))
        if run.timeline is not None:
            await run.emit(list(run.timeline.finish()))
        run.save()


async def _tick(run: _Read) -> None:
    """While following: save the position now and then, and look for relays left behind."""
    while True:
        await trio.sleep(1.0)
        run.save()
        if run.follower is not None:
            await run.emit(list(run.follower.check_behind(time.monotonic(), run.behind_grace)))


def _profile_done(run: _Read) -> None:
    run.pending_profiles -= 1
    if run.pending_profiles <= 0 and not run.profiles_ready.is_set():
        _start_follower(run)
        run.profiles_ready.set()


def _start_follower(run: _Read) -> None:
    """The newest verified profile (ours or a relay's) wins; the others are judged against it."""
    stored = run.state.verified_profile()
    candidates = sorted(run.profiles.values(), key=lambda p: p.profile.version)
    if stored is None and not candidates:
        return
    newest = stored or candidates[0]
    for candidate in candidates:
        if candidate.profile.version > newest.profile.version:
            try:
                check_succession(newest, candidate)
            except ProtocolError:
                continue  # reported by the follower when the relay's profile is judged
            newest = candidate
    state = run.state
    since = run.since if run.since is not None else (state.last_seq or None)
    after_id = b64d(state.last_id) if state.last_id and since == state.last_seq else None
    run.follower = Follower(
        channel=state.parsed_link.channel,
        profile=newest,
        relays=list(newest.profile.relays) or list(run.profiles),
        after_seq=since,
        after_id=after_id,
        behind_threshold=0 if not run.follow else 1,
    )
    if newest.profile.kind == "group" or newest.profile.comments:
        run.timeline = TimelineReader(
            channel=state.parsed_link.channel,
            profile=newest,
            relays=list(newest.profile.relays) or list(run.profiles),
        )
    if stored is None or newest.profile.version > stored.profile.version:
        state.keep_profile(newest)
        run.dirty = True


async def _relay(run: _Read, relay: str) -> None:
    """One relay, from profile to history to heads (and live events, when following)."""
    counted = False
    try:
        address = parse_address(relay)
        if address.address_id is None:
            raise RelayError("not a group address", code="bad_type")
        async with open_session(address, timeout=run.timeout) as session:
            answer = await session.request(ProfileRequest())
            if not isinstance(answer, ProfileAnswer):
                raise RelayProtocolError(f"expected profile, got {type(answer).__name__}")
            seen = answer.profile
            try:
                verified = verify_profile(seen)
                if crypto.same_secret(verified.profile.channel, run.state.parsed_link.channel):
                    run.profiles[relay] = verified
            except ProtocolError:
                pass  # judged by the follower below, with the code it deserves
            counted = True
            _profile_done(run)
            await run.profiles_ready.wait()
            follower = run.follower
            if follower is None:
                raise RelayError("no relay served a profile that verifies", code="no_profile")
            await run.emit(list(follower.profile_seen(relay, seen)))
            if relay not in follower.profile.profile.relays and follower.profile.profile.relays:
                raise RelayError("the newest profile does not list this relay", code="not_listed")
            await _subscribe(run, follower, session, address, relay, follower.after_seq, 0)
    except RelayUnreachable as exc:
        if not (run.follow and run.follower is not None and counted):
            await run.send.send(RelayTrouble(relay, exc.code, exc.reason))
            return
        await run.send.send(RelayTrouble(relay, exc.code, f"{exc.reason}; reconnecting"))
        await _reconnect(run, run.follower, relay)
    except RelayError as exc:
        await run.send.send(RelayTrouble(relay, exc.code, exc.reason))
    except ProtocolError as exc:
        await run.send.send(RelayTrouble(relay, exc.code.value, exc.reason))
    finally:
        if not counted:
            _profile_done(run)


async def _reconnect(run: _Read, follower: Follower, relay: str) -> None:
    """While following: a relay that went away (restart, network, a feed dropped for being
    slow) is subscribed to again, after the last event shown, with a growing back-off."""
    address = parse_address(relay)
    delay = RECONNECT_FIRST
    while True:
        await trio.sleep(delay)
        try:
            async with open_session(address, timeout=run.timeout) as session:
                delay = RECONNECT_FIRST
                timeline_since = run.timeline.resubscribe(relay) if run.timeline is not None else None
                await _subscribe(
                    run, follower, session, address, relay, follower.resubscribe(relay), timeline_since
                )
        except RelayUnreachable:
            delay = min(delay * 2, RECONNECT_MAX)
        except RelayError as exc:
            await run.send.send(RelayTrouble(relay, exc.code, exc.reason))
            return


async def _subscribe(
    run: _Read,
    follower: Follower,
    session: RelaySession,
    address: RelayAddress,
    relay: str,
    since: int | None,
    timeline_since: int | None,
) -> None:
    """Subscribe and take the history (events, and the timeline in a group), then the heads
    (and the live feed, when following).  ``timeline_since``: 0 on a first subscription (the
    whole kept timeline), the last place taken on a reconnection."""
    state = run.state
    timeline = run.timeline
    if timeline is None:
        timeline_since = None
    assert address.address_id is not None
    request = make_member_request(
        state.member_key,
        relay_fingerprint=address.fingerprint,
        channel=state.parsed_link.channel,
        address_id=address.address_id,
        session=session.challenge,
        now=int(time.time()),
        action=ACTION_SUBSCRIBE,
    )
    await session.send(Subscribe(request=request, since=since, timeline_since=timeline_since))
    with waiting(f"the subscription at {session.where}"):
        first = await session.receive(timeout=run.timeout)
    if isinstance(first, Error):
        raise RelayError(first.reason, code=first.code)
    if not isinstance(first, Subscribed):
        raise RelayProtocolError(f"expected subscribed, got {type(first).__name__}")
    await run.emit(
        list(
            follower.subscribed(
                relay,
                head_seq=first.head_seq,
                first_seq=first.first_seq,
                profile_version=first.profile_version,
            )
        )
    )
    # The heads are asked once both histories are in: a head answered before the timeline's
    # history would leave the places after it unread.
    timeline_over = True
    if timeline is not None:
        position = timeline.position(relay) if timeline_since else None
        since_hash = TIMELINE_GENESIS if timeline_since == 0 else position[1] if position else None
        await run.emit(
            list(
                timeline.subscribed(
                    relay,
                    timeline_pos=first.timeline_pos,
                    timeline_first=first.timeline_first,
                    since=timeline_since,
                    since_hash=since_hash,
                )
            )
        )
        timeline_over = first.timeline_pos <= (timeline_since or 0)
    asked_head = False
    while True:
        if not asked_head and follower.history_over(relay) and timeline_over:
            await session.send(HeadRequest())
            asked_head = True
        wait = run.idle if not asked_head else (math.inf if run.follow else run.timeout)
        frame: RelayFrame | None = None
        with trio.move_on_after(wait):
            frame = await session.receive()
        if frame is None:
            if asked_head:
                if run.follow:
                    continue
                raise RelayError("no signed head within the time-out", code="timeout")
            await run.emit(list(follower.history_done(relay)))
            if timeline is not None and not timeline_over:
                await run.emit(list(timeline.history_done(relay)))
                timeline_over = True  # what is missing is reported; the heads tell the rest
            continue
        if isinstance(frame, HeadAnswer):
            await _take_head(run, follower, session, relay, frame)
            await _discover(run, follower, address, relay)
            if not run.follow:
                return
        elif isinstance(frame, TimelineFrame):
            if timeline is None:
                raise RelayProtocolError("a timeline frame in a channel without member messages")
            await run.emit(list(timeline.item(relay, frame.item)))
            if frame.item.pos >= first.timeline_pos:
                timeline_over = True
        else:
            await _take(run, follower, relay, frame)


async def _take(run: _Read, follower: Follower, relay: str, frame: RelayFrame) -> None:
    """One pushed frame of the feed."""
    if isinstance(frame, EventFrame):
        await run.emit(list(follower.event(relay, frame.event)))
    elif isinstance(frame, ProfileAnswer):
        await run.emit(list(follower.profile_seen(relay, frame.profile)))
    elif isinstance(frame, DirectInviteDelivery):
        await _invitation(run, relay, frame)
    elif isinstance(frame, Error):
        raise RelayError(frame.reason, code=frame.code)
    else:
        raise RelayProtocolError(f"unexpected {type(frame).__name__} on the feed")


async def _take_head(
    run: _Read, follower: Follower, session: RelaySession, relay: str, frame: HeadAnswer
) -> None:
    try:
        head = verify_head(frame.head, relay_key=session.card.relay_key, channel=follower.channel)
    except ProtocolError as exc:
        await run.emit(
            [Finding(relay, FindingCode.BAD_HEAD, f"the signed head does not verify: {exc.reason}")]
        )
        return
    await run.emit(list(follower.head(relay, head, frame.event)))
    if run.timeline is not None:
        await run.emit(list(run.timeline.head(relay, head)))


async def _discover(run: _Read, follower: Follower, address: RelayAddress, relay: str) -> None:
    """Ask the relay's contact address, anonymously, for the heads of this channel's tags."""
    channel = follower.channel
    fingerprints = []
    for listed in follower.profile.profile.relays[:32]:
        try:
            fingerprints.append(parse_address(listed).fingerprint)
        except ProtocolError:
            continue
    tags = [tag(channel, fp) for fp in dict.fromkeys(fingerprints)] or [tag(channel, address.fingerprint)]
    try:
        contact = RelayAddress(address.base, address.fingerprint)
        async with open_session(contact, timeout=run.timeout) as session:
            answer = await session.request(Discover(tags=tags))
            if not isinstance(answer, Discovered):
                raise RelayProtocolError(f"expected discovered, got {type(answer).__name__}")
            for signed in answer.heads:
                try:
                    head = verify_head(signed, relay_key=session.card.relay_key, channel=channel)
                except ProtocolError as exc:
                    await run.emit([Finding(relay, FindingCode.BAD_HEAD, f"a discovered head: {exc.reason}")])
                    continue
                await run.emit(list(follower.head(relay, head)))
                if run.timeline is not None:
                    await run.emit(list(run.timeline.head(relay, head)))
    except RelayError as exc:
        await run.send.send(RelayTrouble(relay, exc.code, f"discovery: {exc.reason}"))


async def _invitation(run: _Read, relay: str, frame: DirectInviteDelivery) -> None:
    state = run.state
    try:
        content = open_direct_invitation(
            frame.request,
            seal_key=state.seal_key,
            member_key=crypto.public_bytes(state.member_key),
            channel=state.parsed_link.channel,
        )
    except ProtocolError as exc:
        await run.send.send(RelayTrouble(relay, exc.code.value, f"a direct invitation: {exc.reason}"))
        return
    digest = b64e(crypto.digest(frame.request.body))
    if any(i.get("id") == digest for i in state.invitations):
        return  # the same invitation through another relay
    state.invitations.append(
        {"id": digest, "sender": b64e(content.sender), "contact": content.contact, "note": content.note}
    )
    del state.invitations[:-MAX_INVITATIONS]
    run.dirty = True
    await run.send.send(InvitationReceived(relay, b64e(content.sender), content.contact, content.note))
