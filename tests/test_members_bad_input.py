"""Members' bad input, frame by frame against the real daemon: each gets a typed error and fails
alone (the same connection goes on working), and nothing half-written is left behind."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from relayproc import RelayFactory, RunningRelay
from test_flow import new_owner
from test_members import active_channel
from wire import RawSession, check_error, connect

from relay.client import add_relay, remove_relay
from relay.client.owner import OwnerState
from relay.protocol import crypto
from relay.protocol.addresses import parse_address
from relay.protocol.encoding import encode
from relay.protocol.invitation import make_owner_request
from relay.protocol.membership import make_join_request, make_member_request
from relay.protocol.messages import (
    Join,
    JoinRequest,
    JoinResult,
    JoinStatus,
    MemberProfile,
    OwnerCommand,
    Signed,
)


def address_of(owner: OwnerState) -> tuple[bytes, str]:
    entry = owner.relays[0]
    assert entry.group_address is not None
    address = parse_address(entry.group_address)
    assert address.address_id is not None
    return address.fingerprint, address.address_id


def signed_join(
    owner: OwnerState,
    key: ed25519.Ed25519PrivateKey | None = None,
    *,
    session: bytes,
    fingerprint: bytes | None = None,
    address_id: str | None = None,
    now: int | None = None,
    profile: MemberProfile | None = None,
) -> Signed:
    real_fingerprint, real_address = address_of(owner)
    return make_join_request(
        key or ed25519.Ed25519PrivateKey.generate(),
        relay_fingerprint=fingerprint or real_fingerprint,
        channel=owner.channel,
        address_id=address_id or real_address,
        profile=profile or MemberProfile(name="Mallory"),
        session=session,
        now=int(time.time()) if now is None else now,
    )


def rows(relay: RunningRelay) -> int:
    with sqlite3.connect(relay.data / "relay.db", timeout=10) as db:
        (n,) = db.execute("SELECT count(*) FROM join_requests").fetchone()
    return int(n)


async def test_bad_join_requests_fail_alone(relay: RunningRelay, tmp_path: Path) -> None:
    owner, _ = await active_channel(relay, tmp_path)
    other, _ = await active_channel(relay, tmp_path)
    _, address_id = address_of(owner)
    async with connect(relay, f"/g/{address_id}") as raw:
        await raw.hello()
        good = signed_join(owner, session=raw.challenge)
        forged = Signed(body=good.body, signer=good.signer, sig=bytes(64))
        await raw.expect_error(Join(request=forged), "bad_signature")
        await raw.expect_error(
            Join(request=signed_join(owner, session=raw.challenge, fingerprint=bytes(32))), "wrong_relay"
        )
        # signed for the other channel's group address, sent here
        await raw.expect_error(
            Join(request=signed_join(other, session=raw.challenge, address_id=address_of(other)[1])),
            "channel_mismatch",
        )
        await raw.expect_error(
            Join(request=signed_join(owner, session=raw.challenge, now=int(time.time()) - 3600)),
            "request_stale",
        )
        big = MemberProfile(name="x", about="y" * 2000)
        await raw.expect_error(
            Join(request=signed_join(owner, session=raw.challenge, profile=big)), "member_profile_too_large"
        )
        # a member profile that is not a MemberProfile, validly signed
        key = ed25519.Ed25519PrivateKey.generate()
        fingerprint, address = address_of(owner)
        body = encode(
            JoinRequest(
                relay=fingerprint,
                channel=owner.channel,
                address=address,
                session=raw.challenge,
                member_profile=encode([1, 2, 3]),
                created_at=int(time.time()),
                nonce=bytes(16),
            )
        )
        await raw.expect_error(Join(request=crypto.signed(key, crypto.Label.JOIN_REQUEST, body)), "bad_type")
        # an owner request is not a join request, whatever it says
        await raw.expect_error(
            Join(request=crypto.signed(key, crypto.Label.OWNER_REQUEST, good.body)), "bad_signature"
        )
        # signed for another connection (captured, and replayed here)
        async with connect(relay, f"/g/{address_id}") as elsewhere:
            await elsewhere.hello()
            captured = signed_join(owner, session=elsewhere.challenge)
        await raw.expect_error(Join(request=captured), "wrong_session")
        assert rows(relay) == 0  # nothing refused was stored
        # the connection still works, and the replayed request gets the same answer, one row
        first = await raw.request(Join(request=good))
        again = await raw.request(Join(request=good))
        assert isinstance(first, JoinResult) and first.status == "admitted"
        assert again == first
        assert rows(relay) == 1


async def test_member_frames_only_where_they_belong(relay: RunningRelay, tmp_path: Path) -> None:
    owner, _ = await active_channel(relay, tmp_path)
    async with connect(relay, "/r") as raw:
        await raw.hello()
        await raw.expect_error(Join(request=signed_join(owner, session=raw.challenge)), "unexpected_message")
    fingerprint, address_id = address_of(owner)
    async with connect(relay, f"/g/{address_id}") as raw:
        await raw.hello()
        key = ed25519.Ed25519PrivateKey.generate()
        status = make_member_request(
            key,
            relay_fingerprint=fingerprint,
            channel=owner.channel,
            address_id=address_id,
            session=raw.challenge,
            now=int(time.time()),
        )
        await raw.expect_error(JoinStatus(request=status), "unknown_member")
        # an owner command belongs on the contact address
        request = make_owner_request(
            owner.owner_key,
            relay_fingerprint=fingerprint,
            channel=owner.channel,
            service_group=bytes(16),
            action="list_pending",
            session=raw.challenge,
            now=int(time.time()),
        )
        await raw.expect_error(OwnerCommand(request=request), "unexpected_message")


async def test_owner_commands_need_an_owner_and_the_service_group(
    relay: RunningRelay, tmp_path: Path
) -> None:
    owner, _ = await active_channel(relay, tmp_path)
    fingerprint, _ = address_of(owner)
    from relay.protocol.encoding import b64d

    service_group = b64d(owner.relays[0].service_group)
    async with connect(relay, "/r") as raw:
        await raw.hello()
        # a request signed for reading the log cannot be replayed as a command
        read_log = make_owner_request(
            owner.owner_key,
            relay_fingerprint=fingerprint,
            channel=owner.channel,
            service_group=service_group,
            action="read_log",
            session=raw.challenge,
            now=int(time.time()),
        )
        await raw.expect_error(OwnerCommand(request=read_log), "unexpected_message")
        stranger = ed25519.Ed25519PrivateKey.generate()
        for key, group, code in (
            (stranger, service_group, "unauthorised_owner"),
            (owner.owner_key, bytes(16), "unknown_group"),  # answered, then the connection closes
        ):
            request = make_owner_request(
                key,
                relay_fingerprint=fingerprint,
                channel=owner.channel,
                service_group=group,
                action="suspend_admission",
                session=raw.challenge,
                now=int(time.time()),
            )
            await raw.expect_error(OwnerCommand(request=request), code)


async def test_a_removed_group_takes_no_requests(relay: RunningRelay, tmp_path: Path) -> None:
    owner, path = await active_channel(relay, tmp_path)
    _, address_id = address_of(owner)
    await remove_relay(owner, path, relay.address)
    async with connect(relay, f"/g/{address_id}") as raw:
        await raw.hello()
        error = await raw.expect_error(
            Join(request=signed_join(owner, session=raw.challenge)), "group_closed"
        )
        assert "removed" in error.reason
    assert rows(relay) == 0


async def test_a_flooding_connection_is_rate_limited_alone(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(server={"requests_per_second": 5.0, "request_burst": 5})
    owner, path = new_owner(tmp_path)
    await add_relay(owner, path, relay.address)
    _, address_id = address_of(owner)
    async with connect(relay, f"/g/{address_id}") as flood, connect(relay, f"/g/{address_id}") as calm:
        await flood.hello()
        await calm.hello()
        answers = []
        for _ in range(8):
            answers.append(await flood.request(Join(request=signed_join(owner, session=flood.challenge))))
        assert [type(a).__name__ for a in answers[:5]] == ["JoinResult"] * 5
        check_error(answers[5], "rate_limited")
        # another connection is not slowed down by it
        assert isinstance(
            await calm.request(Join(request=signed_join(owner, session=calm.challenge))), JoinResult
        )
        # past 16 errors the flooding connection is closed
        for _ in range(20):
            await flood.send(Join(request=signed_join(owner, session=flood.challenge)))
        with trio.fail_after(5):
            assert await drain_until_closed(flood) == 1008
    assert relay.wait_for_event("bound.hit")["bound"] == "request_rate"


async def drain_until_closed(raw: RawSession) -> int | None:
    from trio_websocket import ConnectionClosed

    while True:
        try:
            await raw.ws.get_message()
        except ConnectionClosed as exc:
            return exc.reason.code if exc.reason else None
