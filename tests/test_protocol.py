"""Unit tests of the pure protocol rules in ``relay.protocol``, with plain bytes and no I/O.

Covers the owner-authorisation chain, profile verification and the operator's
policy, invitations (sealing, relay binding, freshness, labels), grants,
owner requests and the welcome card, the group state machine, the
per-connection session rules, and address and link parsing.  Every refusal is
checked for its exact ``ErrorCode``.
"""

from __future__ import annotations

import itertools
from contextlib import AbstractContextManager

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from make_vectors import (
    CHALLENGE,
    T0,
    fixture,
    make_invitation_signed,
    make_owner_request_signed,
    make_profile,
    owner_cert,
)

from relay.protocol import crypto, messages
from relay.protocol.addresses import (
    ChannelLink,
    RelayAddress,
    contact_address,
    group_address,
    parse_address,
    parse_link,
)
from relay.protocol.direct import make_direct_invitation, open_direct_invitation, verify_direct_invitation
from relay.protocol.encoding import b64d, b64e, decode, encode
from relay.protocol.errors import ErrorCode, PolicyRefusal, ProtocolError, RemoteProtocolError
from relay.protocol.handshake import make_welcome, verify_welcome
from relay.protocol.invitation import (
    CLOCK_SKEW,
    SEAL_PURPOSE,
    check_fresh,
    make_grant,
    make_invitation,
    make_owner_request,
    verify_grant,
    verify_invitation,
    verify_owner_request,
)
from relay.protocol.membership import (
    make_join_request,
    make_member_request,
    stored_join,
    verify_join_request,
    verify_member_card,
    verify_member_request,
)
from relay.protocol.messages import (
    PROTOCOL_VERSION,
    Hello,
    Invitation,
    Invite,
    LogRequest,
    MemberProfile,
    ProfileUpdate,
    RelayCard,
    Signed,
    Welcome,
)
from relay.protocol.profile import MAX_SIGNED_BODY, ProfilePolicy, verify_owner_chain, verify_profile
from relay.protocol.session import Endpoint, Session
from relay.protocol.state import GroupState, Transition, transition

F = fixture()
MAX_AGE = 600


def new_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def pub(key: ed25519.Ed25519PrivateKey) -> bytes:
    return crypto.public_bytes(key)


def raises(code: ErrorCode) -> AbstractContextManager[pytest.ExceptionInfo[RemoteProtocolError]]:
    """``pytest.raises`` for a typed protocol error with exactly this code."""
    return pytest.raises(RemoteProtocolError, match=rf"^{code.value}: ")


def flip(data: bytes, index: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1 :]


# --- the owner-authorisation chain -------------------------------------------------------


def test_chain_of_root_then_owner_authorises_both_owners() -> None:
    owners = verify_owner_chain(F.channel, F.root_public, [F.cert1, F.cert2])
    assert owners == {F.owner_public, F.owner2_public}
    assert F.root_public not in owners  # the root is an owner only if a cert names it


def test_chain_order_matters() -> None:
    with raises(ErrorCode.UNAUTHORISED_OWNER):
        verify_owner_chain(F.channel, F.root_public, [F.cert2, F.cert1])


def test_owner_key_the_root_never_authorised() -> None:
    stranger = new_key()
    cert = owner_cert(stranger, F.channel, pub(new_key()))
    with raises(ErrorCode.UNAUTHORISED_OWNER):
        verify_owner_chain(F.channel, F.root_public, [F.cert1, cert])


def test_cert_signed_by_the_root_of_another_channel() -> None:
    other_root = new_key()
    cert = owner_cert(other_root, F.channel, F.owner_public)
    with raises(ErrorCode.UNAUTHORISED_OWNER):
        verify_owner_chain(F.channel, F.root_public, [cert])


def test_cert_for_another_channel() -> None:
    other_channel = crypto.channel_id(pub(new_key()))
    cert = owner_cert(F.root, other_channel, F.owner_public)
    with raises(ErrorCode.CHANNEL_MISMATCH):
        verify_owner_chain(F.channel, F.root_public, [cert])


def test_root_key_that_does_not_name_the_channel() -> None:
    other_root = new_key()
    cert = owner_cert(other_root, F.channel, F.owner_public)
    with raises(ErrorCode.CHANNEL_MISMATCH):
        verify_owner_chain(F.channel, pub(other_root), [cert])


@pytest.mark.parametrize("part", ["sig", "body"])
def test_cert_with_a_bad_signature(part: str) -> None:
    cert = F.cert1
    if part == "sig":
        cert = Signed(body=cert.body, signer=cert.signer, sig=flip(cert.sig, 10))
    else:
        cert = Signed(body=flip(cert.body, len(cert.body) - 1), signer=cert.signer, sig=cert.sig)
    with raises(ErrorCode.BAD_SIGNATURE):
        verify_owner_chain(F.channel, F.root_public, [cert])


def test_cert_signed_under_another_label() -> None:
    body = F.cert1.body
    cert = crypto.signed(F.root, crypto.Label.PROFILE, body)
    with raises(ErrorCode.BAD_SIGNATURE):
        verify_owner_chain(F.channel, F.root_public, [cert])


def test_no_cert_means_no_owner() -> None:
    with raises(ErrorCode.UNAUTHORISED_OWNER):
        verify_owner_chain(F.channel, F.root_public, [])


# The identity point encoded as a key, and the signature (R = identity, S = 0)
# that satisfies [S]B = R + [k]A for every message k: OpenSSL accepts it.
SMALL_ORDER_KEY = b"\x01" + bytes(31)
SIGNS_EVERYTHING = b"\x01" + bytes(63)
# The order of the Ed25519 base point: S + L verifies like S, unless refused.
GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493


@pytest.mark.parametrize("message", [b"", b"join me", bytes(range(256))])
def test_a_small_order_key_signs_nothing(message: bytes) -> None:
    with raises(ErrorCode.BAD_SIGNATURE):
        crypto.verify(SMALL_ORDER_KEY, crypto.Label.JOIN_REQUEST, message, SIGNS_EVERYTHING)


def test_a_small_order_key_cannot_send_a_join_request() -> None:
    relay, address = b"r" * 32, "a" * 22
    body = make_join_request(
        F.root,
        relay_fingerprint=relay,
        channel=F.channel,
        address_id=address,
        profile=MemberProfile(name="m"),
        session=CHALLENGE,
        now=T0,
    ).body
    forged = Signed(body=body, signer=SMALL_ORDER_KEY, sig=SIGNS_EVERYTHING)
    with raises(ErrorCode.BAD_SIGNATURE):
        verify_join_request(
            forged,
            relay_fingerprint=relay,
            channel=F.channel,
            address_id=address,
            session=CHALLENGE,
            now=T0,
            max_age=300,
            max_profile_bytes=4096,
        )


def test_a_signature_with_a_non_canonical_scalar_is_refused() -> None:
    body = b"owner request"
    sig = crypto.sign(F.root, crypto.Label.OWNER_REQUEST, body)
    crypto.verify(F.root_public, crypto.Label.OWNER_REQUEST, body, sig)
    s = int.from_bytes(sig[32:], "little") + GROUP_ORDER
    malleated = sig[:32] + s.to_bytes(32, "little")
    with raises(ErrorCode.BAD_SIGNATURE):
        crypto.verify(F.root_public, crypto.Label.OWNER_REQUEST, body, malleated)


@pytest.mark.parametrize(("key_len", "sig_len"), [(31, 64), (33, 64), (32, 63), (32, 65), (0, 0)])
def test_a_key_or_signature_of_the_wrong_length_is_refused(key_len: int, sig_len: int) -> None:
    with raises(ErrorCode.BAD_SIGNATURE):
        crypto.verify(bytes(key_len), crypto.Label.EVENT, b"body", bytes(sig_len))


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"\xc1", ErrorCode.MALFORMED), (encode({"channel": 1}), ErrorCode.BAD_TYPE)],
)
def test_signed_cert_whose_body_is_not_a_cert(body: bytes, code: ErrorCode) -> None:
    cert = crypto.signed(F.root, crypto.Label.OWNER_CERT, body)
    with raises(code):
        verify_owner_chain(F.channel, F.root_public, [cert])


# --- profile verification ------------------------------------------------------------------


def test_profile_verifies_and_returns_its_owners() -> None:
    verified = verify_profile(F.profile)
    assert verified.owners == {F.owner_public, F.owner2_public}
    assert verified.profile.version == 2
    assert verified.profile.relays == [F.group_address]
    assert verified.signed is F.profile


def test_profile_signed_by_the_root_is_not_owner_signed() -> None:
    signed = make_profile(F.root, F.root_public, [F.cert1])
    with raises(ErrorCode.UNAUTHORISED_OWNER):
        verify_profile(signed)


def test_profile_signed_by_an_owner_whose_cert_was_dropped() -> None:
    signed = make_profile(F.owner2, F.root_public, [F.cert1])
    with raises(ErrorCode.UNAUTHORISED_OWNER):
        verify_profile(signed)


def test_profile_with_a_bad_signature() -> None:
    signed = make_profile(F.owner, F.root_public, [F.cert1])
    with raises(ErrorCode.BAD_SIGNATURE):
        verify_profile(Signed(body=signed.body, signer=signed.signer, sig=flip(signed.sig)))


def test_profile_signed_under_the_cert_label() -> None:
    good = make_profile(F.owner, F.root_public, [F.cert1])
    signed = crypto.signed(F.owner, crypto.Label.OWNER_CERT, good.body)
    with raises(ErrorCode.BAD_SIGNATURE):
        verify_profile(signed)


def test_profile_whose_channel_is_not_its_root() -> None:
    signed = make_profile(F.owner, F.root_public, [F.cert1], channel=bytes(32))
    with raises(ErrorCode.CHANNEL_MISMATCH):
        verify_profile(signed)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"\x8a\xa7channel", ErrorCode.MALFORMED),  # a map cut short
        (encode({"channel": "not bytes"}), ErrorCode.BAD_TYPE),
        (bytes(MAX_SIGNED_BODY + 1), ErrorCode.FRAME_TOO_LARGE),
    ],
)
def test_profile_body_that_does_not_decode(body: bytes, code: ErrorCode) -> None:
    with raises(code):
        verify_profile(crypto.signed(F.owner, crypto.Label.PROFILE, body))


def test_profile_version_must_be_positive() -> None:
    with raises(ErrorCode.BAD_TYPE):
        verify_profile(make_profile(F.owner, F.root_public, [F.cert1], version=0))


# --- duplicate owners, the owner cap, and cheap checks before any signature -----------------

NO_SIGNATURE = bytes(64)  # verifies for no key and no message


def unsigned(signed: Signed) -> Signed:
    """The same bytes and signer with a signature that verifies for nothing: a check that
    refuses this with anything but ``bad_signature`` ran before the signature."""
    return Signed(body=signed.body, signer=signed.signer, sig=NO_SIGNATURE)


def root_certs(keys: list[ed25519.Ed25519PrivateKey]) -> list[Signed]:
    return [owner_cert(F.root, F.channel, pub(k)) for k in keys]


def test_256_copies_of_one_cert_are_refused_before_any_signature() -> None:
    """The old lever: 256 copies of one cert passed (one distinct key) and cost ~100x."""
    copies = make_profile(F.owner, F.root_public, [unsigned(F.cert1)] * 256)
    with raises(ErrorCode.TOO_MANY_OWNERS):
        verify_profile(unsigned(copies), max_owners=16)
    with raises(ErrorCode.DUPLICATE_OWNER):  # at the wire limit: still no signature checked
        verify_profile(unsigned(copies))
    with pytest.raises(PolicyRefusal, match="256 owner certs; the limit is 16"):
        verify_owner_chain(F.channel, F.root_public, [unsigned(F.cert1)] * 256, max_owners=16)


def test_an_invitation_carrying_copied_certs_is_refused_before_any_signature() -> None:
    copies = unsigned(make_profile(F.owner, F.root_public, [unsigned(F.cert1)] * 256))
    plaintext = encode(unsigned(invitation(profile=copies)))
    rules = {"relay_fingerprint": F.fingerprint, "session": CHALLENGE, "now": T0, "max_age": MAX_AGE}
    with raises(ErrorCode.TOO_MANY_OWNERS):
        verify_invitation(plaintext, **rules, max_owners=16)  # type: ignore[arg-type]
    with raises(ErrorCode.DUPLICATE_OWNER):
        verify_invitation(plaintext, **rules)  # type: ignore[arg-type]


@pytest.mark.parametrize("valid", [True, False], ids=["signed", "unsigned"])
def test_two_certs_for_one_owner_key_are_duplicate_owner(valid: bool) -> None:
    first = owner_cert(F.root, F.channel, F.owner_public, T0)
    second = owner_cert(F.root, F.channel, F.owner_public, T0 + 1)  # another cert, the same key
    by_owner = owner_cert(F.owner, F.channel, F.owner_public, T0 + 2)  # the key certifies itself
    sign = (lambda c: c) if valid else unsigned
    for certs, what in (
        ([first, first], "repeats owner cert 0"),
        ([first, second], "authorises the key of owner cert 0"),
        ([first, by_owner], "authorises the key of owner cert 0"),
        ([first, F.cert2, second], "owner cert 2 authorises the key of owner cert 0"),
    ):
        with pytest.raises(RemoteProtocolError, match=what) as exc:
            verify_owner_chain(F.channel, F.root_public, [sign(c) for c in certs])
        assert exc.value.code is ErrorCode.DUPLICATE_OWNER
        with raises(ErrorCode.DUPLICATE_OWNER):
            verify_profile(sign(make_profile(F.owner, F.root_public, [sign(c) for c in certs])))


def test_a_profile_with_exactly_max_owners_passes_and_one_more_does_not() -> None:
    keys = [new_key() for _ in range(17)]
    at_limit = make_profile(keys[0], F.root_public, root_certs(keys[:16]))
    verified = verify_profile(at_limit, max_owners=16)
    assert verified.owners == {pub(k) for k in keys[:16]}
    ProfilePolicy(max_owners=16).check(verified)
    over = make_profile(keys[0], F.root_public, root_certs(keys))
    with raises(ErrorCode.TOO_MANY_OWNERS):
        verify_profile(over, max_owners=16)
    assert len(verify_profile(over).owners) == 17  # the wire limit is 256: members accept it


@pytest.mark.parametrize(
    ("certs", "signer", "code"),
    [
        ([F.cert2, F.cert1], F.owner, ErrorCode.UNAUTHORISED_OWNER),  # signer not yet authorised
        ([owner_cert(new_key(), F.channel, F.owner_public)], F.owner, ErrorCode.UNAUTHORISED_OWNER),
        ([owner_cert(F.root, bytes(32), F.owner_public)], F.owner, ErrorCode.CHANNEL_MISMATCH),
        ([F.cert1], F.owner2, ErrorCode.UNAUTHORISED_OWNER),  # the profile's signer is no owner
        ([], F.owner, ErrorCode.UNAUTHORISED_OWNER),
    ],
)
def test_the_chain_structure_is_checked_before_any_signature(
    certs: list[Signed], signer: ed25519.Ed25519PrivateKey, code: ErrorCode
) -> None:
    profile = make_profile(signer, F.root_public, [unsigned(c) for c in certs])
    with raises(code):
        verify_profile(unsigned(profile))
    with raises(code):
        verify_at(unsigned(invitation(owner=signer, profile=unsigned(profile))))


def test_an_invitation_signed_by_no_claimed_owner_costs_no_signature() -> None:
    with raises(ErrorCode.UNAUTHORISED_OWNER):
        verify_at(unsigned(invitation(owner=new_key(), profile=unsigned(F.profile))))


def test_signatures_are_checked_once_the_cheap_checks_pass() -> None:
    with raises(ErrorCode.BAD_SIGNATURE):  # a cert's
        verify_profile(make_profile(F.owner, F.root_public, [unsigned(F.cert1)]))
    with raises(ErrorCode.BAD_SIGNATURE):  # the profile's
        verify_profile(unsigned(F.profile))
    with raises(ErrorCode.BAD_SIGNATURE):  # the invitation's
        verify_at(unsigned(invitation()))


# --- every per-request signed body is bound to its connection --------------------------------

OTHER_SESSION = bytes([0x99]) * 32
ADDRESS_ID = "a" * 22


def _join(session: bytes) -> Signed:
    return make_join_request(
        F.owner,
        relay_fingerprint=F.fingerprint,
        channel=F.channel,
        address_id=ADDRESS_ID,
        profile=MemberProfile(name="m"),
        session=session,
        now=T0,
    )


def _verify_join(signed: Signed, session: bytes) -> object:
    return verify_join_request(
        signed,
        relay_fingerprint=F.fingerprint,
        channel=F.channel,
        address_id=ADDRESS_ID,
        session=session,
        now=T0,
        max_age=MAX_AGE,
        max_profile_bytes=1024,
    )


def _member(action: str) -> tuple[object, object]:
    def make(session: bytes) -> Signed:
        return make_member_request(
            F.owner,
            relay_fingerprint=F.fingerprint,
            channel=F.channel,
            address_id=ADDRESS_ID,
            session=session,
            now=T0,
            action=action,
        )

    def check(signed: Signed, session: bytes) -> object:
        return verify_member_request(
            signed,
            relay_fingerprint=F.fingerprint,
            channel=F.channel,
            address_id=ADDRESS_ID,
            session=session,
            now=T0,
            max_age=MAX_AGE,
            action=action,
        )

    return make, check


def _direct(session: bytes) -> Signed:
    return make_direct_invitation(
        F.owner,
        relay_fingerprint=F.fingerprint,
        channel=F.channel,
        address_id=ADDRESS_ID,
        to=F.owner2_public,
        to_seal_key=x25519.X25519PrivateKey.generate().public_key().public_bytes_raw(),
        contact="https://chat.example/me",
        note="",
        session=session,
        now=T0,
    )


def _verify_direct(signed: Signed, session: bytes) -> object:
    return verify_direct_invitation(
        signed,
        relay_fingerprint=F.fingerprint,
        channel=F.channel,
        address_id=ADDRESS_ID,
        session=session,
        now=T0,
        max_age=MAX_AGE,
    )


def _owner(session: bytes) -> Signed:
    return make_owner_request(
        F.owner,
        relay_fingerprint=F.fingerprint,
        channel=F.channel,
        service_group=bytes(16),
        action="suspend_admission",
        session=session,
        now=T0,
    )


def _verify_owner(signed: Signed, session: bytes) -> object:
    return verify_owner_request(
        signed,
        actions=("suspend_admission",),
        relay_fingerprint=F.fingerprint,
        session=session,
        now=T0,
        max_age=MAX_AGE,
    )


def _invitation(session: bytes) -> Signed:
    return invitation(session=session)


def _verify_invitation(signed: Signed, session: bytes) -> object:
    return verify_at(signed, session=session)


BOUND = {
    "invitation": (_invitation, _verify_invitation),
    "owner_request": (_owner, _verify_owner),
    "join_request": (_join, _verify_join),
    "status": _member("status"),
    "subscribe": _member("subscribe"),
    "direct_invitation": (_direct, _verify_direct),
}


@pytest.mark.parametrize("body", list(BOUND))
def test_a_bound_body_is_refused_on_another_connection_before_its_signature(body: str) -> None:
    make, check = BOUND[body]
    signed = make(CHALLENGE)  # type: ignore[operator]
    check(signed, CHALLENGE)  # type: ignore[operator]
    with raises(ErrorCode.WRONG_SESSION):  # captured, replayed on another connection
        check(signed, OTHER_SESSION)  # type: ignore[operator]
    with raises(ErrorCode.WRONG_SESSION):  # the session is checked before the signature
        check(unsigned(signed), OTHER_SESSION)  # type: ignore[operator]
    with raises(ErrorCode.BAD_SIGNATURE):
        check(unsigned(signed), CHALLENGE)  # type: ignore[operator]


def _is_struct(value: object) -> bool:
    return isinstance(value, type) and issubclass(value, msgspec.Struct)


def test_every_per_request_body_has_a_required_session_of_32_bytes() -> None:
    """The bodies the relay binds, and only those: profiles, certs and events are documents."""
    bound = {
        name: struct
        for name, struct in vars(messages).items()
        if _is_struct(struct) and "session" in struct.__struct_fields__
    }
    makers = {
        "Invitation": _invitation,
        "OwnerRequest": _owner,
        "JoinRequest": _join,
        "MemberRequest": _member("status")[0],
        "DirectInvitation": _direct,
    }
    assert set(bound) == set(makers)
    for name, struct in bound.items():
        fields = msgspec.structs.asdict(decode(makers[name](CHALLENGE).body, struct, limit=1 << 20))  # type: ignore[operator]
        for session in (bytes(31), bytes(33), None):
            broken = (
                {**fields, "session": session}
                if session is not None
                else {k: v for k, v in fields.items() if k != "session"}
            )
            with pytest.raises(RemoteProtocolError, match="session") as exc:
                decode(encode(broken), struct, limit=1 << 20)
            assert exc.value.code is ErrorCode.BAD_TYPE, name


# --- the operator's policy -----------------------------------------------------------------


def profile_with(**fields: object) -> object:
    certs = fields.pop("certs", [F.cert1])
    return verify_profile(make_profile(F.owner, F.root_public, certs, **fields))  # type: ignore[arg-type]


def refusal(policy: ProfilePolicy, **fields: object) -> ErrorCode | None:
    try:
        policy.check(profile_with(**fields))  # type: ignore[arg-type]
    except PolicyRefusal as exc:
        assert isinstance(exc, RemoteProtocolError)
        return exc.code
    return None


def test_default_policy_accepts_a_plain_profile() -> None:
    assert refusal(ProfilePolicy()) is None


def test_kind_not_allowed() -> None:
    policy = ProfilePolicy(kinds=("channel",))
    assert refusal(policy, kind="group") is ErrorCode.KIND_NOT_ALLOWED
    assert refusal(policy, kind="channel") is None


@pytest.mark.parametrize(
    "name",
    ["", "   ", "\t", "bell\x07", "del\x7f", "nel\x85", "line\nbreak", "evil\u202egnp.exe", "iso\u2066late"],
)
def test_invalid_names(name: str) -> None:
    assert refusal(ProfilePolicy(), name=name) is ErrorCode.NAME_INVALID


@pytest.mark.parametrize("name", ["Weather", "Café ☕", "a\xa0b", "family \U0001f468\u200d\U0001f469"])
def test_valid_names(name: str) -> None:
    assert refusal(ProfilePolicy(), name=name) is None


def test_name_length_limit_is_inclusive() -> None:
    policy = ProfilePolicy(max_name_length=10)
    assert refusal(policy, name="x" * 10) is None
    assert refusal(policy, name="x" * 11) is ErrorCode.NAME_TOO_LONG
    assert refusal(policy, name="é" * 10) is None  # characters, not bytes


def test_description_length_limit_is_inclusive() -> None:
    policy = ProfilePolicy(max_description_length=5)
    assert refusal(policy, description="12345") is None
    assert refusal(policy, description="123456") is ErrorCode.DESCRIPTION_TOO_LONG


def test_deny_patterns_match_name_or_description_ignoring_case() -> None:
    policy = ProfilePolicy(deny_patterns=("casino", r"^spam\b"))
    assert refusal(policy, name="Best CASINO") is ErrorCode.DENIED
    assert refusal(policy, description="spam and eggs") is ErrorCode.DENIED
    assert refusal(policy, description="no spam here") is None
    assert refusal(policy, name="Weather") is None


def test_too_many_owners_counts_authorised_keys() -> None:
    policy = ProfilePolicy(max_owners=1)
    assert refusal(policy, certs=[F.cert1]) is None
    assert refusal(policy, certs=[F.cert1, F.cert2]) is ErrorCode.TOO_MANY_OWNERS


def test_first_broken_rule_is_reported() -> None:
    policy = ProfilePolicy(kinds=("channel",), max_name_length=3)
    assert refusal(policy, kind="group", name="far too long") is ErrorCode.KIND_NOT_ALLOWED


def test_policy_summary_hides_the_deny_list() -> None:
    summary = ProfilePolicy(deny_patterns=("secret-pattern",)).summary()
    assert "secret-pattern" not in repr(summary)
    assert summary["kinds"] == ["channel", "group"]


# --- invitations ---------------------------------------------------------------------------


def invitation(**kw: object) -> Signed:
    args: dict[str, object] = {
        "relay": F.fingerprint,
        "channel": F.channel,
        "profile": F.profile,
        "created_at": T0,
    }
    args.update(kw)
    owner = args.pop("owner", F.owner)
    return make_invitation_signed(owner, **args)  # type: ignore[arg-type]


def verify_at(
    signed: Signed, now: int = T0, fingerprint: bytes = F.fingerprint, session: bytes = CHALLENGE
) -> object:
    return verify_invitation(
        encode(signed), relay_fingerprint=fingerprint, session=session, now=now, max_age=MAX_AGE
    )


def test_invitation_verifies() -> None:
    verified = verify_at(invitation())
    assert verified.invitation.service_group == bytes([0x11]) * 16  # type: ignore[attr-defined]
    assert verified.profile.owners == {F.owner_public, F.owner2_public}  # type: ignore[attr-defined]


def test_invitation_signed_by_a_chained_owner() -> None:
    verify_at(invitation(owner=F.owner2))


def test_invitation_naming_another_relay() -> None:
    other = crypto.fingerprint(pub(new_key()))
    with raises(ErrorCode.WRONG_RELAY):
        verify_at(invitation(relay=other))


@pytest.mark.parametrize("suite", sorted(crypto.SUITES))
def test_invitation_sealed_to_another_relay_does_not_open(suite: str) -> None:
    plaintext = encode(invitation())
    other_keys = crypto.SealKeys.generate()
    other_fingerprint = crypto.fingerprint(pub(new_key()))
    sealed = crypto.seal(
        suite,
        other_keys.public_keys()[suite],
        plaintext,
        crypto.seal_info(SEAL_PURPOSE, other_fingerprint),
    )
    with raises(ErrorCode.SEAL_FAILED):
        F.seal_keys.open(suite, sealed, crypto.seal_info(SEAL_PURPOSE, F.fingerprint))
    # even with our own keys, info naming another relay does not open
    sealed_to_us = crypto.seal(
        suite, F.seal_keys.public_keys()[suite], plaintext, crypto.seal_info(SEAL_PURPOSE, other_fingerprint)
    )
    with raises(ErrorCode.SEAL_FAILED):
        F.seal_keys.open(suite, sealed_to_us, crypto.seal_info(SEAL_PURPOSE, F.fingerprint))
    assert other_keys.open(suite, sealed, crypto.seal_info(SEAL_PURPOSE, other_fingerprint)) == plaintext


@pytest.mark.parametrize("suite", sorted(crypto.SUITES))
def test_seal_open_verify_round_trip(suite: str) -> None:
    plaintext = make_invitation(
        owner_key=F.owner,
        relay_fingerprint=F.fingerprint,
        service_group=bytes(16),
        profile=F.profile,
        channel=F.channel,
        session=CHALLENGE,
        now=T0,
    )
    info = crypto.seal_info(SEAL_PURPOSE, F.fingerprint)
    sealed = crypto.seal(suite, F.seal_keys.public_keys()[suite], plaintext, info)
    opened = F.seal_keys.open(suite, sealed, info)
    assert opened == plaintext
    verified = verify_invitation(
        opened, relay_fingerprint=F.fingerprint, session=CHALLENGE, now=T0, max_age=MAX_AGE
    )
    assert verified.invitation.service_group == bytes(16)


def test_corrupted_sealed_payload() -> None:
    info = crypto.seal_info(SEAL_PURPOSE, F.fingerprint)
    name = crypto.SUITE_X25519.name
    sealed = crypto.seal(name, F.seal_keys.public_keys()[name], b"payload", info)
    with raises(ErrorCode.SEAL_FAILED):
        F.seal_keys.open(name, flip(sealed, len(sealed) - 1), info)
    with raises(ErrorCode.SEAL_FAILED):
        F.seal_keys.open(name, sealed[:20], info)


def test_unknown_suite() -> None:
    with raises(ErrorCode.UNSUPPORTED_SUITE):
        F.seal_keys.open("rot13", b"x" * 64, b"")
    with raises(ErrorCode.UNSUPPORTED_SUITE):
        crypto.seal("rot13", bytes(32), b"x", b"")
    with raises(ErrorCode.UNSUPPORTED_SUITE):
        crypto.strongest_suite(["rot13"])


def test_strongest_suite_prefers_the_hybrid() -> None:
    both = [crypto.SUITE_X25519.name, crypto.SUITE_HYBRID.name, "rot13"]
    assert crypto.strongest_suite(both) == crypto.SUITE_HYBRID.name
    assert crypto.strongest_suite([crypto.SUITE_X25519.name]) == crypto.SUITE_X25519.name


@pytest.mark.parametrize(
    ("suite", "key"),
    [
        (crypto.SUITE_X25519.name, bytes(31)),
        (crypto.SUITE_HYBRID.name, bytes(32)),
        (crypto.SUITE_HYBRID.name, b"\xff" * 1216),
    ],
)
def test_seal_to_a_malformed_public_key(suite: str, key: bytes) -> None:
    with raises(ErrorCode.BAD_TYPE):
        crypto.seal(suite, key, b"x", b"")


@pytest.mark.parametrize("suite", sorted(crypto.SUITES))
def test_seal_to_a_low_order_x25519_key_is_a_typed_error(suite: str) -> None:
    """An all-zero X25519 key (a low-order point) in a relay's card must not crash the client:
    it parses, and only ``Suite.encrypt`` fails (with a plain ``ValueError``)."""
    key = F.seal_keys.public_keys()[suite][: -crypto.X25519_KEY_LEN] + bytes(32)
    with raises(ErrorCode.BAD_TYPE):
        crypto.seal(suite, key, b"x", b"")


def test_invitation_freshness_boundaries() -> None:
    now = T0 + 10_000
    verify_at(invitation(created_at=now - MAX_AGE), now=now)
    with raises(ErrorCode.INVITATION_STALE):
        verify_at(invitation(created_at=now - MAX_AGE - 1), now=now)
    verify_at(invitation(created_at=now + CLOCK_SKEW), now=now)
    with raises(ErrorCode.INVITATION_STALE):
        verify_at(invitation(created_at=now + CLOCK_SKEW + 1), now=now)


def test_check_fresh_names_the_direction() -> None:
    with pytest.raises(RemoteProtocolError, match="in the future"):
        check_fresh(T0 + CLOCK_SKEW + 5, T0, MAX_AGE, "thing")
    with pytest.raises(RemoteProtocolError, match="s old"):
        check_fresh(T0 - MAX_AGE - 5, T0, MAX_AGE, "thing")


@pytest.mark.parametrize("label", [crypto.Label.PROFILE, crypto.Label.OWNER_REQUEST, crypto.Label.WELCOME])
def test_invitation_signed_under_a_wrong_label(label: bytes) -> None:
    with raises(ErrorCode.BAD_SIGNATURE):
        verify_at(invitation(label=label))


def test_invitation_signed_by_a_stranger() -> None:
    with raises(ErrorCode.UNAUTHORISED_OWNER):
        verify_at(invitation(owner=new_key()))


def test_invitation_and_profile_for_different_channels() -> None:
    with raises(ErrorCode.CHANNEL_MISMATCH):
        verify_at(invitation(channel=bytes(32)))


def test_invitation_with_an_unverifiable_profile() -> None:
    bad = Signed(body=F.profile.body, signer=F.profile.signer, sig=flip(F.profile.sig))
    with raises(ErrorCode.BAD_SIGNATURE):
        verify_at(invitation(profile=bad))


def test_invitation_with_a_tampered_body() -> None:
    good = invitation()  # its last byte is in the random nonce: the body still decodes
    with raises(ErrorCode.BAD_SIGNATURE):
        verify_at(Signed(body=flip(good.body, len(good.body) - 1), signer=good.signer, sig=good.sig))


@pytest.mark.parametrize(
    ("plaintext", "code"),
    [
        (b"", ErrorCode.MALFORMED),
        (b"\xa3abc", ErrorCode.BAD_TYPE),
        (bytes(MAX_SIGNED_BODY * 2 + 1), ErrorCode.FRAME_TOO_LARGE),
    ],
)
def test_opened_plaintext_that_is_not_a_signed_invitation(plaintext: bytes, code: ErrorCode) -> None:
    with raises(code):
        verify_invitation(
            plaintext, relay_fingerprint=F.fingerprint, session=CHALLENGE, now=T0, max_age=MAX_AGE
        )


# --- address grants, owner requests, the welcome card --------------------------------------


def grant_for(invitation_body: Invitation, key: ed25519.Ed25519PrivateKey = F.relay) -> Signed:
    return make_grant(key, invitation_body, F.group_address, T0)


def invitation_body(**kw: object) -> Invitation:
    return decode(invitation(**kw).body, Invitation, limit=1 << 20)


def test_grant_verifies_for_its_relay_and_channel() -> None:
    grant = verify_grant(
        grant_for(invitation_body()),
        relay_key=F.relay_public,
        channel=F.channel,
        service_group=bytes([0x11]) * 16,
    )
    assert grant.address == F.group_address


def test_grant_signed_by_another_relay() -> None:
    with raises(ErrorCode.BAD_SIGNATURE):
        verify_grant(
            grant_for(invitation_body(), new_key()),
            relay_key=F.relay_public,
            channel=F.channel,
            service_group=bytes([0x11]) * 16,
        )


def test_grant_for_another_channel_or_service_group() -> None:
    grant = grant_for(invitation_body())
    with raises(ErrorCode.CHANNEL_MISMATCH):
        verify_grant(grant, relay_key=F.relay_public, channel=bytes(32), service_group=bytes([0x11]) * 16)
    with raises(ErrorCode.CHANNEL_MISMATCH):
        verify_grant(grant, relay_key=F.relay_public, channel=F.channel, service_group=bytes(16))


def test_grant_naming_another_relay() -> None:
    grant = grant_for(invitation_body(relay=bytes(32)))
    with raises(ErrorCode.WRONG_RELAY):
        verify_grant(grant, relay_key=F.relay_public, channel=F.channel, service_group=bytes([0x11]) * 16)


def test_owner_request_rules() -> None:
    request = make_owner_request(
        F.owner,
        relay_fingerprint=F.fingerprint,
        channel=F.channel,
        service_group=bytes(16),
        action="read_log",
        session=CHALLENGE,
        now=T0,
    )
    rules = {"actions": ("read_log",), "relay_fingerprint": F.fingerprint, "session": CHALLENGE}
    got = verify_owner_request(request, **rules, now=T0, max_age=MAX_AGE)  # type: ignore[arg-type]
    assert got.action == "read_log"
    assert got.session == CHALLENGE
    with raises(ErrorCode.WRONG_RELAY):
        verify_owner_request(request, **{**rules, "relay_fingerprint": bytes(32)}, now=T0, max_age=MAX_AGE)  # type: ignore[arg-type]
    with raises(ErrorCode.WRONG_SESSION):  # captured, and replayed on another connection
        verify_owner_request(request, **{**rules, "session": bytes(32)}, now=T0, max_age=MAX_AGE)  # type: ignore[arg-type]
    with raises(ErrorCode.INVITATION_STALE):
        verify_owner_request(request, **rules, now=T0 + MAX_AGE + 1, max_age=MAX_AGE)  # type: ignore[arg-type]
    with raises(ErrorCode.BAD_SIGNATURE):
        verify_owner_request(
            Signed(body=request.body, signer=F.owner2_public, sig=request.sig),
            **rules,  # type: ignore[arg-type]
            now=T0,
            max_age=MAX_AGE,
        )
    with raises(ErrorCode.UNEXPECTED_MESSAGE):  # signed for one command, replayed as another
        verify_owner_request(request, **{**rules, "actions": ("remove_group",)}, now=T0, max_age=MAX_AGE)  # type: ignore[arg-type]


def test_owner_request_is_not_an_invitation() -> None:
    request = make_owner_request_signed(F.owner, relay=F.fingerprint, channel=F.channel, created_at=T0)
    with raises(ErrorCode.BAD_TYPE):  # it does not even decode as one; no signature is checked
        verify_at(request)


NONCE = bytes(range(32))


def welcome(key: ed25519.Ed25519PrivateKey = F.relay, nonce: bytes = NONCE) -> Welcome:
    return make_welcome(key, F.seal_keys.public_keys(), nonce, CHALLENGE, T0, "chat-relay/test")


def test_welcome_verifies_against_the_pinned_fingerprint() -> None:
    card = verify_welcome(welcome(), fingerprint=F.fingerprint, nonce=NONCE)
    assert card.seal_keys == F.seal_keys.public_keys()
    assert card.relay_key == F.relay_public
    assert card.challenge == CHALLENGE


def test_welcome_from_another_relay() -> None:
    with raises(ErrorCode.WRONG_RELAY):
        verify_welcome(welcome(new_key()), fingerprint=F.fingerprint, nonce=NONCE)


def test_welcome_for_another_nonce_is_a_replay() -> None:
    with raises(ErrorCode.BAD_SIGNATURE):
        verify_welcome(welcome(nonce=bytes(32)), fingerprint=F.fingerprint, nonce=NONCE)


def test_welcome_card_naming_another_key() -> None:
    body = encode(
        RelayCard(
            relay_key=pub(new_key()), seal_keys={}, nonce=NONCE, challenge=CHALLENGE, time=T0, software="x"
        )
    )
    forged = Welcome(card=crypto.signed(F.relay, crypto.Label.WELCOME, body))
    with raises(ErrorCode.BAD_SIGNATURE):
        verify_welcome(forged, fingerprint=F.fingerprint, nonce=NONCE)


def test_welcome_with_a_bad_signature() -> None:
    card = welcome().card
    tampered = Welcome(card=Signed(body=card.body, signer=card.signer, sig=flip(card.sig)))
    with raises(ErrorCode.BAD_SIGNATURE):
        verify_welcome(tampered, fingerprint=F.fingerprint, nonce=NONCE)


def test_verify_refuses_keys_and_signatures_of_the_wrong_length() -> None:
    with raises(ErrorCode.BAD_SIGNATURE):
        crypto.verify(bytes(31), b"x", b"", bytes(64))
    with raises(ErrorCode.BAD_SIGNATURE):
        crypto.verify(F.owner_public, b"x", b"", bytes(63))


# --- the group state machine ---------------------------------------------------------------

S, T = GroupState, Transition
ALLOWED = {
    (S.INVITED, T.APPROVE): S.ACCEPTED,
    (S.INVITED, T.REJECT): S.REJECTED,
    (S.INVITED, T.REMOVE): S.REMOVED,
    (S.ACCEPTED, T.ACTIVATE): S.ACTIVE,
    (S.ACCEPTED, T.UNLIST): S.ACCEPTED,
    (S.ACCEPTED, T.TIMEOUT): S.REMOVED,
    (S.ACCEPTED, T.REMOVE): S.REMOVED,
    (S.ACTIVE, T.ACTIVATE): S.ACTIVE,
    (S.ACTIVE, T.UNLIST): S.REMOVED,
    (S.ACTIVE, T.SUSPEND): S.SUSPENDED,
    (S.ACTIVE, T.REMOVE): S.REMOVED,
    (S.SUSPENDED, T.ACTIVATE): S.SUSPENDED,
    (S.SUSPENDED, T.RESUME): S.ACTIVE,
    (S.SUSPENDED, T.UNLIST): S.REMOVED,
    (S.SUSPENDED, T.REMOVE): S.REMOVED,
}
DISALLOWED = [pair for pair in itertools.product(S, T) if pair not in ALLOWED]


@pytest.mark.parametrize(("state", "event"), sorted(ALLOWED))
def test_allowed_transition(state: GroupState, event: Transition) -> None:
    assert transition(state, event) is ALLOWED[(state, event)]


@pytest.mark.parametrize(("state", "event"), DISALLOWED)
def test_disallowed_transition(state: GroupState, event: Transition) -> None:
    code = ErrorCode.GROUP_CLOSED if state in (S.REJECTED, S.REMOVED) else ErrorCode.OUT_OF_ORDER
    with raises(code):
        transition(state, event)


@pytest.mark.parametrize(
    ("state", "event", "code"),
    [
        (S.INVITED, T.ACTIVATE, ErrorCode.OUT_OF_ORDER),  # a profile before the operator approved
        (S.ACCEPTED, T.APPROVE, ErrorCode.OUT_OF_ORDER),  # approving twice
        (S.ACTIVE, T.RESUME, ErrorCode.OUT_OF_ORDER),
        (S.INVITED, T.TIMEOUT, ErrorCode.OUT_OF_ORDER),
        (S.REMOVED, T.ACTIVATE, ErrorCode.GROUP_CLOSED),
        (S.REJECTED, T.APPROVE, ErrorCode.GROUP_CLOSED),
    ],
)
def test_named_disallowed_transitions(state: GroupState, event: Transition, code: ErrorCode) -> None:
    with raises(code):
        transition(state, event)


def test_terminal_and_address_holding_states() -> None:
    assert {s for s in S if s.terminal} == {S.REJECTED, S.REMOVED}
    assert {s for s in S if s.has_address} == {S.ACCEPTED, S.ACTIVE, S.SUSPENDED}
    assert [s.value for s in S] == ["invited", "accepted", "active", "rejected", "suspended", "removed"]


# --- per-connection session rules ----------------------------------------------------------

HELLO = encode(Hello(version=PROTOCOL_VERSION, nonce=NONCE))
INVITE = encode(Invite(suite=crypto.SUITE_X25519.name, sealed=b"sealed"))
LOG_REQUEST = encode(LogRequest(request=F.cert1))
PROFILE_UPDATE = encode(ProfileUpdate(profile=F.profile))


@pytest.mark.parametrize("endpoint", list(Endpoint))
@pytest.mark.parametrize("frame", [INVITE, LOG_REQUEST, PROFILE_UPDATE])
def test_anything_before_hello_is_unexpected(endpoint: Endpoint, frame: bytes) -> None:
    session = Session(endpoint, max_frame=1 << 16)
    with raises(ErrorCode.UNEXPECTED_MESSAGE):
        session.receive(frame)
    assert not session.greeted
    assert isinstance(session.receive(HELLO), Hello)
    assert session.greeted


@pytest.mark.parametrize("version", [1, PROTOCOL_VERSION + 1])
def test_hello_with_another_version(version: int) -> None:
    """Version 1 clients (requests without ``session``) learn it at hello, not from a decoding
    error on their first request."""
    assert PROTOCOL_VERSION == 2
    session = Session(Endpoint.CONTACT, max_frame=1 << 16)
    with pytest.raises(RemoteProtocolError, match=f"version {version} is not supported.*speaks 2") as exc:
        session.receive(encode(Hello(version=version, nonce=NONCE)))
    assert exc.value.code is ErrorCode.UNSUPPORTED_VERSION
    assert not session.greeted


@pytest.mark.parametrize(
    ("endpoint", "accepted", "refused"),
    [
        (Endpoint.CONTACT, [INVITE, LOG_REQUEST], [PROFILE_UPDATE, HELLO]),
        (Endpoint.GROUP, [PROFILE_UPDATE], [INVITE, LOG_REQUEST, HELLO]),
    ],
)
def test_frames_allowed_per_endpoint(endpoint: Endpoint, accepted: list[bytes], refused: list[bytes]) -> None:
    session = Session(endpoint, max_frame=1 << 16)
    session.receive(HELLO)
    for frame in refused:
        with raises(ErrorCode.UNEXPECTED_MESSAGE):
            session.receive(frame)
    for frame in accepted:
        assert encode(session.receive(frame)) == frame  # still usable after a refusal


def test_session_frame_size_limit() -> None:
    session = Session(Endpoint.GROUP, max_frame=len(HELLO))
    assert isinstance(session.receive(HELLO), Hello)  # exactly the limit is fine
    with raises(ErrorCode.FRAME_TOO_LARGE):
        session.receive(PROFILE_UPDATE)  # an allowed frame, but longer than the limit
    with raises(ErrorCode.FRAME_TOO_LARGE):
        Session(Endpoint.GROUP, max_frame=len(HELLO) - 1).receive(HELLO)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xc1", ErrorCode.MALFORMED),
        (HELLO + b"\x00", ErrorCode.MALFORMED),
        (encode({"type": "welcome", "card": F.cert1}), ErrorCode.BAD_TYPE),  # a relay frame
        (encode({"type": "hello", "version": 1}), ErrorCode.BAD_TYPE),
        (encode({"type": "hello", "version": 1, "nonce": bytes(31)}), ErrorCode.BAD_TYPE),
        (encode([1, 2]), ErrorCode.BAD_TYPE),
    ],
)
def test_session_decoding_errors(data: bytes, code: ErrorCode) -> None:
    with raises(code):
        Session(Endpoint.CONTACT, max_frame=1 << 16).receive(data)


# --- addresses and links -------------------------------------------------------------------

FP = b64e(F.fingerprint)
ID = b64e(bytes(range(16)))


@pytest.mark.parametrize(
    ("text", "base", "address_id"),
    [
        (f"http://relay.example:7300/r#{FP}", "http://relay.example:7300", None),
        (f"https://relay.example:443/g/{ID}#{FP}", "https://relay.example:443", ID),
        (f"http://127.0.0.1:0/r#{FP}", "http://127.0.0.1:0", None),
        (f"http://[::1]:7300/g/{ID}#{FP}", "http://[::1]:7300", ID),
    ],
)
def test_good_addresses(text: str, base: str, address_id: str | None) -> None:
    parsed = parse_address(text)
    assert parsed == RelayAddress(base, F.fingerprint, address_id)
    assert str(parsed) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "relay.example:7300",
        f"ftp://relay.example:7300/r#{FP}",
        f"http://relay.example/r#{FP}",  # no port
        f"http://:7300/r#{FP}",  # no host
        f"http://relay.example:99999/r#{FP}",  # port out of range
        f"http://relay.example:port/r#{FP}",
        f"http://[::1:7300/r#{FP}",  # broken IPv6 literal
        "http://relay.example:7300/r",  # no fingerprint
        f"http://relay.example:7300/r#{FP[:-1]}",  # 31 bytes and a bit
        f"http://relay.example:7300/r#{b64e(bytes(31))}",
        f"http://relay.example:7300/r#{FP}=",  # padded
        f"http://relay.example:7300/r#{FP[:-1]}+",  # other alphabet
        f"http://relay.example:7300/r#{FP[:-1]}B",  # non-zero trailing bits
        f"http://relay.example:7300/x#{FP}",
        f"http://relay.example:7300/r/#{FP}",
        f"http://relay.example:7300/g/{ID[:-1]}#{FP}",
        f"http://relay.example:7300/g/{ID}A#{FP}",
        f"http://relay.example:7300/g/{ID[:-1]}!#{FP}",
        f"http://relay.example:7300/g/{ID}/x#{FP}",
    ],
)
def test_bad_addresses(text: str) -> None:
    with raises(ErrorCode.BAD_TYPE):
        parse_address(text)


def test_address_formatting() -> None:
    assert contact_address("http://h:1/", F.fingerprint) == f"http://h:1/r#{FP}"
    assert group_address("http://h:1", F.fingerprint, ID) == f"http://h:1/g/{ID}#{FP}"
    assert RelayAddress("https://h:1", F.fingerprint, ID).websocket_url == f"wss://h:1/g/{ID}"
    assert RelayAddress("http://h:1", F.fingerprint).websocket_url == "ws://h:1/r"


def test_link_round_trip_with_several_relays() -> None:
    relays = (group_address("http://a:1", F.fingerprint, ID), group_address("https://b:2", bytes(32), ID))
    link = ChannelLink("channel", F.channel, relays)
    text = str(link)
    assert text.count("relay=") == 2
    assert parse_link(text) == link
    assert parse_link(str(ChannelLink("group", F.channel, ()))) == ChannelLink("group", F.channel, ())


@pytest.mark.parametrize(
    "text",
    [
        "",
        f"https://x:1/c/{b64e(F.channel)}",
        f"chat-relay:/x/{b64e(F.channel)}",
        f"chat-relay:/c/{b64e(bytes(31))}",
        f"chat-relay:/c/{b64e(F.channel)}/more",
        f"chat-relay:/c/{b64e(F.channel)}?relay=nonsense",
        f"chat-relay:/c/{b64e(F.channel)}?relay=http%3A%2F%2Fa%3A99999%2Fr%23{FP}",
        "chat-relay://[::1/c/x",
        f"chat-relay:/c/{b64e(F.channel)}?relay=http%3A%2F%2Fa%3A1%2Fr%23{FP}",  # a contact address
    ],
)
def test_bad_links(text: str) -> None:
    with raises(ErrorCode.BAD_TYPE):
        parse_link(text)


def test_b64d_is_strict() -> None:
    assert b64d(b64e(b"\x00\xff"), length=2) == b"\x00\xff"
    for text in ("AP8=", "AP/", "AP9", "é", "A"):
        with raises(ErrorCode.BAD_TYPE):
            b64d(text)
    with raises(ErrorCode.BAD_TYPE):
        b64d(b64e(b"abc"), length=4)


def test_every_error_is_a_protocol_error_with_a_wire_code() -> None:
    exc = PolicyRefusal(ErrorCode.DENIED, "no")
    assert isinstance(exc, RemoteProtocolError) and isinstance(exc, ProtocolError)
    assert str(exc) == "denied: no"
    assert {c.value for c in ErrorCode} >= {"malformed", "bad_type", "frame_too_large", "internal"}


# --- bodies signed under protocol version 1 that are read later -------------------------------


def test_a_join_request_signed_before_sessions_still_reads_as_a_stored_join_and_a_card() -> None:
    """Memberships outlive the upgrade: the stored join request (and the member card made of
    it) is read again without its session, and never verified as a request again."""
    fields = msgspec.structs.asdict(decode(_join(CHALLENGE).body, messages.JoinRequest, limit=1 << 20))
    del fields["session"]
    v1 = crypto.signed(F.owner, crypto.Label.JOIN_REQUEST, encode(fields))
    with raises(ErrorCode.BAD_TYPE):  # as a request, it is refused: it names no session
        _verify_join(v1, CHALLENGE)
    assert stored_join(encode(v1)).profile == MemberProfile(name="m")
    assert verify_member_card(v1, member=F.owner_public, channel=F.channel).profile.name == "m"
    with raises(ErrorCode.CHANNEL_MISMATCH):
        verify_member_card(v1, member=F.owner_public, channel=bytes(32))
    with raises(ErrorCode.BAD_SIGNATURE):
        verify_member_card(unsigned(v1), member=F.owner_public, channel=F.channel)


def test_a_direct_invitation_kept_in_an_inbox_since_version_1_still_opens() -> None:
    seal = x25519.X25519PrivateKey.generate()
    signed = make_direct_invitation(
        F.owner,
        relay_fingerprint=F.fingerprint,
        channel=F.channel,
        address_id=ADDRESS_ID,
        to=F.owner2_public,
        to_seal_key=seal.public_key().public_bytes_raw(),
        contact="https://chat.example/me",
        note="old",
        session=CHALLENGE,
        now=T0,
    )
    fields = msgspec.structs.asdict(decode(signed.body, messages.DirectInvitation, limit=1 << 20))
    del fields["session"]
    v1 = crypto.signed(F.owner, crypto.Label.DIRECT_INVITATION, encode(fields))
    content = open_direct_invitation(v1, seal_key=seal, member_key=F.owner2_public, channel=F.channel)
    assert content.note == "old"
