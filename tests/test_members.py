"""Members join (flow 6 of the brief), end to end against the real daemon on loopback.

Early requests are held durably and decided in arrival order once the group is
active; the owners' rules (auto-admit, approval, member limit, suspended
admission) apply; duplicates get the first decision; the queue is bounded;
a request that keeps failing is dead-lettered and can be retried; held
requests are refused with the group's reason when it closes, or when too old.  The parts
whose point is time (back-off, dead letters, expiry, activation time-outs, a status request
waiting for the decision) run on trio's MockClock in ``test_timers.py``.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx
from relayproc import RelayFactory, RunningRelay
from test_flow import new_owner

from relay.client import add_relay, publish
from relay.client.member import MemberState, join, status
from relay.client.owner import OwnerState, owner_command
from relay.protocol.encoding import b64e


async def active_channel(relay: RunningRelay, tmp_path: Path, **kw: object) -> tuple[OwnerState, Path]:
    state, path = new_owner(tmp_path)
    for key, value in kw.items():
        setattr(state, key, value)
    await add_relay(state, path, relay.address)
    await publish(state, path)
    return state, path


def member(tmp_path: Path, owner: OwnerState, name: str = "Ada") -> tuple[MemberState, Path]:
    state = MemberState.new(str(owner.link()), name=name, about=f"{name} reads the weather")
    return state, tmp_path / f"member-{name}-{state.member_id[:8]}.json"


async def joined(tmp_path: Path, owner: OwnerState, name: str = "Ada", wait: float = 0) -> MemberState:
    state, path = member(tmp_path, owner, name)
    return await join(state, path, wait=wait)


def statuses(state: MemberState) -> list[str]:
    return [r.status for r in state.relays]


def metric(relay: RunningRelay, name: str) -> float:
    total = 0.0
    for line in httpx.get(f"{relay.admin_url}/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_member_is_admitted_to_an_active_channel_once(relay: RunningRelay, tmp_path: Path) -> None:
    owner, _ = await active_channel(relay, tmp_path)
    state, path = member(tmp_path, owner)
    await join(state, path)
    assert statuses(state) == ["admitted"]
    assert state.profile_version == 2
    # asking again (a retry, a crash before the answer was saved) never makes a second membership
    again = await join(MemberState.load(path), path)
    assert statuses(again) == ["admitted"]
    assert metric(relay, "relay_members") == 1
    assert (await status(again, path)).relays[0].status == "admitted"


async def test_early_requests_are_held_and_decided_in_arrival_order(
    relay: RunningRelay, tmp_path: Path
) -> None:
    owner, owner_path = new_owner(tmp_path)
    owner.max_members = 2
    await add_relay(owner, owner_path, relay.address)  # accepted, not yet listed: not active
    members = [await joined(tmp_path, owner, name) for name in ("first", "second", "third")]
    assert [statuses(m) for m in members] == [["held"]] * 3
    assert members[0].relays[0].reason and "not active" in members[0].relays[0].reason

    await publish(owner, owner_path)  # lists the relay: the group becomes active
    decided = []
    for m in members:
        path = tmp_path / f"again-{m.name}.json"
        await status(m, path, wait=10)
        decided.append((m.relays[0].status, m.relays[0].code))
    # the limit of two admits the first two to arrive; the third is refused, with the reason
    assert decided == [("admitted", None), ("admitted", None), ("refused", "member_limit")]


async def test_owners_approve_and_refuse(relay: RunningRelay, tmp_path: Path) -> None:
    owner, _ = await active_channel(relay, tmp_path, admission="approval")
    ada = await joined(tmp_path, owner, "Ada")
    bob = await joined(tmp_path, owner, "Bob")
    assert statuses(ada) == statuses(bob) == ["pending_approval"]

    [view] = await owner_command(owner, "list_pending")
    assert [p["name"] for p in view.pending] == ["Ada", "Bob"]
    assert view.pending[0]["about"] == "Ada reads the weather"
    [view] = await owner_command(owner, "approve_member", member=ada.member_id)
    assert view.members == 1 and [p["name"] for p in view.pending] == ["Bob"]
    [view] = await owner_command(owner, "refuse_member", member=bob.member_id, note="not this time")
    assert view.pending == []
    # deciding twice is out of order; an unknown member is named as such
    [again] = await owner_command(owner, "approve_member", member=bob.member_id)
    assert again.error == "out_of_order"
    [unknown] = await owner_command(owner, "approve_member", member=b64e(bytes(32)))
    assert unknown.error == "unknown_member"

    assert (await status(ada, tmp_path / "a.json")).relays[0].status == "admitted"
    bob_now = (await status(bob, tmp_path / "b.json")).relays[0]
    assert (bob_now.status, bob_now.code, bob_now.reason) == ("refused", "refused_by_owners", "not this time")
    events = [e["event"] for e in relay.admin_get("/admin/groups/1").json()["log"]]
    assert {"member_pending", "member_admitted", "member_refused"} <= set(events)


async def test_suspended_admission_refuses_until_resumed(relay: RunningRelay, tmp_path: Path) -> None:
    owner, _ = await active_channel(relay, tmp_path)
    [view] = await owner_command(owner, "suspend_admission")
    assert view.admission == "suspended"
    state, path = member(tmp_path, owner)
    await join(state, path)
    assert (state.relays[0].status, state.relays[0].code) == ("refused", "admission_suspended")
    await owner_command(owner, "resume_admission")
    # "not now" is not final: the same member key asks again and is decided afresh
    await join(state, path)
    assert statuses(state) == ["admitted"]


async def test_a_full_queue_refuses_without_remembering(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = relay_factory(members={"max_queued_per_group": 2})
    owner, owner_path = new_owner(tmp_path)
    await add_relay(owner, owner_path, relay.address)
    answers = [await joined(tmp_path, owner, name) for name in ("a", "b", "c")]
    assert [m.relays[0].status for m in answers] == ["held", "held", "refused"]
    assert answers[2].relays[0].code == "queue_full"
    assert metric(relay, 'relay_bounds_hit_total{bound="group_queue"}') == 1
    assert relay.wait_for_event("bound.hit")["bound"] == "group_queue"
    await publish(owner, owner_path)
    # once there is room the same member asks again and gets in
    await join(answers[2], tmp_path / "c-again.json", wait=10)
    assert statuses(answers[2]) == ["admitted"]


async def test_a_relay_that_alters_the_profile_is_not_used(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    honest, liar = relay_factory(), relay_factory()
    owner, owner_path = new_owner(tmp_path)
    await add_relay(owner, owner_path, honest.address)
    await add_relay(owner, owner_path, liar.address)
    await publish(owner, owner_path)
    # The lying relay's database now serves a profile with one byte of the signed body changed.
    db = sqlite3.connect(liar.data / "relay.db", timeout=10)
    (blob,) = db.execute("SELECT profile FROM groups").fetchone()
    name = owner.name.encode()
    with db:
        db.execute("UPDATE groups SET profile = ?", (blob.replace(name, name.upper()),))
    db.close()
    state = await joined(tmp_path, owner)
    by_relay = {r.address.split("/g/")[0]: r for r in state.relays}
    assert by_relay[honest.base_url].status == "admitted"
    lied = by_relay[liar.base_url]
    assert (lied.status, lied.code) == ("unusable", "bad_signature")


async def test_member_who_disconnects_before_the_answer_finds_the_decision_later(
    relay: RunningRelay, tmp_path: Path
) -> None:
    from wire import connect

    from relay.protocol.addresses import parse_address
    from relay.protocol.membership import make_join_request
    from relay.protocol.messages import Join, MemberProfile

    owner, _ = await active_channel(relay, tmp_path)
    state, path = member(tmp_path, owner)
    state.save(path)
    address = parse_address(state.relays[0].address)
    assert address.address_id is not None
    async with connect(relay, f"/g/{address.address_id}") as raw:
        await raw.hello()
        request = make_join_request(
            state.member_key,
            relay_fingerprint=address.fingerprint,
            channel=owner.channel,
            address_id=address.address_id,
            profile=MemberProfile(name="gone"),
            session=raw.challenge,
            now=int(time.time()),
        )
        await raw.send(Join(request=request))
        # ... and leaves without reading the answer
    state.relays[0].status = "held"
    await status(state, path, wait=5)
    assert statuses(state) == ["admitted"]


async def test_remembered_refusals_are_bounded(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = relay_factory(members={"max_refused_per_group": 1})
    owner, _ = await active_channel(relay, tmp_path)
    await owner_command(owner, "suspend_admission")
    for name in ("a", "b", "c"):
        assert statuses(await joined(tmp_path, owner, name)) == ["refused"]
    with sqlite3.connect(relay.data / "relay.db", timeout=10) as db:
        assert db.execute("SELECT count(*) FROM join_requests").fetchone() == (1,)
    hit = relay.wait_for_event("bound.hit")
    assert (hit["bound"], hit["hits"]) == ("refused_per_group", 1)
    assert metric(relay, 'relay_bounds_hit_total{bound="refused_per_group"}') == 2
