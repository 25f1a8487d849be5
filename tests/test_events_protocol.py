"""The pure rules of owner events, heads and direct invitations, with plain bytes."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from relay.protocol import crypto
from relay.protocol.direct import (
    check_allowed,
    make_direct_invitation,
    open_direct_invitation,
    verify_direct_invitation,
)
from relay.protocol.encoding import encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.events import (
    GENESIS,
    Append,
    ChainHead,
    check_append,
    make_event,
    verify_event,
)
from relay.protocol.heads import make_head, tag, verify_head
from relay.protocol.messages import OwnerEvent, Profile, Signed

ROOT = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OWNER = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
STRANGER = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
CHANNEL = crypto.channel_id(crypto.public_bytes(ROOT))
OWNERS = frozenset({crypto.public_bytes(OWNER)})
NOW = 1_800_000_000


def chain(n: int, key: ed25519.Ed25519PrivateKey = OWNER) -> list[Signed]:
    head, out = ChainHead(), []
    for i in range(n):
        signed = make_event(key, channel=CHANNEL, after=head, body=f"post {i}".encode(), now=NOW + i)
        head = ChainHead.of(verify_event(signed, channel=CHANNEL, owners=OWNERS))
        out.append(signed)
    return out


def code_of(exc: pytest.ExceptionInfo[RemoteProtocolError]) -> ErrorCode:
    return exc.value.code


def test_a_chain_appends_in_order_and_a_retry_is_a_duplicate() -> None:
    events = [verify_event(s, channel=CHANNEL, owners=OWNERS) for s in chain(3)]
    head = ChainHead()
    for event in events:
        assert check_append(head, event, existing_id=None, now=NOW + 5, max_backdate=60) is Append.NEW
        head = ChainHead.of(event)
    assert events[1].event.prev == events[0].id and events[0].event.prev == GENESIS
    assert check_append(head, events[2], existing_id=events[2].id) is Append.DUPLICATE


def test_gap_fork_broken_chain_and_backdating_are_refused_with_their_codes() -> None:
    one, two, three = (verify_event(s, channel=CHANNEL, owners=OWNERS) for s in chain(3))
    with pytest.raises(RemoteProtocolError) as exc:
        check_append(ChainHead.of(one), three, existing_id=None)
    assert code_of(exc) is ErrorCode.EVENT_GAP
    other = verify_event(
        make_event(OWNER, channel=CHANNEL, after=ChainHead.of(one), body=b"fork", now=NOW + 1),
        channel=CHANNEL,
        owners=OWNERS,
    )
    with pytest.raises(RemoteProtocolError) as exc:
        check_append(ChainHead.of(two), other, existing_id=two.id)
    assert code_of(exc) is ErrorCode.EQUIVOCATION
    unrelated = ChainHead(1, crypto.digest(b"not event one"), NOW)
    with pytest.raises(RemoteProtocolError) as exc:
        check_append(unrelated, two, existing_id=None)
    assert code_of(exc) is ErrorCode.CHAIN_BROKEN
    with pytest.raises(RemoteProtocolError) as exc:
        check_append(ChainHead.of(one), two, existing_id=None, now=NOW + 10_000, max_backdate=300)
    assert code_of(exc) is ErrorCode.BAD_TIMESTAMP
    with pytest.raises(RemoteProtocolError) as exc:
        check_append(ChainHead.of(one), two, existing_id=None, now=NOW - 1_000, max_backdate=300)
    assert code_of(exc) is ErrorCode.BAD_TIMESTAMP


def test_an_event_from_a_stranger_or_altered_or_for_another_channel_is_refused() -> None:
    with pytest.raises(RemoteProtocolError) as exc:
        verify_event(chain(1, STRANGER)[0], channel=CHANNEL, owners=OWNERS)
    assert code_of(exc) is ErrorCode.UNAUTHORISED_OWNER
    good = chain(1)[0]
    altered = Signed(body=good.body.replace(b"post 0", b"post X"), signer=good.signer, sig=good.sig)
    with pytest.raises(RemoteProtocolError) as exc:
        verify_event(altered, channel=CHANNEL, owners=OWNERS)
    assert code_of(exc) is ErrorCode.BAD_SIGNATURE
    with pytest.raises(RemoteProtocolError) as exc:
        verify_event(good, channel=crypto.digest(b"elsewhere"), owners=OWNERS)
    assert code_of(exc) is ErrorCode.CHANNEL_MISMATCH
    big = crypto.signed(
        OWNER,
        crypto.Label.EVENT,
        encode(OwnerEvent(CHANNEL, 1, GENESIS, NOW, "text/plain", bytes(2000))),
    )
    with pytest.raises(RemoteProtocolError) as exc:
        verify_event(big, channel=CHANNEL, owners=OWNERS, max_body=1000)
    assert code_of(exc) is ErrorCode.EVENT_TOO_LARGE


def test_heads_verify_only_for_their_relay_and_channel_and_tags_differ_per_relay() -> None:
    relay = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(5, 37)))
    relay_key = crypto.public_bytes(relay)
    fingerprint = crypto.fingerprint(relay_key)
    signed = make_head(
        relay, relay_fingerprint=fingerprint, channel=CHANNEL, head=ChainHead(4, bytes(32)), now=NOW
    )
    assert verify_head(signed, relay_key=relay_key, channel=CHANNEL).head.seq == 4
    with pytest.raises(RemoteProtocolError) as exc:
        verify_head(signed, relay_key=relay_key, channel=crypto.digest(b"elsewhere"))
    assert code_of(exc) is ErrorCode.CHANNEL_MISMATCH
    with pytest.raises(RemoteProtocolError) as exc:
        verify_head(signed, relay_key=crypto.public_bytes(OWNER), channel=CHANNEL)
    assert code_of(exc) is ErrorCode.BAD_SIGNATURE
    assert tag(CHANNEL, fingerprint) != tag(CHANNEL, crypto.digest(b"another relay"))


SESSION = bytes([0x5E]) * 32  # the sender's connection's challenge


def test_a_direct_invitation_opens_only_for_its_member_and_obeys_the_owners() -> None:
    target = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(7, 39)))
    target_id = crypto.public_bytes(target)
    seal = x25519.X25519PrivateKey.from_private_bytes(bytes(range(9, 41)))
    relay_fp = crypto.digest(b"relay")
    signed = make_direct_invitation(
        STRANGER,
        relay_fingerprint=relay_fp,
        channel=CHANNEL,
        address_id="addr",
        to=target_id,
        to_seal_key=seal.public_key().public_bytes_raw(),
        contact="https://example.test/contact",
        note="hi",
        session=SESSION,
        now=NOW,
    )
    verified = verify_direct_invitation(
        signed,
        relay_fingerprint=relay_fp,
        channel=CHANNEL,
        address_id="addr",
        session=SESSION,
        now=NOW,
        max_age=60,
    )
    assert verified.sender == crypto.public_bytes(STRANGER)
    content = open_direct_invitation(signed, seal_key=seal, member_key=target_id, channel=CHANNEL)
    assert content.note == "hi" and content.sender == crypto.public_bytes(STRANGER)
    with pytest.raises(RemoteProtocolError) as exc:
        open_direct_invitation(
            signed, seal_key=x25519.X25519PrivateKey.generate(), member_key=target_id, channel=CHANNEL
        )
    assert code_of(exc) is ErrorCode.SEAL_FAILED
    with pytest.raises(RemoteProtocolError) as exc:
        verify_direct_invitation(
            signed,
            relay_fingerprint=crypto.digest(b"x"),
            channel=CHANNEL,
            address_id="addr",
            session=SESSION,
            now=NOW,
            max_age=60,
        )
    assert code_of(exc) is ErrorCode.WRONG_RELAY
    base = Profile(CHANNEL, bytes(32), 1, "channel", "n", "", [], [], NOW)
    with pytest.raises(RemoteProtocolError) as exc:
        check_allowed(base, 3)
    assert code_of(exc) is ErrorCode.DIRECT_MESSAGES_OFF
    allowed = Profile(
        CHANNEL,
        bytes(32),
        1,
        "channel",
        "n",
        "",
        [],
        [],
        NOW,
        direct_messages=True,
        direct_messages_max_members=10,
    )
    check_allowed(allowed, 9)
    with pytest.raises(RemoteProtocolError) as exc:
        check_allowed(allowed, 10)
    assert code_of(exc) is ErrorCode.DIRECT_MESSAGES_OVER_THRESHOLD
