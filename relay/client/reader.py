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
from relay.protocol.encoding import b64d, b64e
from relay.protocol.errors import ProtocolError
from relay.protocol.follow import Accepted, Finding, FindingCode, Follower, Output, ProfileAdopted
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
    Subscribe,
    Subscribed,
)
from relay.protocol.profile import VerifiedProfile, check_succession, verify_profile

MAX_INVITATIONS = 100  # kept in the member file, newest last
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


ReadItem = Accepted | Finding | ProfileAdopted | RelayTrouble | InvitationReceived


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
    profiles: dict[str, VerifiedProfile] = field(default_factory=dict)
    pending_profiles: int = 0
    profiles_ready: trio.Event = field(default_factory=trio.Event)
    dirty: bool = False

    async def emit(self, outputs: list[Output]) -> None:
        for item in outputs:
            if isinstance(item, ProfileAdopted):
                self.state.keep_profile(item.profile)
                self.dirty = True
            await self.send.send(item)

    def shown(self, item: Accepted) -> None:
        """``item`` reached the caller: the next read starts after it."""
        self.state.last_seq, self.state.last_id = item.event.seq, b64e(item.event.id)
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
            await run.emit(run.follower.finish(time.monotonic()))
        run.save()


async def _tick(run: _Read) -> None:
    """While following: save the position now and then, and look for relays left behind."""
    while True:
        await trio.sleep(1.0)
        run.save()
        if run.follower is not None:
            await run.emit(run.follower.check_behind(time.monotonic(), run.behind_grace))


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
            await run.emit(follower.profile_seen(relay, seen))
            if relay not in follower.profile.profile.relays and follower.profile.profile.relays:
                raise RelayError("the newest profile does not list this relay", code="not_listed")
            await _subscribe(run, follower, session, address, relay, follower.after_seq)
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
                await _subscribe(run, follower, session, address, relay, follower.resubscribe(relay))
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
) -> None:
    state = run.state
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
    await session.send(Subscribe(request=request, since=since))
    with waiting(f"the subscription at {session.where}"):
        first = await session.receive(timeout=run.timeout)
    if isinstance(first, Error):
        raise RelayError(first.reason, code=first.code)
    if not isinstance(first, Subscribed):
        raise RelayProtocolError(f"expected subscribed, got {type(first).__name__}")
    await run.emit(
        follower.subscribed(
            relay, head_seq=first.head_seq, first_seq=first.first_seq, profile_version=first.profile_version
        )
    )
    asked_head = False
    while True:
        if not asked_head and follower.history_over(relay):
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
            await run.emit(follower.history_done(relay))
            continue
        if isinstance(frame, HeadAnswer):
            await _take_head(run, follower, session, relay, frame)
            await _discover(run, follower, address, relay)
            if not run.follow:
                return
        else:
            await _take(run, follower, relay, frame)


async def _take(run: _Read, follower: Follower, relay: str, frame: RelayFrame) -> None:
    """One pushed frame of the feed."""
    if isinstance(frame, EventFrame):
        await run.emit(follower.event(relay, frame.event))
    elif isinstance(frame, ProfileAnswer):
        await run.emit(follower.profile_seen(relay, frame.profile))
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
    await run.emit(follower.head(relay, head, frame.event))


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
                await run.emit(follower.head(relay, head))
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
