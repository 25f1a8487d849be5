"""Bad input against the real daemon, over real sockets: each is answered with a typed error.

Every test sends one kind of bad input and checks three things: the wire error code (the
``code`` of the ``error`` frame, or of a refused ``invite_result``) with a readable reason;
that only that request or connection failed (the relay keeps serving: a fresh hello and a
real ``add_relay`` still work, and the process is alive); and, where it matters, that
nothing was written (the operator's admin API shows no group, or the group unchanged).
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from relayproc import RelayFactory, RunningRelay
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url
from wire import (
    HYBRID,
    ONE_SOURCE_UNBOUNDED,
    X25519,
    Channel,
    RawSession,
    assert_readable,
    check_error,
    connect,
    fingerprint_of,
    owner_cert,
    seal_to,
)

from relay.client import add_relay, create_channel
from relay.protocol import crypto
from relay.protocol.addresses import parse_address
from relay.protocol.encoding import b64e, encode
from relay.protocol.handshake import verify_welcome
from relay.protocol.invitation import verify_grant
from relay.protocol.messages import (
    PROTOCOL_VERSION,
    Hello,
    Invite,
    InviteResult,
    LogRequest,
    ProfileResult,
    ProfileUpdate,
    RelayCard,
    Signed,
    Welcome,
)

CLOSE_POLICY = 1008
CLOSE_UNSUPPORTED = 1003
CLOSE_TOO_BIG = 1009
CLOSE_UNKNOWN_GROUP = 4404


# --- helpers ---------------------------------------------------------------------------


def admin_groups(relay: RunningRelay) -> list[dict[str, Any]]:
    return list(relay.admin_get("/admin/groups").json()["groups"])


def metric(relay: RunningRelay, line_prefix: str) -> float:
    for line in httpx.get(f"{relay.admin_url}/metrics").text.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def assert_still_serves(relay: RunningRelay, tmp_path: Path) -> str:
    """The relay is alive and serves others: a fresh hello, and a real owner's add_relay."""
    assert relay.proc is not None and relay.proc.poll() is None, "the relay process died"
    async with connect(relay) as session:
        card = await session.hello()
        assert card.relay_key
    state = create_channel(f"Still fine {secrets.token_hex(3)}", kind="group")
    path = tmp_path / f"owner-{b64e(state.channel)[:8]}.json"
    state.save(path)
    result = await add_relay(state, path, relay.address)
    assert result.status == "accepted", result
    assert result.group_address is not None
    # no request may have hit an unhandled exception on the way
    assert not [line for line in relay.lines if str(line.get("event", "")).endswith("internal_error")]
    return result.group_address


async def invite(relay: RunningRelay, channel: Channel, **kw: Any) -> InviteResult:
    """Send ``channel``'s invitation (properly sealed) on a fresh connection."""
    fingerprint = fingerprint_of(relay)
    async with connect(relay) as session:
        card = await session.hello()
        plaintext = channel.invitation(fingerprint, session=card.challenge, **kw)
        answer = await session.request(seal_to(card, fingerprint, plaintext))
    assert isinstance(answer, InviteResult), answer
    return answer


def address_id_of(answer: InviteResult, relay: RunningRelay, channel: Channel) -> tuple[str, str]:
    """The granted group address (text) and its id, after checking the relay's signed grant."""
    assert answer.status == "accepted" and answer.grant is not None, answer
    grant = verify_grant(
        answer.grant,
        relay_key=answer.grant.signer,
        channel=channel.channel,
        service_group=channel.service_group,
    )
    assert crypto.fingerprint(answer.grant.signer) == fingerprint_of(relay)
    address_id = parse_address(grant.address).address_id
    assert address_id is not None
    return grant.address, address_id


async def expect_refused_before_hello(
    relay: RunningRelay, frame: object, code: str, path: str = "/r"
) -> None:
    """A bad first frame: the error frame, then the relay closes that connection."""
    async with connect(relay, path) as session:
        check_error(await session.request(frame), code)
        assert await session.expect_closed() == CLOSE_POLICY


# --- framing and decoding --------------------------------------------------------------


async def test_oversized_frame_is_frame_too_large_and_closes(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(server={"max_frame_bytes": 4096})
    assert httpx.get(relay.base_url + "/").json()["limits"]["max_frame_bytes"] == 4096

    # just within the limit: decoded and answered on its merits, the connection stays open
    async with connect(relay) as session:
        await session.hello()
        within = encode(Invite(suite=HYBRID, sealed=b"\x00" * 3900))
        assert len(within) <= 4096
        check_error(await session.request(within), "seal_failed")
        # one byte too many for the limit on the same connection: refused, then closed
        error = check_error(await session.request(b"\x00" * 4097), "frame_too_large")
        assert "4096" in error.reason
        assert await session.expect_closed() == CLOSE_TOO_BIG

    # a bystander connection, open all along, is not affected by the others' failures
    channel = Channel()
    fingerprint = fingerprint_of(relay)
    async with connect(relay) as bystander:
        card = await bystander.hello()
        for greet in (False, True):
            for size in (5000, 2_000_000):
                async with connect(relay) as session:
                    if greet:
                        await session.hello()
                    try:
                        await session.send(b"\x92" * size)
                    except ConnectionClosed as exc:
                        # a big frame is cut short: the relay stops reading and closes while we write
                        assert exc.reason is not None and exc.reason.code == CLOSE_TOO_BIG
                    error = check_error(await session.recv(), "frame_too_large")
                    assert "4096" in error.reason
                    assert await session.expect_closed() == CLOSE_TOO_BIG
        assert admin_groups(relay) == []
        plaintext = channel.invitation(fingerprint, session=card.challenge)
        answer = await bystander.request(seal_to(card, fingerprint, plaintext, X25519))
        assert isinstance(answer, InviteResult) and answer.status == "accepted", answer

    await assert_still_serves(relay, tmp_path)


MALFORMED = {
    "reserved byte": b"\xc1",
    "truncated hello": encode(Hello(version=1, nonce=b"\x01" * 32))[:-5],
    "trailing bytes": encode(Hello(version=1, nonce=b"\x01" * 32)) + b"\x00",
    "map claiming 4 billion entries": b"\xdf\xff\xff\xff\xff\xa4type",
    "bin claiming 4 GB": b"\x83\xa4type\xa6invite\xa5suite\xa1x\xa6sealed\xc6\xff\xff\xff\xff",
    "string that is not UTF-8": b"\x81\xa4type\xa5\xff\xfe\xfd\xfc\xfb",
    "empty frame": b"",
}


async def test_malformed_messagepack_is_malformed(relay: RunningRelay, tmp_path: Path) -> None:
    # before hello: the error, then that connection alone is closed
    await expect_refused_before_hello(relay, b"\xc1", "malformed")

    # after hello: each bad frame fails alone; the same connection then carries a real invitation
    channel = Channel()
    fingerprint = fingerprint_of(relay)
    async with connect(relay) as session:
        card = await session.hello()
        for name, data in MALFORMED.items():
            check_error(await session.request(data), "malformed", name)
        plaintext = channel.invitation(fingerprint, session=card.challenge)
        answer = await session.request(seal_to(card, fingerprint, plaintext))
        assert isinstance(answer, InviteResult) and answer.status == "accepted", answer

    assert [g["state"] for g in admin_groups(relay)] == ["accepted"]
    await assert_still_serves(relay, tmp_path)


async def test_deeply_nested_messagepack_is_malformed_not_fatal(relay: RunningRelay, tmp_path: Path) -> None:
    """Nesting in an ignored field: msgspec raises RecursionError, which must not escape."""
    nested = b"\x83\xa4type\xa5hello\xa7version\x01\xa5extra" + b"\x91" * 2000 + b"\xc0"
    async with connect(relay) as session:
        await session.hello()
        check_error(await session.request(nested), "malformed")
    await expect_refused_before_hello(relay, nested, "malformed")
    await assert_still_serves(relay, tmp_path)


async def test_wrong_field_types_are_bad_type(relay: RunningRelay, tmp_path: Path) -> None:
    nonce = secrets.token_bytes(32)
    first_frames = {
        "nonce as a string": {"type": "hello", "version": 1, "nonce": nonce.hex()},
        "nonce too short": {"type": "hello", "version": 1, "nonce": nonce[:31]},
        "version as a string": {"type": "hello", "version": "1", "nonce": nonce},
        "nonce missing": {"type": "hello", "version": 1},
        "unknown type": {"type": "subscribe", "version": 1, "nonce": nonce},
        "no type at all": {"version": 1, "nonce": nonce},
        "type as an int": {"type": 7, "version": 1, "nonce": nonce},
        "not a map": [1, 2, 3],
        "a bare integer": 42,
    }
    for data in first_frames.values():
        await expect_refused_before_hello(relay, msgspec.msgpack.encode(data), "bad_type")

    # a version this relay does not speak is its own code
    for version in (PROTOCOL_VERSION - 1, PROTOCOL_VERSION + 1):  # version 1 clients learn it here
        await expect_refused_before_hello(relay, Hello(version=version, nonce=nonce), "unsupported_version")

    # after hello: a wrongly typed request fails alone; the connection stays usable
    async with connect(relay) as session:
        await session.hello()
        for data in (
            {"type": "invite", "suite": HYBRID, "sealed": 12345},
            {"type": "invite", "suite": ["x"], "sealed": b"x"},
            {"type": "profile_update", "profile": "not signed"},
            {"type": "log_request", "request": {"body": b"", "signer": "a key as text", "sig": b""}},
            {"type": "subscribe"},
        ):
            check_error(await session.request(msgspec.msgpack.encode(data)), "bad_type")
        # a key or signature of the wrong length in a well-formed envelope cannot verify
        for request in (
            {"body": b"", "signer": b"short", "sig": bytes(64)},
            {"body": b"", "signer": bytes(32), "sig": bytes(63)},
        ):
            data = msgspec.msgpack.encode({"type": "log_request", "request": request})
            error = check_error(await session.request(data), "bad_signature")
            assert "bytes" in error.reason
        check_error(await session.request(Invite(suite=HYBRID, sealed=b"x" * 64)), "seal_failed")

    assert admin_groups(relay) == []
    await assert_still_serves(relay, tmp_path)


async def test_where_malformed_ends_and_bad_type_begins(relay: RunningRelay, tmp_path: Path) -> None:
    """The rows of the error table an independent client found wrong: invalid UTF-8 is
    ``malformed`` only in a string the decoder reads; a value of the wrong kind is ``bad_type``
    even when it holds invalid UTF-8, an extension type or deep nesting."""
    nonce = secrets.token_bytes(32)
    hello = b"\x84\xa4type\xa5hello\xa7version" + encode(PROTOCOL_VERSION) + b"\xa5nonce" + encode(nonce)
    not_utf8 = b"\xa2\xff\xfe"  # a MessagePack str of two bytes that are not UTF-8
    async with connect(relay) as session:
        # an unknown field is skipped unread: its invalid UTF-8 is no error, the hello is answered
        answer = await session.request(hello + b"\xa5extra" + not_utf8)
        assert isinstance(answer, Welcome), answer
        signed = {"body": b"", "signer": bytes(32), "sig": bytes(64)}
        deep = b"\x91" * 5000 + b"\xc0"  # [[[...nil...]]], deeper than the decoder follows

        def status(wait: float) -> bytes:
            return msgspec.msgpack.encode({"type": "join_status", "request": signed, "wait": wait})

        bad_type = {
            "invalid UTF-8 where a bin is expected": b"\x82\xa4type\xa8discover\xa4tags\x91" + not_utf8,
            "an extension type": b"\x82\xa4type\xa8discover\xa4tags\x91\xd4\x01\x00",
            "a timestamp extension for an int": b"\x83\xa4type\xa5hello\xa7version\xd6\xff\x00\x00\x00\x01"
            + b"\xa5nonce"
            + encode(nonce),
            "a key that is not a str": b"\x82\xa4type\xa8discover\x01\x90",
            "nil": b"\xc0",
            "deep nesting whose first value has the wrong type": b"\x82\xa4type\xa8discover\xa4tags" + deep,
            "wait over 3600": status(3601.0),
            "wait NaN": status(float("nan")),
        }
        for name, data in bad_type.items():
            check_error(await session.request(data), "bad_type", name)
        empty_sealed = b"\xa6sealed\xc4\x00"
        malformed = {
            "invalid UTF-8 in a str field": b"\x83\xa4type\xa6invite\xa5suite" + not_utf8 + empty_sealed,
            "invalid UTF-8 in the type tag": b"\x81\xa4type" + not_utf8,
            "deep nesting in an ignored field": b"\x82\xa4type\xa8discover\xa5extra" + deep,
        }
        for name, data in malformed.items():
            check_error(await session.request(data), "malformed", name)
        # every one failed alone: the connection still takes a real request
        channel = Channel()
        fingerprint = fingerprint_of(relay)
        assert session.card is None
        session.card = verify_welcome(answer, fingerprint=fingerprint, nonce=nonce)
        plaintext = channel.invitation(fingerprint, session=session.challenge)
        accepted = await session.request(seal_to(session.card, fingerprint, plaintext))
        assert isinstance(accepted, InviteResult) and accepted.status == "accepted", accepted
    await assert_still_serves(relay, tmp_path)


async def test_text_frame_is_bad_type_and_closes(relay: RunningRelay, tmp_path: Path) -> None:
    for greet in (False, True):
        async with connect(relay) as session:
            if greet:
                await session.hello()
            await session.send('{"type": "hello"}')
            error = check_error(await session.recv(), "bad_type")
            assert "binary" in error.reason
            assert await session.expect_closed() == CLOSE_UNSUPPORTED
    await assert_still_serves(relay, tmp_path)


async def test_frame_before_hello_is_unexpected_message(relay: RunningRelay, tmp_path: Path) -> None:
    channel = Channel()
    fingerprint = fingerprint_of(relay)
    async with connect(relay) as session:
        card = await session.hello()
    # a perfectly good invitation, but before hello: refused, and the connection is closed
    sealed = seal_to(card, fingerprint, channel.invitation(fingerprint, session=card.challenge))
    await expect_refused_before_hello(relay, sealed, "unexpected_message")
    await expect_refused_before_hello(relay, ProfileUpdate(profile=channel.profile()), "unexpected_message")
    assert admin_groups(relay) == []

    # hello twice: the second one is out of order, but fails alone
    async with connect(relay) as session:
        card = await session.hello()
        await session.expect_error(
            Hello(version=PROTOCOL_VERSION, nonce=secrets.token_bytes(32)), "unexpected_message"
        )
        sealed = seal_to(card, fingerprint, channel.invitation(fingerprint, session=card.challenge))
        answer = await session.request(sealed)
        assert isinstance(answer, InviteResult) and answer.status == "accepted"
    await assert_still_serves(relay, tmp_path)


async def test_requests_on_the_wrong_kind_of_address_are_unexpected(
    relay: RunningRelay, tmp_path: Path
) -> None:
    channel = Channel()
    fingerprint = fingerprint_of(relay)
    address, address_id = address_id_of(await invite(relay, channel), relay, channel)

    async with connect(relay, f"/g/{address_id}") as session:
        card = await session.hello()
        other = Channel()
        sealed = seal_to(card, fingerprint, other.invitation(fingerprint, session=card.challenge))
        error = await session.expect_error(sealed, "unexpected_message")
        assert "group address" in error.reason
        await session.expect_error(LogRequest(request=channel.profile()), "unexpected_message")
        # the same connection still takes what belongs on a group address
        answer = await session.request(ProfileUpdate(profile=channel.profile(version=2, relays=[address])))
        assert isinstance(answer, ProfileResult) and answer.state == "active"

    async with connect(relay) as session:
        await session.hello()
        update = ProfileUpdate(profile=channel.profile(version=3, relays=[address]))
        error = await session.expect_error(update, "unexpected_message")
        assert "contact address" in error.reason

    # the invitation sent to the group address created nothing; the update to /r changed nothing
    [group] = admin_groups(relay)
    assert (group["state"], group["profile_version"]) == ("active", 2)
    await assert_still_serves(relay, tmp_path)


# --- sealing and signatures ------------------------------------------------------------


async def test_invitation_sealed_to_another_relay(relay_factory: RelayFactory, tmp_path: Path) -> None:
    a, b = relay_factory(), relay_factory()
    fp_a, fp_b = fingerprint_of(a), fingerprint_of(b)
    async with connect(b) as session:
        card_b = await session.hello()
    channel = Channel()

    async with connect(a) as session:
        card_a = await session.hello()
        # sealed to B's keys (an invitation meant for B, sent to A): A cannot open it
        on_a = card_a.challenge
        for suite in (HYBRID, X25519):
            await session.expect_error(
                seal_to(card_b, fp_b, channel.invitation(fp_b, session=on_a), suite), "seal_failed"
            )
        # A's keys, but HPKE info naming B: the payload is bound to B, A refuses to open it
        await session.expect_error(
            seal_to(card_a, fp_b, channel.invitation(fp_a, session=on_a)), "seal_failed"
        )
        # sealed to A, but the signed body names B: opened, then refused
        error = await session.expect_error(
            seal_to(card_a, fp_a, channel.invitation(fp_b, session=on_a)), "wrong_relay"
        )
        assert "another relay" in error.reason
        # garbage and a suite nobody offers
        for suite in (HYBRID, X25519):
            for sealed in (b"", b"\x00" * 16, os.urandom(2000)):
                await session.expect_error(Invite(suite=suite, sealed=sealed), "seal_failed")
        await session.expect_error(Invite(suite="rot13", sealed=b"x"), "unsupported_suite")

    assert admin_groups(a) == [] and admin_groups(b) == []
    await assert_still_serves(a, tmp_path)
    # the very same channel, properly sealed to A, is fine: nothing was remembered against it
    answer = await invite(a, channel)
    assert answer.status == "accepted"


def _tamper(plaintext: bytes, **fields: Any) -> bytes:
    signed = msgspec.msgpack.decode(plaintext)
    signed.update(fields)
    for key in [k for k, v in fields.items() if v is None]:
        del signed[key]
    return msgspec.msgpack.encode(signed)


def _bad_signatures(
    channel: Channel, fingerprint: bytes, session: bytes
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Invitations for the connection ``session`` whose signatures are bad (or missing)."""
    stranger = ed25519.Ed25519PrivateKey.generate()
    plaintext = channel.invitation(fingerprint, session=session)
    original = msgspec.msgpack.decode(plaintext)
    body, sig = original["body"], original["sig"]
    flipped = bytes([sig[0] ^ 0x01]) + sig[1:]

    bad_signature = {
        "one bit flipped": _tamper(plaintext, sig=flipped),
        "random bytes": _tamper(plaintext, sig=os.urandom(64)),
        "signed by someone else": _tamper(
            plaintext, sig=crypto.sign(stranger, crypto.Label.INVITATION, body)
        ),
        "signed for another purpose": _tamper(
            plaintext, sig=crypto.sign(channel.owner, crypto.Label.PROFILE, body)
        ),
        "body altered after signing": _tamper(plaintext, body=body[:-1] + bytes([body[-1] ^ 1])),
        "all zero": _tamper(plaintext, sig=b"\x00" * 64),
        # a key or signature of the wrong length cannot verify either: refused as it is decoded
        "signature empty": _tamper(plaintext, sig=b""),
        "signature one byte short": _tamper(plaintext, sig=sig[:63]),
        "signature one byte long": _tamper(plaintext, sig=sig + b"\x00"),
        "signer one byte short": _tamper(plaintext, signer=original["signer"][:31]),
        "signer empty": _tamper(plaintext, signer=b""),
    }
    bad_type = {
        "signature missing": _tamper(plaintext, sig=None),
        "signature as text": _tamper(plaintext, sig=sig.hex()),
        "signer missing": _tamper(plaintext, signer=None),
        "signer as text": _tamper(plaintext, signer=original["signer"].hex()),
    }
    # the profile inside is signed badly, or one of its owner certs is
    profile = channel.profile()
    bad_profile = Signed(body=profile.body, signer=profile.signer, sig=flipped)
    cert = owner_cert(channel.root, channel.channel, channel.owner)
    bad_cert = Signed(body=cert.body, signer=cert.signer, sig=bytes(64))
    bad_signature["profile signature"] = channel.invitation(fingerprint, session=session, profile=bad_profile)
    bad_signature["owner cert signature"] = channel.invitation(
        fingerprint, session=session, profile=channel.profile(certs=[bad_cert])
    )
    return bad_signature, bad_type


async def test_bad_or_missing_signature_on_the_invitation(relay: RunningRelay, tmp_path: Path) -> None:
    channel = Channel()
    fingerprint = fingerprint_of(relay)
    async with connect(relay) as session:
        card = await session.hello()
        bad_signature, _ = _bad_signatures(channel, fingerprint, card.challenge)
        for name, data in bad_signature.items():
            error = await session.expect_error(seal_to(card, fingerprint, data), "bad_signature")
            assert "signature" in error.reason or "signer key" in error.reason, name
    async with connect(relay) as session:
        card = await session.hello()
        _, bad_type = _bad_signatures(channel, fingerprint, card.challenge)
        for data in bad_type.values():
            await session.expect_error(seal_to(card, fingerprint, data), "bad_type")

    assert admin_groups(relay) == []
    await assert_still_serves(relay, tmp_path)
    # nothing was remembered against the channel: its genuine invitation is accepted
    assert (await invite(relay, channel)).status == "accepted"


async def test_owner_key_the_root_never_authorised(relay: RunningRelay, tmp_path: Path) -> None:
    channel = Channel()
    fingerprint = fingerprint_of(relay)
    stranger = ed25519.Ed25519PrivateKey.generate()
    async with connect(relay) as session:
        card = await session.hello()
        await _check_unauthorised(session, card, channel, fingerprint, stranger)

    assert admin_groups(relay) == []
    await assert_still_serves(relay, tmp_path)
    assert (await invite(relay, channel)).status == "accepted"


async def _check_unauthorised(
    session: RawSession,
    card: RelayCard,
    channel: Channel,
    fingerprint: bytes,
    stranger: ed25519.Ed25519PrivateKey,
) -> None:
    on = card.challenge
    cases = {
        # a valid profile, but the invitation is signed by a key no cert authorises
        "invitation signer": channel.invitation(fingerprint, session=on, signer=stranger),
        # the stranger certifies itself as an owner, signs the profile and the invitation
        "self-signed owner cert": channel.invitation(
            fingerprint,
            session=on,
            signer=stranger,
            profile=channel.profile(certs=[owner_cert(stranger, channel.channel, stranger)], signer=stranger),
        ),
        # the stranger appends its own cert after the genuine one
        "cert chained from a stranger": channel.invitation(
            fingerprint,
            session=on,
            signer=stranger,
            profile=channel.profile(
                certs=[
                    owner_cert(channel.root, channel.channel, channel.owner),
                    owner_cert(stranger, channel.channel, stranger),
                ],
                signer=stranger,
            ),
        ),
        # the profile is signed by the root key itself, which is not an owner key
        "profile signed by the root": channel.invitation(
            fingerprint, session=on, profile=channel.profile(signer=channel.root)
        ),
        "profile with no owners": channel.invitation(
            fingerprint, session=on, profile=channel.profile(certs=[])
        ),
    }
    for name, plaintext in cases.items():
        error = await session.expect_error(seal_to(card, fingerprint, plaintext), "unauthorised_owner")
        assert "authorised" in error.reason or "owner" in error.reason, name
    # a root key that is not the channel's: the chain does not even start
    impostor = Channel(owners=[channel.owner], service_group=channel.service_group)
    wrong_root = channel.invitation(
        fingerprint, session=on, profile=impostor.profile(channel=channel.channel)
    )
    await session.expect_error(seal_to(card, fingerprint, wrong_root), "channel_mismatch")


# --- freshness and replay --------------------------------------------------------------


async def test_stale_and_future_invitations(relay: RunningRelay, tmp_path: Path) -> None:
    channel = Channel()
    fingerprint = fingerprint_of(relay)
    now = int(time.time())
    async with connect(relay) as session:
        card = await session.hello()
        old = seal_to(
            card, fingerprint, channel.invitation(fingerprint, session=card.challenge, now=now - 3600)
        )
        error = await session.expect_error(old, "invitation_stale")
        assert "old" in error.reason and "600" in error.reason
        future = seal_to(
            card, fingerprint, channel.invitation(fingerprint, session=card.challenge, now=now + 3600)
        )
        error = await session.expect_error(future, "invitation_stale")
        assert "future" in error.reason
    assert admin_groups(relay) == []

    # inside the window (a little old, or a clock a little ahead) the same channel is fine
    assert (await invite(relay, channel, now=now - 300)).status == "accepted"
    assert (await invite(relay, channel, now=now + 30)).status == "accepted"
    assert len(admin_groups(relay)) == 1
    await assert_still_serves(relay, tmp_path)


async def test_replayed_invitation_same_address_or_wrong_session(relay: RunningRelay, tmp_path: Path) -> None:
    """The same signed invitation again on its own connection (a retry) gets the same address;
    captured and sent on another connection it is ``wrong_session``.  A new invitation for the
    same service group gets the same address.  (Once older than ``invitation_max_age`` the same
    bytes are ``invitation_stale``: test_timers.py, on trio's MockClock.)"""
    channel = Channel()
    fingerprint = fingerprint_of(relay)
    created_at = int(time.time())
    async with connect(relay) as session:
        card = await session.hello()
        sealed = seal_to(
            card, fingerprint, channel.invitation(fingerprint, session=card.challenge, now=created_at)
        )
        answers = []
        for _ in range(2):  # the exact same bytes, twice on the connection they were made for
            answer = await session.request(sealed)
            assert isinstance(answer, InviteResult)
            answers.append(address_id_of(answer, relay, channel)[0])
        assert answers[0] == answers[1]

        async with connect(relay) as other:  # the same bytes on another connection
            await other.hello()
            error = await other.expect_error(sealed, "wrong_session")
            assert "another connection" in error.reason
        again = await invite(relay, channel)  # signed afresh for a new connection
        assert address_id_of(again, relay, channel)[0] == answers[0]

    [group] = admin_groups(relay)
    assert group["state"] == "accepted" and group["address"] == answers[0]
    await assert_still_serves(relay, tmp_path)


# --- addresses ---------------------------------------------------------------------------


async def test_unknown_group_address(relay: RunningRelay, tmp_path: Path) -> None:
    for address_id in (b64e(secrets.token_bytes(16)), "A" * 64):
        async with connect(relay, f"/g/{address_id}") as session:
            error = await session.expect_error(
                Hello(version=PROTOCOL_VERSION, nonce=secrets.token_bytes(32)), "unknown_group"
            )
            assert "address" in error.reason
            assert await session.expect_closed() == CLOSE_UNKNOWN_GROUP
    await assert_still_serves(relay, tmp_path)


async def test_path_that_is_not_an_address_is_404(relay: RunningRelay, tmp_path: Path) -> None:
    for path in ("/", "/x", "/g/", "/g/" + "a" * 65, "/r/extra", "/admin/groups", "/g"):
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(f"ws://{relay.listen}{path}", connect_timeout=5):
                pass
        assert rejected.value.status_code == 404, path
        assert b"not_found" in (rejected.value.body or b"")
    assert httpx.get(f"{relay.base_url}/nothing-here").status_code == 404
    await assert_still_serves(relay, tmp_path)


# --- policy ----------------------------------------------------------------------------

POLICY_CASES = {
    "name_too_long": ({"max_name_length": 20}, {"name": "x" * 21}, "21"),
    "kind_not_allowed": ({"kinds": ["group"]}, {"kind": "channel"}, "channel"),
    "denied": ({"deny_patterns": ["casino"]}, {"name": "Casino nights"}, "deny list"),
    "description_too_long": ({"max_description_length": 10}, {"description": "y" * 11}, "11"),
    "name_invalid": ({}, {"name": "bell\x07"}, "control"),
}


@pytest.mark.parametrize("code", list(POLICY_CASES))
async def test_policy_refusal_is_typed_and_remembered_across_restart(
    relay_factory: RelayFactory,
    tmp_path: Path,
    code: str,
) -> None:
    policy, fields, fragment = POLICY_CASES[code]
    relay = relay_factory(policy=policy)
    channel = Channel(**fields)

    refused = await invite(relay, channel)
    assert (refused.status, refused.state, refused.code) == ("refused", "rejected", code)
    assert refused.grant is None
    assert_readable(refused.reason)
    assert fragment in (refused.reason or "")

    again = await invite(relay, channel)  # a fresh invitation for the same channel
    assert (again.status, again.code, again.reason) == ("refused", code, refused.reason)

    relay.restart()
    after = await invite(relay, channel)
    assert (after.status, after.code, after.reason) == ("refused", code, refused.reason)

    # remembered per channel: even a profile that would now pass gets the same refusal
    fixed = Channel(root=channel.root, owners=channel.owners[:1], service_group=channel.service_group)
    fixed.kind = "group"
    still = await invite(relay, fixed)
    assert (still.status, still.code) == ("refused", code)

    [group] = admin_groups(relay)
    assert (group["state"], group["reason_code"], group["address"]) == ("rejected", code, None)
    await assert_still_serves(relay, tmp_path)


async def test_too_many_owner_certs_are_refused_unremembered_before_any_signature(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    """Counted before any signature is checked, so nothing proves the channel's owners sent it:
    the refusal is not remembered (a forged profile naming another channel's root must not
    close that channel here), and a fixed invitation is accepted at once."""
    relay = relay_factory(policy={"max_owners": 1})
    channel = Channel(owner_count=2)
    refused = await invite(relay, channel)
    assert (refused.status, refused.state, refused.code) == ("refused", "none", "too_many_owners")
    assert "2 owner certs; the limit is 1" in (refused.reason or "")
    assert_readable(refused.reason)

    # 256 copies of one cert, none of them (nor the profile, nor the invitation) validly signed
    cert = owner_cert(channel.root, channel.channel, channel.owner)
    copies = channel.profile(certs=[Signed(body=cert.body, signer=cert.signer, sig=bytes(64))] * 256)
    fingerprint = fingerprint_of(relay)
    async with connect(relay) as session:
        card = await session.hello()
        plaintext = _tamper(
            channel.invitation(fingerprint, session=card.challenge, profile=copies), sig=bytes(64)
        )
        answer = await session.request(seal_to(card, fingerprint, plaintext))
        assert isinstance(answer, InviteResult), answer
        assert (answer.status, answer.state, answer.code) == ("refused", "none", "too_many_owners")
        assert "256 owner certs" in (answer.reason or "")
    assert admin_groups(relay) == []

    fixed = Channel(root=channel.root, owners=channel.owners[:1], service_group=channel.service_group)
    assert (await invite(relay, fixed)).status == "accepted"
    await assert_still_serves(relay, tmp_path)


async def test_duplicate_owner_certs_are_refused(relay: RunningRelay, tmp_path: Path) -> None:
    channel = Channel()
    fingerprint = fingerprint_of(relay)
    cert = owner_cert(channel.root, channel.channel, channel.owner)
    again = owner_cert(channel.owner, channel.channel, channel.owner)  # another cert, the same key
    unsigned = Signed(body=cert.body, signer=cert.signer, sig=bytes(64))
    async with connect(relay) as session:
        card = await session.hello()
        for certs, fragment in (
            ([cert, cert], "repeats owner cert 0"),
            ([cert, again], "authorises the key of owner cert 0"),
            ([unsigned] * 16, "repeats owner cert 0"),  # no signature is checked to find it
        ):
            plaintext = channel.invitation(
                fingerprint, session=card.challenge, profile=channel.profile(certs=certs)
            )
            error = await session.expect_error(seal_to(card, fingerprint, plaintext), "duplicate_owner")
            assert fragment in error.reason
    assert admin_groups(relay) == []

    # an active group's owners cannot publish one either
    address, address_id = address_id_of(await invite(relay, channel), relay, channel)
    async with connect(relay, f"/g/{address_id}") as session:
        await session.hello()
        error = await session.expect_error(
            ProfileUpdate(profile=channel.profile(version=2, relays=[address], certs=[cert, again])),
            "duplicate_owner",
        )
        answer = await session.request(ProfileUpdate(profile=channel.profile(version=2, relays=[address])))
        assert isinstance(answer, ProfileResult) and answer.state == "active"
    await assert_still_serves(relay, tmp_path)


# --- activation ----------------------------------------------------------------------------


async def test_profile_update_that_is_not_newer_is_stale_profile(relay: RunningRelay, tmp_path: Path) -> None:
    channel = Channel()
    address, address_id = address_id_of(await invite(relay, channel), relay, channel)

    async with connect(relay, f"/g/{address_id}") as session:
        await session.hello()
        # the invitation's own version again: not newer, so no activation
        error = await session.expect_error(
            ProfileUpdate(profile=channel.profile(version=1, relays=[address])), "stale_profile"
        )
        assert "not newer" in error.reason
        [group] = admin_groups(relay)
        assert (group["state"], group["profile_version"]) == ("accepted", 1)

        answer = await session.request(ProfileUpdate(profile=channel.profile(version=3, relays=[address])))
        assert isinstance(answer, ProfileResult) and (answer.state, answer.version) == ("active", 3)
        # a rollback, and a replay of the current version, are both refused
        for version in (2, 3):
            await session.expect_error(
                ProfileUpdate(profile=channel.profile(version=version, relays=[])), "stale_profile"
            )
        # other out-of-place updates on the same connection fail alone, writing nothing
        other = Channel()
        await session.expect_error(
            ProfileUpdate(profile=other.profile(version=9, relays=[address])), "channel_mismatch"
        )
        stranger = ed25519.Ed25519PrivateKey.generate()
        await session.expect_error(
            ProfileUpdate(profile=channel.profile(version=9, relays=[address], signer=stranger)),
            "unauthorised_owner",
        )
        await session.expect_error(
            ProfileUpdate(profile=channel.profile(version=9, relays=[address], name="n" * 65)),
            "name_too_long",
        )

    [group] = admin_groups(relay)
    assert (group["state"], group["profile_version"]) == ("active", 3)
    await assert_still_serves(relay, tmp_path)


async def test_profile_listing_an_unparseable_address_does_not_crash_the_relay(
    relay: RunningRelay, tmp_path: Path
) -> None:
    """Any owner can sign any text into ``relays``; the relay skips what is not an address."""
    channel = Channel()
    address, address_id = address_id_of(await invite(relay, channel), relay, channel)
    junk = ["http://h:99999/r#x", "http://h:port/r#x", "http://[::1/r#x", "not an address"]
    async with connect(relay, f"/g/{address_id}") as session:
        await session.hello()
        answer = await session.request(
            ProfileUpdate(profile=channel.profile(version=2, relays=[*junk, address]))
        )
        assert isinstance(answer, ProfileResult) and answer.state == "active", answer
    await assert_still_serves(relay, tmp_path)


async def test_profile_update_to_a_removed_group_is_group_closed(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory()
    channel = Channel()
    address, address_id = address_id_of(await invite(relay, channel), relay, channel)
    # removed before activation (a removal by its activation time-out: test_timers.py)
    assert relay.admin_post("/admin/groups/1/remove", {"reason": "never activated"}).status_code == 200

    async with connect(relay, f"/g/{address_id}") as session:
        await session.hello()  # the address still exists; the group behind it is closed
        error = await session.expect_error(
            ProfileUpdate(profile=channel.profile(version=2, relays=[address])), "group_closed"
        )
        assert "removed" in error.reason

    [group] = admin_groups(relay)
    assert (group["state"], group["profile_version"]) == ("removed", 1)
    await assert_still_serves(relay, tmp_path)


# --- time-outs and connection floods --------------------------------------------------------


async def _wait_closed(stream: trio.SocketStream, timeout: float) -> bytes:
    with trio.fail_after(timeout):
        data = b""
        while chunk := await stream.receive_some(4096):
            data += chunk
        return data


async def test_silent_tcp_client_is_closed_after_handshake_timeout(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(server={"handshake_timeout": 1})
    host, port = relay.listen.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    started = time.monotonic()
    assert await _wait_closed(stream, 5) == b""
    elapsed = time.monotonic() - started
    assert 0.8 <= elapsed < 4, elapsed
    await stream.aclose()
    await assert_still_serves(relay, tmp_path)


async def test_websocket_without_hello_times_out(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = relay_factory(server={"handshake_timeout": 1, "idle_timeout": 1})
    async with connect(relay) as session:
        started = time.monotonic()
        error = check_error(await session.recv(timeout=5), "timeout")
        assert 0.8 <= time.monotonic() - started < 4
        assert "1 s" in error.reason
        assert await session.expect_closed() == CLOSE_POLICY
    # after hello, an idle connection is timed out the same way
    async with connect(relay) as session:
        await session.hello()
        check_error(await session.recv(timeout=5), "timeout")
        assert await session.expect_closed() == CLOSE_POLICY
    await assert_still_serves(relay, tmp_path)


async def test_a_thousand_half_open_connections(relay_factory: RelayFactory, tmp_path: Path) -> None:
    timeout = 2
    relay = relay_factory(server={"handshake_timeout": timeout, **ONE_SOURCE_UNBOUNDED})
    host, port = relay.listen.rsplit(":", 1)
    streams: list[trio.SocketStream] = []

    async def open_one(limiter: trio.CapacityLimiter) -> None:
        async with limiter:
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(b"GET /r HTT")  # a request line cut short, never finished
            streams.append(stream)

    started = time.monotonic()
    try:
        limiter = trio.CapacityLimiter(200)
        async with trio.open_nursery() as nursery:
            for _ in range(1000):
                nursery.start_soon(open_one, limiter)
        assert len(streams) == 1000
        opened = time.monotonic() - started
        assert opened < timeout, "opening the flood took longer than the time-out"
        # during the flood the relay holds them all, and still serves a real owner
        deadline = started + timeout * 0.8
        while metric(relay, "relay_connections_open") < 1000 and time.monotonic() < deadline:
            await trio.sleep(0.02)
        assert metric(relay, "relay_connections_open") >= 1000
        state = create_channel("During the flood")
        path = tmp_path / "flood.json"
        state.save(path)
        result = await add_relay(state, path, relay.address)
        assert result.status == "accepted" and result.group_address

        # the relay closes every one of them once the time-out has passed
        closed = [0]

        async def wait_one(stream: trio.SocketStream) -> None:
            assert await _wait_closed(stream, timeout + 8) == b""
            closed[0] += 1

        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(wait_one, stream)
        assert closed[0] == 1000
        assert time.monotonic() - started < 15
    finally:
        for stream in streams:
            await stream.aclose()
    deadline = time.monotonic() + 5
    while metric(relay, "relay_connections_open") > 0 and time.monotonic() < deadline:
        await trio.sleep(0.05)
    assert metric(relay, "relay_connections_open") == 0
    await assert_still_serves(relay, tmp_path)


async def test_max_connections_bound(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = relay_factory(server={"max_connections": 50, "handshake_timeout": 30, **ONE_SOURCE_UNBOUNDED})
    host, port = relay.listen.rsplit(":", 1)
    streams = []
    try:
        for _ in range(60):
            streams.append(await trio.open_tcp_stream(host, int(port)))
        # the relay closes the ten over the bound at once and keeps the fifty
        closed = 0

        async def probe(stream: trio.SocketStream) -> None:
            nonlocal closed
            if await stream.receive_some(1) == b"":
                closed += 1

        with trio.move_on_after(1):
            async with trio.open_nursery() as nursery:
                for stream in streams:
                    nursery.start_soon(probe, stream)
        assert closed == 10
        # every one is counted; the log says it once (bound.hit is rate-limited per bound)
        assert metric(relay, 'relay_bounds_hit_total{bound="max_connections"}') == 10
        hits = relay.events("bound.hit")
        assert len(hits) == 1
        assert hits[0]["bound"] == "max_connections" and hits[0]["limit"] == 50 and hits[0]["hits"] == 1
    finally:
        for stream in streams:
            await stream.aclose()
        streams.clear()

    # once they are gone the relay serves again
    deadline = time.monotonic() + 5
    while metric(relay, "relay_connections_open") > 0 and time.monotonic() < deadline:
        await trio.sleep(0.05)
    await assert_still_serves(relay, tmp_path)
    assert len(relay.events("bound.hit")) == 1
