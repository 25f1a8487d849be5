"""Check the protocol test vectors (``tests/vectors.json``) against the code and against the doc.

Every expected value here is rebuilt from the vector's inputs with the
``relay.protocol`` functions and compared with the stored bytes, so a change to
an encoding, a label, a key derivation or an address format shows up as a
failing vector.  The last tests check that ``docs/protocol.md`` shows exactly
the values that are in the JSON.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from relay.protocol import crypto
from relay.protocol.addresses import (
    ChannelLink,
    RelayAddress,
    contact_address,
    group_address,
    parse_address,
    parse_link,
)
from relay.protocol.direct import open_direct_invitation, verify_direct_invitation
from relay.protocol.encoding import b64e, decode, encode
from relay.protocol.errors import ErrorCode, RemoteProtocolError
from relay.protocol.events import GENESIS, ChainHead, event_id, make_event, verify_event
from relay.protocol.handshake import make_welcome, verify_welcome
from relay.protocol.heads import make_head, verify_head
from relay.protocol.heads import tag as discovery_tag
from relay.protocol.invitation import (
    OWNER_COMMANDS,
    SEAL_PURPOSE,
    make_grant,
    make_invitation,
    verify_grant,
    verify_invitation,
    verify_owner_request,
)
from relay.protocol.membership import verify_join_request, verify_member_request
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
    LogEntry,
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
    PendingMember,
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
from relay.protocol.profile import verify_owner_chain, verify_profile
from relay.protocol.state import GroupState, Transition
from relay.protocol.timeline import (
    AuthorHead,
    Roster,
    make_message,
    timeline_hash,
    verify_cert,
    verify_message,
    verify_moderation,
)

HERE = Path(__file__).resolve().parent
V: dict[str, Any] = json.loads((HERE / "vectors.json").read_text())
DOC = (HERE.parent / "docs" / "protocol.md").read_text()
KEYS = V["keys"]


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def private(name: str) -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.from_private_bytes(h(KEYS[f"{name}_secret"]))


def signed_of(group: str) -> Signed:
    g = V[group]
    return Signed(body=h(g["body"]), signer=h(g["signer"]), sig=h(g["sig"]))


FINGERPRINT = h(KEYS["relay_fingerprint"])
SESSION = h(V["welcome_card"]["challenge"])  # every per-request body names this connection's challenge
CHANNEL = h(KEYS["channel_id"])
SEAL_KEYS = crypto.SealKeys.from_secrets(h(KEYS["x25519_secret"]), h(KEYS["mlkem768_seed"]))


# --- keys and identifiers ------------------------------------------------------------


@pytest.mark.parametrize("name", ["root", "owner", "owner2", "relay", "member", "member2"])
def test_public_keys_derive_from_the_secrets(name: str) -> None:
    assert crypto.public_bytes(private(name)).hex() == KEYS[f"{name}_public"]


def test_fingerprint_is_sha256_of_the_identity_key() -> None:
    assert crypto.fingerprint(h(KEYS["relay_public"])).hex() == KEYS["relay_fingerprint"]
    assert b64e(FINGERPRINT) == KEYS["relay_fingerprint_b64"]


def test_channel_id_is_sha256_of_the_root_key() -> None:
    assert crypto.channel_id(h(KEYS["root_public"])).hex() == KEYS["channel_id"]
    assert b64e(CHANNEL) == KEYS["channel_id_b64"]


def test_seal_public_keys_derive_from_the_secrets() -> None:
    public = SEAL_KEYS.public_keys()
    assert public[crypto.SUITE_X25519.name].hex() == KEYS["x25519_public"]
    hybrid = public[crypto.SUITE_HYBRID.name]
    assert len(hybrid) == crypto.MLKEM768_PUBLIC_LEN + crypto.X25519_KEY_LEN
    assert hybrid.endswith(h(KEYS["x25519_public"]))
    assert crypto.digest(hybrid).hex() == KEYS["hybrid_public_sha256"]
    assert SEAL_KEYS.secrets() == (h(KEYS["x25519_secret"]), h(KEYS["mlkem768_seed"]))


# --- signed bodies: exact body bytes, signing input, deterministic signature ----------

SIGNED_GROUPS = {
    "owner_cert_1": ("root", crypto.Label.OWNER_CERT),
    "owner_cert_2": ("owner", crypto.Label.OWNER_CERT),
    "profile": ("owner2", crypto.Label.PROFILE),
    "invitation": ("owner", crypto.Label.INVITATION),
    "address_grant": ("relay", crypto.Label.ADDRESS_GRANT),
    "welcome_card": ("relay", crypto.Label.WELCOME),
    "owner_request": ("owner", crypto.Label.OWNER_REQUEST),
    "owner_command_request": ("owner", crypto.Label.OWNER_REQUEST),
    "join_request": ("member", crypto.Label.JOIN_REQUEST),
    "member_request": ("member", crypto.Label.MEMBER_REQUEST),
    "subscribe_request": ("member", crypto.Label.MEMBER_REQUEST),
    "event": ("owner", crypto.Label.EVENT),
    "head": ("relay", crypto.Label.HEAD),
    "direct_invitation": ("member", crypto.Label.DIRECT_INVITATION),
    "member_cert": ("owner", crypto.Label.MEMBER_CERT),
    "member_message": ("member", crypto.Label.MEMBER_MESSAGE),
    "moderation": ("owner", crypto.Label.MODERATION),
    "timeline_head": ("relay", crypto.Label.HEAD),
}


@pytest.mark.parametrize("group", sorted(SIGNED_GROUPS))
def test_signing_input_and_signature(group: str) -> None:
    signer, label = SIGNED_GROUPS[group]
    g = V[group]
    body = h(g["body"])
    assert g["label"] == label.decode()
    assert g["signer"] == KEYS[f"{signer}_public"]
    expected_input = b"chat-relay/v1/" + label + b"\x00" + body
    assert crypto.signing_input(label, body) == expected_input
    assert expected_input.hex() == g["signing_input"]
    # Ed25519 is deterministic: signing again gives the stored signature.
    assert crypto.sign(private(signer), label, body).hex() == g["sig"]
    crypto.verify(h(g["signer"]), label, body, h(g["sig"]))
    assert encode(signed_of(group)).hex() == g["signed"]
    assert decode(h(g["signed"]), Signed, limit=1 << 20) == signed_of(group)


@pytest.mark.parametrize("group", sorted(SIGNED_GROUPS))
def test_signature_does_not_verify_under_another_label(group: str) -> None:
    _, label = SIGNED_GROUPS[group]
    g = V[group]
    for other in {v[1] for v in SIGNED_GROUPS.values()} - {label}:
        with pytest.raises(RemoteProtocolError) as info:
            crypto.verify(h(g["signer"]), other, h(g["body"]), h(g["sig"]))
        assert info.value.code is ErrorCode.BAD_SIGNATURE


def cert_body(group: str, owner: str) -> bytes:
    return encode(
        OwnerCert(channel=CHANNEL, owner_key=h(KEYS[f"{owner}_public"]), issued_at=V[group]["issued_at"])
    )


def test_owner_cert_bodies() -> None:
    assert cert_body("owner_cert_1", "owner").hex() == V["owner_cert_1"]["body"]
    assert cert_body("owner_cert_2", "owner2").hex() == V["owner_cert_2"]["body"]


def test_owner_chain_of_the_vectors() -> None:
    owners = verify_owner_chain(
        CHANNEL, h(KEYS["root_public"]), [signed_of("owner_cert_1"), signed_of("owner_cert_2")]
    )
    assert owners == {h(KEYS["owner_public"]), h(KEYS["owner2_public"])}


def test_profile_body_and_verification() -> None:
    g = V["profile"]
    expected = Profile(
        channel=CHANNEL,
        root_key=h(KEYS["root_public"]),
        version=g["version"],
        kind=g["kind"],
        name=g["name"],
        description=g["description"],
        owners=[signed_of("owner_cert_1"), signed_of("owner_cert_2")],
        relays=[V["addresses"]["group"]],
        updated_at=g["updated_at"],
        direct_messages=False,
    )
    assert encode(expected).hex() == g["body"]
    verified = verify_profile(signed_of("profile"))
    assert verified.profile == expected
    assert verified.owners == {h(KEYS["owner_public"]), h(KEYS["owner2_public"])}


def invitation_struct() -> Invitation:
    g = V["invitation"]
    return Invitation(
        relay=FINGERPRINT,
        channel=CHANNEL,
        service_group=h(g["service_group"]),
        session=h(g["session"]),
        profile=signed_of("profile"),
        created_at=g["created_at"],
        nonce=h(g["nonce"]),
    )


def test_invitation_body_and_verification() -> None:
    g = V["invitation"]
    assert encode(invitation_struct()).hex() == g["body"]
    assert h(g["session"]) == SESSION
    verified = verify_invitation(
        h(g["signed"]), relay_fingerprint=FINGERPRINT, session=SESSION, now=g["created_at"], max_age=600
    )
    assert verified.invitation == invitation_struct()
    assert verified.signed == signed_of("invitation")
    with pytest.raises(RemoteProtocolError) as exc:  # the same bytes on another connection
        verify_invitation(
            h(g["signed"]), relay_fingerprint=FINGERPRINT, session=bytes(32), now=g["created_at"], max_age=600
        )
    assert exc.value.code is ErrorCode.WRONG_SESSION


def test_make_invitation_matches_the_vector_but_for_its_random_nonce() -> None:
    g = V["invitation"]
    plaintext = make_invitation(
        owner_key=private("owner"),
        relay_fingerprint=FINGERPRINT,
        service_group=h(g["service_group"]),
        profile=signed_of("profile"),
        channel=CHANNEL,
        session=SESSION,
        now=g["created_at"],
    )
    signed = decode(plaintext, Signed, limit=1 << 20)
    made = decode(signed.body, Invitation, limit=1 << 20)
    assert made.nonce != h(g["nonce"])  # 16 random bytes: equal only with probability 2^-128
    fixed = msgspec.structs.replace(made, nonce=h(g["nonce"]))
    assert encode(fixed).hex() == g["body"]
    assert signed.signer.hex() == KEYS["owner_public"]


def test_address_grant_body_and_verification() -> None:
    g = V["address_grant"]
    grant = make_grant(private("relay"), invitation_struct(), g["address"], g["issued_at"])
    assert grant == signed_of("address_grant")
    expected = AddressGrant(
        relay=FINGERPRINT,
        channel=CHANNEL,
        service_group=h(V["invitation"]["service_group"]),
        address=g["address"],
        issued_at=g["issued_at"],
    )
    assert encode(expected).hex() == g["body"]
    assert (
        verify_grant(
            grant,
            relay_key=h(KEYS["relay_public"]),
            channel=CHANNEL,
            service_group=h(V["invitation"]["service_group"]),
        )
        == expected
    )


def test_welcome_card_body_and_verification() -> None:
    g = V["welcome_card"]
    seal_keys = {crypto.SUITE_X25519.name: h(KEYS["x25519_public"])}
    welcome = make_welcome(
        private("relay"), seal_keys, h(g["nonce"]), h(g["challenge"]), g["time"], g["software"]
    )
    assert welcome.card == signed_of("welcome_card")
    card = verify_welcome(welcome, fingerprint=FINGERPRINT, nonce=h(g["nonce"]))
    assert card == RelayCard(
        relay_key=h(KEYS["relay_public"]),
        seal_keys=seal_keys,
        nonce=h(g["nonce"]),
        challenge=h(g["challenge"]),
        time=g["time"],
        software=g["software"],
    )
    assert encode(card).hex() == g["body"]


def owner_request_of(g: dict[str, Any]) -> OwnerRequest:
    """The owner request a vector group describes."""
    return OwnerRequest(
        relay=FINGERPRINT,
        channel=CHANNEL,
        service_group=h(V["invitation"]["service_group"]),
        session=h(g["session"]),
        action=g["action"],
        created_at=g["created_at"],
        nonce=h(g["nonce"]),
    )


def test_owner_request_body_and_verification() -> None:
    g = V["owner_request"]
    expected = owner_request_of(g)
    assert encode(expected).hex() == g["body"]
    request = verify_owner_request(
        signed_of("owner_request"),
        actions=("read_log",),
        relay_fingerprint=FINGERPRINT,
        session=SESSION,
        now=g["created_at"],
        max_age=600,
    )
    assert request == expected


def test_owner_command_request_is_a_command_the_relay_takes() -> None:
    """The owner_command frame's request is an action the relay takes in that frame; the
    log's ``read_log`` would be refused there (``unexpected_message``)."""
    g = V["owner_command_request"]
    expected = owner_request_of(g)
    assert encode(expected).hex() == g["body"]
    binding = {"relay_fingerprint": FINGERPRINT, "session": SESSION, "now": g["created_at"], "max_age": 600}
    command = verify_owner_request(signed_of("owner_command_request"), actions=OWNER_COMMANDS, **binding)
    assert command == expected
    with pytest.raises(RemoteProtocolError) as refused:
        verify_owner_request(signed_of("owner_request"), actions=OWNER_COMMANDS, **binding)
    assert refused.value.code is ErrorCode.UNEXPECTED_MESSAGE


# --- sealing -------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["seal_x25519", "seal_hybrid"])
def test_sealed_vector_opens_to_the_invitation(group: str) -> None:
    g = V[group]
    info = crypto.seal_info(SEAL_PURPOSE, FINGERPRINT)
    assert info == b"chat-relay/v1/seal/invitation\x00" + FINGERPRINT
    assert g["info"] == info.hex()
    assert g["plaintext"] == V["invitation"]["signed"]
    assert g["suite"] in crypto.SUITES
    plaintext = SEAL_KEYS.open(g["suite"], h(g["sealed"]), info)
    assert plaintext.hex() == g["plaintext"]
    verify_invitation(
        plaintext,
        relay_fingerprint=FINGERPRINT,
        session=SESSION,
        now=V["invitation"]["created_at"],
        max_age=600,
    )


@pytest.mark.parametrize(
    ("group", "enc_len"),
    [("seal_x25519", crypto.X25519_KEY_LEN), ("seal_hybrid", 1088 + crypto.X25519_KEY_LEN)],
)
def test_sealed_layout_is_enc_then_ciphertext_with_tag(group: str, enc_len: int) -> None:
    g = V[group]
    assert len(h(g["sealed"])) == enc_len + len(h(g["plaintext"])) + 16


@pytest.mark.parametrize("group", ["seal_x25519", "seal_hybrid"])
def test_sealed_vector_does_not_open_for_another_relay_or_purpose(group: str) -> None:
    g = V[group]
    for info in (
        crypto.seal_info(SEAL_PURPOSE, bytes(32)),
        crypto.seal_info(b"other", FINGERPRINT),
    ):
        with pytest.raises(RemoteProtocolError) as exc:
            SEAL_KEYS.open(g["suite"], h(g["sealed"]), info)
        assert exc.value.code is ErrorCode.SEAL_FAILED


def test_other_relay_keys_cannot_open_the_sealed_vector() -> None:
    other = crypto.SealKeys.from_secrets(bytes([9]) * 32, bytes([9]) * 64)
    info = h(V["seal_x25519"]["info"])
    for group in ("seal_x25519", "seal_hybrid"):
        with pytest.raises(RemoteProtocolError) as exc:
            other.open(V[group]["suite"], h(V[group]["sealed"]), info)
        assert exc.value.code is ErrorCode.SEAL_FAILED


# --- frames ----------------------------------------------------------------------------


def expected_frames() -> dict[str, tuple[msgspec.Struct, Any]]:
    """Each frame as a struct built from the vectors, and the union it is decoded as."""
    grant = signed_of("address_grant")
    return {
        "hello": (Hello(version=PROTOCOL_VERSION, nonce=h(V["welcome_card"]["nonce"])), ClientFrame),
        "welcome": (Welcome(card=signed_of("welcome_card")), RelayFrame),
        "invite": (Invite(suite=crypto.SUITE_X25519.name, sealed=h(V["seal_x25519"]["sealed"])), ClientFrame),
        "invite_result_accepted": (
            InviteResult(status="accepted", state="accepted", grant=grant),
            RelayFrame,
        ),
        "invite_result_refused": (
            InviteResult(
                status="refused",
                state="rejected",
                code="kind_not_allowed",
                reason="kind 'group' is not served here",
            ),
            RelayFrame,
        ),
        "profile_update": (ProfileUpdate(profile=signed_of("profile")), ClientFrame),
        "profile_result": (ProfileResult(state="active", version=2), RelayFrame),
        "log_request": (LogRequest(request=signed_of("owner_request")), ClientFrame),
        "log_result": (
            LogResult(
                state="active",
                entries=[
                    LogEntry(
                        seq=1,
                        at=V["address_grant"]["issued_at"],
                        event="address_issued",
                        detail=V["addresses"]["group"],
                    )
                ],
            ),
            RelayFrame,
        ),
        "profile_request": (ProfileRequest(), ClientFrame),
        "profile": (ProfileAnswer(profile=signed_of("profile"), state="active"), RelayFrame),
        "join": (Join(request=signed_of("join_request")), ClientFrame),
        "join_result_held": (
            JoinResult(
                status="held",
                reason="the group is not active yet; the request is kept and decided once it is",
                received_at=V["join_request"]["created_at"],
            ),
            RelayFrame,
        ),
        "join_status": (JoinStatus(request=signed_of("member_request"), wait=30.0), ClientFrame),
        "join_result_admitted": (
            JoinResult(
                status="admitted",
                received_at=V["join_request"]["created_at"],
                decided_at=V["member_request"]["created_at"],
            ),
            RelayFrame,
        ),
        "owner_command": (OwnerCommand(request=signed_of("owner_command_request")), ClientFrame),
        "owner_result": (
            OwnerCommandResult(
                state="active",
                admission="open",
                members=1,
                pending=[
                    PendingMember(
                        member=h(KEYS["member_public"]),
                        name="Ada",
                        about="",
                        received_at=V["join_request"]["created_at"],
                    )
                ],
            ),
            RelayFrame,
        ),
        "post": (Post(event=signed_of("event")), ClientFrame),
        "post_result": (PostResult(status="stored", seq=1, id=h(V["event"]["id"])), RelayFrame),
        "subscribe": (Subscribe(request=signed_of("subscribe_request"), since=0), ClientFrame),
        "subscribed": (
            Subscribed(head_seq=1, first_seq=1, profile_version=2, timeline_pos=3, timeline_first=1),
            RelayFrame,
        ),
        "event": (EventFrame(event=signed_of("event")), RelayFrame),
        "head_request": (HeadRequest(), ClientFrame),
        "head": (HeadAnswer(head=signed_of("head"), event=signed_of("event")), RelayFrame),
        "discover": (Discover(tags=[h(V["head"]["tag"])]), ClientFrame),
        "discovered": (Discovered(heads=[signed_of("head")]), RelayFrame),
        "member_card_request": (MemberCardRequest(member=h(KEYS["member2_public"])), ClientFrame),
        "member_card": (MemberCard(join=signed_of("join_request")), RelayFrame),
        "direct_invite": (DirectInvite(request=signed_of("direct_invitation")), ClientFrame),
        "direct_invite_result": (DirectInviteResult(status="delivered"), RelayFrame),
        "direct_invitation": (DirectInviteDelivery(request=signed_of("direct_invitation")), RelayFrame),
        "member_post": (
            MemberPost(message=signed_of("member_message"), cert=signed_of("member_cert")),
            ClientFrame,
        ),
        "member_post_result": (
            MemberPostResult(status="stored", pos=2, id=h(V["member_message"]["id"])),
            RelayFrame,
        ),
        "publish": (Publish(entry=signed_of("moderation"), kind="moderation"), ClientFrame),
        "publish_result": (PublishResult(status="stored", pos=3, id=h(V["moderation"]["id"])), RelayFrame),
        "timeline": (
            TimelineFrame(item=TimelineItem(pos=2, after=1, kind="message", id=h(V["member_message"]["id"]))),
            RelayFrame,
        ),
        "error": (Error(code="unknown_group", reason="no group has this address"), RelayFrame),
    }


def test_every_frame_type_has_a_vector() -> None:
    names = {k for k in V["frames"] if not k.startswith("_")}
    assert names == set(expected_frames())
    tags = {type(frame).__struct_config__.tag for frame, _ in expected_frames().values()}
    assert tags == {
        "hello",
        "welcome",
        "invite",
        "invite_result",
        "profile_update",
        "profile_result",
        "log_request",
        "log_result",
        "profile_request",
        "profile",
        "join",
        "join_result",
        "join_status",
        "owner_command",
        "owner_result",
        "post",
        "post_result",
        "subscribe",
        "subscribed",
        "event",
        "head_request",
        "head",
        "discover",
        "discovered",
        "member_card_request",
        "member_card",
        "direct_invite",
        "direct_invite_result",
        "direct_invitation",
        "member_post",
        "member_post_result",
        "publish",
        "publish_result",
        "timeline",
        "error",
    }


@pytest.mark.parametrize("name", sorted(expected_frames()))
def test_frame_encoding(name: str) -> None:
    frame, union = expected_frames()[name]
    data = h(V["frames"][name])
    assert encode(frame) == data
    decoded: object = decode(data, union, limit=1 << 20)
    assert decoded == frame
    # the type tag comes first in the map
    tag = type(frame).__struct_config__.tag
    assert data[1:].startswith(encode("type") + encode(tag))


def test_hello_vector_bytes_spelled_out() -> None:
    """The smallest frame, byte by byte: fixmap(3), "type": "hello", "version": 2, "nonce": bin8(32)."""
    expected = (
        b"\x83"
        + b"\xa4type"
        + b"\xa5hello"
        + b"\xa7version"
        + b"\x02"
        + b"\xa5nonce"
        + b"\xc4\x20"
        + bytes([0x33]) * 32
    )
    assert h(V["frames"]["hello"]) == expected


# --- addresses and links ---------------------------------------------------------------


def test_contact_address() -> None:
    a = V["addresses"]
    assert contact_address(a["base"], FINGERPRINT) == a["contact"]
    assert a["contact"] == f"{a['base']}/r#{KEYS['relay_fingerprint_b64']}"
    parsed = parse_address(a["contact"])
    assert parsed == RelayAddress(a["base"], FINGERPRINT, None)
    assert parsed.websocket_url == a["contact_websocket"]


def test_group_address() -> None:
    a = V["addresses"]
    assert a["address_id"] == b64e(bytes(range(16)))
    assert group_address(a["base"], FINGERPRINT, a["address_id"]) == a["group"]
    parsed = parse_address(a["group"])
    assert parsed == RelayAddress(a["base"], FINGERPRINT, a["address_id"])
    assert parsed.websocket_url == a["group_websocket"]
    assert str(parsed) == a["group"]


def test_https_address_uses_wss() -> None:
    a = V["addresses"]
    parsed = parse_address(a["https_contact"])
    assert str(parsed) == a["https_contact"]
    assert parsed.websocket_url == a["https_contact_websocket"]
    assert a["https_contact_websocket"].startswith("wss://")


@pytest.mark.parametrize(("field", "kind"), [("channel_link", "channel"), ("group_link", "group")])
def test_channel_links(field: str, kind: str) -> None:
    a = V["addresses"]
    link = ChannelLink(kind, CHANNEL, (a["group"],))
    assert str(link) == a[field]
    assert parse_link(a[field]) == link
    letter = "c" if kind == "channel" else "g"
    assert a[field].startswith(f"chat-relay:/{letter}/{KEYS['channel_id_b64']}?relay=")
    assert "#" not in a[field]  # the relay's fragment is percent-encoded, not a link fragment


# --- the doc shows exactly these values ----------------------------------------------

BEGIN = "<!-- BEGIN TEST VECTORS"
END = "<!-- END TEST VECTORS -->"
HEX = re.compile(r"^[0-9a-f]+$")


def doc_vectors() -> dict[str, dict[str, str]]:
    """Parse the generated section of docs/protocol.md: ``#### `group` `` then ``key = value`` lines."""
    section = DOC[DOC.index(BEGIN) : DOC.index(END)]
    groups: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    last = ""
    in_block = False
    for line in section.splitlines():
        heading = re.match(r"^#### `([a-z0-9_]+)`$", line)
        if heading:
            current = groups.setdefault(heading.group(1), {})
        elif line.startswith("```"):
            in_block = not in_block
        elif in_block:
            if " = " in line:
                key, value = line.split(" = ", 1)
                last = key.strip()
                current[last] = value
            elif HEX.match(line.strip()):
                current[last] += line.strip()  # a wrapped hex value goes on
    return groups


def json_vectors() -> dict[str, dict[str, str]]:
    return {
        group: {k: str(v) for k, v in fields.items() if not k.startswith("_")}
        for group, fields in V.items()
        if not group.startswith("_")
    }


def test_doc_shows_exactly_the_json_vectors() -> None:
    assert doc_vectors() == json_vectors()


def test_doc_contains_every_hex_value() -> None:
    flat = re.sub(r"\s+", "", DOC)
    missing = [
        f"{group}.{key}"
        for group, fields in json_vectors().items()
        for key, value in fields.items()
        if HEX.match(value) and len(value) >= 8 and value not in flat
    ]
    assert missing == []


def test_vectors_cover_every_signature_label() -> None:
    labels = {V[g]["label"] for g in SIGNED_GROUPS}
    declared = {v.decode() for k, v in vars(crypto.Label).items() if not k.startswith("_")}
    assert labels == declared


def test_doc_names_every_error_code_frame_label_suite_and_state() -> None:
    rows = set(re.findall(r"^\| `([a-z0-9_-]+)` \|", DOC, flags=re.MULTILINE))
    missing_codes = {c.value for c in ErrorCode} - rows
    assert missing_codes == set()
    tags = {t.__struct_config__.tag for t in (Hello, Welcome, Invite, InviteResult, ProfileUpdate)}
    tags |= {t.__struct_config__.tag for t in (ProfileResult, LogRequest, LogResult, Error)}
    tags |= {t.__struct_config__.tag for t in (ProfileRequest, ProfileAnswer, Join, JoinStatus, JoinResult)}
    tags |= {t.__struct_config__.tag for t in (OwnerCommand, OwnerCommandResult)}
    tags |= {t.__struct_config__.tag for t in (Post, PostResult, Subscribe, Subscribed, EventFrame)}
    tags |= {t.__struct_config__.tag for t in (HeadRequest, HeadAnswer, Discover, Discovered)}
    tags |= {t.__struct_config__.tag for t in (MemberCardRequest, MemberCard, DirectInvite)}
    tags |= {t.__struct_config__.tag for t in (DirectInviteResult, DirectInviteDelivery)}
    tags |= {t.__struct_config__.tag for t in (MemberPost, MemberPostResult, Publish, PublishResult)}
    tags |= {TimelineFrame.__struct_config__.tag}
    labels = {v.decode() for k, v in vars(crypto.Label).items() if not k.startswith("_")}
    states = {s.value for s in GroupState}
    suites = set(crypto.SUITES)
    assert (tags | labels | states | suites) - rows == set()
    # transitions are in the middle column of the state table
    assert [t.value for t in Transition if f"| `{t.value}` |" not in DOC] == []


def test_join_request_body_and_verification() -> None:
    g = V["join_request"]
    member_profile = h(g["member_profile"])
    assert decode(member_profile, MemberProfile, limit=1 << 10) == MemberProfile(
        name="Ada", about="reads the weather"
    )
    expected = JoinRequest(
        relay=FINGERPRINT,
        channel=CHANNEL,
        address=g["address"],
        session=h(g["session"]),
        member_profile=member_profile,
        created_at=g["created_at"],
        nonce=h(g["nonce"]),
    )
    assert encode(expected).hex() == g["body"]
    verified = verify_join_request(
        signed_of("join_request"),
        relay_fingerprint=FINGERPRINT,
        channel=CHANNEL,
        address_id=g["address"],
        session=SESSION,
        now=g["created_at"],
        max_age=600,
        max_profile_bytes=1024,
    )
    assert verified.member_key.hex() == KEYS["member_public"]
    m = V["member_request"]
    status = verify_member_request(
        signed_of("member_request"),
        relay_fingerprint=FINGERPRINT,
        channel=CHANNEL,
        address_id=g["address"],
        session=SESSION,
        now=m["created_at"],
        max_age=600,
    )
    assert status == MemberRequest(
        relay=FINGERPRINT,
        channel=CHANNEL,
        address=g["address"],
        session=h(m["session"]),
        action="status",
        created_at=m["created_at"],
        nonce=h(m["nonce"]),
    )


# --- channel traffic: events, heads, direct invitations -------------------------------


def test_subscribe_request_body_and_verification() -> None:
    g = V["subscribe_request"]
    expected = MemberRequest(
        relay=FINGERPRINT,
        channel=CHANNEL,
        address=V["addresses"]["address_id"],
        session=h(g["session"]),
        action="subscribe",
        created_at=g["created_at"],
        nonce=h(g["nonce"]),
    )
    assert encode(expected).hex() == g["body"]
    request = verify_member_request(
        signed_of("subscribe_request"),
        relay_fingerprint=FINGERPRINT,
        channel=CHANNEL,
        address_id=expected.address,
        session=SESSION,
        now=g["created_at"],
        max_age=600,
        action="subscribe",
    )
    assert request == expected
    with pytest.raises(RemoteProtocolError) as exc:  # signed for subscribe, replayed as status
        verify_member_request(
            signed_of("subscribe_request"),
            relay_fingerprint=FINGERPRINT,
            channel=CHANNEL,
            address_id=expected.address,
            session=SESSION,
            now=g["created_at"],
            max_age=600,
        )
    assert exc.value.code is ErrorCode.UNEXPECTED_MESSAGE


def test_event_body_id_and_verification() -> None:
    g = V["event"]
    expected = OwnerEvent(
        channel=CHANNEL,
        seq=g["seq"],
        prev=h(g["prev"]),
        created_at=g["created_at"],
        content_type=g["content_type"],
        body=h(g["event_body"]),
    )
    assert h(g["prev"]) == GENESIS == bytes(32)
    assert encode(expected).hex() == g["body"]
    made = make_event(
        private("owner"), channel=CHANNEL, after=ChainHead(), body=h(g["event_body"]), now=g["created_at"]
    )
    assert made == signed_of("event")
    assert event_id(h(g["body"])).hex() == g["id"]
    assert crypto.digest(b"chat-relay/v1/event-id\x00" + h(g["body"])).hex() == g["id"]
    owners = frozenset({h(KEYS["owner_public"]), h(KEYS["owner2_public"])})
    verified = verify_event(signed_of("event"), channel=CHANNEL, owners=owners)
    assert verified.event == expected
    assert verified.id.hex() == g["id"]


def test_head_body_tag_and_verification() -> None:
    g = V["head"]
    tag = discovery_tag(CHANNEL, FINGERPRINT)
    assert tag.hex() == g["tag"]
    expected = Head(relay=FINGERPRINT, tag=tag, seq=g["seq"], id=h(g["id"]), time=g["time"])
    assert encode(expected).hex() == g["body"]
    made = make_head(
        private("relay"),
        relay_fingerprint=FINGERPRINT,
        channel=CHANNEL,
        head=ChainHead(g["seq"], h(g["id"]), V["event"]["created_at"]),
        now=g["time"],
    )
    assert made == signed_of("head")
    verified = verify_head(signed_of("head"), relay_key=h(KEYS["relay_public"]), channel=CHANNEL)
    assert verified.head == expected
    with pytest.raises(RemoteProtocolError) as exc:
        verify_head(signed_of("head"), relay_key=h(KEYS["relay_public"]), channel=bytes(32))
    assert exc.value.code is ErrorCode.CHANNEL_MISMATCH


def test_direct_invitation_body_verification_and_opening() -> None:
    from cryptography.hazmat.primitives.asymmetric import x25519

    g = V["direct_invitation"]
    to = h(KEYS["member2_public"])
    assert g["to"] == KEYS["member2_public"]
    expected = DirectInvitation(
        relay=FINGERPRINT,
        channel=CHANNEL,
        address=V["addresses"]["address_id"],
        session=h(g["session"]),
        to=to,
        suite=g["suite"],
        sealed=h(g["sealed"]),
        created_at=g["created_at"],
        nonce=h(g["nonce"]),
    )
    assert encode(expected).hex() == g["body"]
    assert h(g["info"]) == b"chat-relay/v1/seal/direct-invitation\x00" + crypto.digest(CHANNEL + to)
    verified = verify_direct_invitation(
        signed_of("direct_invitation"),
        relay_fingerprint=FINGERPRINT,
        channel=CHANNEL,
        address_id=expected.address,
        session=SESSION,
        now=g["created_at"],
        max_age=600,
    )
    assert verified.invitation == expected
    assert verified.sender.hex() == KEYS["member_public"]
    seal_key = x25519.X25519PrivateKey.from_private_bytes(h(KEYS["member2_seal_secret"]))
    assert seal_key.public_key().public_bytes_raw().hex() == KEYS["member2_seal_public"]
    content = open_direct_invitation(
        signed_of("direct_invitation"), seal_key=seal_key, member_key=to, channel=CHANNEL
    )
    assert encode(content).hex() == g["content"]
    assert content == DirectInvitationContent(
        sender=h(KEYS["member_public"]), contact="https://chat.example/ada", note="coffee?"
    )


# --- groups: member certs, member messages, moderation, the timeline ----------------------

OWNERS = frozenset({h(KEYS["owner_public"]), h(KEYS["owner2_public"])})


def test_member_cert_body_id_and_verification() -> None:
    g = V["member_cert"]
    expected = MemberCert(
        channel=CHANNEL, member=h(g["member"]), name=g["name"], role=g["role"], issued_at=g["issued_at"]
    )
    assert g["member"] == KEYS["member_public"]
    assert encode(expected).hex() == g["body"]
    assert crypto.digest(b"chat-relay/v1/cert-id\x00" + h(g["signer"]) + h(g["body"])).hex() == g["id"]
    verified = verify_cert(signed_of("member_cert"), channel=CHANNEL, owners=OWNERS)
    assert verified.cert == expected and verified.id.hex() == g["id"]


def test_member_message_body_id_and_verification() -> None:
    g = V["member_message"]
    expected = MemberMessage(
        channel=CHANNEL,
        seq=g["seq"],
        prev=h(g["prev"]),
        created_at=g["created_at"],
        content_type=g["content_type"],
        body=h(g["message_body"]),
        reply_to=h(g["reply_to"]),
    )
    assert g["reply_to"] == V["event"]["id"]
    assert encode(expected).hex() == g["body"]
    made = make_message(
        private("member"),
        channel=CHANNEL,
        after=AuthorHead(),
        body=h(g["message_body"]),
        now=g["created_at"],
        reply_to=h(g["reply_to"]),
    )
    assert made == signed_of("member_message")
    assert crypto.digest(b"chat-relay/v1/message-id\x00" + h(g["signer"]) + h(g["body"])).hex() == g["id"]
    verified = verify_message(signed_of("member_message"), channel=CHANNEL, max_body=1024)
    assert verified.message == expected and verified.id.hex() == g["id"]
    assert verified.author.hex() == KEYS["member_public"]


def test_moderation_body_id_and_verification() -> None:
    g = V["moderation"]
    expected = Moderation(
        channel=CHANNEL,
        action=g["action"],
        subject=h(g["subject"]),
        reason=g["reason"],
        issued_at=g["issued_at"],
        nonce=h(g["nonce"]),
    )
    assert g["subject"] == V["member_message"]["id"]
    assert encode(expected).hex() == g["body"]
    assert crypto.digest(b"chat-relay/v1/moderation-id\x00" + h(g["signer"]) + h(g["body"])).hex() == g["id"]
    verified = verify_moderation(
        signed_of("moderation"), channel=CHANNEL, owners=OWNERS, moderators=frozenset()
    )
    assert verified.moderation == expected and verified.id.hex() == g["id"]
    roster = Roster()
    roster.apply_moderation(verified)
    assert roster.removed(h(V["member_message"]["id"]))


def test_timeline_hash_and_the_signed_head() -> None:
    g = V["timeline"]
    after = g["after"]
    places = [
        ("cert", V["member_cert"]["id"]),
        ("message", V["member_message"]["id"]),
        ("moderation", V["moderation"]["id"]),
    ]
    assert g["th_0"] == bytes(32).hex()
    for pos, (kind, ident) in enumerate(places, start=1):
        previous, expected = h(g[f"th_{pos - 1}"]), h(g[f"th_{pos}"])
        spelled = crypto.digest(
            b"chat-relay/v1/timeline\x00"
            + previous
            + pos.to_bytes(8, "big")
            + after.to_bytes(8, "big")
            + kind.encode()
            + b"\x00"
            + h(ident)
        )
        assert timeline_hash(previous, pos, after, kind, h(ident)) == spelled == expected
    t = V["timeline_head"]
    expected_head = Head(
        relay=FINGERPRINT,
        tag=discovery_tag(CHANNEL, FINGERPRINT),
        seq=t["seq"],
        id=h(t["id"]),
        time=t["time"],
        timeline_pos=t["timeline_pos"],
        timeline_hash=h(t["timeline_hash"]),
    )
    assert t["timeline_hash"] == g["th_3"]
    assert encode(expected_head).hex() == t["body"]
    verified = verify_head(signed_of("timeline_head"), relay_key=h(KEYS["relay_public"]), channel=CHANNEL)
    assert verified.head == expected_head
