"""Invitations and never-activated groups cannot fill the relay (issue 13, attack class 5).

Anyone can invite a relay with a fresh root key.  Each source (an IPv4 address, or an
IPv6 /64) gets a budget of invitations per minute, checked before the sealed invitation
is even opened, and of groups waiting for activation at once; a refused invitation is
remembered as the digest of its profile and the reason, not the profile.  The attacker
here is 127.0.0.1; a well-behaved owner on 127.0.0.2 must see no failure meanwhile.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from relayproc import RelayFactory
from test_flow import new_owner
from wire import connect

from relay.client import add_relay, publish, read_log
from relay.client.connection import connecting_from
from relay.client.errors import RelayRefused
from relay.protocol.messages import Invite

CALM = "127.0.0.2"  # another host: a well-behaved owner


async def test_invitations_over_a_sources_budget_are_refused_before_they_are_opened(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(policy={"invitations_per_ip_per_minute": 3})
    for n in range(3):
        state, path = new_owner(tmp_path, f"Attempt {n}")
        assert (await add_relay(state, path, relay.address)).status == "accepted"
    # The fourth is refused unopened: garbage that would be `seal_failed` is `rate_limited`.
    async with connect(relay) as session:
        await session.hello()
        error = await session.expect_error(Invite(suite="x25519", sealed=b"garbage"), "rate_limited")
    assert "invitations" in error.reason
    state, path = new_owner(tmp_path, "One too many")
    with pytest.raises(RelayRefused) as refused:
        await add_relay(state, path, relay.address)
    assert refused.value.code == "rate_limited"
    # Another host has a budget of its own.
    with connecting_from(CALM):
        calm, calm_path = new_owner(tmp_path, "Calm")
        assert (await add_relay(calm, calm_path, relay.address)).status == "accepted"
        assert [r["state"] for r in (await publish(calm, calm_path)).relays] == ["active"]
    assert [e["bound"] for e in relay.events("bound.hit")] == ["invitations_per_ip"]


async def test_a_source_holds_at_most_its_quota_of_groups_waiting_for_activation(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(policy={"max_pending_groups_per_ip": 2})
    owners = [new_owner(tmp_path, f"Never activated {n}") for n in range(3)]
    for state, path in owners[:2]:
        assert (await add_relay(state, path, relay.address)).status == "accepted"
    third, third_path = owners[2]
    with pytest.raises(RelayRefused) as refused:
        await add_relay(third, third_path, relay.address)
    assert refused.value.code == "rate_limited" and "waiting for activation" in refused.value.reason
    # Not remembered: the relay holds no row for the refused channel.
    listed = relay.admin_get("/admin/groups").json()["groups"]
    assert len(listed) == 2
    # A repeated invitation for a group that exists always passes (a retry, a crash).
    first, first_path = owners[0]
    again = await add_relay(first, first_path, relay.address)
    assert again.status == "accepted"
    # Other hosts are not affected.
    with connecting_from(CALM):
        calm, calm_path = new_owner(tmp_path, "Calm")
        assert (await add_relay(calm, calm_path, relay.address)).status == "accepted"
    # Once one of the source's groups is activated, it may start another.
    assert [r["state"] for r in (await publish(first, first_path)).relays] == ["active"]
    assert (await add_relay(third, third_path, relay.address)).status == "accepted"
    assert [e["bound"] for e in relay.events("bound.hit")] == ["pending_groups_per_ip"]


async def test_a_refused_invitation_is_remembered_by_digest_and_reason_only(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(policy={"deny_patterns": ["casino"]})
    state, path = new_owner(tmp_path, "Best casino offers", description="x" * 1000)
    refused = await add_relay(state, path, relay.address)
    assert (refused.status, refused.code) == ("refused", "denied")
    again = await add_relay(state, path, relay.address)
    assert (again.status, again.code, again.reason) == ("refused", "denied", refused.reason)
    # The owners can still read why, from the service log.
    [log] = await read_log(state)
    assert log.get("error") == "group_closed" and "denied" in str(log.get("reason")), log
    assert relay.stop() == 0
    db = sqlite3.connect(relay.data / "relay.db")
    [(profile, digest, reason)] = db.execute("SELECT profile, profile_digest, reason FROM groups").fetchall()
    assert bytes(profile) == b"" and len(bytes(digest)) == 32 and "deny list" in reason
    db.close()
    # Nothing of the profile is kept: not its 1,000-character description, anywhere in the file.
    for name in ("relay.db", "relay.db-wal"):
        if (relay.data / name).exists():
            assert b"x" * 1000 not in (relay.data / name).read_bytes(), name
