"""End-to-end flows of the relay core over real sockets, against the real daemon.

Covers flows 1-5 and 9 of the brief: identity and contact address, sealed
invitations, profile checks, idempotent per-group addresses (retries,
concurrent duplicates, restarts), activation, manual approval, several relays, and
the service-group log.  Activation time-outs run on trio's MockClock (``test_timers.py``).
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import time
from pathlib import Path

import httpx
import msgspec
import pytest
import trio
from relayproc import RelayFactory, RunningRelay

from relay.client import (
    RelayError,
    RelayIdentityError,
    RelayRefused,
    add_relay,
    create_channel,
    publish,
    read_log,
    remove_relay,
)
from relay.client.connection import RelaySession, open_session
from relay.client.owner import OwnerState, RelayEntry
from relay.protocol.addresses import parse_address
from relay.protocol.crypto import SUITE_X25519, seal, seal_info
from relay.protocol.encoding import b64e
from relay.protocol.invitation import SEAL_PURPOSE, make_invitation
from relay.protocol.messages import Invite, InviteResult


def new_owner(tmp_path: Path, name: str = "Weather reports", **kw: str) -> tuple[OwnerState, Path]:
    state = create_channel(name, **kw)
    path = tmp_path / f"owner-{b64e(state.channel)[:8]}.json"
    state.save(path)
    return state, path


def admin_groups(relay: RunningRelay) -> list[dict[str, object]]:
    return list(relay.admin_get("/admin/groups").json()["groups"])


def x25519_invite(
    session: RelaySession, state: OwnerState, relay: RunningRelay, service_group: bytes = b"\x05" * 16
) -> Invite:
    """An invitation sealed with the classic X25519 suite (the client would pick the hybrid)."""
    fingerprint = parse_address(relay.address).fingerprint
    plaintext = make_invitation(
        owner_key=state.owner_key,
        relay_fingerprint=fingerprint,
        service_group=service_group,
        profile=state.profile(),
        channel=state.channel,
        session=session.challenge,
        now=int(time.time()),
    )
    key = session.card.seal_keys[SUITE_X25519.name]
    sealed = seal(SUITE_X25519.name, key, plaintext, seal_info(SEAL_PURPOSE, fingerprint))
    return Invite(suite=SUITE_X25519.name, sealed=sealed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_public_info_describes_the_relay(relay: RunningRelay) -> None:
    info = httpx.get(relay.base_url + "/").json()
    assert info["address"] == relay.address
    assert parse_address(relay.address).fingerprint.hex()
    assert set(info["seal_suites"]) == {
        "x25519-sha256-chacha20poly1305",
        "mlkem768x25519-sha256-chacha20poly1305",
    }
    assert info["limits"]["max_frame_bytes"] > 0
    assert info["policy"]["approval"] == "auto"
    assert info["software"].startswith("chat-relay/")


async def test_invitation_gives_an_address_and_publish_activates(relay: RunningRelay, tmp_path: Path) -> None:
    state, path = new_owner(tmp_path)
    result = await add_relay(state, path, relay.address)
    assert result.status == "accepted" and result.state == "accepted"
    assert result.group_address is not None
    granted = parse_address(result.group_address)
    assert granted.fingerprint == parse_address(relay.address).fingerprint
    # the owner used the strongest suite both sides have: the post-quantum hybrid
    assert relay.wait_for_event("invitation.accepted")["suite"].startswith("mlkem768x25519")

    published = await publish(state, path)
    assert published.version == 2
    assert published.relays[0]["state"] == "active"
    assert result.group_address in httpx.URL("http://x/?" + published.link.split("?", 1)[1]).params.get_list(
        "relay"
    )
    [group] = admin_groups(relay)
    assert group["state"] == "active" and group["profile_version"] == 2

    [log] = await read_log(state)
    events = [e["event"] for e in log["entries"]]  # type: ignore[union-attr]
    assert events == ["address_issued", "profile_updated", "active"]


async def test_same_invitation_same_address_on_retry_and_concurrently(
    relay: RunningRelay, tmp_path: Path
) -> None:
    state, path = new_owner(tmp_path)
    first = await add_relay(state, path, relay.address)
    again = await add_relay(state, path, relay.address)
    assert again.group_address == first.group_address

    results: list[str | None] = []

    async def one() -> None:
        results.append((await add_relay(state, path, relay.address)).group_address)

    async with trio.open_nursery() as nursery:
        for _ in range(16):
            nursery.start_soon(one)
    assert results == [first.group_address] * 16
    assert len(admin_groups(relay)) == 1


async def test_concurrent_first_invitations_create_one_group(relay: RunningRelay, tmp_path: Path) -> None:
    """Duplicates racing for a channel the relay has never seen still get one address."""
    state, path = new_owner(tmp_path)
    results: list[str | None] = []

    async def one() -> None:
        # each racer holds its own copy of the state, with the same service group
        copy = OwnerState.load(path)
        results.append((await add_relay(copy, tmp_path / "unused.json", relay.address)).group_address)

    # the service group is chosen (and saved) before any sending
    state.relays.append(RelayEntry(contact=relay.address, service_group=b64e(b"\x07" * 16)))
    state.save(path)
    async with trio.open_nursery() as nursery:
        for _ in range(12):
            nursery.start_soon(one)
    assert len(set(results)) == 1 and results[0] is not None
    assert len(admin_groups(relay)) == 1


async def test_same_address_after_relay_restart(tmp_path: Path) -> None:
    relay = RunningRelay(data=tmp_path / "relay", listen_on=f"127.0.0.1:{free_port()}").start()
    try:
        state, path = new_owner(tmp_path)
        first = await add_relay(state, path, relay.address)
        assert relay.stop() == 0
        relay.start()
        again = await add_relay(state, path, relay.address)
        assert again.group_address == first.group_address
        # the identity survived the restart too: same contact address
        assert relay.address == state.relays[0].contact
    finally:
        relay.kill()


async def test_a_second_service_group_for_a_channel_is_refused(relay: RunningRelay, tmp_path: Path) -> None:
    state, path = new_owner(tmp_path)
    await add_relay(state, path, relay.address)
    state.relays[0].service_group = b64e(b"\x01" * 16)
    with pytest.raises(RelayRefused) as caught:
        await add_relay(state, path, relay.address)
    assert caught.value.code == "service_group_mismatch"


async def test_policy_refusal_is_clear_and_remembered(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = relay_factory(policy={"deny_patterns": ["casino"], "max_name_length": 40})
    state, path = new_owner(tmp_path, "Best casino offers")
    refused = await add_relay(state, path, relay.address)
    assert refused.status == "refused" and refused.code == "denied"
    assert "deny list" in (refused.reason or "")
    # the owner renames the channel, but the relay remembers its refusal
    state.name = "Gardening tips"
    again = await add_relay(state, path, relay.address)
    assert (again.status, again.code, again.reason) == ("refused", "denied", refused.reason)
    relay.restart()
    after_restart = await add_relay(state, path, relay.address)
    assert (after_restart.status, after_restart.code) == ("refused", "denied")

    other, other_path = new_owner(tmp_path, "x" * 41)
    too_long = await add_relay(other, other_path, relay.address)
    assert too_long.code == "name_too_long" and "41" in (too_long.reason or "")


async def test_kind_and_capacity_policies(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = relay_factory(policy={"kinds": ["group"], "max_groups": 1})
    channel, path = new_owner(tmp_path, "A channel", kind="channel")
    assert (await add_relay(channel, path, relay.address)).code == "kind_not_allowed"
    group, gpath = new_owner(tmp_path, "A group", kind="group")
    assert (await add_relay(group, gpath, relay.address)).status == "accepted"
    second, spath = new_owner(tmp_path, "Another group", kind="group")
    full = await add_relay(second, spath, relay.address)
    assert full.status == "refused" and full.code == "relay_full"


async def test_manual_approval_parks_the_invitation(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = relay_factory(policy={"approval": "manual"})
    state, path = new_owner(tmp_path)
    pending = await add_relay(state, path, relay.address)
    assert pending.status == "pending_approval" and pending.group_address is None
    [group] = admin_groups(relay)
    assert group["state"] == "invited" and group["address"] is None

    approved = relay.admin_post(f"/admin/groups/{group['id']}/approve").json()
    assert approved["state"] == "accepted"
    accepted = await add_relay(state, path, relay.address)
    assert accepted.status == "accepted" and accepted.group_address == approved["address"]
    # approving twice is out of order
    twice = relay.admin_post(f"/admin/groups/{group['id']}/approve")
    assert twice.status_code == 409 and twice.json()["error"] == "out_of_order"

    other, opath = new_owner(tmp_path, "Other")
    await add_relay(other, opath, relay.address)
    gid = next(g for g in admin_groups(relay) if g["name"] == "Other")["id"]
    rejected = relay.admin_post(f"/admin/groups/{gid}/reject", {"reason": "not here"})
    assert rejected.json()["state"] == "rejected"
    refusal = await add_relay(other, opath, relay.address)
    assert refusal.code == "rejected_by_operator" and refusal.reason == "not here"


async def test_two_relays_and_unlisting(relay_factory: RelayFactory, tmp_path: Path) -> None:
    a, b = relay_factory(), relay_factory()
    state, path = new_owner(tmp_path)
    ga = (await add_relay(state, path, a.address)).group_address
    gb = (await add_relay(state, path, b.address)).group_address
    published = await publish(state, path)
    assert [r["state"] for r in published.relays] == ["active", "active"]
    assert published.link.count("relay=") == 2

    # the owners drop relay B: a newer signed profile without it makes B stop serving
    removed = await remove_relay(state, path, b.address)
    assert [(r["group_address"], r["state"]) for r in removed.relays] == [(ga, "active"), (gb, "removed")]
    assert removed.link.count("relay=") == 1 and removed.version == published.version + 1
    assert [g["state"] for g in admin_groups(b)] == ["removed"]
    with pytest.raises(RelayError, match="not a relay of this channel"):
        await remove_relay(state, path, b.address)
    [ra, rb] = await read_log(state)
    assert rb["state"] == "removed"
    assert rb["entries"][-1]["detail"] == "a newer profile no longer lists this relay"  # type: ignore[index]
    assert ra["state"] == "active"

    # the owners may take B back later: a new service group, a new address; the old one stays dead
    back = await add_relay(state, path, b.address)
    assert back.status == "accepted" and back.group_address not in (None, gb)
    assert [r["state"] for r in (await publish(state, path)).relays] == ["active", "active"]
    with pytest.raises(RelayRefused, match="no group has this address"):
        async with open_session(parse_address(gb)):
            pass


async def test_client_refuses_a_relay_that_is_not_the_pinned_one(
    relay_factory: RelayFactory,
    tmp_path: Path,
) -> None:
    a, b = relay_factory(), relay_factory()
    # B's host and port, but A's fingerprint: B cannot prove it holds A's key
    impostor = b.address.split("#")[0] + "#" + a.address.split("#")[1]
    state, path = new_owner(tmp_path)
    with pytest.raises(RelayIdentityError):
        await add_relay(state, path, impostor)
    assert admin_groups(b) == []


def _values(obj: object, out: set[bytes]) -> None:
    if isinstance(obj, bytes):
        out.add(obj)
        with contextlib.suppress(msgspec.DecodeError, UnicodeDecodeError):
            _values(msgspec.msgpack.decode(obj), out)
    elif isinstance(obj, str):
        out.add(obj.encode())
    elif isinstance(obj, dict):
        for value in obj.values():  # field names are the protocol's, not the channel's
            _values(value, out)
    elif isinstance(obj, list):
        for item in obj:
            _values(item, out)


async def test_two_channels_of_one_person_share_nothing_at_the_relay(
    relay: RunningRelay, tmp_path: Path
) -> None:
    """Nothing the relay stores for one channel appears in the other channel's rows."""
    owned = []
    for name in ("Channel one", "Channel two"):
        state, path = new_owner(tmp_path, name)
        await add_relay(state, path, relay.address)
        await publish(state, path)
        owned.append(state)

    db = sqlite3.connect(f"file:{relay.data / 'relay.db'}?mode=ro", uri=True)
    per_group: dict[int, set[bytes]] = {}
    for row in db.execute("SELECT * FROM groups"):
        values: set[bytes] = set()
        for cell in row[1:]:
            _values(cell, values)
        per_group[row[0]] = values
    for group_id, detail in db.execute("SELECT group_id, detail FROM service_log"):
        _values(detail, per_group[group_id])
    assert len(per_group) == 2

    fingerprint = relay.address.split("#")[1].encode()
    shared = {
        v
        for v in per_group[1] & per_group[2]
        # identifiers only (no prose from the relay's own log texts), and not the relay's own
        # identity, which every group of this relay shares by design
        if len(v) >= 8 and b" " not in v and fingerprint not in v and relay.listen.encode() not in v
    }
    assert shared == set()
    # and the secrets' public halves really are present per group (the check is not vacuous)
    for state, gid in zip(owned, (1, 2), strict=True):
        assert state.channel in per_group[gid]
        assert state.cert().signer in per_group[gid]


async def test_sigterm_drains_and_exits_zero(relay: RunningRelay, tmp_path: Path) -> None:
    state, path = new_owner(tmp_path)
    await add_relay(state, path, relay.address)
    assert relay.stop() == 0
    assert relay.events("relay.stopped")
    for line in relay.raw_lines:
        assert line.startswith("{"), line


async def test_logs_are_json_without_client_addresses(relay: RunningRelay, tmp_path: Path) -> None:
    state, path = new_owner(tmp_path)
    await add_relay(state, path, relay.address)
    await publish(state, path)
    relay.stop()
    assert relay.lines and len(relay.lines) == len(relay.raw_lines)
    for line in relay.lines:
        assert "event" in line and "level" in line and "ts" in line
        if line["event"] != "relay.ready":
            # the relay's own bound address appears only in relay.ready; no peer address anywhere
            assert "127.0.0.1" not in str(line)
        # no whole key: owner and root keys never appear in any encoding
        for key in (state.cert().signer,):
            assert b64e(key) not in str(line)


async def test_remembered_refusals_are_bounded(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = relay_factory(policy={"deny_patterns": ["spam"]}, storage={"max_closed_groups": 2})
    codes = []
    for n in range(4):
        state, path = new_owner(tmp_path, f"spam {n}")
        codes.append((await add_relay(state, path, relay.address)).code)
    assert codes == ["denied"] * 4
    assert len(admin_groups(relay)) == 2
    hit = relay.wait_for_event("bound.hit")
    assert hit["bound"] == "max_closed_groups" and hit["limit"] == 2
    metrics = httpx.get(f"{relay.admin_url}/metrics").text
    assert 'relay_bounds_hit_total{bound="max_closed_groups"} 2' in metrics


async def test_client_addresses_are_logged_only_when_the_operator_opts_in(
    relay_factory: RelayFactory,
    tmp_path: Path,
) -> None:
    relay = relay_factory(logging={"log_client_ip": True})
    state, path = new_owner(tmp_path)
    await add_relay(state, path, relay.address)
    opened = relay.wait_for_event("connection.opened")
    assert opened["peer"] == "127.0.0.1"
    assert relay.wait_for_event("invitation.accepted")["peer"] == "127.0.0.1"


async def test_the_classic_x25519_suite_is_accepted_too(relay: RunningRelay, tmp_path: Path) -> None:
    state, _ = new_owner(tmp_path)
    async with open_session(parse_address(relay.address)) as session:
        assert SUITE_X25519.name in session.card.seal_keys
        answer = await session.request(x25519_invite(session, state, relay))
    assert isinstance(answer, InviteResult) and answer.status == "accepted"
    assert relay.wait_for_event("invitation.accepted")["suite"] == SUITE_X25519.name


async def test_sigterm_closes_idle_sessions_at_once(relay_factory: RelayFactory) -> None:
    relay = relay_factory(server={"shutdown_grace": 30})
    async with open_session(parse_address(relay.address)) as session:
        assert session.card.relay_key
        started = time.monotonic()
        # stop() blocks; run it in a thread while this session sits idle
        code = await trio.to_thread.run_sync(relay.stop)
        assert code == 0
        assert time.monotonic() - started < 10
    assert relay.events("relay.stopped")


def test_sigterm_with_a_stuck_connection_exits_within_shutdown_grace(relay_factory: RelayFactory) -> None:
    """A connection that is neither idle in a session nor finishing a request (a half-sent
    HTTP head) holds the stop for shutdown_grace at most, then the relay exits 0 anyway."""
    relay = relay_factory(server={"shutdown_grace": 1, "handshake_timeout": 60})
    host, port = relay.listen.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as stuck:
        stuck.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # no blank line: the head never ends
        time.sleep(0.2)
        started = time.monotonic()
        assert relay.stop(timeout=10) == 0
        elapsed = time.monotonic() - started
    assert 0.8 <= elapsed < 1 + 3, elapsed  # it did wait for the stuck connection, not longer
    assert relay.wait_for_event("relay.stopping")["open_connections"] == 1
    assert relay.events("relay.stopped")


async def test_sighup_reloads_the_policy_and_keeps_connections(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    import signal

    relay = relay_factory(policy={"kinds": ["channel", "group"]})
    assert relay.config is not None and relay.proc is not None
    group, _ = new_owner(tmp_path, "A group", kind="group")
    async with open_session(parse_address(relay.address)) as session:
        relay.config.write_text('[policy]\nkinds = ["channel"]\n')
        relay.proc.send_signal(signal.SIGHUP)
        relay.wait_for_event("config.reloaded")
        # the session opened before the reload stays open, and the new policy applies to it
        answer = await session.request(x25519_invite(session, group, relay))
    assert isinstance(answer, InviteResult)
    assert (answer.status, answer.code) == ("refused", "kind_not_allowed")
    assert httpx.get(relay.base_url + "/").json()["policy"]["kinds"] == ["channel"]

    # a broken file is refused with its reason, and the policy in force stays
    relay.config.write_text("[policy]\nkinds = 7\n")
    relay.proc.send_signal(signal.SIGHUP)
    failed = relay.wait_for_event("config.reload_failed")
    assert "kinds" in failed["reason"]
    channel, cpath = new_owner(tmp_path, "A channel")
    assert (await add_relay(channel, cpath, relay.address)).status == "accepted"
    assert relay.proc.poll() is None
