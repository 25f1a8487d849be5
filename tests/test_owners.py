"""Owner management against the real daemon: add and remove owners, set up a co-owner.

Adding or removing an owner is a new profile version published to every relay; a
co-owner gets a file of its own (new-key, add-owner --share, adopt) and signs with
its own key; no secret ever leaves the file it was made in.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from relayproc import RelayFactory, RunningRelay
from test_flow import new_owner

from relay.cli import main
from relay.client import add_relay, publish
from relay.client.errors import RelayError
from relay.client.member import MemberState, join
from relay.client.owner import OwnerState
from relay.client.owners import add_owner, adopt, new_key, remove_owner, write_share
from relay.protocol import crypto
from relay.protocol.encoding import b64d, b64e


async def test_a_co_owner_is_added_adopts_the_channel_and_is_removed(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    a, b = relay_factory(), relay_factory()
    state, path = new_owner(tmp_path)
    await add_relay(state, path, a.address)
    await add_relay(state, path, b.address)
    await publish(state, path)
    co_path = tmp_path / "co-owner.json"
    key = new_key(co_path)
    assert oct(co_path.stat().st_mode & 0o777) == "0o600"
    assert "secret" not in key and len(b64d(key)) == 32
    with pytest.raises(RelayError, match="adopt"):
        OwnerState.load(co_path)

    added = await add_owner(state, path, key)
    assert added.version == 3 and [r["status"] for r in added.relays] == ["ok", "ok"]
    with pytest.raises(RelayError, match="already an owner"):
        await add_owner(state, path, key)
    share = tmp_path / "share.json"
    write_share(state, share)
    assert state.root_secret not in share.read_text() and state.owner_secret not in share.read_text()

    co = adopt(co_path, share)
    assert co.channel == state.channel and not co.has_root
    assert crypto.public_bytes(co.owner_key) == b64d(key)
    # the co-owner signs the next profile version with its own key; every relay takes it
    again = await publish(co, co_path)
    assert again.version == 4 and [r["status"] for r in again.relays] == ["ok", "ok"]

    # a member sees both owners in the profile it verified
    member = MemberState.new(str(state.link()), name="Ada")
    await join(member, tmp_path / "member.json")
    verified = member.verified_profile()
    assert verified is not None and verified.profile.version == 4
    assert verified.owners == {crypto.public_bytes(state.owner_key), crypto.public_bytes(co.owner_key)}

    # the first owner withdraws the co-owner (its file is behind: version 4 is the co-owner's)
    state.profile_version = co.profile_version
    removed = await remove_owner(state, path, key)
    assert removed.version == 5 and [r["status"] for r in removed.relays] == ["ok", "ok"]
    with pytest.raises(RelayError, match="not an owner"):
        await remove_owner(state, path, key)
    with pytest.raises(RelayError, match="another owner's file"):
        await remove_owner(state, path, b64e(crypto.public_bytes(state.owner_key)))
    # the removed co-owner still holds the cert the root signed; every relay refuses a newer
    # profile it signs with that old cert, and members keep the version they verified
    await join(member, tmp_path / "member.json")
    assert member.verified_profile().profile.version == 5  # type: ignore[union-attr]
    co.profile_version = 9
    comeback = await publish(co, co_path)
    assert [r["code"] for r in comeback.relays] == ["unauthorised_owner", "unauthorised_owner"], (
        comeback.relays
    )
    await join(member, tmp_path / "member.json")
    assert member.verified_profile().profile.version == 5  # type: ignore[union-attr]
    assert all(r.status == "admitted" for r in member.relays), member.relays


async def test_a_co_owner_without_the_root_signs_certs_with_its_own_key(
    relay: RunningRelay, tmp_path: Path
) -> None:
    state, path = new_owner(tmp_path)
    await add_relay(state, path, relay.address)
    await publish(state, path)
    co_path, third_path = tmp_path / "co.json", tmp_path / "third.json"
    await add_owner(state, path, new_key(co_path))
    write_share(state, tmp_path / "share.json")
    co = adopt(co_path, tmp_path / "share.json")
    third = new_key(third_path)
    result = await add_owner(co, co_path, third)
    assert [r["status"] for r in result.relays] == ["ok"]
    certs = co.owner_certs()
    assert certs[-1].signer == crypto.public_bytes(co.owner_key)  # not the root: it has none
    # the root holder removes the co-owner, whose cert for the third owner is signed again
    state.certs, state.profile_version = co.certs, co.profile_version
    result = await remove_owner(state, path, b64e(crypto.public_bytes(co.owner_key)))
    assert [r["status"] for r in result.relays] == ["ok"]
    # the third owner's cert is now signed by the root
    assert [c.signer for c in state.owner_certs()][-1] == crypto.public_bytes(state.root_key)


def test_co_owner_setup_on_the_command_line(
    relay: RunningRelay, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    owner, co, share = str(tmp_path / "owner.json"), str(tmp_path / "co.json"), str(tmp_path / "share.json")

    def run(*argv: str) -> dict[str, object]:
        code = main([*argv, "--json"])
        out = json.loads(capsys.readouterr().out)
        assert code == 0, out
        return dict(out)

    run("owner", "create", "--state", owner, "--name", "Two owners")
    run("owner", "add-relay", "--state", owner, relay.address)
    run("owner", "publish", "--state", owner)
    key = run("owner", "new-key", "--state", co)["owner_key"]
    added = run("owner", "add-owner", "--state", owner, str(key), "--share", share)
    assert added["version"] == 3 and added["share"] == share
    adopted = run("owner", "adopt", "--state", co, share)
    assert adopted["name"] == "Two owners"
    assert run("owner", "publish", "--state", co)["version"] == 4
    assert main(["owner", "new-key", "--state", co, "--json"]) == 1  # never overwrites a key file
    assert "already exists" in capsys.readouterr().out
