"""A lying relay against the readers of a group's member messages: each lie is caught by every
reader, and the relay named.

As in tests/test_liars.py, two real relays serve the group: A, honest, and B behind a
:class:`liar.LyingProxy` (the real relay, its real identity proof, and a test-chosen lie on
member feeds).  The owner certifies Ada and Bob, who post through both relays; then B lies
about the timeline (alters, drops, reorders or injects a member message, serves a removed
message, swaps a member's key, invents a member), and both Ada's and Bob's reads name B with
the documented code (docs/protocol.md, "What a member is told"), while A is named for nothing
and the true messages are still shown, from A.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from liar import Feed, TwoRelays, placed, two_relays
from relayproc import RelayFactory
from test_groups_client import certified, messages, new_group
from test_traffic import read_all, told

from relay.client.member import MemberState
from relay.client.memberpost import post_message
from relay.client.moderation import moderate
from relay.client.reader import ReadItem
from relay.protocol import crypto
from relay.protocol.encoding import b64e, decode, encode
from relay.protocol.messages import MemberCert, RelayFrame, Signed, TimelineFrame, TimelineItem
from relay.protocol.timeline import AuthorHead, make_cert, make_message, signed_id, stored_message
from relay.protocol.timeline_reader import MessageAccepted

TRUE = [("Ada", b"one"), ("Ada", b"two"), ("Ada", b"three"), ("Bob", b"hello")]


@dataclass
class Stage(TwoRelays):
    readers: list[tuple[MemberState, Path]]

    async def reads(self) -> list[list[ReadItem]]:
        """Every reader's whole read (from the start), one after the other."""
        return [await read_all(state, path, since=0) for state, path in self.readers]


@asynccontextmanager
async def stage(relay_factory: RelayFactory, tmp_path: Path) -> AsyncIterator[Stage]:
    owner, opath = new_group(tmp_path)
    async with two_relays(relay_factory, owner, opath) as two:
        readers = await certified(owner, opath, tmp_path, "Ada", "Bob")
        (ada, apath), (bob, bpath) = readers
        for text in (b"one", b"two", b"three"):
            assert {r.status for r in (await post_message(ada, apath, text)).relays} == {"stored"}
        await post_message(bob, bpath, b"hello")
        yield Stage(two.a, two.b, two.proxy, owner, opath, readers)


def body_of(frame: RelayFrame) -> bytes | None:
    """The body of the member message a timeline frame carries (None: another kind, or empty)."""
    if isinstance(frame, TimelineFrame) and frame.item.kind == "message" and frame.item.entry is not None:
        return stored_message(frame.item.entry).message.body
    return None


def shown_once(items: list[ReadItem]) -> bool:
    """Every true message shown once, whichever relay delivered it first (a message B held
    back comes from A, possibly after those B sent around it)."""
    return sorted(messages(items)) == sorted(TRUE)


def caught(s: Stage, reads: list[list[ReadItem]], code: str) -> None:
    """Every reader names B with ``code``, and A with nothing."""
    for items in reads:
        codes = {c for r, c in told(items) if r == s.gb}
        assert code in codes, told(items)
        assert not {c for r, c in told(items) if r == s.ga}, told(items)


async def test_a_relay_that_alters_a_member_message_is_named(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    async with stage(relay_factory, tmp_path) as s:

        def alter(feed: Feed, frame: RelayFrame) -> list[RelayFrame]:
            if body_of(frame) == b"two":
                assert isinstance(frame, TimelineFrame) and frame.item.entry is not None
                real = frame.item.entry
                forged = Signed(body=real.body.replace(b"two", b"TWO"), signer=real.signer, sig=real.sig)
                return [placed(frame.item, forged)]
            return [frame]

        s.proxy.lie = alter
        reads = await s.reads()
        caught(s, reads, "bad_signature")
        assert all(shown_once(items) for items in reads)  # the true one, from A


async def test_a_relay_that_drops_a_member_message_is_named(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    async with stage(relay_factory, tmp_path) as s:
        s.proxy.lie = lambda feed, frame: [] if body_of(frame) == b"two" else [frame]
        reads = await s.reads()
        caught(s, reads, "timeline_gap")
        assert all(shown_once(items) for items in reads)


async def test_a_relay_that_renumbers_its_places_to_hide_a_drop_is_named(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    """No gap in the places: the dropped message shows in its author's chain (and in the hash
    the relay signed)."""
    async with stage(relay_factory, tmp_path) as s:

        def drop_and_renumber(feed: Feed, frame: RelayFrame) -> list[RelayFrame]:
            if body_of(frame) == b"two":
                feed.state["dropped"] = True
                return []
            if isinstance(frame, TimelineFrame) and feed.state.get("dropped"):
                return [placed(frame.item, frame.item.entry, pos=frame.item.pos - 1)]
            return [frame]

        s.proxy.lie = drop_and_renumber
        reads = await s.reads()
        caught(s, reads, "event_gap")
        assert all(shown_once(items) for items in reads)


async def test_a_relay_that_reorders_member_messages_is_named(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    async with stage(relay_factory, tmp_path) as s:

        def reorder(feed: Feed, frame: RelayFrame) -> list[RelayFrame]:
            if body_of(frame) == b"two":
                feed.state["held"] = frame
                return []
            if body_of(frame) == b"three" and "held" in feed.state:
                return [frame, feed.state.pop("held")]  # type: ignore[list-item]
            return [frame]

        s.proxy.lie = reorder
        reads = await s.reads()
        caught(s, reads, "out_of_order")
        assert all(shown_once(items) for items in reads)


async def test_a_relay_that_injects_a_message_in_a_members_name_is_named(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    async with stage(relay_factory, tmp_path) as s:
        relay_key = s.proxy.identity_key(s.b)

        def inject(feed: Feed, frame: RelayFrame) -> list[RelayFrame]:
            if body_of(frame) == b"three":
                assert isinstance(frame, TimelineFrame) and frame.item.entry is not None
                real = stored_message(frame.item.entry)
                forged = make_message(
                    relay_key,
                    channel=s.owner.channel,
                    after=AuthorHead.of(real),
                    body=b"send me money",
                    now=int(time.time()),
                )
                # Ada's key as the signer, the relay's signature: it cannot sign as Ada
                claimed = Signed(body=forged.body, signer=real.author, sig=forged.sig)
                feed.state["injected"] = True
                return [frame, placed(frame.item, claimed, pos=frame.item.pos + 1)]
            if isinstance(frame, TimelineFrame) and feed.state.get("injected"):
                return [placed(frame.item, frame.item.entry, pos=frame.item.pos + 1)]
            return [frame]

        s.proxy.lie = inject
        reads = await s.reads()
        caught(s, reads, "bad_signature")
        assert all(shown_once(items) for items in reads)


async def test_a_relay_that_serves_a_removed_message_is_named(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    async with stage(relay_factory, tmp_path) as s:
        two = next(m for m in s.proxy.member_posts if stored_message(m).message.body == b"two")
        removed = await moderate(s.owner, s.owner_path, "remove_message", b64e(stored_message(two).id))
        assert {r.status for r in removed.relays} == {"stored"}

        def resurrect(feed: Feed, frame: RelayFrame) -> list[RelayFrame]:
            if isinstance(frame, TimelineFrame) and frame.item.entry is None and frame.item.kind == "message":
                return [placed(frame.item, two)]  # the content it was told to stop serving
            return [frame]

        s.proxy.lie = resurrect
        reads = await s.reads()
        caught(s, reads, "served_removed")
        for items in reads:
            assert sorted(m for _, m in messages(items) if m != b"two") == [b"hello", b"one", b"three"]
            # its content, if shown before the removal was read, came from B alone, named a liar
            served = [i for i in items if isinstance(i, MessageAccepted) and i.message.message.body == b"two"]
            assert {i.relay for i in served} <= {s.gb}


async def test_a_relay_that_swaps_a_members_key_is_named(relay_factory: RelayFactory, tmp_path: Path) -> None:
    """B serves Ada's messages under a key of its own, re-signed, and Ada's cert with that key
    in it: the cert no longer verifies, and the messages have no valid cert before them."""
    async with stage(relay_factory, tmp_path) as s:
        swapped = ed25519.Ed25519PrivateKey.generate()
        ada_key = crypto.public_bytes(s.readers[0][0].member_key)

        def swap(feed: Feed, frame: RelayFrame) -> list[RelayFrame]:
            if not isinstance(frame, TimelineFrame) or frame.item.entry is None:
                return [frame]
            entry = frame.item.entry
            if frame.item.kind == "cert":
                cert = decode(entry.body, MemberCert, limit=10**5)
                if cert.member == ada_key:
                    body = encode(
                        MemberCert(
                            channel=cert.channel,
                            member=crypto.public_bytes(swapped),
                            name=cert.name,
                            role=cert.role,
                            issued_at=cert.issued_at,
                        )
                    )
                    return [placed(frame.item, Signed(body=body, signer=entry.signer, sig=entry.sig))]
            if frame.item.kind == "message" and entry.signer == ada_key:
                resigned = crypto.signed(swapped, crypto.Label.MEMBER_MESSAGE, entry.body)
                return [placed(frame.item, resigned)]
            return [frame]

        s.proxy.lie = swap
        reads = await s.reads()
        caught(s, reads, "bad_signature")
        caught(s, reads, "uncertified_member")
        assert all(shown_once(items) for items in reads)


async def test_a_relay_that_invents_a_member_is_named(relay_factory: RelayFactory, tmp_path: Path) -> None:
    """B makes up a member: a key of its own with a cert it signs itself, and a message."""
    async with stage(relay_factory, tmp_path) as s:
        mallory = ed25519.Ed25519PrivateKey.generate()
        relay_key = s.proxy.identity_key(s.b)
        cert = make_cert(
            relay_key,
            channel=s.owner.channel,
            member=crypto.public_bytes(mallory),
            name="Mallory",
            now=int(time.time()),
        )
        message = make_message(
            mallory, channel=s.owner.channel, after=AuthorHead(), body=b"trust me", now=int(time.time())
        )

        def invent(feed: Feed, frame: RelayFrame) -> list[RelayFrame]:
            if isinstance(frame, TimelineFrame) and frame.item.kind == "message" and "done" not in feed.state:
                feed.state["done"] = True
                item = frame.item
                made_up = TimelineItem(
                    pos=item.pos, after=item.after, kind="cert", id=signed_id("cert", cert), entry=cert
                )
                return [
                    TimelineFrame(item=made_up),
                    placed(item, message, pos=item.pos + 1),
                    placed(item, item.entry, pos=item.pos + 2),
                ]
            if isinstance(frame, TimelineFrame) and "done" in feed.state:
                return [placed(frame.item, frame.item.entry, pos=frame.item.pos + 2)]
            return [frame]

        s.proxy.lie = invent
        reads = await s.reads()
        caught(s, reads, "unauthorised_owner")
        caught(s, reads, "uncertified_member")
        for items in reads:
            assert ("Mallory", b"trust me") not in messages(items)
            assert shown_once(items)
