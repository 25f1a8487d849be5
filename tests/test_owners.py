"""Owner management against the real daemon: add and remove owners, set up a co-owner.

Adding or removing an owner is a new profile version published to every relay; a
co-owner gets a file of its own (new-key, add-owner --share, adopt) and signs with
its own key; no secret ever leaves the file it was made in.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ENGINES
from relayproc import RelayFactory, RunningRelay
from test_flow import new_owner

from relay.cli import main
from relay.client import add_relay, publish
from relay.client.errors import RelayError
from relay.client.member import MemberState, join
from relay.client.owner import OwnerState
from relay.client.owners import add_owner, adopt, new_key, remove_owner, write_share
from relay.client.rootkey import export_root
from relay.protocol import crypto
from relay.protocol.encoding import b64d, b64e, decode
from relay.protocol.messages import OwnerCert, Signed

# Every test here runs on both databases: SQLite, and a real PostgreSQL server.
pytestmark = pytest.mark.parametrize("engine", ENGINES, indirect=True)


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
    # the first owner removes the co-owner, whose cert for the third owner is signed again,
    # by the first owner's key: its own cert comes from the root, so the root is not needed
    state.certs, state.profile_version = co.certs, co.profile_version
    result = await remove_owner(state, path, b64e(crypto.public_bytes(co.owner_key)))
    assert [r["status"] for r in result.relays] == ["ok"]
    assert [c.signer for c in state.owner_certs()] == [
        state.root_public_key,
        crypto.public_bytes(state.owner_key),
    ]


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


def _follow(dst: OwnerState, src: OwnerState) -> None:
    """``dst`` catches up with the owner list ``src`` published (what the co-owner's next
    share or profile read would tell it)."""
    dst.certs, dst.profile_version, dst.former_owners = list(src.certs), src.profile_version, []


async def test_withdrawing_an_owner_signs_its_certs_again_with_the_owner_key_or_the_root(
    relay: RunningRelay, tmp_path: Path
) -> None:
    first, first_path = new_owner(tmp_path)  # the library's own layout: the root in the file
    await add_relay(first, first_path, relay.address)
    await publish(first, first_path)
    root_path = tmp_path / "first.root.json"
    export_root(first, first_path, root_path)
    assert not first.has_root and OwnerState.load(first_path).root_secret == ""

    async def co_owner(by: OwnerState, by_path: Path, name: str) -> tuple[OwnerState, Path]:
        path = tmp_path / f"{name}.json"
        await add_owner(by, by_path, new_key(path))
        write_share(by, tmp_path / f"{name}-share.json")
        return adopt(path, tmp_path / f"{name}-share.json"), path

    second, second_path = await co_owner(first, first_path, "second")  # first -> second
    third, third_path = await co_owner(second, second_path, "third")  # second -> third
    _follow(first, second)
    fourth, fourth_path = await co_owner(first, first_path, "fourth")  # first -> fourth, last
    owners = {"first": first, "second": second, "third": third, "fourth": fourth}
    key = {name: crypto.public_bytes(s.owner_key) for name, s in owners.items()}
    assert [c.signer for c in fourth.owner_certs()] == [
        first.root_public_key,
        key["first"],
        key["second"],
        key["first"],
    ]
    # fourth withdraws second: third's cert is signed again by fourth, and moves behind
    # fourth's own cert (a signer must be authorised by an earlier cert)
    result = await remove_owner(fourth, fourth_path, b64e(key["second"]))
    assert [r["status"] for r in result.relays] == ["ok"]
    chain = [(c.signer, _subject(c)) for c in fourth.owner_certs()]
    root = first.root_public_key
    assert chain == [(root, key["first"]), (key["first"], key["fourth"]), (key["fourth"], key["third"])]

    # third withdraws first, which (through fourth) authorised its own key: only the root can
    _follow(third, fourth)
    before = third_path.read_bytes()
    with pytest.raises(RelayError, match=r"third\.root\.json") as missing:
        await remove_owner(third, third_path, b64e(key["first"]), root=tmp_path / "third.root.json")
    assert missing.value.code == "needs_root"
    with pytest.raises(RelayError) as missing:
        await remove_owner(third, third_path, b64e(key["first"]))
    assert missing.value.code == "needs_root" and "--root" in missing.value.reason
    assert third_path.read_bytes() == before and third.owner_certs() == fourth.owner_certs()
    result = await remove_owner(third, third_path, b64e(key["first"]), root=root_path)
    assert [r["status"] for r in result.relays] == ["ok"] and result.version == fourth.profile_version + 1
    chain = [(c.signer, _subject(c)) for c in third.owner_certs()]
    assert chain == [(root, key["fourth"]), (key["fourth"], key["third"])]
    assert OwnerState.load(third_path).root_secret == ""  # the root was used, never kept


def _subject(cert: Signed) -> bytes:
    return decode(cert.body, OwnerCert, limit=65536).owner_key
