"""Hypothesis fuzzing of every decoder and verifier a peer can reach with its bytes.

The contract under test: whatever arrives, the pure protocol code either returns
a value of the expected type or raises a :class:`ProtocolError` with a code that
fits (``frame_too_large``, ``malformed`` or ``bad_type`` for decoding, and
``bad_signature`` for a ``Signed`` whose key or signature has the wrong length) —
never any other exception, which on the relay would be an ``internal`` failure.
Inputs: arbitrary bytes, MessagePack encodings of arbitrary nested values,
frame-shaped maps with random field values, mutations of valid frames, and
pathologically deep nesting.  Two rules are fuzzed beyond "typed errors only":
a bound request re-signed with any ``session`` passes only with the
connection's challenge, and an owner chain of any certs is refused for its count
or duplicates before a signature is checked.  Example counts are kept modest so
the file runs in a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from make_vectors import CHALLENGE, MEMBER, T0, fixture, make_profile, owner_cert

from relay.protocol import crypto
from relay.protocol.addresses import ChannelLink, group_address, parse_address, parse_link
from relay.protocol.direct import open_direct_invitation, verify_direct_invitation
from relay.protocol.encoding import b64d, b64e, decode, encode
from relay.protocol.errors import ErrorCode, ProtocolError, RemoteProtocolError
from relay.protocol.handshake import verify_welcome
from relay.protocol.invitation import (
    OWNER_COMMANDS,
    SEAL_PURPOSE,
    verify_grant,
    verify_invitation,
    verify_owner_request,
)
from relay.protocol.membership import (
    stored_join,
    verify_join_request,
    verify_member_card,
    verify_member_request,
)
from relay.protocol.messages import (
    PROTOCOL_VERSION,
    AddressGrant,
    ClientFrame,
    DirectInvitation,
    DirectInvitationContent,
    DirectInvite,
    DirectInviteDelivery,
    DirectInviteResult,
    Discover,
    Discovered,
    Error,
    EventFrame,
    Head,
    HeadAnswer,
    HeadRequest,
    Hello,
    Invitation,
    Invite,
    InviteResult,
    Join,
    JoinRequest,
    JoinResult,
    JoinStatus,
    LogRequest,
    LogResult,
    MemberCard,
    MemberCardRequest,
    MemberCert,
    MemberMessage,
    MemberPost,
    MemberPostResult,
    MemberProfile,
    MemberRequest,
    Moderation,
    OwnerCert,
    OwnerCommand,
    OwnerCommandResult,
    OwnerEvent,
    OwnerRequest,
    Post,
    PostResult,
    Profile,
    ProfileAnswer,
    ProfileRequest,
    ProfileResult,
    ProfileUpdate,
    Publish,
    PublishResult,
    RelayCard,
    RelayFrame,
    Signed,
    Subscribe,
    Subscribed,
    TimelineFrame,
    TimelineItem,
    Welcome,
)
from relay.protocol.profile import MAX_OWNER_CERTS, VerifiedProfile, verify_owner_chain, verify_profile
from relay.protocol.session import Endpoint, Session
from relay.protocol.timeline import (
    MODERATION_ACTIONS,
    Roster,
    stored_cert,
    stored_message,
    stored_moderation,
    verify_cert,
    verify_message,
    verify_moderation,
)

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LIMIT = 64 * 1024
DECODE_CODES = {ErrorCode.FRAME_TOO_LARGE, ErrorCode.MALFORMED, ErrorCode.BAD_TYPE}
F = fixture()
VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "vectors.json").read_text())

# Every type a peer's bytes are decoded as, with the classes a successful decode may return.
FRAME_STRUCTS: tuple[type[msgspec.Struct], ...] = (
    Hello,
    Welcome,
    Invite,
    InviteResult,
    ProfileUpdate,
    ProfileResult,
    LogRequest,
    LogResult,
    ProfileRequest,
    ProfileAnswer,
    Join,
    JoinStatus,
    JoinResult,
    OwnerCommand,
    OwnerCommandResult,
    Post,
    PostResult,
    Subscribe,
    Subscribed,
    EventFrame,
    HeadRequest,
    HeadAnswer,
    Discover,
    Discovered,
    MemberCardRequest,
    MemberCard,
    DirectInvite,
    DirectInviteResult,
    DirectInviteDelivery,
    MemberPost,
    MemberPostResult,
    Publish,
    PublishResult,
    TimelineFrame,
    Error,
)
CLIENT_FRAMES = tuple(t for t in FRAME_STRUCTS if t in ClientFrame.__args__)  # type: ignore[attr-defined]
RELAY_FRAMES = tuple(t for t in FRAME_STRUCTS if t in RelayFrame.__args__)  # type: ignore[attr-defined]
BODY_STRUCTS: tuple[type[msgspec.Struct], ...] = (
    Signed,
    OwnerCert,
    Profile,
    Invitation,
    AddressGrant,
    RelayCard,
    OwnerRequest,
    JoinRequest,
    MemberRequest,
    MemberProfile,
    OwnerEvent,
    Head,
    DirectInvitation,
    DirectInvitationContent,
    MemberCert,
    MemberMessage,
    Moderation,
    TimelineItem,
)
TARGETS: list[tuple[Any, tuple[type, ...]]] = [
    *((t, (t,)) for t in FRAME_STRUCTS + BODY_STRUCTS),
    (ClientFrame, CLIENT_FRAMES),
    (RelayFrame, RELAY_FRAMES),
]
TAGS = [str(t.__struct_config__.tag) for t in FRAME_STRUCTS]
FIELD_NAMES = sorted({name for t in FRAME_STRUCTS + BODY_STRUCTS for name in t.__struct_fields__})


def decoding_error(exc: RemoteProtocolError) -> bool:
    """A code decoding may give: the three of the encoding, or ``bad_signature`` for a ``Signed``
    whose key or signature has the wrong length (checked as it is decoded)."""
    if exc.code is ErrorCode.BAD_SIGNATURE:
        return exc.reason.startswith(("the signer key is", "the signature is"))
    return exc.code in DECODE_CODES


def decode_all(data: bytes) -> None:
    """Decode ``data`` as every target type: a value of that type or a decoding error, nothing else."""
    for type_, classes in TARGETS:
        try:
            value: object = decode(data, type_, limit=LIMIT)
        except RemoteProtocolError as exc:
            assert decoding_error(exc), (type_, exc)
            assert exc.reason
        else:
            assert isinstance(value, classes), (type_, value)


# --- strategies ----------------------------------------------------------------------------

sized_bytes = st.sampled_from([0, 1, 15, 16, 31, 32, 33, 63, 64, 65]).flatmap(
    lambda n: st.binary(min_size=n, max_size=n)
)
leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.binary(max_size=80)
    | sized_bytes
    | st.text(max_size=40)
    | st.sampled_from(TAGS + FIELD_NAMES)
)
keys = st.sampled_from([*FIELD_NAMES, "type"]) | st.text(max_size=12)


def nested(max_leaves: int = 40) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: st.lists(children, max_size=6) | st.dictionaries(keys, children, max_size=6),
        max_leaves=max_leaves,
    )


@st.composite
def frame_shaped(draw: st.DrawFn) -> dict[str, Any]:
    """A map with a real ``type`` tag and (mostly) real field names, holding random values."""
    struct = draw(st.sampled_from(FRAME_STRUCTS + BODY_STRUCTS))
    value: dict[str, Any] = {}
    tag = struct.__struct_config__.tag
    if tag is not None:
        value["type"] = tag
    for name in struct.__struct_fields__:
        if draw(st.integers(0, 9)) > 0:  # sometimes leave a field out
            value[name] = draw(nested(12))
    value.update(draw(st.dictionaries(keys, nested(6), max_size=2)))
    return value


def signed_values() -> st.SearchStrategy[Signed]:
    return st.builds(
        Signed,
        body=st.binary(max_size=300) | nested(12).map(msgspec.msgpack.encode),
        signer=st.binary(min_size=32, max_size=32) | st.just(F.owner_public) | st.just(F.relay_public),
        sig=st.binary(min_size=64, max_size=64),
    )


# --- decode: arbitrary input -------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=512))
def test_decode_arbitrary_bytes(data: bytes) -> None:
    decode_all(data)


@FUZZ
@given(nested())
def test_decode_arbitrary_msgpack_values(value: Any) -> None:
    decode_all(msgspec.msgpack.encode(value))


@FUZZ
@given(frame_shaped())
def test_decode_frame_shaped_maps(value: dict[str, Any]) -> None:
    decode_all(msgspec.msgpack.encode(value))


VALID_FRAMES = [bytes.fromhex(v) for k, v in VECTORS["frames"].items() if not k.startswith("_")]


@FUZZ
@given(
    st.sampled_from(VALID_FRAMES),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.sampled_from("rid")), max_size=4),
)
def test_decode_mutated_valid_frames(frame: bytes, edits: list[tuple[int, int, str]]) -> None:
    data = bytearray(frame)
    for position, byte, op in edits:
        i = position % (len(data) + 1)
        if op == "r" and i < len(data):
            data[i] = byte
        elif op == "i":
            data.insert(i, byte)
        elif op == "d" and i < len(data):
            del data[i]
    decode_all(bytes(data))


@pytest.mark.parametrize("frame", VALID_FRAMES, ids=[k for k in VECTORS["frames"] if not k.startswith("_")])
def test_every_truncation_of_a_valid_frame(frame: bytes) -> None:
    for end in range(len(frame)):
        decode_all(frame[:end])


def test_size_limit_is_checked_before_parsing() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode(b"\xc1" * 11, Hello, limit=10)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE


# --- decode: deep nesting ------------------------------------------------------------------

DEPTH = 10_000
NIL = b"\xc0"


def deep_array(depth: int = DEPTH) -> bytes:
    return b"\x91" * depth + NIL  # [[[...nil...]]]


def deep_map(depth: int = DEPTH) -> bytes:
    return b"\x81\xa1k" * depth + NIL  # {"k": {"k": ...nil...}}


def map_with(fields: dict[str, bytes]) -> bytes:
    """A MessagePack map whose values are given as raw encoded bytes."""
    out = bytearray(b"\xde" + len(fields).to_bytes(2, "big"))
    for key, raw in fields.items():
        out += msgspec.msgpack.encode(key) + raw
    return bytes(out)


HELLO_FIELDS = {"type": encode("hello"), "version": encode(PROTOCOL_VERSION), "nonce": encode(bytes(32))}
DEEP_INPUTS = {
    "array": deep_array(),
    "map": deep_map(),
    "array_in_unknown_field": map_with({**HELLO_FIELDS, "extra": deep_array()}),
    "map_in_unknown_field": map_with({**HELLO_FIELDS, "extra": deep_map()}),
    "unknown_field_first": map_with({"extra": deep_array(), **HELLO_FIELDS}),
    "array_in_known_field": map_with(
        {"type": encode("log_result"), "state": encode("x"), "entries": deep_array()}
    ),
    "map_in_signed_field": map_with({"type": encode("profile_update"), "profile": deep_map()}),
    "array_in_dict_value": map_with(
        {"relay_key": encode(bytes(32)), "seal_keys": b"\x81\xa1x" + deep_array()}
    ),
    "very_deep_array_in_unknown_field": map_with({**HELLO_FIELDS, "extra": deep_array(100_000)}),
}


@pytest.mark.parametrize("name", sorted(DEEP_INPUTS))
def test_decode_deeply_nested_input(name: str) -> None:
    decode_all(DEEP_INPUTS[name])


@pytest.mark.parametrize("name", sorted(DEEP_INPUTS))
def test_session_refuses_deeply_nested_frames_with_a_typed_error(name: str) -> None:
    for endpoint in Endpoint:
        session = Session(endpoint, max_frame=1 << 20)
        with pytest.raises(RemoteProtocolError) as info:
            session.receive(DEEP_INPUTS[name])
        assert decoding_error(info.value) or info.value.code is ErrorCode.UNEXPECTED_MESSAGE


# --- the session ---------------------------------------------------------------------------

SESSION_CODES = DECODE_CODES | {ErrorCode.UNEXPECTED_MESSAGE, ErrorCode.UNSUPPORTED_VERSION}
HELLO = encode(Hello(version=PROTOCOL_VERSION, nonce=bytes(32)))


@FUZZ
@given(st.sampled_from(list(Endpoint)), st.booleans(), st.binary(max_size=256) | frame_shaped().map(encode))
def test_session_receive_only_raises_protocol_errors(endpoint: Endpoint, greeted: bool, data: bytes) -> None:
    session = Session(endpoint, max_frame=4096)
    if greeted:
        session.receive(HELLO)
    try:
        frame = session.receive(data)
    except RemoteProtocolError as exc:
        assert decoding_error(exc) or exc.code in SESSION_CODES
    else:
        assert isinstance(frame, CLIENT_FRAMES)
        assert session.greeted
        # only a subscribed connection takes member cards and direct invitations
        assert not isinstance(frame, MemberCardRequest | DirectInvite)


# --- addresses and links -------------------------------------------------------------------


def only_bad_type(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except RemoteProtocolError as exc:
        assert exc.code is ErrorCode.BAD_TYPE
        return None


url_parts = st.tuples(
    st.sampled_from(["http", "https", "HTTP", "ftp", "", "chat-relay"]),
    st.sampled_from(["://", ":/", ":", "//"]),
    st.text(max_size=12) | st.sampled_from(["relay.example", "[::1]", "[::1", "127.0.0.1", "user@h", ""]),
    st.sampled_from(["", ":"]) | st.integers(-5, 70_000).map(lambda p: f":{p}") | st.text(max_size=4),
    st.sampled_from(["/r", "/g/", "/c/", "/x", ""]) | st.text(max_size=30),
    st.text(max_size=30) | st.binary(min_size=30, max_size=34).map(b64e),
    st.sampled_from(["#", "?relay=", ""]) | st.text(max_size=3),
)


@FUZZ
@given(st.text(max_size=200) | url_parts.map("".join))
def test_address_and_link_parsing_only_raise_bad_type(text: str) -> None:
    address = only_bad_type(parse_address, text)
    if address is not None:
        assert len(address.fingerprint) == 32
        assert parse_address(str(address)) == address
    link = only_bad_type(parse_link, text)
    if link is not None:
        assert len(link.channel) == 32
        assert link.kind in ("channel", "group")


@FUZZ
@given(st.text(max_size=60))
def test_b64d_only_raises_bad_type(text: str) -> None:
    raw = only_bad_type(b64d, text)
    if raw is not None:
        assert b64e(raw) == text


@FUZZ
@given(
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=16, max_size=16).map(b64e),
    st.lists(st.binary(min_size=32, max_size=32), max_size=3),
)
def test_addresses_and_links_round_trip(fingerprint: bytes, address_id: str, channels: list[bytes]) -> None:
    text = group_address("http://relay.example:7300", fingerprint, address_id)
    parsed = parse_address(text)
    assert (parsed.fingerprint, parsed.address_id) == (fingerprint, address_id)
    for channel in channels:
        link = ChannelLink("channel", channel, (text,))
        assert parse_link(str(link)) == link


# --- verifiers on arbitrary signed values ----------------------------------------------------


def only_protocol_errors(call: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except ProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        return None


def member_verifiers(signed: Signed, session: bytes = CHALLENGE) -> None:
    """The member's requests, checked by the relay (and by other members): a typed error or a
    value, nothing else."""
    binding = {
        "relay_fingerprint": F.fingerprint,
        "channel": F.channel,
        "address_id": "A" * 22,
        "session": session,
    }
    only_protocol_errors(verify_join_request, signed, **binding, now=T0, max_age=600, max_profile_bytes=1024)
    only_protocol_errors(verify_member_request, signed, **binding, now=T0, max_age=600)
    only_protocol_errors(verify_direct_invitation, signed, **binding, now=T0, max_age=600)
    only_protocol_errors(stored_join, encode(signed))
    only_protocol_errors(verify_member_card, signed, member=signed.signer, channel=F.channel)
    only_protocol_errors(
        open_direct_invitation, signed, seal_key=SEAL, member_key=signed.signer, channel=F.channel
    )
    timeline_verifiers(signed)


TIMELINE_OWNERS = frozenset({F.owner_public, F.owner2_public})


def timeline_verifiers(signed: Signed) -> None:
    """A timeline's entries, checked by the relay at intake and by every reader; what the relay
    stored is decoded again (``stored_*``).  A verified cert or moderation then goes through a
    roster, whose rules raise only protocol errors too."""
    roster = Roster()
    cert = only_protocol_errors(verify_cert, signed, channel=F.channel, owners=TIMELINE_OWNERS)
    if cert is not None:
        only_protocol_errors(roster.apply_cert, cert)
        only_protocol_errors(roster.may_post, cert.member)
    only_protocol_errors(verify_message, signed, channel=F.channel, max_body=100)
    only_protocol_errors(verify_message, signed, channel=F.channel)
    for moderators in (frozenset(), frozenset({signed.signer})):
        moderation = only_protocol_errors(
            verify_moderation, signed, channel=F.channel, owners=TIMELINE_OWNERS, moderators=moderators
        )
        if moderation is not None:
            assert moderation.action in MODERATION_ACTIONS
            only_protocol_errors(roster.apply_moderation, moderation)
    for stored in (stored_cert, stored_message, stored_moderation):
        only_protocol_errors(stored, signed)


SEAL = x25519.X25519PrivateKey.generate()


@FUZZ
@given(
    signed_values(),
    st.binary(min_size=32, max_size=32),
    st.lists(signed_values(), max_size=3),
    st.sampled_from([CHALLENGE]) | sized_bytes,
    st.integers(0, 300),
)
def test_verifiers_on_arbitrary_signed_values(
    signed: Signed, key: bytes, certs: list[Signed], session: bytes, max_owners: int
) -> None:
    only_protocol_errors(verify_profile, signed)
    only_protocol_errors(verify_profile, signed, max_owners=max_owners)
    only_protocol_errors(verify_owner_chain, crypto.channel_id(key), key, certs)
    only_protocol_errors(verify_owner_chain, F.channel, F.root_public, [F.cert1, *certs])
    only_protocol_errors(verify_grant, signed, relay_key=key, channel=F.channel, service_group=bytes(16))
    only_protocol_errors(
        verify_owner_request,
        signed,
        actions=("read_log",),
        relay_fingerprint=F.fingerprint,
        session=session,
        now=T0,
        max_age=600,
    )
    only_protocol_errors(verify_welcome, Welcome(card=signed), fingerprint=crypto.fingerprint(key), nonce=key)
    member_verifiers(signed, session)
    only_protocol_errors(
        verify_invitation,
        encode(signed),
        relay_fingerprint=F.fingerprint,
        session=session,
        now=T0,
        max_age=600,
        max_owners=max_owners,
    )


LABELS = [
    crypto.Label.OWNER_CERT,
    crypto.Label.PROFILE,
    crypto.Label.INVITATION,
    crypto.Label.ADDRESS_GRANT,
    crypto.Label.WELCOME,
    crypto.Label.OWNER_REQUEST,
    crypto.Label.JOIN_REQUEST,
    crypto.Label.MEMBER_REQUEST,
    crypto.Label.DIRECT_INVITATION,
    crypto.Label.MEMBER_CERT,
    crypto.Label.MEMBER_MESSAGE,
    crypto.Label.MODERATION,
]


@FUZZ
@given(st.sampled_from(LABELS), frame_shaped().map(encode) | nested(20).map(encode) | st.binary(max_size=200))
def test_verifiers_on_validly_signed_random_bodies(label: bytes, body: bytes) -> None:
    """Bodies that pass the signature check, so the decoding and the rules behind it run."""
    by_owner = crypto.signed(F.owner, label, body)
    by_relay = crypto.signed(F.relay, label, body)
    by_root = crypto.signed(F.root, label, body)
    only_protocol_errors(verify_profile, by_owner)
    only_protocol_errors(verify_owner_chain, F.channel, F.root_public, [by_root])
    only_protocol_errors(verify_owner_chain, F.channel, F.root_public, [F.cert1, by_owner])
    only_protocol_errors(
        verify_grant, by_relay, relay_key=F.relay_public, channel=F.channel, service_group=bytes(16)
    )
    only_protocol_errors(
        verify_owner_request,
        by_owner,
        actions=("read_log",),
        relay_fingerprint=F.fingerprint,
        session=CHALLENGE,
        now=T0,
        max_age=600,
    )
    only_protocol_errors(verify_welcome, Welcome(card=by_relay), fingerprint=F.fingerprint, nonce=bytes(32))
    member_verifiers(by_owner)
    only_protocol_errors(
        verify_invitation,
        encode(by_owner),
        relay_fingerprint=F.fingerprint,
        session=CHALLENGE,
        now=T0,
        max_age=600,
    )


@FUZZ
@given(st.sampled_from(sorted(crypto.SUITES)) | st.text(max_size=10), st.binary(max_size=1300))
def test_opening_arbitrary_sealed_bytes(suite: str, sealed: bytes) -> None:
    try:
        F.seal_keys.open(suite, sealed, crypto.seal_info(SEAL_PURPOSE, F.fingerprint))
    except RemoteProtocolError as exc:
        assert exc.code in (ErrorCode.SEAL_FAILED, ErrorCode.UNSUPPORTED_SUITE)
    else:
        raise AssertionError("random bytes opened as a sealed payload")


# --- the session binding: every bound body, re-signed with any ``session`` --------------------

BOUND_VECTORS = [
    "invitation",
    "owner_request",
    "owner_command_request",
    "join_request",
    "member_request",
    "subscribe_request",
    "direct_invitation",
]


def verify_bound(group: str, signed: Signed, now: int) -> object:
    """The relay's verifier of the vector ``group``'s body, on the connection of the vectors."""
    binding = {"relay_fingerprint": F.fingerprint, "session": CHALLENGE, "now": now, "max_age": 600}
    member = {**binding, "channel": F.channel, "address_id": VECTORS["addresses"]["address_id"]}
    if group == "invitation":
        return verify_invitation(encode(signed), **binding)  # type: ignore[arg-type]
    if group == "owner_request":
        return verify_owner_request(signed, actions=("read_log",), **binding)  # type: ignore[arg-type]
    if group == "owner_command_request":
        return verify_owner_request(signed, actions=OWNER_COMMANDS, **binding)  # type: ignore[arg-type]
    if group == "join_request":
        return verify_join_request(signed, **member, max_profile_bytes=1024)  # type: ignore[arg-type]
    if group == "direct_invitation":
        return verify_direct_invitation(signed, **member)  # type: ignore[arg-type]
    action = "subscribe" if group == "subscribe_request" else "status"
    return verify_member_request(signed, **member, action=action)  # type: ignore[arg-type]


MISSING = object()


@FUZZ
@given(
    st.sampled_from(BOUND_VECTORS),
    st.just(CHALLENGE) | sized_bytes | nested(4) | st.just(MISSING),
)
def test_a_bound_body_passes_only_with_this_connections_session(group: str, session: Any) -> None:
    fields = msgspec.msgpack.decode(bytes.fromhex(VECTORS[group]["body"]))
    if session is MISSING:
        del fields["session"]
    else:
        fields["session"] = session
    signer = F.owner if group in ("invitation", "owner_request", "owner_command_request") else MEMBER
    label = bytes(VECTORS[group]["label"], "ascii")
    signed = crypto.signed(signer, label, msgspec.msgpack.encode(fields))
    try:
        verify_bound(group, signed, VECTORS[group]["created_at"])
    except RemoteProtocolError as exc:
        assert session != CHALLENGE, exc
        if isinstance(session, bytes) and len(session) == 32:
            assert exc.code is ErrorCode.WRONG_SESSION
        else:
            assert exc.code is ErrorCode.BAD_TYPE
    else:
        assert session == CHALLENGE


# --- owner chains: cheap checks before signatures, whatever the certs ---------------------------

POOL = [ed25519.Ed25519PrivateKey.from_private_bytes(bytes([0xA0 + i]) * 32) for i in range(4)]
POOL_PUBLIC = [crypto.public_bytes(k) for k in POOL]
NO_SIGNATURE = bytes(64)

# A cert: (the key it authorises, who signs it: -1 the root or a pool key, a valid signature?)
cert_specs = st.tuples(st.integers(0, 3), st.integers(-1, 3), st.booleans(), st.integers(0, 2))


def build_cert(owner: int, signer: int, valid: bool, issued: int) -> Signed:
    key = F.root if signer < 0 else POOL[signer]
    cert = owner_cert(key, F.channel, POOL_PUBLIC[owner], T0 + issued)
    return cert if valid else Signed(body=cert.body, signer=cert.signer, sig=NO_SIGNATURE)


@FUZZ
@given(
    st.lists(cert_specs, max_size=12),
    st.integers(0, 3),
    st.booleans(),
    st.integers(0, 14) | st.just(MAX_OWNER_CERTS),
)
def test_owner_chain_rules_hold_for_any_certs(
    specs: list[tuple[int, int, bool, int]], signer: int, valid: bool, max_owners: int
) -> None:
    certs = [build_cert(*spec) for spec in specs]
    profile = make_profile(POOL[signer], F.root_public, certs)
    if not valid:
        profile = Signed(body=profile.body, signer=profile.signer, sig=NO_SIGNATURE)
    owners = [spec[0] for spec in specs]
    try:
        verified = verify_profile(profile, max_owners=max_owners)
    except ProtocolError as exc:
        if len(certs) > max_owners:
            assert exc.code is ErrorCode.TOO_MANY_OWNERS
        elif len(set(owners)) < len(owners):
            # a duplicate is a cheap refusal: found before any signature is checked
            assert exc.code in (ErrorCode.DUPLICATE_OWNER, ErrorCode.UNAUTHORISED_OWNER), exc
        else:
            assert exc.code in (ErrorCode.UNAUTHORISED_OWNER, ErrorCode.BAD_SIGNATURE), exc
            if exc.code is ErrorCode.BAD_SIGNATURE:
                assert not valid or not all(spec[2] for spec in specs)
    else:
        assert isinstance(verified, VerifiedProfile)
        assert valid and all(spec[2] for spec in specs)
        assert len(certs) <= max_owners
        assert sorted(verified.owners) == sorted(POOL_PUBLIC[o] for o in owners)  # no duplicate
        assert len(verified.owners) == len(certs)
