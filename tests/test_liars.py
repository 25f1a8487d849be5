"""A lying relay against the member client: each lie is caught and named with its code.

Two real relays serve the channel: A, honest, and B, behind a :class:`liar.LyingProxy`
(the real relay, its real identity proof, and a test-chosen lie on member feeds).  The
owner posts through both; then B lies to a member, and the member's read names B and
the documented code of the lie (docs/protocol.md, "What a member is told").
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from liar import Feed, TwoRelays, two_relays
from relayproc import RelayFactory
from test_flow import new_owner
from test_traffic import member, posts, read_all, told

from relay.client import publish
from relay.client.connection import open_session
from relay.client.member import MemberState
from relay.client.posting import local_history, post
from relay.client.reader import ReadItem
from relay.protocol import crypto
from relay.protocol.addresses import parse_address
from relay.protocol.encoding import decode, encode
from relay.protocol.events import ChainHead, make_event, stored_event
from relay.protocol.follow import Finding
from relay.protocol.heads import make_head
from relay.protocol.messages import (
    EventFrame,
    HeadAnswer,
    OwnerCert,
    Post,
    PostResult,
    Profile,
    ProfileAnswer,
    RelayFrame,
    Signed,
    Subscribed,
)


@dataclass
class Stage(TwoRelays):
    ada: MemberState
    ada_path: Path

    async def read(self, **kw: object) -> list[ReadItem]:
        return await read_all(self.ada, self.ada_path, since=0, **kw)


@asynccontextmanager
async def stage(relay_factory: RelayFactory, tmp_path: Path, posts_: int = 3) -> AsyncIterator[Stage]:
    owner, owner_path = new_owner(tmp_path)
    async with two_relays(relay_factory, owner, owner_path) as two:
        for n in range(1, posts_ + 1):
            await post(owner, owner_path, f"post {n}".encode())
        ada, ada_path = await member(owner, tmp_path)
        yield Stage(two.a, two.b, two.proxy, owner, owner_path, ada, ada_path)


def codes_for(items: list[ReadItem], relay: str) -> set[str]:
    return {code for r, code in told(items) if r == relay}


def event_seq(frame: EventFrame) -> int:
    return stored_event(frame.event).seq


async def test_a_relay_that_swaps_an_owner_key_is_named(relay_factory: RelayFactory, tmp_path: Path) -> None:
    async with stage(relay_factory, tmp_path) as s:
        liar_key = ed25519.Ed25519PrivateKey.generate()

        def swap(feed: Feed, frame: RelayFrame) -> list[RelayFrame]:
            if isinstance(frame, ProfileAnswer):
                real = decode(frame.profile.body, Profile, limit=10**6)
                cert = crypto.signed(
                    liar_key,
                    crypto.Label.OWNER_CERT,
                    encode(
                        OwnerCert(channel=real.channel, owner_key=crypto.public_bytes(liar_key), issued_at=0)
                    ),
                )
                swapped = Profile(
                    **{**{f: getattr(real, f) for f in real.__struct_fields__}, "owners": [cert]}
                )
                forged = crypto.signed(liar_key, crypto.Label.PROFILE, encode(swapped))
                return [ProfileAnswer(profile=forged, state=frame.state)]
            return [frame]

        s.proxy.lie = swap
        items = await s.read()
        assert codes_for(items, s.gb) == {"unauthorised_owner"}
        assert posts(items) == [b"post 1", b"post 2", b"post 3"]  # still read, from both relays
        assert codes_for(items, s.ga) == set()


@pytest.mark.parametrize("as_history", [True, False], ids=["in-history", "live"])
async def test_a_relay_that_injects_an_event_it_signed_itself_is_named(
    relay_factory: RelayFactory, tmp_path: Path, as_history: bool
) -> None:
    async with stage(relay_factory, tmp_path) as s:
        relay_key = s.proxy.identity_key(s.b)  # the operator's own key: still not an owner's

        def inject(feed: Feed, frame: RelayFrame) -> list[RelayFrame]:
            if isinstance(frame, EventFrame) and event_seq(frame) == 3:
                after = ChainHead.of(stored_event(frame.event))
                forged = make_event(
                    relay_key, channel=s.owner.channel, after=after, body=b"buy now", now=int(time.time())
                )
                return [frame, EventFrame(event=forged)]
            if isinstance(frame, Subscribed) and as_history:  # claim it as history, to hide among it
                return [
                    Subscribed(
                        head_seq=frame.head_seq + 1,
                        first_seq=frame.first_seq,
                        profile_version=frame.profile_version,
                    )
                ]
            return [frame]

        s.proxy.lie = inject
        items = await s.read()
        assert "unauthorised_owner" in codes_for(items, s.gb)
        assert b"buy now" not in posts(items) and len(posts(items)) == 3


async def test_a_relay_that_alters_a_body_is_named_and_the_cli_exits_non_zero(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    async with stage(relay_factory, tmp_path) as s:

        def alter(feed: Feed, frame: RelayFrame) -> list[RelayFrame]:
            if isinstance(frame, EventFrame) and event_seq(frame) == 2:
                body = frame.event.body.replace(b"post 2", b"post X")
                return [EventFrame(event=Signed(body=body, signer=frame.event.signer, sig=frame.event.sig))]
            return [frame]

        s.proxy.lie = alter
        items = await s.read()
        assert codes_for(items, s.gb) == {"bad_signature"}
        assert posts(items) == [b"post 1", b"post 2", b"post 3"]  # the real one, from A
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        cli = await trio.run_process(
            [sys.executable, "-m", "relay", "member", "read", "--state", str(s.ada_path), "--since", "0"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
        )
        assert cli.returncode == 1
        assert f"warning: {s.gb}: bad_signature:" in cli.stderr.decode()
        assert cli.stdout.decode().splitlines()[:3] == ["#1 post 1", "#2 post 2", "#3 post 3"]


async def test_a_relay_that_reorders_events_is_named(relay_factory: RelayFactory, tmp_path: Path) -> None:
    async with stage(relay_factory, tmp_path) as s:

        def reorder(feed: Feed, frame: RelayFrame) -> list[RelayFrame]:
            if isinstance(frame, EventFrame) and event_seq(frame) == 2:
                feed.state["held"] = frame
                return []
            if isinstance(frame, EventFrame) and event_seq(frame) == 3 and "held" in feed.state:
                return [frame, feed.state.pop("held")]  # type: ignore[list-item]
            return [frame]

        s.proxy.lie = reorder
        items = await s.read()
        assert "out_of_order" in codes_for(items, s.gb)
        assert posts(items) == [b"post 1", b"post 2", b"post 3"]


async def test_a_relay_that_omits_an_event_is_named(relay_factory: RelayFactory, tmp_path: Path) -> None:
    async with stage(relay_factory, tmp_path) as s:
        s.proxy.lie = lambda feed, frame: (
            [] if isinstance(frame, EventFrame) and event_seq(frame) == 2 else [frame]
        )
        items = await s.read()
        assert codes_for(items, s.gb) == {"event_gap"}
        gap = next(i for i in items if isinstance(i, Finding))
        assert gap.seq == 2
        assert posts(items) == [b"post 1", b"post 2", b"post 3"]
        # alone, without A, the chain itself shows the omission
        s.a.kill()
        items = await s.read()
        assert "event_gap" in codes_for(items, s.gb)
        assert b"post 2" not in posts(items)


async def test_a_relay_that_serves_an_old_profile_version_is_named(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    async with stage(relay_factory, tmp_path) as s:
        await publish(s.owner, s.owner_path)  # version 3; B kept version 2 as it passed
        old = s.proxy.published[0]
        assert decode(old.body, Profile, limit=10**6).version == 2

        def rollback(feed: Feed, frame: RelayFrame) -> list[RelayFrame]:
            if isinstance(frame, ProfileAnswer):
                return [ProfileAnswer(profile=old, state=frame.state)]
            if isinstance(frame, Subscribed):
                return [Subscribed(head_seq=frame.head_seq, first_seq=frame.first_seq, profile_version=2)]
            return [frame]

        s.proxy.lie = rollback
        items = await s.read()
        assert codes_for(items, s.gb) == {"stale_profile"}
        assert MemberState.load(s.ada_path).profile_version == 3


async def test_an_owners_fork_kept_by_two_relays_is_caught_with_both_events(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    async with stage(relay_factory, tmp_path, posts_=2) as s:
        # the owner equivocates: A gets one event 3, B another
        head = ChainHead.of(local_history(s.owner)[-1])
        one = make_event(
            s.owner.owner_key, channel=s.owner.channel, after=head, body=b"branch one", now=int(time.time())
        )
        two = make_event(
            s.owner.owner_key, channel=s.owner.channel, after=head, body=b"branch two", now=int(time.time())
        )
        for address, event in ((s.ga, one), (s.gb, two)):
            async with open_session(parse_address(address)) as session:
                assert isinstance(await session.request(Post(event=event)), PostResult)
        items = await s.read()
        forks = [i for i in items if isinstance(i, Finding) and i.code.value == "fork"]
        assert forks and {p.body for f in forks for p in f.proof} >= {one.body, two.body}
        assert len(posts(items)) == 3  # one branch shown, once


async def test_a_fork_shown_only_to_one_member_is_caught_by_the_relays_own_signed_heads(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    """B holds (and shows everyone else) branch one; to this member it shows branch two, and
    even signs a head for it with its own key.  A is down.  B's anonymous discovery answer
    (it cannot tell who asks) still names branch one: two heads signed by B disagree."""
    async with stage(relay_factory, tmp_path, posts_=2) as s:
        head = ChainHead.of(local_history(s.owner)[-1])
        now = int(time.time())
        await post(s.owner, s.owner_path, b"branch one")  # everyone's event 3
        private = make_event(
            s.owner.owner_key, channel=s.owner.channel, after=head, body=b"branch two", now=now
        )
        relay_key = s.proxy.identity_key(s.b)
        fingerprint = parse_address(s.gb).fingerprint

        def fork(feed: Feed, frame: RelayFrame) -> list[RelayFrame]:
            if isinstance(frame, EventFrame) and event_seq(frame) == 3:
                return [EventFrame(event=private)]
            if isinstance(frame, HeadAnswer):
                forged = make_head(
                    relay_key,
                    relay_fingerprint=fingerprint,
                    channel=s.owner.channel,
                    head=ChainHead.of(stored_event(private)),
                    now=int(time.time()),
                )
                return [HeadAnswer(head=forged, event=private)]
            return [frame]

        s.proxy.lie = fork
        s.a.kill()
        items = await s.read()
        forks = [i for i in items if isinstance(i, Finding) and i.code.value == "fork" and i.relay == s.gb]
        assert forks, told(items)
        signers = {p.signer for f in forks for p in f.proof}
        assert crypto.public_bytes(relay_key) in signers  # B's own signatures convict it
