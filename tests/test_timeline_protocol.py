"""The pure rules of member messages, certs and moderation (relay/protocol/timeline.py).

Plain bytes only: keys of tests/make_vectors.py, objects signed here, the rules applied to
them; each refusal is checked for its wire code, and the cheap checks for coming before the
signature (a bad signature behind a cheap fault is reported as the cheap fault).
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from make_vectors import MEMBER, MEMBER2, T0, fixture, make_profile

from relay.protocol import crypto
from relay.protocol.encoding import decode, encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.events import GENESIS, Append
from relay.protocol.messages import MemberMessage, Profile, Signed
from relay.protocol.timeline import (
    AuthorHead,
    Pacer,
    PostingRules,
    Roster,
    RosterEntry,
    VerifiedCert,
    VerifiedMessage,
    VerifiedModeration,
    check_author_append,
    entry_id,
    make_cert,
    make_message,
    make_moderation,
    message_id,
    timeline_hash,
    verify_cert,
    verify_message,
    verify_moderation,
)

F = fixture()
OWNERS = frozenset({F.owner_public, F.owner2_public})
M1 = crypto.public_bytes(MEMBER)
M2 = crypto.public_bytes(MEMBER2)
NOBODY: frozenset[bytes] = frozenset()


def code_of(exc: pytest.ExceptionInfo[RemoteProtocolError]) -> ErrorCode:
    return exc.value.code


def tampered(signed: Signed) -> Signed:
    return Signed(body=signed.body, signer=signed.signer, sig=bytes(64))


def cert(member: bytes = M1, *, role: str = "member", at: int = T0, name: str = "Ada") -> Signed:
    return make_cert(F.owner, channel=F.channel, member=member, name=name, role=role, now=at)


def message(
    key: ed25519.Ed25519PrivateKey = MEMBER,
    after: AuthorHead | None = None,
    body: bytes = b"hi",
    reply_to: bytes = b"",
) -> Signed:
    return make_message(
        key, channel=F.channel, after=after or AuthorHead(), body=body, now=T0 + 10, reply_to=reply_to
    )


# --- ids and the hash --------------------------------------------------------------------


def test_ids_are_the_hash_of_the_kind_the_signer_and_the_signed_bytes() -> None:
    body = b"\x01\x02"
    for kind in ("cert", "message", "moderation"):
        expected = hashlib.sha256(b"chat-relay/v1/" + kind.encode() + b"-id\x00" + M1 + body).digest()
        assert entry_id(kind, body, M1) == expected
    assert message_id(body, M1) == entry_id("message", body, M1)
    assert len({entry_id(k, body, M1) for k in ("cert", "message", "moderation")}) == 3
    with pytest.raises(RemoteProtocolError) as exc:
        entry_id("event", body, M1)
    assert code_of(exc) is ErrorCode.BAD_TYPE


def test_two_members_signing_the_same_bytes_post_two_messages() -> None:
    mine = verify_message(message(MEMBER), channel=F.channel)
    theirs = verify_message(message(MEMBER2), channel=F.channel)
    assert mine.signed.body == theirs.signed.body  # same text, same second, both their first
    assert mine.id != theirs.id


def test_timeline_hash_binds_every_field() -> None:
    prev, ident = bytes(32), bytes([7]) * 32
    h = timeline_hash(prev, 1, 0, "cert", ident)
    assert (
        h
        == hashlib.sha256(
            b"chat-relay/v1/timeline\x00"
            + prev
            + (1).to_bytes(8, "big")
            + (0).to_bytes(8, "big")
            + b"cert\x00"
            + ident
        ).digest()
    )
    variants = {
        timeline_hash(bytes([1]) * 32, 1, 0, "cert", ident),
        timeline_hash(prev, 2, 0, "cert", ident),
        timeline_hash(prev, 1, 1, "cert", ident),
        timeline_hash(prev, 1, 0, "message", ident),
        timeline_hash(prev, 1, 0, "cert", bytes(32)),
    }
    assert h not in variants and len(variants) == 5


# --- certs -------------------------------------------------------------------------------


def test_a_cert_verifies_and_names_its_member() -> None:
    verified = verify_cert(cert(role="moderator"), channel=F.channel, owners=OWNERS)
    assert verified.member == M1 and verified.cert.role == "moderator" and verified.cert.name == "Ada"
    assert verified.id == entry_id("cert", verified.signed.body, F.owner_public)


@pytest.mark.parametrize(
    ("signed", "channel", "code"),
    [
        (make_cert(MEMBER, channel=F.channel, member=M1, name="me", now=T0), F.channel, "unauthorised_owner"),
        (cert(), bytes(32), "channel_mismatch"),
        (tampered(cert(role="admin")), F.channel, "bad_type"),  # role checked before the signature
        (tampered(cert()), F.channel, "bad_signature"),
        (Signed(body=b"\xc1", signer=F.owner_public, sig=bytes(64)), F.channel, "malformed"),
    ],
)
def test_a_bad_cert_is_refused_with_its_code(signed: Signed, channel: bytes, code: str) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        verify_cert(signed, channel=channel, owners=OWNERS)
    assert code_of(exc) == code


# --- messages ----------------------------------------------------------------------------


def test_a_members_messages_chain() -> None:
    first = verify_message(message(), channel=F.channel, max_body=100)
    assert first.author == M1 and first.seq == 1 and first.message.prev == GENESIS
    second = verify_message(
        message(after=AuthorHead.of(first), body=b"again", reply_to=first.id), channel=F.channel, max_body=100
    )
    assert second.seq == 2 and second.message.prev == first.id and second.message.reply_to == first.id
    assert check_ok(AuthorHead(), first) is Append.NEW
    assert check_ok(AuthorHead.of(first), second) is Append.NEW
    # the same bytes again at a taken seq: a retry
    assert check_ok(AuthorHead.of(second), second, existing=second.id) is Append.DUPLICATE


def check_ok(head: AuthorHead, msg: VerifiedMessage, existing: bytes | None = None) -> Append:
    return check_author_append(head, msg, existing_id=existing)


def test_the_author_chain_rules_are_those_of_owner_events() -> None:
    first = verify_message(message(), channel=F.channel)
    other = verify_message(message(body=b"other"), channel=F.channel)
    second = verify_message(message(after=AuthorHead.of(first)), channel=F.channel)
    third = verify_message(message(after=AuthorHead.of(second)), channel=F.channel)
    cases = [
        (AuthorHead.of(first), other, first.id, ErrorCode.EQUIVOCATION),
        (AuthorHead.of(first), third, None, ErrorCode.EVENT_GAP),
        (AuthorHead.of(other), second, None, ErrorCode.CHAIN_BROKEN),
        (AuthorHead(1, first.id, T0 + 99), second, None, ErrorCode.BAD_TIMESTAMP),
    ]
    for head, msg, existing, code in cases:
        with pytest.raises(RemoteProtocolError) as exc:
            check_author_append(head, msg, existing_id=existing)
        assert code_of(exc) is code, (code, exc.value.reason)
        assert "message" in exc.value.reason or code is ErrorCode.BAD_TIMESTAMP
    with pytest.raises(RemoteProtocolError) as exc:
        check_author_append(AuthorHead(), first, existing_id=None, now=T0 + 10 + 3600, max_backdate=60)
    assert code_of(exc) is ErrorCode.BAD_TIMESTAMP


def raw_message(**fields: object) -> Signed:
    base: dict[str, object] = dict(
        channel=F.channel, seq=1, prev=GENESIS, created_at=T0, content_type="text/plain", body=b"x"
    )
    base.update(fields)
    return crypto.signed(MEMBER, crypto.Label.MEMBER_MESSAGE, encode(MemberMessage(**base)))


@pytest.mark.parametrize(
    ("signed", "code"),
    [
        (raw_message(body=b"x" * 101), "message_too_large"),
        (raw_message(body=b"x" * 5000), "message_too_large"),  # refused on the envelope's size
        (raw_message(channel=bytes(32)), "channel_mismatch"),
        (raw_message(seq=2), "chain_broken"),
        (raw_message(prev=bytes([1]) * 32), "chain_broken"),
        (raw_message(reply_to=b"short"), "bad_reply"),
        (tampered(raw_message(channel=bytes(32))), "channel_mismatch"),  # before the signature
        (tampered(raw_message()), "bad_signature"),
        (crypto.signed(MEMBER, crypto.Label.EVENT, raw_message().body), "bad_signature"),  # another label
    ],
)
def test_a_bad_message_is_refused_with_its_code(signed: Signed, code: str) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        verify_message(signed, channel=F.channel, max_body=100)
    assert code_of(exc) == code


# --- moderation --------------------------------------------------------------------------


def moderation(
    key: ed25519.Ed25519PrivateKey = F.owner, action: str = "remove_message", subject: bytes = bytes(32)
) -> Signed:
    return make_moderation(key, channel=F.channel, action=action, subject=subject, reason="spam", now=T0 + 20)


def test_owners_and_moderators_moderate() -> None:
    by_owner = verify_moderation(moderation(), channel=F.channel, owners=OWNERS, moderators=NOBODY)
    assert by_owner.action == "remove_message" and by_owner.subject == bytes(32)
    assert by_owner.id == entry_id("moderation", by_owner.signed.body, F.owner_public)
    mods = frozenset({M1})
    for action, subject in (("remove_message", bytes(32)), ("remove_member", M2), ("ban", M2)):
        ok = verify_moderation(
            moderation(MEMBER, action, subject), channel=F.channel, owners=OWNERS, moderators=mods, author=M2
        )
        assert ok.action == action
    # an owner may act against a moderator
    verify_moderation(moderation(F.owner, "ban", M1), channel=F.channel, owners=OWNERS, moderators=mods)
    # two moderations with the same fields differ by their nonce, so each has its own id
    assert moderation().body != moderation().body


@pytest.mark.parametrize(
    ("signed", "moderators", "author", "code"),
    [
        (moderation(MEMBER2, "ban", bytes(32)), frozenset({M1}), None, "not_a_moderator"),
        (moderation(MEMBER, "ban", M2), frozenset({M1, M2}), None, "not_a_moderator"),
        (moderation(MEMBER, "remove_member", F.owner_public), frozenset({M1}), None, "not_a_moderator"),
        (moderation(MEMBER, "remove_message", bytes(32)), frozenset({M1, M2}), M2, "not_a_moderator"),
        (moderation(F.owner, "mute", M1), frozenset(), None, "bad_type"),
        (tampered(moderation(F.owner, "mute", M1)), frozenset(), None, "bad_type"),
        (tampered(moderation()), frozenset(), None, "bad_signature"),
    ],
)
def test_a_bad_moderation_is_refused_with_its_code(
    signed: Signed, moderators: frozenset[bytes], author: bytes | None, code: str
) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        verify_moderation(signed, channel=F.channel, owners=OWNERS, moderators=moderators, author=author)
    assert code_of(exc) == code


def test_a_moderation_of_another_channel() -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        verify_moderation(moderation(), channel=bytes(32), owners=OWNERS, moderators=NOBODY)
    assert code_of(exc) is ErrorCode.CHANNEL_MISMATCH


# --- the roster --------------------------------------------------------------------------


def vcert(member: bytes = M1, *, role: str = "member", at: int = T0, name: str = "Ada") -> VerifiedCert:
    return verify_cert(cert(member, role=role, at=at, name=name), channel=F.channel, owners=OWNERS)


def vmod(action: str, subject: bytes, at: int) -> VerifiedModeration:
    signed = make_moderation(F.owner, channel=F.channel, action=action, subject=subject, now=at)
    return verify_moderation(signed, channel=F.channel, owners=OWNERS, moderators=NOBODY)


def raises(code: ErrorCode, fn: object, *args: object) -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        fn(*args)  # type: ignore[operator]
    assert code_of(exc) is code


def test_roster_certs_roles_removal_and_ban() -> None:
    roster = Roster()
    raises(ErrorCode.NOT_CERTIFIED, roster.may_post, M1)
    first = vcert(at=T0)
    assert roster.apply_cert(first) is Append.NEW
    assert roster.apply_cert(first) is Append.DUPLICATE
    roster.may_post(M1)
    assert roster.moderators() == frozenset()
    raises(ErrorCode.SUPERSEDED, roster.apply_cert, vcert(at=T0, name="Bob"))  # another cert, same time
    raises(ErrorCode.SUPERSEDED, roster.apply_cert, vcert(at=T0 - 1, role="moderator"))
    assert roster.apply_cert(vcert(at=T0 + 1, role="moderator")) is Append.NEW
    assert roster.moderators() == frozenset({M1})
    assert roster.apply_cert(vcert(at=T0 + 2)) is Append.NEW  # role withdrawn
    assert roster.moderators() == frozenset()
    # removal voids certs issued at or before it; a newer cert admits again
    assert roster.apply_moderation(vmod("remove_member", M1, T0 + 5)) is Append.NEW
    assert roster.apply_moderation(vmod("remove_member", M1, T0 + 5)) is Append.DUPLICATE
    raises(ErrorCode.NOT_CERTIFIED, roster.may_post, M1)
    raises(ErrorCode.SUPERSEDED, roster.apply_cert, vcert(at=T0 + 5))
    assert roster.apply_cert(vcert(at=T0 + 6)) is Append.NEW
    roster.may_post(M1)
    # a ban is for good
    assert roster.apply_moderation(vmod("ban", M1, T0 + 7)) is Append.NEW
    raises(ErrorCode.BANNED, roster.may_post, M1)
    raises(ErrorCode.BANNED, roster.apply_cert, vcert(at=T0 + 100))
    # a ban of a key never certified keeps it out too
    roster.apply_moderation(vmod("ban", M2, T0 + 7))
    raises(ErrorCode.BANNED, roster.apply_cert, vcert(M2, at=T0 + 100))


def test_roster_removed_messages_are_bounded() -> None:
    roster = Roster(max_removed=2)
    ids = [bytes([i]) * 32 for i in range(3)]
    for i in ids:
        assert roster.apply_moderation(vmod("remove_message", i, T0)) is Append.NEW
    assert roster.apply_moderation(vmod("remove_message", ids[2], T0)) is Append.DUPLICATE
    assert [roster.removed(i) for i in ids] == [False, True, True]


def test_roster_loads_a_stored_row() -> None:
    roster = Roster()
    roster.put(RosterEntry(M1, cert=vcert(role="moderator"), removed_at=T0 - 10))
    assert roster.moderators() == frozenset({M1})
    entry = roster.entry(M1)
    assert entry is not None and entry.name == "Ada" and entry.role == "moderator"


# --- posting rules and pace ----------------------------------------------------------------


def profile(**fields: object) -> Profile:
    signed = make_profile(F.owner2, F.root_public, [F.cert1, F.cert2])
    base = decode(signed.body, Profile, limit=1 << 16)
    return Profile(**{**{f: getattr(base, f) for f in base.__struct_fields__}, **fields})


def test_posting_rules_from_the_profile_and_the_floor() -> None:
    channel = PostingRules.of(profile(), floor_bytes=16384, floor_per_minute=30)
    raises(ErrorCode.MEMBER_POSTS_OFF, channel.check_posting)
    group = PostingRules.of(
        profile(kind="group", max_message_bytes=1000, messages_per_minute=0, slow_mode=5),
        floor_bytes=16384,
        floor_per_minute=30,
    )
    group.check_posting()
    assert (group.max_bytes, group.per_minute, group.slow_mode) == (1000, 30, 5)
    loose = PostingRules.of(
        profile(kind="group", max_message_bytes=10**6, messages_per_minute=100),
        floor_bytes=16384,
        floor_per_minute=30,
    )
    assert (loose.max_bytes, loose.per_minute) == (16384, 30)
    strict = PostingRules.of(
        profile(kind="group", messages_per_minute=5), floor_bytes=100, floor_per_minute=0
    )
    assert (strict.max_bytes, strict.per_minute) == (100, 5)
    unlimited = PostingRules.of(profile(kind="group"), floor_bytes=100, floor_per_minute=0)
    assert unlimited.per_minute == 0
    comments = PostingRules.of(profile(comments=True), floor_bytes=100, floor_per_minute=0)
    comments.check_posting()


def test_reply_rules() -> None:
    rules = PostingRules.of(profile(kind="group"), floor_bytes=100, floor_per_minute=0)
    ref = bytes([5]) * 32
    rules.check_reply("group", b"", False, False)
    rules.check_reply("group", ref, False, True)
    rules.check_reply("group", ref, True, True)
    raises(ErrorCode.BAD_REPLY, rules.check_reply, "group", ref, False, False)
    raises(ErrorCode.BAD_REPLY, rules.check_reply, "group", b"xx", False, True)
    rules.check_reply("channel", ref, True, True)
    raises(ErrorCode.BAD_REPLY, rules.check_reply, "channel", b"", False, False)
    raises(ErrorCode.BAD_REPLY, rules.check_reply, "channel", ref, False, True)


def test_pacer_token_bucket_and_slow_mode() -> None:
    rules = PostingRules("group", True, 100, per_minute=2, slow_mode=0)
    pacer = Pacer(rules)
    pacer.check(M1, 0.0)
    pacer.check(M1, 0.0)
    with pytest.raises(RemoteProtocolError) as exc:
        pacer.check(M1, 1.0)
    assert code_of(exc) is ErrorCode.RATE_LIMITED and "29 s" in exc.value.reason
    pacer.check(M2, 1.0)  # per member
    pacer.check(M1, 30.0)  # one token back after 30 s
    raises(ErrorCode.RATE_LIMITED, pacer.check, M1, 31.0)
    slow = PostingRules("group", True, 100, per_minute=0, slow_mode=10)
    pacer.check(M1, 100.0, rules=slow)
    with pytest.raises(RemoteProtocolError) as exc:
        pacer.check(M1, 104.5, rules=slow)
    assert code_of(exc) is ErrorCode.SLOW_MODE and "6 s" in exc.value.reason
    pacer.check(M1, 110.0, rules=slow)


def test_a_refused_message_takes_nothing() -> None:
    rules = PostingRules("group", True, 100, per_minute=60, slow_mode=5)
    pacer = Pacer(rules)
    pacer.check(M1, 0.0)
    for t in (1.0, 2.0, 3.0, 4.0):
        raises(ErrorCode.SLOW_MODE, pacer.check, M1, t)
    pacer.check(M1, 5.0)  # the slow-mode refusals neither moved the clock nor spent tokens


def test_pacer_is_bounded() -> None:
    pacer = Pacer(PostingRules("group", True, 100, per_minute=1, slow_mode=0), max_members=2)
    keys = [bytes([i]) * 32 for i in range(3)]
    for key in keys:
        pacer.check(key, 0.0)
    assert len(pacer) == 2 and pacer.evicted == 1
    pacer.check(keys[0], 0.0)  # forgotten, so it starts with a full bucket again
    raises(ErrorCode.RATE_LIMITED, pacer.check, keys[2], 0.0)


# --- the session: where the new frames are taken ---------------------------------------------


def test_member_posts_and_publishes_go_to_a_group_address_and_share_the_post_bucket() -> None:
    from relay.protocol.messages import PROTOCOL_VERSION, Hello, MemberPost, Publish
    from relay.protocol.session import Endpoint, Session

    hello = encode(Hello(version=PROTOCOL_VERSION, nonce=bytes(32)))
    post = encode(MemberPost(message=message(), cert=cert()))
    publish = encode(Publish(entry=cert(), kind="cert"))
    contact = Session(Endpoint.CONTACT, max_frame=1 << 16)
    contact.receive(hello)
    for frame in (post, publish):
        raises(ErrorCode.UNEXPECTED_MESSAGE, contact.receive, frame)
    group = Session(Endpoint.GROUP, max_frame=1 << 16, rate=100, burst=100, post_rate=1, post_burst=2)
    group.receive(hello)
    assert isinstance(group.receive(post, 0.0), MemberPost)  # no subscribe needed: it is signed
    assert isinstance(group.receive(publish, 0.0), Publish)
    raises(ErrorCode.RATE_LIMITED, group.receive, post, 0.0)
