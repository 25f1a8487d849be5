"""Groups at the relay, against the real daemon: members' messages, owners' certs and signed
moderation in a group's timeline, spoken frame by frame (the raw client of ``wire.py``).

A certified member's message is stored once, placed (``pos``) and served live and as history
to the other members; the same bytes again are a ``duplicate``; every bad input gets its typed
error and stores nothing; a removed message is served as a tombstone; the relay's signed head
covers the timeline; a ban ends the member's feed and refuses its posts and its later join.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from conftest import ENGINES
from relayproc import RelayFactory, RunningRelay
from traffic import (
    Member,
    active_channel,
    group_session,
    join_member,
    metric,
    relay_key,
    subscribe_frame,
)
from wire import RawSession, check_error

from relay.client.owner import OwnerState
from relay.protocol import crypto
from relay.protocol import timeline as rules
from relay.protocol.encoding import decode, encode
from relay.protocol.heads import verify_head
from relay.protocol.messages import (
    Head,
    HeadAnswer,
    HeadRequest,
    MemberPost,
    MemberPostResult,
    Profile,
    ProfileResult,
    ProfileUpdate,
    Publish,
    PublishResult,
    Signed,
    Subscribe,
    Subscribed,
    TimelineFrame,
    TimelineItem,
)


def now() -> int:
    return int(time.time())


async def group(
    relay: RunningRelay, tmp_path: Path, kind: str = "group", **profile: object
) -> tuple[OwnerState, str]:
    """An active group (or channel) on ``relay``; ``profile``: fields of the signed profile the
    owner's state file does not hold (comments, limits), signed into a next version."""
    owner, path, address_id = await active_channel(relay, tmp_path, kind=kind)
    if profile:
        owner.profile_version += 1
        base = decode(owner.profile().body, Profile, limit=1 << 20)
        body = encode(msgspec.structs.replace(base, **profile))
        signed = crypto.signed(owner.owner_key, crypto.Label.PROFILE, body)
        async with group_session(relay, address_id) as session:
            answer = await session.request(ProfileUpdate(profile=signed))
        assert isinstance(answer, ProfileResult), answer
        owner.save(path)
    return owner, address_id


@dataclass
class Author:
    """A member posting in a group: its key, the head of its own chain, its cert."""

    owner: OwnerState
    member: Member = field(default_factory=Member)
    head: rules.AuthorHead = field(default_factory=rules.AuthorHead)
    name: str = "Ada"

    def cert(self, role: str = "member", issued_at: int | None = None) -> Signed:
        return rules.make_cert(
            self.owner.owner_key,
            channel=self.owner.channel,
            member=self.member.public,
            name=self.name,
            role=role,
            now=now() if issued_at is None else issued_at,
        )

    def message(self, body: bytes, *, reply_to: bytes = b"", seq: int | None = None) -> Signed:
        after = self.head if seq is None else rules.AuthorHead(seq - 1, self.head.id, 0)
        return rules.make_message(
            self.member.key, channel=self.owner.channel, after=after, body=body, now=now(), reply_to=reply_to
        )

    def accept(self, signed: Signed) -> None:
        message = rules.stored_message(signed)
        self.head = rules.AuthorHead.of(message)

    async def post(
        self, session: RawSession, body: bytes, *, cert: Signed | None = None, **kw: bytes
    ) -> MemberPostResult:
        signed = self.message(body, **kw)
        answer = await session.request(MemberPost(message=signed, cert=cert))
        assert isinstance(answer, MemberPostResult), answer
        assert answer.status == "stored", answer
        self.accept(signed)
        return answer


async def joined(relay: RunningRelay, owner: OwnerState, address_id: str, name: str) -> Author:
    return Author(owner, await join_member(relay, owner, address_id, name), name=name)


async def publish_entry(session: RawSession, entry: Signed, kind: str) -> PublishResult:
    answer = await session.request(Publish(entry=entry, kind=kind))
    assert isinstance(answer, PublishResult), answer
    return answer


async def subscribe(
    session: RawSession,
    relay: RunningRelay,
    author: Author,
    address_id: str,
    timeline_since: int | None = None,
) -> Subscribed:
    frame = subscribe_frame(relay, author.owner, address_id, author.member, session=session.challenge)
    answer = await session.request(Subscribe(request=frame.request, timeline_since=timeline_since))
    assert isinstance(answer, Subscribed), answer
    return answer


async def items(session: RawSession, n: int, timeout: float = 5.0) -> list[TimelineItem]:
    """The next ``n`` timeline frames (event frames are skipped)."""
    got: list[TimelineItem] = []
    while len(got) < n:
        frame = await session.recv(timeout)
        if isinstance(frame, TimelineFrame):
            got.append(frame.item)
    return got


async def timeline_pos(session: RawSession) -> int:
    """The timeline's last place, as the relay's head says."""
    answer = await session.request(HeadRequest())
    assert isinstance(answer, HeadAnswer)
    return decode(answer.head.body, Head, limit=4096).timeline_pos


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
async def test_a_certified_members_message_reaches_the_others_live_and_in_history(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory()
    owner, address_id = await group(relay, tmp_path)
    ada = await joined(relay, owner, address_id, "Ada")
    bob = await joined(relay, owner, address_id, "Bob")
    async with group_session(relay, address_id) as owner_session:
        placed = await publish_entry(owner_session, ada.cert(), "cert")
        assert (placed.status, placed.pos) == ("stored", 1)
        older = Publish(entry=ada.cert(issued_at=now() - 60), kind="cert")
        check_error(await owner_session.request(older), "superseded")  # nothing stored
    async with group_session(relay, address_id) as bob_feed, group_session(relay, address_id) as ada_session:
        answer = await subscribe(bob_feed, relay, bob, address_id)
        assert (answer.timeline_pos, answer.timeline_first) == (1, 1)
        [cert_item] = await items(bob_feed, 1)
        assert (cert_item.pos, cert_item.kind, cert_item.after) == (1, "cert", 0)
        first = await ada.post(ada_session, b"hello, group")
        assert first.pos == 2
        [live] = await items(bob_feed, 1)
        assert (live.pos, live.kind, live.id) == (2, "message", first.id)
        assert live.entry is not None and rules.stored_message(live.entry).message.body == b"hello, group"
        # the same bytes again: a retry, answered with the place it has
        retry = await ada_session.request(MemberPost(message=live.entry))
        assert isinstance(retry, MemberPostResult) and (retry.status, retry.pos) == ("duplicate", 2)
        # bob brings his cert with his first message: the cert is placed first
        bobs = await bob.post(ada_session, b"hi Ada", cert=bob.cert())
        assert bobs.pos == 4
        got = await items(bob_feed, 2)
        assert [(i.pos, i.kind) for i in got] == [(3, "cert"), (4, "message")]
    async with group_session(relay, address_id) as reader:
        answer = await subscribe(reader, relay, ada, address_id, timeline_since=0)
        assert (answer.timeline_pos, answer.timeline_first) == (4, 1)
        history = await items(reader, 4)
        assert [i.pos for i in history] == [1, 2, 3, 4]
        assert all(i.entry is not None for i in history)
        # the relay's signed head covers the timeline: its hash is the one of what was served
        head = await reader.request(HeadRequest())
        assert isinstance(head, HeadAnswer)
        verified = verify_head(head.head, relay_key=relay_key(relay), channel=owner.channel).head
        running = rules.TIMELINE_GENESIS
        for item in history:
            running = rules.timeline_hash(running, item.pos, item.after, item.kind, item.id)
        assert (verified.timeline_pos, verified.timeline_hash) == (4, running)
    assert metric(relay, "relay_member_messages_total") == 3
