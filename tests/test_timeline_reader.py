"""The reader's rules for a group's timeline (relay/protocol/timeline_reader.py), plain bytes only.

Each relay here is a list of timeline places built by hand: honest relays (two, each in its own
order) give every message exactly once and no finding; each way of lying gives its finding,
naming the relay that lied.
"""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec import structs

from relay.protocol import crypto
from relay.protocol.encoding import encode
from relay.protocol.events import ChainHead, make_event, stored_event
from relay.protocol.follow import LIES, Finding, FindingCode
from relay.protocol.heads import VerifiedHead, make_head, verify_head
from relay.protocol.messages import MemberCert, OwnerCert, Profile, Signed, TimelineItem
from relay.protocol.profile import VerifiedProfile, verify_profile
from relay.protocol.timeline import (
    TIMELINE_GENESIS,
    AuthorHead,
    entry_id,
    make_cert,
    make_message,
    make_moderation,
    stored_message,
    timeline_hash,
)
from relay.protocol.timeline_reader import (
    CertAccepted,
    MessageAccepted,
    ModerationAccepted,
    TimelineOutput,
    TimelineReader,
)


def key(n: int) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


ROOT, OWNER, ADA, BOB, EVE, RELAY_A, RELAY_B = (key(n) for n in range(1, 8))
ADA_PUB, BOB_PUB, EVE_PUB = (crypto.public_bytes(k) for k in (ADA, BOB, EVE))
CHANNEL = crypto.channel_id(crypto.public_bytes(ROOT))
NOW = 1_800_000_000
A, B = "relay-a", "relay-b"


def profile(kind: str = "group", comments: bool = False) -> VerifiedProfile:
    cert = crypto.signed(
        ROOT,
        crypto.Label.OWNER_CERT,
        encode(OwnerCert(channel=CHANNEL, owner_key=crypto.public_bytes(OWNER), issued_at=NOW)),
    )
    body = Profile(
        channel=CHANNEL,
        root_key=crypto.public_bytes(ROOT),
        version=1,
        kind=kind,
        name="Club",
        description="",
        owners=[cert],
        relays=[],
        updated_at=NOW,
        comments=comments,
    )
    return verify_profile(crypto.signed(OWNER, crypto.Label.PROFILE, encode(body)))


GROUP = profile()


def cert(member: ed25519.Ed25519PrivateKey, *, role: str = "member", at: int = NOW, name: str = "") -> Signed:
    public = crypto.public_bytes(member)
    return make_cert(OWNER, channel=CHANNEL, member=public, name=name or public.hex()[:4], role=role, now=at)


def messages(
    author: ed25519.Ed25519PrivateKey, n: int, *, after: AuthorHead | None = None, tag: str = ""
) -> list[Signed]:
    head, out = after or AuthorHead(), []
    for _ in range(n):
        signed = make_message(
            author, channel=CHANNEL, after=head, body=f"m{head.seq + 1}{tag}".encode(), now=NOW
        )
        head = AuthorHead.of(stored_message(signed))
        out.append(signed)
    return out


def removal(
    subject: bytes, signer: ed25519.Ed25519PrivateKey = OWNER, action: str = "remove_message"
) -> Signed:
    return make_moderation(signer, channel=CHANNEL, action=action, subject=subject, now=NOW + 5)


def mid(signed: Signed) -> bytes:
    return entry_id("message", signed.body, signed.signer)


@dataclasses.dataclass
class Timeline:
    """One relay's timeline, as an honest relay would keep it (the tests then lie with it)."""

    relay_key: ed25519.Ed25519PrivateKey
    items: list[TimelineItem] = dataclasses.field(default_factory=list)

    def add(self, kind: str, signed: Signed, after: int | None = None) -> Timeline:
        pos = len(self.items) + 1
        if after is None:  # where the owner chain stood: never back
            after = self.items[-1].after if self.items else 0
        self.items.append(
            TimelineItem(
                pos=pos, after=after, kind=kind, id=entry_id(kind, signed.body, signed.signer), entry=signed
            )
        )
        return self

    def remove(self, message: Signed, signer: ed25519.Ed25519PrivateKey = OWNER) -> Timeline:
        """Place a removal and empty the message's place, as the relay does in one step."""
        self.add("moderation", removal(mid(message), signer))
        self.items = [structs.replace(i, entry=None) if i.id == mid(message) else i for i in self.items]
        return self

    def hash_at(self, pos: int) -> bytes:
        h = TIMELINE_GENESIS
        for item in self.items[:pos]:
            h = timeline_hash(h, item.pos, item.after, item.kind, item.id)
        return h

    def head(self, pos: int | None = None, hash_: bytes | None = None) -> VerifiedHead:
        pos = len(self.items) if pos is None else pos
        public = crypto.public_bytes(self.relay_key)
        signed = make_head(
            self.relay_key,
            relay_fingerprint=crypto.fingerprint(public),
            channel=CHANNEL,
            head=ChainHead(),
            now=NOW,
            timeline_pos=pos,
            timeline_hash=self.hash_at(pos) if hash_ is None else hash_,
        )
        return verify_head(signed, relay_key=public, channel=CHANNEL)


def feed(
    reader: TimelineReader,
    relay: str,
    items: list[TimelineItem],
    *,
    announced: int | None = None,
    first: int | None = None,
) -> list[TimelineOutput]:
    last = max((i.pos for i in items), default=0)
    out = reader.subscribed(
        relay,
        timeline_pos=last if announced is None else announced,
        timeline_first=(min((i.pos for i in items), default=0) if first is None else first),
    )
    for item in items:
        out += reader.item(relay, item)
    return out + reader.history_done(relay)


def reader(prof: VerifiedProfile = GROUP) -> TimelineReader:
    return TimelineReader(channel=CHANNEL, profile=prof, relays=(A, B))


def accepted(out: list[TimelineOutput]) -> list[bytes]:
    return [o.message.id for o in out if isinstance(o, MessageAccepted)]


def findings(out: list[TimelineOutput]) -> list[tuple[str, FindingCode]]:
    return [(o.relay, o.code) for o in out if isinstance(o, Finding)]


ADA_MSGS = messages(ADA, 3)
BOB_MSGS = messages(BOB, 2)


def honest(relay_key: ed25519.Ed25519PrivateKey = RELAY_A) -> Timeline:
    t = Timeline(relay_key).add("cert", cert(ADA)).add("cert", cert(BOB))
    t.add("message", ADA_MSGS[0]).add("message", BOB_MSGS[0], after=1).add("message", ADA_MSGS[1], after=1)
    return t.add("message", BOB_MSGS[1], after=2).add("message", ADA_MSGS[2], after=2)


# --- honest relays ---------------------------------------------------------------------------


def test_two_honest_relays_in_different_orders_give_each_message_once() -> None:
    a = honest(RELAY_A)
    b = Timeline(RELAY_B).add("cert", cert(BOB)).add("message", BOB_MSGS[0]).add("cert", cert(ADA))
    for m in (*ADA_MSGS, BOB_MSGS[1]):
        b.add("message", m, after=2)
    r = reader()
    out = feed(r, A, a.items[:4]) + feed(r, B, b.items)
    out += r.head(B, b.head())
    out += r.subscribed(A, timeline_pos=7, timeline_first=1, since=4)
    for item in a.items[4:]:
        out += r.item(A, item)
    out += r.head(A, a.head()) + r.head(A, a.head(3)) + r.finish()
    assert findings(out) == []
    ids = accepted(out)
    assert sorted(ids) == sorted(mid(m) for m in (*ADA_MSGS, *BOB_MSGS))
    assert len(ids) == 5
    shown = [o for o in out if isinstance(o, MessageAccepted)]
    assert {o.author_name for o in shown} == {ADA_PUB.hex()[:4], BOB_PUB.hex()[:4]}
    assert all(o.author_role == "member" for o in shown)
    assert len([o for o in out if isinstance(o, CertAccepted)]) == 2
    assert r.position(A) == (7, a.hash_at(7))


def test_a_signed_head_ahead_of_the_stream_is_checked_when_the_place_arrives() -> None:
    t = honest()
    r = reader()
    out = r.subscribed(A, timeline_pos=3, timeline_first=1) + r.head(A, t.head())
    for item in t.items:
        out += r.item(A, item)
    assert findings(out) == [] and len(accepted(out)) == 5
    lying = honest()
    r = reader()
    out = r.subscribed(A, timeline_pos=3, timeline_first=1) + r.head(A, lying.head(7, bytes(32)))
    for item in t.items:
        out += r.item(A, item)
    assert findings(out) == [(A, FindingCode.BAD_HEAD)]


def test_a_removed_message_is_a_tombstone_with_its_removal() -> None:
    t = honest().remove(ADA_MSGS[1])
    r = reader()
    out = feed(r, A, t.items) + r.head(A, t.head()) + r.finish()
    assert findings(out) == []  # the author's chain skips the emptied place without a gap
    assert mid(ADA_MSGS[1]) not in accepted(out) and len(accepted(out)) == 4
    [moderation] = [o for o in out if isinstance(o, ModerationAccepted)]
    assert moderation.moderation.subject == mid(ADA_MSGS[1])


def test_a_moderator_granted_by_a_newer_cert_removes_a_members_message() -> None:
    t = honest().add("cert", cert(BOB, role="moderator", at=NOW + 1))
    t.remove(ADA_MSGS[0], signer=BOB)
    r = reader()
    out = feed(r, A, t.items) + r.finish()
    assert findings(out) == [] and len([o for o in out if isinstance(o, ModerationAccepted)]) == 1


# --- lies, one each ----------------------------------------------------------------------


def lie(
    items: list[TimelineItem], *, prof: VerifiedProfile = GROUP, **kw: int
) -> list[tuple[str, FindingCode]]:
    """Honest relay A first, then relay B with ``items``: the findings (A never named)."""
    r = reader(prof)
    out = feed(r, A, honest().items) + feed(r, B, items, **kw) + r.finish()
    found = findings(out)
    assert all(relay == B for relay, _ in found), found
    return found


def renumber(items: list[TimelineItem]) -> list[TimelineItem]:
    return [structs.replace(item, pos=n) for n, item in enumerate(items, start=1)]


def test_a_skipped_place_is_a_timeline_gap() -> None:
    items = honest(RELAY_B).items
    assert lie(items[:2] + items[3:]) == [(B, FindingCode.TIMELINE_GAP)]


def test_places_announced_but_never_sent_are_a_timeline_gap() -> None:
    assert lie(honest(RELAY_B).items[:5], announced=7) == [(B, FindingCode.TIMELINE_GAP)]


def test_a_place_sent_twice_or_backwards_is_out_of_order() -> None:
    items = honest(RELAY_B).items
    assert lie([*items[:4], items[2], *items[4:]]) == [(B, FindingCode.OUT_OF_ORDER)]


def test_a_changed_after_breaks_the_signed_head() -> None:
    t = honest(RELAY_B)
    head = t.head()
    t.items[3] = structs.replace(t.items[3], after=0)  # shown to this member with another place
    r = reader()
    out = feed(r, B, t.items) + r.head(B, head)
    assert findings(out) == [(B, FindingCode.BAD_HEAD)]


def test_two_signed_heads_at_one_place_are_a_fork() -> None:
    t = honest(RELAY_B)
    r = reader()
    out = r.head(B, t.head(3)) + r.head(B, t.head(3, bytes([1]) * 32))
    assert findings(out) == [(B, FindingCode.FORK)]
    [fork] = [o for o in out if isinstance(o, Finding)]
    assert len(fork.proof) == 2


def test_a_dropped_member_message_is_an_event_gap() -> None:
    t = Timeline(RELAY_B).add("cert", cert(ADA)).add("message", ADA_MSGS[0]).add("message", ADA_MSGS[2])
    assert lie(t.items) == [(B, FindingCode.EVENT_GAP)]


def test_a_members_first_message_left_out_of_a_whole_history_is_an_event_gap() -> None:
    t = Timeline(RELAY_B).add("cert", cert(ADA)).add("message", ADA_MSGS[1])
    assert lie(t.items) == [(B, FindingCode.EVENT_GAP)]


def test_a_reordered_member_message_is_out_of_order() -> None:
    t = Timeline(RELAY_B).add("cert", cert(ADA))
    for m in (ADA_MSGS[0], ADA_MSGS[2], ADA_MSGS[1]):
        t.add("message", m)
    assert lie(t.items) == [(B, FindingCode.EVENT_GAP), (B, FindingCode.OUT_OF_ORDER)]


def test_altered_message_bytes_are_a_bad_signature_or_a_bad_event() -> None:
    original = ADA_MSGS[1]
    altered = Signed(body=original.body.replace(b"m2", b"m9"), signer=original.signer, sig=original.sig)
    base = Timeline(RELAY_B).add("cert", cert(ADA)).add("message", ADA_MSGS[0]).add("message", altered)
    assert lie(base.items) == [(B, FindingCode.BAD_SIGNATURE)]
    kept_id = [*base.items[:2], structs.replace(base.items[2], id=mid(original))]
    assert lie(kept_id) == [(B, FindingCode.BAD_EVENT)]


def test_an_entry_of_another_channel() -> None:
    other = make_message(ADA, channel=bytes(32), after=AuthorHead(), body=b"x", now=NOW)
    t = Timeline(RELAY_B).add("cert", cert(ADA)).add("message", other)
    assert lie(t.items) == [(B, FindingCode.CHANNEL_MISMATCH)]


def test_an_invented_member_is_uncertified() -> None:
    t = honest(RELAY_B).add("message", messages(EVE, 1)[0])
    assert lie(t.items) == [(B, FindingCode.UNCERTIFIED_MEMBER)]


def test_a_cert_the_relay_signed_itself_certifies_nobody() -> None:
    forged = make_cert(RELAY_B, channel=CHANNEL, member=EVE_PUB, name="eve", now=NOW)
    t = honest(RELAY_B).add("cert", forged).add("message", messages(EVE, 1)[0])
    assert lie(t.items) == [(B, FindingCode.UNAUTHORISED_OWNER), (B, FindingCode.UNCERTIFIED_MEMBER)]


def test_a_swapped_member_key_is_caught() -> None:
    """The relay rewrites Ada's cert to name Eve's key (its own), then posts as Eve."""
    genuine = cert(ADA, name="ada")
    fields = {
        f: getattr(c, f)
        for c in [MemberCert(CHANNEL, ADA_PUB, "ada", "member", NOW)]
        for f in c.__struct_fields__
    }
    swapped_body = encode(MemberCert(**{**fields, "member": EVE_PUB}))
    swapped = Signed(body=swapped_body, signer=genuine.signer, sig=genuine.sig)
    t = Timeline(RELAY_B).add("cert", swapped).add("message", messages(EVE, 1)[0])
    assert lie(t.items) == [(B, FindingCode.BAD_SIGNATURE), (B, FindingCode.UNCERTIFIED_MEMBER)]


def test_a_message_after_its_authors_ban_is_uncertified() -> None:
    t = Timeline(RELAY_B).add("cert", cert(ADA)).add("message", ADA_MSGS[0])
    t.add("moderation", removal(ADA_PUB, action="ban")).add("message", ADA_MSGS[1])
    assert lie(t.items) == [(B, FindingCode.UNCERTIFIED_MEMBER)]


def test_two_different_messages_at_one_member_seq_are_a_fork() -> None:
    branch = messages(ADA, 1, after=AuthorHead.of(stored_message(ADA_MSGS[0])), tag="b")
    t = Timeline(RELAY_B).add("cert", cert(ADA)).add("message", ADA_MSGS[0]).add("message", branch[0])
    found = lie(t.items)
    assert found == [(B, FindingCode.FORK)]


def test_a_relay_mixing_two_branches_of_a_member_is_chain_broken() -> None:
    """Ada signed two messages 2 (her own fork); the relay shows one, then 3 chained on the other."""
    branch = messages(ADA, 2, after=AuthorHead.of(stored_message(ADA_MSGS[0])), tag="b")
    r = reader()
    t = Timeline(RELAY_A).add("cert", cert(ADA)).add("message", ADA_MSGS[0]).add("message", ADA_MSGS[1])
    t.add("message", branch[1])
    assert findings(feed(r, A, t.items)) == [(A, FindingCode.CHAIN_BROKEN)]


def test_serving_a_message_whose_removal_another_relay_showed() -> None:
    r = reader()
    out = feed(r, A, honest().remove(ADA_MSGS[1]).items) + feed(r, B, honest(RELAY_B).items)
    assert findings(out) == [(B, FindingCode.SERVED_REMOVED)]
    [finding] = [o for o in out if isinstance(o, Finding)]
    assert len(finding.proof) == 2  # the signed removal and the signed message


def test_serving_removed_content_in_a_history_that_holds_the_removal() -> None:
    t = honest(RELAY_B)
    t.add("moderation", removal(mid(ADA_MSGS[1])))  # but the place keeps its content
    r = reader()
    out = feed(r, B, t.items) + r.finish()
    assert findings(out) == [(B, FindingCode.SERVED_REMOVED)]


def test_a_removal_arriving_live_after_the_message_is_no_lie() -> None:
    t = honest(RELAY_B)
    r = reader()
    out = feed(r, B, t.items)
    t.add("moderation", removal(mid(ADA_MSGS[1])))
    out += r.item(B, t.items[-1]) + r.finish()
    assert findings(out) == []
    assert [o.moderation.subject for o in out if isinstance(o, ModerationAccepted)] == [mid(ADA_MSGS[1])]


def test_an_emptied_place_with_no_removal_is_a_withheld_message() -> None:
    t = honest(RELAY_B)
    t.items[4] = structs.replace(t.items[4], entry=None)
    assert lie(t.items) == [(B, FindingCode.WITHHELD_MESSAGE)]
    certless = honest(RELAY_B)
    certless.items[0] = structs.replace(certless.items[0], entry=None)
    assert lie(certless.items)[0] == (B, FindingCode.WITHHELD_MESSAGE)


def test_a_moderation_by_a_plain_member() -> None:
    t = honest(RELAY_B).add("moderation", removal(mid(ADA_MSGS[0]), signer=BOB))
    assert lie(t.items) == [(B, FindingCode.NOT_A_MODERATOR)]


def test_a_moderator_removing_a_moderators_message() -> None:
    t = honest(RELAY_B).add("cert", cert(BOB, role="moderator", at=NOW + 1))
    t.add("cert", cert(ADA, role="moderator", at=NOW + 1)).add(
        "moderation", removal(mid(ADA_MSGS[0]), signer=BOB)
    )
    assert lie(t.items) == [(B, FindingCode.NOT_A_MODERATOR)]


def test_a_comment_replying_to_a_comment() -> None:
    channel = profile("channel", comments=True)
    post = stored_event(make_event(OWNER, channel=CHANNEL, after=ChainHead(), body=b"post", now=NOW))
    first = make_message(ADA, channel=CHANNEL, after=AuthorHead(), body=b"c1", now=NOW, reply_to=post.id)
    second = make_message(BOB, channel=CHANNEL, after=AuthorHead(), body=b"c2", now=NOW, reply_to=mid(first))
    t = Timeline(RELAY_B).add("cert", cert(ADA)).add("cert", cert(BOB)).add("message", first, 1)
    t.add("message", second, 1)
    r = reader(channel)
    r.owner_event(post)
    out = feed(r, B, t.items)
    assert findings(out) == [(B, FindingCode.BAD_REPLY)]


def test_a_message_after_its_authors_removal_in_a_partial_history_is_uncertified() -> None:
    t = honest(RELAY_B).add("moderation", removal(ADA_PUB, action="remove_member"))
    t.add("message", messages(ADA, 1, after=AuthorHead.of(stored_message(ADA_MSGS[2])))[0])
    r = reader()
    out = feed(r, A, honest().items[:2]) + feed(r, B, t.items[6:], first=7)
    assert findings(out) == [(B, FindingCode.UNCERTIFIED_MEMBER)]
    assert accepted(out) == [mid(ADA_MSGS[2])]


def test_a_history_past_the_cert_is_cert_unseen_not_a_lie() -> None:
    t = honest(RELAY_B)
    r = reader()
    out = feed(r, B, t.items[4:], first=5)
    assert findings(out) == [(B, FindingCode.CERT_UNSEEN), (B, FindingCode.CERT_UNSEEN)]
    assert not any(o.is_lie for o in out if isinstance(o, Finding))
    # once another relay showed the cert, the same places are shown
    r = reader()
    out = feed(r, A, t.items[:2]) + feed(r, B, t.items[4:], first=5)
    assert findings(out) == [] and len(accepted(out)) == 3


def test_lies_include_the_timeline_codes() -> None:
    for code in (
        "timeline_gap",
        "uncertified_member",
        "served_removed",
        "withheld_message",
        "not_a_moderator",
    ):
        assert FindingCode(code) in LIES
    assert FindingCode.CERT_UNSEEN not in LIES


def test_the_reader_is_bounded() -> None:
    r = TimelineReader(channel=CHANNEL, profile=GROUP, relays=(A,), window=8)
    t = Timeline(RELAY_A).add("cert", cert(ADA))
    for m in messages(ADA, 40):
        t.add("message", m)
    out = feed(r, A, t.items)
    assert findings(out) == [] and len(accepted(out)) == 40
    assert len(r._accepted) <= 8 and len(r._at) <= 8
    assert all(len(v.hashes) <= 8 and len(v.served) <= 8 for v in r._views.values())


# --- any order of honest delivery ----------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.permutations(list(range(5))), st.integers(0, 7), st.booleans())
def test_honest_relays_in_any_order_never_give_a_finding(order: list[int], split: int, a_first: bool) -> None:
    """Relay B places the same messages in another order (each member's own order kept)."""
    all_msgs = [*ADA_MSGS, *BOB_MSGS]
    ranked = sorted(range(5), key=lambda i: order[i])
    seen: dict[bytes, int] = {}
    b = Timeline(RELAY_B).add("cert", cert(BOB)).add("cert", cert(ADA))
    pending = [all_msgs[i] for i in ranked]
    # keep each author's own order: take, each time, the first message whose predecessor is placed
    while pending:
        for m in pending:
            seq = stored_message(m).seq
            author = m.signer
            if seen.get(author, 0) == seq - 1:
                b.add("message", m)
                seen[author] = seq
                pending.remove(m)
                break
    a = honest()
    r = reader()
    first, second = ((A, a), (B, b)) if a_first else ((B, b), (A, a))
    out = feed(r, first[0], first[1].items[:split])
    out += feed(r, second[0], second[1].items)
    out += r.subscribed(first[0], timeline_pos=7, timeline_first=1, since=split)
    for item in first[1].items[split:]:
        out += r.item(first[0], item)
    out += r.head(A, a.head()) + r.head(B, b.head()) + r.finish()
    assert findings(out) == []
    assert sorted(accepted(out)) == sorted(mid(m) for m in all_msgs)


# --- whatever a relay sends, the reader answers with outputs, never an exception ----------

POOL: list[Signed | None] = [
    None,
    cert(ADA),
    cert(BOB, role="moderator"),
    make_cert(EVE, channel=CHANNEL, member=EVE_PUB, name="eve", now=NOW),
    *ADA_MSGS,
    *BOB_MSGS,
    *messages(EVE, 1),
    removal(mid(ADA_MSGS[0])),
    removal(ADA_PUB, action="ban"),
    removal(mid(BOB_MSGS[0]), signer=BOB),
    Signed(body=b"\xc1", signer=ADA_PUB, sig=bytes(64)),
    Signed(body=ADA_MSGS[0].body, signer=ADA_PUB, sig=bytes(64)),
]
items = st.builds(
    lambda pos, after, kind, entry, honest_id: TimelineItem(
        pos=pos,
        after=after,
        kind=kind,
        id=entry_id(kind if kind in ("cert", "message", "moderation") else "cert", entry.body, entry.signer)
        if entry is not None and honest_id
        else bytes(32),
        entry=entry,
    ),
    st.integers(1, 12),
    st.integers(0, 4),
    st.sampled_from(["cert", "message", "moderation", "event"]),
    st.sampled_from(POOL),
    st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([A, B]), items), max_size=14), st.integers(0, 12))
def test_any_stream_gives_outputs_only(stream: list[tuple[str, TimelineItem]], announced: int) -> None:
    r = reader()
    out: list[TimelineOutput] = []
    for relay in (A, B):
        out += r.subscribed(relay, timeline_pos=announced, timeline_first=1 if announced else 0)
    for relay, item in stream:
        out += r.item(relay, item)
    out += r.history_done(A) + r.head(B, honest(RELAY_B).head()) + r.finish()
    assert all(isinstance(o, MessageAccepted | CertAccepted | ModerationAccepted | Finding) for o in out)
    ids = accepted(out)
    assert len(ids) == len(set(ids))  # each message once
