"""SIGKILL at any moment loses no acknowledged join request and applies none twice.

Several kill-and-restart cycles of the real daemon under load from concurrent
members: one group is active (requests decided at once), one is not yet active
(requests held).  Every answer a member received is checked against the
database after the last restart, and once the held group is activated every
held request must be decided exactly once.  (The longer soak is
``python -m benchmarks.soak_joins``.)
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric import ed25519
from relayproc import RunningRelay
from test_flow import free_port, new_owner
from test_members_bad_input import address_of
from trio_websocket import ConnectionClosed, HandshakeError
from wire import ONE_SOURCE_UNBOUNDED, connect

from relay.client import add_relay, publish
from relay.client.owner import OwnerState
from relay.protocol.membership import make_join_request
from relay.protocol.messages import Join, JoinResult, MemberProfile

CYCLES = 4
MEMBERS = 16


async def members_until_killed(relay: RunningRelay, owner: OwnerState, acked: dict[bytes, str]) -> None:
    """Members join back to back until the relay dies under them; record every answer."""
    fingerprint, address_id = address_of(owner)

    async def one_member() -> None:
        try:
            async with connect(relay, f"/g/{address_id}") as raw:
                await raw.hello()
                while True:
                    key = ed25519.Ed25519PrivateKey.generate()
                    request = make_join_request(
                        key,
                        relay_fingerprint=fingerprint,
                        channel=owner.channel,
                        address_id=address_id,
                        profile=MemberProfile(name="m"),
                        session=raw.challenge,
                        now=int(time.time()),
                    )
                    answer = await raw.request(Join(request=request), timeout=10)
                    assert isinstance(answer, JoinResult), answer
                    acked[request.signer] = answer.status
        except (ConnectionClosed, HandshakeError, OSError, trio.TooSlowError):
            return  # the relay was killed: unanswered requests were never acknowledged

    async with trio.open_nursery() as nursery:
        for _ in range(MEMBERS):
            nursery.start_soon(one_member)


def stored(relay: RunningRelay) -> tuple[dict[bytes, str], dict[int, int], dict[int, int]]:
    with sqlite3.connect(relay.data / "relay.db", timeout=10) as db:
        rows = dict(db.execute("SELECT member_key, status FROM join_requests"))
        admitted = dict(
            db.execute(
                "SELECT group_id, count(*) FROM join_requests WHERE status = 'admitted' GROUP BY group_id"
            )
        )
        counted = dict(db.execute("SELECT group_id, members FROM group_queues WHERE members > 0"))
    return rows, admitted, counted


async def test_sigkill_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    # The load comes from 127.0.0.1 only: one source, whose budgets are out of the way.
    one_source = "".join(f"{key} = {json.dumps(value)}\n" for key, value in ONE_SOURCE_UNBOUNDED.items())
    config.write_text("[server]\nrequests_per_second = 100000.0\nrequest_burst = 100000\n" + one_source)
    relay = RunningRelay(data=tmp_path / "relay", config=config, listen_on=f"127.0.0.1:{free_port()}").start()
    try:
        active, active_path = new_owner(tmp_path, "Active")
        await add_relay(active, active_path, relay.address)
        await publish(active, active_path)
        early, early_path = new_owner(tmp_path, "Early")
        await add_relay(early, early_path, relay.address)  # accepted, not active: requests are held
        acked: dict[bytes, str] = {}
        rng = random.Random(7)
        for _ in range(CYCLES):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(members_until_killed, relay, active, acked)
                nursery.start_soon(members_until_killed, relay, early, acked)
                await trio.sleep(rng.uniform(0.4, 1.2))
                relay.kill()  # SIGKILL, mid-flight
            relay.start()
        assert len(acked) > 100, "the load did not run"
        assert set(acked.values()) == {"admitted", "held"}

        rows, admitted, counted = stored(relay)
        lost = [key for key in acked if key not in rows]
        assert lost == []
        changed = [k for k, status in acked.items() if status == "admitted" and rows[k] != "admitted"]
        assert changed == []
        assert admitted == counted  # the per-group count agrees with the rows: nothing applied twice

        await publish(early, early_path)  # activate: the worker decides every held request once
        with trio.fail_after(30):
            while any(status == "held" for status in stored(relay)[0].values()):
                await trio.sleep(0.1)
        rows, admitted, counted = stored(relay)
        assert set(rows.values()) == {"admitted"}
        assert admitted == counted
        assert sum(admitted.values()) == len(rows)
    finally:
        relay.kill()
