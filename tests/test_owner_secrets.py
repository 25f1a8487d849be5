"""The owner's secrets on the owner's machine, through the real ``relay`` command.

The channel's root key lives in a file of its own that the owner can keep
offline: ``relay owner create`` writes it there, the daily commands never need
it, the one command that may need it says which file and why, and an old state
file that still holds it keeps working until ``export-root`` moves it out.  One
owner key never ends up in two channels: ``add-owner`` and ``adopt`` refuse a key
this machine sees in another channel, and change nothing when they do.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from relayproc import RunningRelay

from relay.client.owner import create_channel
from relay.protocol import crypto
from relay.protocol.encoding import b64d, b64e, decode
from relay.protocol.messages import OwnerCert


class Run:
    """``relay ...`` as a subprocess in one folder, remembering every byte it printed."""

    def __init__(self, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.cwd, self.env = cwd, {**os.environ, **(env or {})}
        self.printed: list[str] = []

    def text(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "relay", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.cwd,
            env=self.env,
        )
        self.printed += [done.stdout, done.stderr]
        assert "Traceback" not in done.stderr, done.stderr
        return done

    def json(self, *args: str, code: int = 0) -> dict[str, Any]:
        done = self.text(*args, "--json")
        lines = done.stdout.strip().splitlines()
        assert len(lines) == 1, (done.stdout, done.stderr)
        out: dict[str, Any] = json.loads(lines[0])
        assert done.returncode == code, (out, done.stderr)
        return out


def secret_forms(secret_b64: str) -> list[str]:
    raw = b64d(secret_b64)
    return [secret_b64, raw.hex(), b64e(raw)[:20]]


def assert_never_printed(run: Run, secret_b64: str) -> None:
    for form in secret_forms(secret_b64):
        assert not any(form in printed for printed in run.printed), "a secret was printed"


def profile_version(run: Run, relay: RunningRelay, name: str) -> int:
    groups = run.json("admin", "groups", "--data", str(relay.data))["groups"]
    [group] = [g for g in groups if g["name"] == name]
    return int(group["profile_version"])


def signers(state_file: Path) -> dict[str, str]:
    """Each owner key of the state file's chain -> the key that signed its cert (b64)."""
    certs = json.loads(state_file.read_text())["certs"]
    out = {}
    for cert in certs:
        body = decode(b64d(cert["body"]), OwnerCert, limit=65536)
        out[b64e(body.owner_key)] = cert["signer"]
    return out


def test_create_keeps_the_root_key_out_of_the_state_file(tmp_path: Path) -> None:
    run = Run(tmp_path)
    created = run.json("owner", "create", "--state", "owner.json", "--name", "Weather")
    state_bytes = (tmp_path / "owner.json").read_bytes()
    state = json.loads(state_bytes)
    root = json.loads((tmp_path / "owner.root.json").read_text())
    # the root key file: its own, private, of this channel
    assert oct((tmp_path / "owner.root.json").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "owner.json").stat().st_mode & 0o777) == "0o600"
    assert root["kind"] == "owner-root" and root["channel"] == created["channel"]
    secret = root["root_secret"]
    assert crypto.channel_id(b64d(root["root_public"])) == b64d(created["channel"])
    # the state file: the owner key and the public root, nothing of the root secret
    assert state.get("root_secret", "") == "" and state["root_public"] == root["root_public"]
    for form in secret_forms(secret):
        assert form.encode() not in state_bytes
    assert b64d(secret) not in state_bytes
    # the command said where the root is, to move it offline, and when it is needed
    assert created["root"] == "owner.root.json"
    assert "off this machine" in created["root_advice"]
    assert "remove-owner" in created["root_needed_for"] and "--root" in created["root_needed_for"]
    text = run.text("owner", "create", "--state", "other.json", "--name", "Other")
    assert text.returncode == 0
    assert "other.root.json" in text.stdout and "off this machine" in text.stdout
    assert "It is needed only to withdraw" in text.stdout
    # --root puts it elsewhere (straight onto the stick)
    (tmp_path / "stick").mkdir()
    placed = run.json("owner", "create", "--state", "third.json", "--name", "T", "--root", "stick/t.key")
    assert placed["root"] == "stick/t.key" and (tmp_path / "stick" / "t.key").exists()
    assert not (tmp_path / "third.root.json").exists()
    # never over an existing file: a root file in the way stops create before anything is written
    (tmp_path / "fourth.root.json").write_text("precious")
    refused = run.json("owner", "create", "--state", "fourth.json", "--name", "F", code=1)
    assert refused["code"] == "exists" and "fourth.root.json" in refused["reason"]
    assert not (tmp_path / "fourth.json").exists()
    assert (tmp_path / "fourth.root.json").read_text() == "precious"
    assert_never_printed(run, secret)
    for name in ("other.root.json", "stick/t.key"):
        assert_never_printed(run, json.loads((tmp_path / name).read_text())["root_secret"])
    # no temporary file left behind
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_daily_work_needs_no_root_key(relay: RunningRelay, tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.json("owner", "create", "--state", "owner.json", "--name", "Daily")
    offline = tmp_path / "offline"
    offline.mkdir()
    shutil.move(tmp_path / "owner.root.json", offline / "owner.root.json")
    root_secret = json.loads((offline / "owner.root.json").read_text())["root_secret"]

    assert run.json("owner", "add-relay", "--state", "owner.json", relay.address)["status"] == "accepted"
    assert run.json("owner", "publish", "--state", "owner.json")["version"] == 2
    posted = run.json("owner", "post", "--state", "owner.json", "no root needed")
    assert [r["status"] for r in posted["relays"]] == ["stored"]
    # a co-owner: the new cert is signed with the owner key, and the share holds no secret
    key = run.json("owner", "new-key", "--state", "co.json")["owner_key"]
    added = run.json("owner", "add-owner", "--state", "owner.json", key, "--share", "share.json")
    assert added["version"] == 3 and added["share"] == "share.json"
    own_key = b64e(crypto.public_bytes(_owner_key(tmp_path / "owner.json")))
    assert signers(tmp_path / "owner.json")[key] == own_key
    share_bytes = (tmp_path / "share.json").read_bytes()
    share = json.loads(share_bytes)
    assert not [field for field in share if "secret" in field]
    for secret in (root_secret, json.loads((tmp_path / "owner.json").read_text())["owner_secret"]):
        assert secret.encode() not in share_bytes and b64d(secret) not in share_bytes
    co_secret = json.loads((tmp_path / "co.json").read_text())["owner_secret"]
    assert co_secret.encode() not in share_bytes
    assert run.json("owner", "adopt", "--state", "co.json", "share.json")["name"] == "Daily"
    posted = run.json("owner", "post", "--state", "co.json", "from the co-owner")
    assert [r["status"] for r in posted["relays"]] == ["stored"]
    # the creator withdraws the co-owner: its own key is root-authorised, so no root needed
    removed = run.json("owner", "remove-owner", "--state", "owner.json", key)
    assert removed["version"] == 4 and profile_version(run, relay, "Daily") == 4
    assert run.json("owner", "log", "--state", "owner.json")["relays"][0]["state"] == "active"
    assert str(run.json("owner", "link", "--state", "owner.json")["link"]).startswith("chat-relay:/c/")
    # a share is never written over a file that holds a key, and nothing is published then
    key2 = run.json("owner", "new-key", "--state", "co2.json")["owner_key"]
    before = (tmp_path / "owner.json").read_bytes()
    refused = run.json("owner", "add-owner", "--state", "owner.json", key2, "--share", "co.json", code=1)
    assert refused["code"] == "exists" and "not a share file" in refused["reason"]
    assert (tmp_path / "owner.json").read_bytes() == before and profile_version(run, relay, "Daily") == 4
    assert_never_printed(run, root_secret)


def _owner_key(state_file: Path) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    secret = json.loads(state_file.read_text())["owner_secret"]
    return ed25519.Ed25519PrivateKey.from_private_bytes(b64d(secret))


def test_withdrawing_the_key_that_authorised_yours_needs_the_root(
    relay: RunningRelay, tmp_path: Path
) -> None:
    """The creator's key is stolen: the co-owner withdraws it, which only the root can allow."""
    run = Run(tmp_path)
    run.json("owner", "create", "--state", "owner.json", "--name", "Stolen")
    run.json("owner", "create", "--state", "unrelated.json", "--name", "Unrelated")
    offline = tmp_path / "offline"
    offline.mkdir()
    shutil.move(tmp_path / "owner.root.json", offline / "owner.root.json")
    root_secret = json.loads((offline / "owner.root.json").read_text())["root_secret"]
    run.json("owner", "add-relay", "--state", "owner.json", relay.address)
    run.json("owner", "publish", "--state", "owner.json")
    key = run.json("owner", "new-key", "--state", "co.json")["owner_key"]
    run.json("owner", "add-owner", "--state", "owner.json", key, "--share", "share.json")
    run.json("owner", "adopt", "--state", "co.json", "share.json")
    stolen = b64e(crypto.public_bytes(_owner_key(tmp_path / "owner.json")))

    before = (tmp_path / "co.json").read_bytes()
    missing = run.json("owner", "remove-owner", "--state", "co.json", stolen, code=1)
    assert missing["code"] == "needs_root"
    assert "co.root.json" in missing["reason"] and "root key" in missing["reason"]
    assert "authorised this file's own key" in missing["reason"]
    text = run.text("owner", "remove-owner", "--state", "co.json", stolen)
    assert text.returncode == 1 and len(text.stderr.strip().splitlines()) == 1 and "--root" in text.stderr
    wrong = run.json(
        "owner", "remove-owner", "--state", "co.json", stolen, "--root", "unrelated.root.json", code=1
    )
    assert wrong["code"] == "wrong_root"
    not_root = run.json("owner", "remove-owner", "--state", "co.json", stolen, "--root", "share.json", code=1)
    assert not_root["code"] == "bad_root"
    assert (tmp_path / "co.json").read_bytes() == before and profile_version(run, relay, "Stolen") == 3

    removed = run.json(
        "owner", "remove-owner", "--state", "co.json", stolen, "--root", "offline/owner.root.json"
    )
    assert removed["version"] == 4 and profile_version(run, relay, "Stolen") == 4
    root_public = json.loads((tmp_path / "co.json").read_text())["root_public"]
    assert signers(tmp_path / "co.json") == {key: root_public}  # the root signed the co-owner again
    posted = run.json("owner", "post", "--state", "co.json", "the stolen key is out")
    assert [r["status"] for r in posted["relays"]] == ["stored"]
    # the withdrawn key can no longer publish
    for _ in range(2):  # version 4 is taken; then 5, from a key that is no owner any more
        stale = run.json("owner", "publish", "--state", "owner.json", code=1)
    assert [r["code"] for r in stale["relays"]] == ["unauthorised_owner"]
    assert profile_version(run, relay, "Stolen") == 4
    assert_never_printed(run, root_secret)
    assert root_secret.encode() not in (tmp_path / "co.json").read_bytes()


def test_an_old_state_file_with_the_root_key_keeps_working(relay: RunningRelay, tmp_path: Path) -> None:
    # what 'relay owner create' wrote before: the root secret in the state, no public root
    state = create_channel("Old layout")
    old = asdict(state)
    del old["root_public"], old["certs"]
    root_secret = old["root_secret"]
    assert root_secret not in repr(state) and state.owner_secret not in repr(state)  # tracebacks
    (tmp_path / "owner.json").write_text(json.dumps(old))
    run = Run(tmp_path)

    done = run.text("owner", "add-relay", "--state", "owner.json", relay.address, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == "accepted"
    assert json.loads(done.stderr)["warning"] == "root_in_state"
    text = run.text("owner", "publish", "--state", "owner.json")
    assert text.returncode == 0 and "export-root --state owner.json" in text.stderr
    posted = run.json("owner", "post", "--state", "owner.json", "still here")
    assert [r["status"] for r in posted["relays"]] == ["stored"]
    key = run.json("owner", "new-key", "--state", "co.json")["owner_key"]
    assert run.json("owner", "add-owner", "--state", "owner.json", key)["version"] == 3

    exported = run.json("owner", "export-root", "--state", "owner.json")
    assert exported["root"] == "owner.root.json" and "off this machine" in exported["summary"]
    assert oct((tmp_path / "owner.root.json").stat().st_mode & 0o777) == "0o600"
    assert json.loads((tmp_path / "owner.root.json").read_text())["root_secret"] == root_secret
    now = json.loads((tmp_path / "owner.json").read_text())
    assert now["root_secret"] == "" and root_secret not in (tmp_path / "owner.json").read_text()
    assert crypto.channel_id(b64d(now["root_public"])) == state.channel
    done = run.text("owner", "post", "--state", "owner.json", "root moved out", "--json")
    assert done.returncode == 0 and done.stderr == ""  # no warning any more
    again = run.json("owner", "export-root", "--state", "owner.json", "--root", "again.json", code=1)
    assert again["code"] == "no_root" and not (tmp_path / "again.json").exists()
    assert profile_version(run, relay, "Old layout") == 3
    assert_never_printed(run, root_secret)


def test_add_owner_refuses_a_key_of_another_channel(relay: RunningRelay, tmp_path: Path) -> None:
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir()
    elsewhere.mkdir()
    run, far = Run(here), Run(elsewhere)
    run.json("owner", "create", "--state", "a.json", "--name", "A")
    run.json("owner", "add-relay", "--state", "a.json", relay.address)
    run.json("owner", "publish", "--state", "a.json")
    b_key = run.json("owner", "create", "--state", "b.json", "--name", "B")["owner_key"]
    c_key = far.json("owner", "create", "--state", "c.json", "--name", "C")["owner_key"]
    before = (here / "a.json").read_bytes()
    files = sorted(p.name for p in here.iterdir())

    # the second channel in the same folder
    refused = run.json("owner", "add-owner", "--state", "a.json", b_key, "--share", "share.json", code=1)
    assert refused["code"] == "key_in_use" and "another channel" in refused["reason"]
    assert "b.json" in refused["reason"]
    # a channel in another folder, known from the registry
    refused = run.json("owner", "add-owner", "--state", "a.json", c_key, code=1)
    assert refused["code"] == "key_in_use" and "registry" in refused["reason"]
    # ... and from the folder alone, with a registry that never heard of it
    blank = {"CHAT_RELAY_OWNER_KEYS": str(tmp_path / "blank" / "keys.json")}
    refused = Run(here, blank).json("owner", "add-owner", "--state", "a.json", b_key, code=1)
    assert refused["code"] == "key_in_use" and "b.json" in refused["reason"]
    text = run.text("owner", "add-owner", "--state", "a.json", c_key)
    assert text.returncode == 1 and "key_in_use" in text.stderr
    # nothing changed: no file, no profile version, and the relay never saw the key
    assert (here / "a.json").read_bytes() == before and sorted(p.name for p in here.iterdir()) == files
    assert profile_version(run, relay, "A") == 2
    assert not (tmp_path / "blank").exists()

    # a key that was an owner of another channel and was withdrawn there is refused too
    d_key = far.json("owner", "new-key", "--state", "d-key.json")["owner_key"]
    far.json("owner", "add-owner", "--state", "c.json", d_key)
    far.json("owner", "remove-owner", "--state", "c.json", d_key)
    shutil.copy(elsewhere / "c.json", here / "c-copy.json")
    refused = Run(here, blank).json("owner", "add-owner", "--state", "a.json", d_key, code=1)
    assert refused["code"] == "key_in_use" and "c-copy.json" in refused["reason"]
    # a fresh key is fine, including one made in the same folder
    fresh = run.json("owner", "new-key", "--state", "fresh.json")["owner_key"]
    assert run.json("owner", "add-owner", "--state", "a.json", fresh)["version"] == 3
    # the registry holds public keys and channel ids only, privately
    registry = Path(os.environ["CHAT_RELAY_OWNER_KEYS"])
    assert oct(registry.stat().st_mode & 0o777) == "0o600"
    recorded = json.loads(registry.read_text())["keys"]
    assert {b_key, c_key, d_key, fresh} <= set(recorded)
    assert all(len(b64d(k)) == 32 and all(len(b64d(c)) == 32 for c in v) for k, v in recorded.items())
    assert "secret" not in registry.read_text()


def test_adopt_and_new_key_refuse_what_would_mix_channels(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.json("owner", "create", "--state", "a.json", "--name", "A")
    (tmp_path / "co").mkdir()  # the co-owner's folder holds only its key file
    key = run.json("owner", "new-key", "--state", "co/co.json")["owner_key"]
    run.json("owner", "add-owner", "--state", "a.json", key, "--share", "share-a.json")
    # another machine (its own folder and registry) puts the same key into channel B
    other = tmp_path / "other"
    other.mkdir()
    there = Run(other, {"CHAT_RELAY_OWNER_KEYS": str(other / "keys.json")})
    there.json("owner", "create", "--state", "b.json", "--name", "B")
    there.json("owner", "add-owner", "--state", "b.json", key, "--share", "share-b.json")
    shutil.copy(other / "share-b.json", tmp_path / "share-b.json")

    before = (tmp_path / "co" / "co.json").read_bytes()
    refused = run.json("owner", "adopt", "--state", "co/co.json", "share-b.json", code=1)
    assert refused["code"] == "key_in_use" and "registry" in refused["reason"]
    # the channel's files in the key file's folder tell the same without the registry
    shutil.copy(tmp_path / "share-a.json", tmp_path / "co" / "share-a.json")
    blank = Run(tmp_path, {"CHAT_RELAY_OWNER_KEYS": str(tmp_path / "blank.json")})
    refused = blank.json("owner", "adopt", "--state", "co/co.json", "share-b.json", code=1)
    assert refused["code"] == "key_in_use" and "share-a.json" in refused["reason"]
    assert (tmp_path / "co" / "co.json").read_bytes() == before
    assert run.json("owner", "adopt", "--state", "co/co.json", "share-a.json")["name"] == "A"

    # new-key never writes over a file: not a key file, not a state file
    for name in ("co/co.json", "a.json", "a.root.json"):
        before = (tmp_path / name).read_bytes()
        refused = run.json("owner", "new-key", "--state", name, code=1)
        assert refused["code"] == "exists" and (tmp_path / name).read_bytes() == before
    # adopt into a state file (not a key file) is refused as before
    assert run.json("owner", "adopt", "--state", "a.json", "share-a.json", code=1)["code"] == "not_a_key_file"


def test_a_new_file_on_a_file_system_without_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A root key may go straight onto a FAT stick, which has no hard links (this kernel has no
    FAT to mount, so link() answers as FAT does): created exclusively, written in place."""
    import errno

    from relay.client.statefile import create_private

    def no_links(src: object, dst: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    create_private(tmp_path / "root.json", {"kind": "owner-root"})
    assert json.loads((tmp_path / "root.json").read_text()) == {"kind": "owner-root"}
    assert oct((tmp_path / "root.json").stat().st_mode & 0o777) == "0o600"
    with pytest.raises(FileExistsError):
        create_private(tmp_path / "root.json", {"kind": "other"})
    assert json.loads((tmp_path / "root.json").read_text()) == {"kind": "owner-root"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root.json"]
