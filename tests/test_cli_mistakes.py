"""The command line's unhappy path: a corpus of user mistakes, each run through the real ``relay``.

Every case is one ``relay`` command (a subprocess, as a user types it) with one mistake in
it: a wrong path, a file of the wrong kind or shape, a permission (run as ``nobody``, the
way a service runs as its own user), a bad link or address, a number out of range, a peer
that is silent or refuses (real sockets: tests/peers.py, and a real relay), Ctrl-C at each
wait, a closed pipe.  For each the test asserts: no traceback, the right exit status (0 1
2 130), one line on stderr saying what happened (or the one JSON object on stdout with
``--json``), the state files as they were after a failure, and an end within its bound.
The cases run in parallel threads; the whole corpus takes well under a minute.
``MISTAKES_SHOW=1 pytest -s tests/test_cli_mistakes.py`` prints what each case answered, to
read the reasons through.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from peers import MODES, Peer
from relayproc import RunningRelay

from relay.client.member import MemberState, join
from relay.client.owner import OwnerState, add_relay, create_channel, publish
from relay.client.owners import new_key, write_share
from relay.client.posting import post
from relay.client.rootkey import save_new_channel
from relay.protocol.addresses import ChannelLink, parse_address
from relay.protocol.encoding import b64e
from relay.server import admintoken
from relay.server.identity import load_or_create
from relay.store.db import Database

NOBODY = 65534
ROOT = Path(__file__).resolve().parent.parent
FP = "A" * 43  # a well-formed fingerprint no relay holds
TIMEOUT = "1"  # --timeout for the cases with a silent peer
WORKERS = 8
MIN_CASES = 150


@dataclass
class Case:
    name: str
    argv: list[str]
    exit: int
    nobody: bool = False  # run as the unprivileged user
    unchanged: tuple[Path, ...] = ()  # must be as they were (content, mode, owner), or still missing
    bound: float = 10.0  # seconds it must end within (after the interrupt, for one)
    # Given the running command, returns once it waits (raises if it never does): then Ctrl-C.
    interrupt: Callable[[subprocess.Popen[str]], None] | None = None
    stdout_closed: bool = False  # the reader of stdout went away (``| head -0``)
    log: bool = False  # relay serve: stdout is its JSON log, which must say relay.start_failed
    env: dict[str, str] = field(default_factory=dict)
    says: str = ""  # words the reason must hold
    check: Callable[[str, str], None] | None = None  # anything more, given stdout and stderr


# --- the world the mistakes are made in -------------------------------------------------


@dataclass
class World:
    base: Path
    relay: RunningRelay
    owner: Path  # an active channel with posts, on the real relay
    member: Path  # an admitted member of it
    link: str
    registry: Path
    peers: dict[str, Peer]
    owner_at: dict[str, Path]  # owner files whose relay is a misbehaving peer
    member_at: dict[str, Path]
    extra: list[Peer] = field(default_factory=list)

    def peer(self, mode: str) -> Peer:
        """A peer of its own, for a case that interrupts a wait on it."""
        peer = Peer(mode)
        self.extra.append(peer)
        return peer

    def folder(self, name: str, *, owner: int = 0, mode: int = 0o755) -> Path:
        path = self.base / name
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, owner, owner)
        path.chmod(mode)
        return path

    def file(self, path: Path, content: bytes | str, *, owner: int = 0, mode: int = 0o600) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        os.chown(path, owner, owner)
        path.chmod(mode)
        return path


def _owner_state(world_base: Path, relay: RunningRelay, name: str = "Corpus") -> tuple[Path, str, Path]:
    """An active channel with three posts on ``relay``, and a member admitted to it."""
    owners = world_base / "owners"
    owners.mkdir()
    path = owners / "owner.json"
    state = create_channel(name, description="user mistakes")
    save_new_channel(state, path, owners / "owner.root.json")
    member_path = world_base / "member.json"

    async def build() -> str:
        await add_relay(state, path, relay.address)
        await publish(state, path)
        for text in (b"one", b"two", b"three"):
            await post(state, path, text)
        link = str(state.link())
        member = MemberState.new(link, name="Ada")
        await join(member, member_path)
        assert [r.status for r in member.relays] == ["admitted"]
        return link

    link = trio.run(build)
    return path, link, member_path


def held_link(world: World, name: str) -> tuple[str, Path]:
    """A channel added to the real relay but not published: joins are held."""
    folder = world.base / "held" / name
    folder.mkdir(parents=True)
    path = folder / "owner.json"
    state = create_channel(name)
    save_new_channel(state, path, folder / "owner.root.json")
    trio.run(add_relay, state, path, world.relay.address)
    return str(state.link()), path


def _at_peer(owner: Path, member: Path, peer: Peer, folder: Path) -> tuple[Path, Path]:
    """Copies of the owner and member files whose relay is ``peer``."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = json.loads(owner.read_text())
    for entry in raw["relays"]:
        group = parse_address(entry["group_address"])
        entry["contact"] = peer.contact(FP)
        entry["group_address"] = peer.group(FP, str(group.address_id))
    owner_copy = folder / f"owner-{peer.mode}.json"
    owner_copy.write_text(json.dumps(raw))
    owner_copy.chmod(0o600)
    m = json.loads(member.read_text())
    link = ChannelLink("channel", MemberState.load(member).parsed_link.channel, (peer.group(FP),))
    m.update(link=str(link), profile="", profile_version=0, last_seq=0, last_id="")
    m["relays"] = [{"address": peer.group(FP), "status": "admitted", "code": None, "reason": None}]
    member_copy = folder / f"member-{peer.mode}.json"
    member_copy.write_text(json.dumps(m))
    member_copy.chmod(0o600)
    return owner_copy, member_copy


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, owner_key_registry: Path) -> Iterator[World]:
    base = Path(tempfile.mkdtemp(prefix="relay-mistakes-"))
    base.chmod(0o755)  # nobody reaches the folders made for it
    peers: dict[str, Peer] = {}
    relay = RunningRelay(data=tmp_path_factory.mktemp("mistakes") / "relay")
    world = World(base, relay, Path(), Path(), "", owner_key_registry, peers, {}, {})
    try:
        relay.start()
        peers.update((mode, Peer(mode)) for mode in MODES)
        world.owner, world.link, world.member = _owner_state(base, relay)
        folder = base / "at-peers"
        for mode, peer in peers.items():
            world.owner_at[mode], world.member_at[mode] = _at_peer(world.owner, world.member, peer, folder)
        refused = Peer("silent")  # a port that refuses: bound, then closed
        refused.close()
        world.owner_at["refused"], world.member_at["refused"] = _at_peer(
            world.owner, world.member, refused, folder
        )
        yield world
    finally:
        relay.kill()
        for peer in [*peers.values(), *world.extra]:
            peer.close()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def cases(world: World) -> list[Case]:
    return corpus(world)


def nobody_python() -> tuple[str, dict[str, str]] | str:
    """How the user ``nobody`` runs this checkout's ``relay``: an interpreter of this Python
    version that it may execute, with this environment's packages on PYTHONPATH; else why not.
    (The test environment's own interpreter may live where only root may go, ~root/.pyenv.)"""
    import sysconfig

    paths = sysconfig.get_paths()
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys([str(ROOT), paths["purelib"], paths["platlib"]]))}
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [
        sys.executable,
        os.path.realpath(sys.executable),
        getattr(sys, "_base_executable", ""),
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
    ]
    for exe in dict.fromkeys(c for c in candidates if c and os.path.exists(c)):
        try:
            probe = subprocess.run(
                [
                    exe,
                    "-c",
                    "import sys, relay.cli, trio, cryptography, nacl, msgspec; print(sys.version_info[:2])",
                ],
                user=NOBODY,
                group=NOBODY,
                extra_groups=[],
                env={**env, "HOME": "/tmp", "PATH": os.environ.get("PATH", "")},
                cwd="/",
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0 and probe.stdout.strip() == str(tuple(sys.version_info[:2])):
            return exe, env
    return f"no Python {version} interpreter that the user nobody (uid {NOBODY}) may run with these packages"


# --- running one case -------------------------------------------------------------------


def _snapshot(path: Path) -> object:
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if path.is_dir():
        return ("dir", st.st_mode, st.st_uid, sorted((p.name, _snapshot(p)) for p in path.iterdir()))
    return ("file", st.st_mode, st.st_uid, path.read_bytes())


def _env(case: Case, world: World) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if case.nobody:
        env["HOME"] = "/tmp"
        env["CHAT_RELAY_OWNER_KEYS"] = str(world.base / "nobody-home" / "owner-keys.json")
    return {**env, **case.env}


def run_case(case: Case, world: World, python: str = sys.executable) -> list[str]:
    """Run ``case`` (with ``python``); the list of what went wrong (empty: it passed)."""
    before = {path: _snapshot(path) for path in case.unchanged}
    stdout: Any = subprocess.PIPE
    read_end = write_end = -1
    if case.stdout_closed:
        read_end, write_end = os.pipe()
        os.close(read_end)  # nobody will ever read what the command prints
        stdout = write_end
    started = time.monotonic()
    proc = subprocess.Popen(
        [python, "-m", "relay", *case.argv],
        stdout=stdout,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=_env(case, world),
        cwd=world.base,
        text=True,
        user=NOBODY if case.nobody else None,
        group=NOBODY if case.nobody else None,
        extra_groups=[] if case.nobody else None,
    )
    if write_end >= 0:
        os.close(write_end)
    if case.interrupt is not None:
        try:
            case.interrupt(proc)
        except Exception as exc:  # the command never got to the wait
            proc.kill()
            out, err = proc.communicate()
            return [f"never waited ({exc}): {out!r} {err!r}"]
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
    try:
        out, err = proc.communicate(timeout=case.bound)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return [f"did not end within {case.bound} s: {out[-300:]!r} {err[-300:]!r}"]
    took = time.monotonic() - started
    out = out or ""
    if os.environ.get("MISTAKES_SHOW"):
        print(
            f"@@ {case.name} [{proc.returncode}] {took:.1f}s",
            f"out: {out.strip()[:300]}",
            f"err: {err.strip()[:400]}",
        )
    problems = _judge(case, proc.returncode, out, err)
    for path, was in before.items():
        if _snapshot(path) != was:
            problems.append(f"{path.relative_to(world.base)} changed")
    if took > case.bound:
        problems.append(f"took {took:.1f} s")
    if problems:
        problems.append(f"stdout={out[-400:]!r} stderr={err[-400:]!r}")
    return problems


def _judge(case: Case, status: int, out: str, err: str) -> list[str]:
    problems = []
    if "Traceback" in out or "Traceback" in err:
        problems.append("a traceback")
    if status != case.exit:
        problems.append(f"exit {status}, not {case.exit}")
    as_json = "--json" in case.argv
    reason = ""
    if case.stdout_closed:
        if err:
            problems.append("a closed stdout is not a reason to complain")
        return problems
    if case.log:
        events = [json.loads(line).get("event") for line in out.splitlines() if line.startswith("{")]
        if "relay.start_failed" not in events:
            problems.append("no relay.start_failed in the log")
        lines = err.splitlines()
        if len(lines) != 1:
            problems.append(f"{len(lines)} lines on stderr")
        reason = lines[0] if lines else ""
        if as_json and lines:
            reason = json.loads(lines[0])["reason"]
    elif status != 0:
        if as_json:
            lines = out.splitlines()
            if len(lines) != 1:
                return [*problems, f"{len(lines)} lines on stdout, not one JSON object"]
            answer = json.loads(lines[0])
            if not isinstance(answer, dict) or answer.get("status") == "ok":
                problems.append("the JSON answer does not say it failed")
            elif not (answer.get("code") and answer.get("reason")):
                problems.append("the JSON answer lacks a code or a reason")
            reason = str(answer.get("reason", ""))
            for line in err.splitlines():
                try:
                    json.loads(line)
                except ValueError:
                    problems.append(f"a line on stderr that is not JSON: {line!r}")
        else:
            if out:
                problems.append("output on stdout with the failure")
            lines = err.splitlines()
            if len(lines) != 1:
                problems.append(f"{len(lines)} lines on stderr, not one")
            reason = err.strip()
    if status != 0 and not case.stdout_closed:
        if not reason.strip():
            problems.append("no reason")
        for bad in ("error: error", ": )", "{'", "b'", "Errno", "<class", "Traceback"):
            if bad in reason:
                problems.append(f"{bad!r} in the reason")
        if re.search(r"\('[\w.:-]+', \d+", reason):
            problems.append("a Python tuple in the reason")
        if reason.rstrip().endswith(":"):
            problems.append("an empty reason after a colon")
    if case.says and case.says.lower() not in (reason or out + err).lower():
        problems.append(f"the reason does not say {case.says!r}")
    if case.check is not None:
        try:
            case.check(out, err)
        except AssertionError as exc:
            problems.append(f"check: {exc}")
    return problems


# --- the corpus ---------------------------------------------------------------------------


def corpus(world: World) -> list[Case]:
    cases: list[Case] = []
    add = cases.append
    owner, member, relay = world.owner, world.member, world.relay
    owner_files = (owner, member, world.registry)
    o, m = str(owner), str(member)

    # --- numbers out of range and other usage errors: exit 2, nothing touched ---
    usage = [
        ["member", "read", "--state", m, "--since", "-5"],
        ["member", "read", "--state", m, "--since", "abc"],
        ["member", "read", "--state", m, "--timeout", "0"],
        ["member", "read", "--state", m, "--timeout", "-1"],
        ["member", "read", "--state", m, "--timeout", "nan"],
        ["member", "status", "--state", m, "--wait", "-5"],
        ["member", "status", "--state", m, "--wait", "99999"],
        ["member", "status", "--state", m, "--wait", "inf"],
        ["member", "join", "--state", str(world.base / "j.json"), "--wait", "-5", world.link],
        ["owner", "create", "--state", str(world.base / "n.json"), "--name", "x", "--max-members", "-1"],
        ["owner", "create", "--state", str(world.base / "n.json"), "--name", "x", "--kind", "bogus"],
        ["owner", "create", "--state", str(world.base / "n.json"), "--name", "x", "--admission", "maybe"],
        ["owner", "create", "--state", str(world.base / "n.json")],
        ["owner", "create", "--state", o, "--root", o, "--name", "x"],
        ["owner", "publish", "--state", o, "--max-members", "-1"],
        ["owner", "post", "--state", o],
        ["owner", "post", "--state", o, "text", "--file", o],
        ["owner", "post", "--state", o, "x", "--timeout", "1e99"],
        ["owner", "add-relay", "--state", o],
        ["admin", "groups", "--data", str(relay.data), "--state", "bogus"],
        ["admin", "groups", "--data", str(relay.data), "--limit", "0"],
        ["admin", "groups", "--data", str(relay.data), "--limit", "5000"],
        ["admin", "groups", "--data", str(relay.data), "--after", "-1"],
        ["admin", "held", "--data", str(relay.data), "--limit", "-3"],
        ["admin", "group", "99999999999999999999999", "--data", str(relay.data)],
        ["admin", "group", "0", "--data", str(relay.data)],
        ["admin", "group", "abc", "--data", str(relay.data)],
        ["admin", "retry", "-1", "--data", str(relay.data)],
        ["admin", "stats", "--admin", "127.0.0.1:abc"],
        ["admin", "stats", "--admin", "127.0.0.1:70000"],
        ["admin", "stats", "--admin", "localhost"],
        ["admin", "stats", "--admin", "::1:7301"],
        ["admin", "reject", "1", "--data", str(relay.data)],
        ["no-such-command"],
        [],
        ["owner"],
        ["member", "join", "--state", m],
        ["owner", "post", "--state", o, "x", "--no-such-option"],
    ]
    # the group commands (issue 16)
    usage += [
        ["member", "post", "--state", m],
        ["member", "post", "--state", m, "text", "--file", o],
        ["member", "post", "--state", m, "x", "--timeout", "0"],
        ["owner", "certify", "--state", o],
        ["owner", "certify", "--state", o, "--all", "--member", FP],
        ["owner", "certify", "--state", o, "--member", FP, "--keep"],
        [
            "owner",
            "create",
            "--state",
            str(world.base / "n.json"),
            "--name",
            "x",
            "--max-message-bytes",
            "-1",
        ],
        ["owner", "create", "--state", str(world.base / "n.json"), "--name", "x", "--slow-mode", "99999"],
        ["owner", "publish", "--state", o, "--messages-per-minute", "x"],
        ["owner", "moderator", "--state", o],
        ["owner", "moderator", "grant", "--state", o],
        ["owner", "ban", "--state", o],
        ["member", "remove-message", "--state", m],
    ]
    for argv in usage:
        add(Case(f"usage {' '.join(argv)}", argv, 2, unchanged=owner_files))
    for argv in usage[:12:2]:
        add(Case(f"usage --json {' '.join(argv)}", [*argv, "--json"], 2, unchanged=owner_files))

    # --- state files of the wrong kind, shape or place ---
    shapes = world.base / "shapes"
    shapes.mkdir()
    raw_owner, raw_member = json.loads(owner.read_text()), json.loads(member.read_text())
    key_file = shapes / "key.json"
    new_key(key_file)
    share = shapes / "share.json"
    write_share(OwnerState.load(owner), share)
    files: dict[str, Path] = {
        "empty": world.file(shapes / "empty.json", ""),
        "{}": world.file(shapes / "obj.json", "{}"),
        "[]": world.file(shapes / "list.json", "[]"),
        "null": world.file(shapes / "null.json", "null"),
        "a string": world.file(shapes / "str.json", '"x"'),
        "not JSON": world.file(shapes / "notjson.json", "not json {"),
        "binary": world.file(shapes / "binary.json", bytes(range(256))),
        "truncated": world.file(shapes / "truncated.json", owner.read_bytes()[:200]),
        "a folder": world.folder("shapes/folder.json"),
        "missing": shapes / "missing.json",
        "in a missing folder": shapes / "no-such-folder" / "state.json",
        "under a file": shapes / "empty.json" / "state.json",
        "the member file": member,
        "the owner file": owner,
        "the root key file": owner.parent / "owner.root.json",
        "a new key file": key_file,
        "a share file": share,
        "the key registry": world.registry,
        "owner fields of the wrong type": world.file(
            shapes / "owner-types.json", json.dumps({**raw_owner, "relays": "x"})
        ),
        "an owner key that is no key": world.file(
            shapes / "owner-key.json", json.dumps({**raw_owner, "owner_secret": "zzz"})
        ),
        "a forged owner cert": world.file(
            shapes / "owner-cert.json",
            json.dumps({**raw_owner, "owner_cert": {**raw_owner["owner_cert"], "sig": b64e(bytes(64))}}),
        ),
        "member fields of the wrong type": world.file(
            shapes / "member-types.json", json.dumps({**raw_member, "relays": [{"address": 5}]})
        ),
        "a member link that is no link": world.file(
            shapes / "member-link.json", json.dumps({**raw_member, "link": "nonsense"})
        ),
        "a member key that is no key": world.file(
            shapes / "member-key.json", json.dumps({**raw_member, "member_secret": "short"})
        ),
    }
    owner_kinds = {"the owner file"}  # valid: no mistake there
    member_kinds = {"the member file"}
    # each shape under one owner and one member command, in turn
    owner_commands = (
        ["owner", "post"],
        ["owner", "link", "--json"],
        ["owner", "publish"],
        ["owner", "log", "--json"],
    )
    member_commands = (
        ["member", "read"],
        ["member", "status", "--json"],
        ["member", "invitations"],
        ["member", "read", "--json"],
    )
    for i, (what, path) in enumerate(files.items()):
        p = str(path)
        keep = (path, owner, member)
        if what not in owner_kinds:
            command = owner_commands[i % len(owner_commands)]
            argv = [*command[:2], "--state", p, *(["hello"] if command[1] == "post" else []), *command[2:]]
            add(Case(f"{' '.join(command)}, state: {what}", argv, 1, unchanged=keep))
        if what not in member_kinds:
            command = member_commands[i % len(member_commands)]
            add(
                Case(
                    f"{' '.join(command)}, state: {what}",
                    [*command[:2], "--state", p, *command[2:]],
                    1,
                    unchanged=keep,
                )
            )
    for what in ("a folder", "in a missing folder", "under a file"):
        p = str(files[what])
        add(Case(f"owner create, state: {what}", ["owner", "create", "--state", p, "--name", "x"], 1))
        add(Case(f"owner new-key, state: {what}", ["owner", "new-key", "--state", p], 1))
        add(Case(f"member join, state: {what}", ["member", "join", "--state", p, world.link], 1))
    add(
        Case(
            "member join with another channel's file",
            ["member", "join", "--state", m, held_link(world, "Other")[0]],
            1,
            unchanged=(member,),
        )
    )
    add(
        Case(
            "owner adopt a share that is not one",
            ["owner", "adopt", "--state", str(key_file), str(files["{}"])],
            1,
            unchanged=(key_file,),
        )
    )
    add(
        Case(
            "owner adopt into an owner file",
            ["owner", "adopt", "--state", o, str(share)],
            1,
            unchanged=(owner,),
        )
    )
    add(
        Case(
            "owner post --file missing",
            ["owner", "post", "--state", o, "--file", "nope.txt"],
            1,
            unchanged=(owner,),
        )
    )
    add(
        Case(
            "owner post --file a folder",
            ["owner", "post", "--state", o, "--file", str(shapes)],
            1,
            unchanged=(owner,),
        )
    )
    add(
        Case(
            "owner remove-owner with a root file that is not one",
            ["owner", "remove-owner", "--state", o, FP, "--root", str(files["{}"])],
            1,
            unchanged=(owner,),
        )
    )

    # --- group commands on a channel that takes no member messages, and bad references ---
    for argv, says in (
        (["member", "post", "--state", m, "hello"], "no member messages"),
        (["member", "post", "--state", m, "x", "--reply-to", "#9"], "no owner post #9"),
        (["member", "post", "--state", m, "x", "--reply-to", "not-an-id"], "reply to"),
        (["member", "ban", "--state", m, "not-a-key"], "member key"),
        (["owner", "certify", "--state", o, "--all"], "no member messages"),
        (["owner", "remove-message", "--state", o, FP], "no member messages"),
        (["owner", "moderator", "grant", "--state", o, FP], "no member messages"),
        (["member", "post", "--state", m, "--file", "nope.txt"], "nope.txt"),
    ):
        add(Case(" ".join(argv[:2]) + f" ({says})", argv, 1, unchanged=(owner, member), says=says))
        add(Case(" ".join(argv[:2]) + f" --json ({says})", [*argv, "--json"], 1, unchanged=(owner, member)))

    # --- bad links and addresses ---
    fresh = world.base / "fresh"
    fresh.mkdir()
    token = world.file(fresh / "token", "t" * 32)
    o2 = fresh / "o.json"
    save_new_channel(create_channel("Fresh"), o2, fresh / "o.root.json")
    contact = relay.address
    wrong_key = (
        contact.split("#")[0]
        + "#"
        + ("B" if contact.split("#")[1][0] != "B" else "C")
        + contact.split("#")[1][1:]
    )
    for address, says in (
        ("", "not a relay address"),
        ("nonsense", "not a relay address"),
        ("http://127.0.0.1:7300/r", "fingerprint"),
        ("http://127.0.0.1:7300/r#short", "fingerprint"),
        ("ftp://127.0.0.1:7300/r#" + FP, "not a relay address"),
        ("http://127.0.0.1:99999/r#" + FP, "not a relay address"),
        ("http://127.0.0.1/r#" + FP, "not a relay address"),
        (world.link, "not a relay address"),
        (json.loads(owner.read_text())["relays"][0]["group_address"], "group address"),
        (wrong_key, "key"),
        ("http://127.0.0.1:1/r#" + FP, "cannot reach"),
        ("http://no-such-host.invalid:7300/r#" + FP, "unknown host"),
    ):
        add(
            Case(
                f"owner add-relay {address!r}",
                ["owner", "add-relay", "--state", str(o2), address],
                1,
                unchanged=(o2,),
                says=says,
            )
        )
    add(
        Case(
            "owner add-relay --json to a refused port",
            ["owner", "add-relay", "--state", str(o2), "http://127.0.0.1:1/r#" + FP, "--json"],
            1,
            unchanged=(o2,),
        )
    )
    add(
        Case(
            "owner remove-relay of a relay not in the channel",
            ["owner", "remove-relay", "--state", o, "http://127.0.0.1:1/r#" + FP],
            1,
            unchanged=(owner,),
        )
    )
    link = world.link
    no_relay = link.split("?")[0]
    for text, says in (
        ("", "not a channel link"),
        ("nonsense", "not a channel link"),
        ("chat-relay:/c/short", "channel id"),
        (no_relay, "lists no relay"),
        (no_relay + "?relay=" + contact.replace("#", "%23"), "contact address"),
        (no_relay + "?relay=nonsense", "not a relay address"),
        (contact, "not a channel link"),
        (link.replace("%23", "%23B", 1)[: len(link) + 1], ""),
        (link.replace(link.split("%23")[1][:4], "AAAA"), "key"),
    ):
        path = fresh / f"m{len(cases)}.json"
        add(
            Case(
                f"member join ({says or 'a fingerprint too long'}) {text[:50]!r}",
                ["member", "join", "--state", str(path), text],
                1,
                unchanged=(path,),
                says=says,
            )
        )
    for argv, says in (
        (["owner", "approve", "--state", o, "not-a-key"], "member id"),
        (["owner", "add-owner", "--state", o, "not-a-key"], "owner key"),
        (["owner", "remove-owner", "--state", o, "not-a-key"], "owner key"),
        (["member", "invite", "--state", m, "not-a-key", "--contact", "x"], "member id"),
    ):
        add(Case(" ".join(argv[:2]) + " with a bad key", argv, 1, unchanged=(owner, member), says=says))

    # --- silent and refusing peers: an end within the time-out, one line, nothing written ---
    for mode in [*MODES, "refused"]:
        op, mp = world.owner_at[mode], world.member_at[mode]
        t = ["--timeout", TIMEOUT]
        bound = 6.0
        peer_contact = world.peers[mode].contact(FP) if mode in world.peers else "http://127.0.0.1:1/r#" + FP
        commands = [
            ["owner", "add-relay", "--state", str(o2), peer_contact, *t],
            ["owner", "post", "--state", str(op), "hello", *t],
            ["owner", "publish", "--state", str(op), *t],
            ["owner", "log", "--state", str(op), *t],
            ["member", "status", "--state", str(mp), *t],
            ["member", "read", "--state", str(mp), *t],
            ["member", "invite", "--state", str(mp), FP, "--contact", "x", *t],
        ]
        if mode in world.peers:
            join_link = str(ChannelLink("channel", bytes(32), (world.peers[mode].group(FP),)))
            commands.append(["member", "join", "--state", str(fresh / f"join-{mode}.json"), join_link, *t])
            commands.append(
                ["admin", "stats", "--admin", world.peers[mode].hostport, "--token-file", str(token), *t]
            )
        for argv in commands:
            state = Path(argv[3]) if argv[2] == "--state" else o2
            add(Case(f"{mode} peer: {' '.join(argv[:2])}", argv, 1, unchanged=(state, o2), bound=bound))
        if mode in ("silent", "http_404"):
            for argv in (
                ["owner", "post", "--state", str(op), "hello", "--json", *t],
                ["owner", "pending", "--state", str(op), "--json", *t],
            ):
                add(Case(f"{mode} peer: {' '.join(argv[:2])} --json", argv, 1, unchanged=(op,), bound=bound))

    # the default time-out (15 s) is one a person accepts, and it holds: a silent relay ends the
    # two commands the issue names on their own
    silent = world.peers["silent"]
    add(
        Case(
            "silent peer, default time-out: owner add-relay",
            ["owner", "add-relay", "--state", str(o2), silent.contact(FP)],
            1,
            unchanged=(o2,),
            bound=20,
            says="within 15 s",
        )
    )
    join_link = str(ChannelLink("channel", bytes(32), (silent.group(FP),)))
    joined = fresh / "join-default.json"
    add(
        Case(
            "silent peer, default time-out: member join",
            ["member", "join", "--state", str(joined), join_link],
            1,
            unchanged=(joined,),
            bound=20,
            says="within 15 s",
        )
    )

    # --- Ctrl-C at each wait: exit 130, one line, promptly, files as they were ---
    def waits_on(peer: Peer) -> Callable[[subprocess.Popen[str]], None]:
        def wait(_: subprocess.Popen[str]) -> None:
            if not peer.reached.wait(15):
                raise TimeoutError("the command never reached the peer")

        return wait

    for mode in ("silent", "silent_ws"):
        for name, make in (
            ("owner add-relay", lambda p: ["owner", "add-relay", "--state", str(o2), p.contact(FP)]),
            (
                "member join",
                lambda p: [
                    "member",
                    "join",
                    "--state",
                    str(fresh / f"ctrl-c-{p.hostport}.json"),
                    str(ChannelLink("channel", bytes(32), (p.group(FP),))),
                ],
            ),
            ("admin stats", lambda p: ["admin", "stats", "--admin", p.hostport, "--token-file", str(token)]),
        ):
            if mode == "silent_ws" and name == "admin stats":
                continue  # an HTTP client gets its answer (a WebSocket upgrade it refuses) at once
            peer = world.peer(mode)
            argv = make(peer)
            state = Path(argv[3]) if argv[2] == "--state" else o2
            add(
                Case(
                    f"Ctrl-C, {mode} peer: {name}",
                    argv,
                    130,
                    unchanged=(state, o2),
                    bound=3,
                    interrupt=waits_on(peer),
                )
            )
    for name, argv_of in (
        ("owner post", lambda op, mp: ["owner", "post", "--state", str(op), "hello"]),
        ("owner publish", lambda op, mp: ["owner", "publish", "--state", str(op), "--json"]),
        ("owner pending", lambda op, mp: ["owner", "pending", "--state", str(op)]),
        ("member status", lambda op, mp: ["member", "status", "--state", str(mp)]),
        ("member read", lambda op, mp: ["member", "read", "--state", str(mp), "--json"]),
    ):
        peer = world.peer("silent_ws")
        op, mp = _at_peer(owner, member, peer, world.base / "at-peers" / f"ctrl-c-{name.replace(' ', '-')}")
        argv = argv_of(op, mp)
        add(
            Case(
                f"Ctrl-C, silent_ws peer: {name}",
                argv,
                130,
                unchanged=(op, mp),
                bound=3,
                interrupt=waits_on(peer),
            )
        )

    def held_join(name: str, json_: bool) -> Case:
        link, _ = held_link(world, name)
        path = world.base / "held" / name / "member.json"
        argv = ["member", "join", "--state", str(path), "--wait", "60", link] + (["--json"] if json_ else [])

        def waiting(_: subprocess.Popen[str]) -> None:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                groups = relay.admin_get("/admin/groups").json()["groups"]
                ids = {g["id"] for g in groups if g["name"] == name}
                held = relay.admin_get("/admin/held").json()["requests"]
                if any(r["group"] in ids for r in held):
                    time.sleep(1.0)  # the answer 'held' on its way; then the wait for the decision
                    return
                time.sleep(0.05)
            raise TimeoutError("no held request")

        def kept(out: str, err: str) -> None:
            # the relay holds the request: its key is kept, and the reason says how to ask later
            state = MemberState.load(path)
            assert [r.status for r in state.relays] == ["held"], state.relays
            assert "relay member status" in out + err

        return Case(
            f"Ctrl-C: member join --wait (held){' --json' if json_ else ''}",
            argv,
            130,
            bound=3,
            interrupt=waiting,
            check=kept,
        )

    add(held_join("HeldText", False))
    add(held_join("HeldJson", True))

    follow_state = world.base / "follow.json"
    shutil.copy(member, follow_state)

    def three_posts_shown(proc: subprocess.Popen[str]) -> None:
        lines: list[str] = []

        def read() -> None:
            assert proc.stdout is not None
            lines.extend(proc.stdout.readline() for _ in range(3))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(15)
        if lines != ["#1 one\n", "#2 two\n", "#3 three\n"]:
            raise TimeoutError(f"shown: {lines}")

    def position_kept(out: str, err: str) -> None:
        assert MemberState.load(follow_state).last_seq == 3
        assert "shown up to #3" in err, err

    add(
        Case(
            "Ctrl-C: member read --follow",
            ["member", "read", "--state", str(follow_state), "--since", "0", "--follow"],
            130,
            bound=3,
            interrupt=three_posts_shown,
            check=position_kept,
        )
    )

    # --- closed pipes: a quiet end, and the read position not moved past what was shown ---
    # Each case has state files of its own: the cases run at once, and one that wrote a
    # shared file would show as a change in another.
    pipes = world.base / "pipes"
    for n, argv in enumerate(
        (
            ["member", "read", "--state", "{m}", "--since", "0"],
            ["member", "read", "--state", "{m}", "--since", "0", "--json"],
            ["owner", "link", "--state", "{o}"],
            ["member", "invitations", "--state", "{m}"],
            ["admin", "groups", "--data", str(relay.data)],
            ["--help"],
            ["address", "--data", str(relay.data)],
        )
    ):
        own_owner = world.file(pipes / f"{n}" / "owner.json", owner.read_bytes())
        own_member = world.file(pipes / f"{n}" / "member.json", member.read_bytes())
        argv = [arg.format(m=own_member, o=own_owner) for arg in argv]
        # (argparse drops what --help cannot print, and ends 0)
        status = 0 if argv == ["--help"] else 1
        add(
            Case(
                f"closed stdout: {' '.join(argv)}",
                argv,
                status,
                stdout_closed=True,
                unchanged=(own_owner, own_member),
            )
        )

    # --- the data folder, serve, init and address ---
    data = world.base / "data"
    data.mkdir()

    def datadir(name: str, **files_: bytes | None) -> Path:
        """A data folder as relay init makes it (as root), with files replaced (None: a folder)."""
        path = data / name
        load_or_create(path)
        admintoken.load_or_create(path)
        Database(path / "relay.db").close()
        for file_name, content in files_.items():
            target = path / file_name.replace("_", ".")
            target.unlink(missing_ok=True)
            if content is None:
                target.mkdir()
            else:
                target.write_bytes(content)
        return path

    serve_args = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
    afile = world.file(data / "afile", "not a folder")
    for name, path, says in (
        ("a file as the data folder", afile, "is a file"),
        ("a damaged identity.key", datadir("badkey", identity_key=b"garbage"), "damaged"),
        ("identity.key a folder", datadir("keydir", identity_key=None), "folder"),
        ("relay.db not a database", datadir("baddb", relay_db=b"x" * 4096), "not a chat-relay database"),
        ("relay.db a folder", datadir("dbdir", relay_db=None), "relay.db"),
        ("admin.token not a token", datadir("badtoken", admin_token=b"short"), "token"),
        ("admin.token a folder", datadir("tokendir", admin_token=None), "admin.token"),
        ("the running relay's data folder", relay.data, "already running"),
    ):
        add(Case(f"serve: {name}", ["serve", "--data", str(path), *serve_args], 1, log=True, says=says))
        if name != "the running relay's data folder":
            add(Case(f"init: {name}", ["init", "--data", str(path)], 1, says=says))
    add(
        Case(
            "serve --json: a file as the data folder",
            ["serve", "--data", str(afile), *serve_args, "--json"],
            1,
            log=True,
        )
    )
    add(
        Case(
            "serve: a busy port",
            ["serve", "--data", str(data / "busy"), "--listen", relay.listen],
            1,
            log=True,
            says=relay.listen,
        )
    )
    add(
        Case(
            "serve: a busy operator port",
            [
                "serve",
                "--data",
                str(data / "busy2"),
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                relay.admin_listen,
            ],
            1,
            log=True,
        )
    )
    add(
        Case(
            "serve: --listen nowhere",
            ["serve", "--data", str(data / "n"), "--listen", "nowhere"],
            1,
            log=True,
        )
    )
    bad_toml = world.file(data / "bad.toml", "[server\nlisten = ")
    for what, config in (("missing", data / "missing.toml"), ("a folder", data), ("not TOML", bad_toml)):
        add(
            Case(
                f"serve: a config file {what}",
                ["serve", "--data", str(data / "c"), "--config", str(config)],
                1,
                log=True,
            )
        )
        add(Case(f"config check: a config file {what}", ["config", "check", "--config", str(config)], 1))
    stopped = datadir("stopped")
    add(Case("address of a stopped relay", ["address", "--data", str(stopped)], 1, says="not running"))
    add(Case("address --json of a stopped relay", ["address", "--data", str(stopped), "--json"], 1))
    stale = datadir("stale")
    world.file(
        stale / "run.json",
        json.dumps(
            {"pid": 2**22 + 7, "address": "http://127.0.0.1:7300/r#" + FP, "admin_listen": "127.0.0.1:7301"}
        ),
    )
    add(Case("address with a stale run.json", ["address", "--data", str(stale)], 1, says="not running"))
    add(
        Case(
            "admin stats with a stale run.json",
            ["admin", "stats", "--data", str(stale)],
            1,
            says="not running",
        )
    )
    add(Case("address of no folder", ["address", "--data", str(data / "none")], 1, says="relay init"))
    add(Case("address of a file", ["address", "--data", str(afile)], 1))
    add(
        Case(
            "admin stats of no folder",
            ["admin", "stats", "--data", str(data / "none")],
            1,
            says="relay serve",
        )
    )
    public = world.file(data / "public.toml", '[server]\npublic_url = "https://relay.example.org:443"\n')

    def public_address(out: str, err: str) -> None:
        assert out.startswith("https://relay.example.org:443/r#"), out

    add(
        Case(
            "address of a stopped relay with public_url",
            ["address", "--data", str(stopped), "--config", str(public)],
            0,
            check=public_address,
        )
    )

    def the_bound_address(out: str, err: str) -> None:
        assert relay.address in out, out

    add(
        Case(
            "init while the relay runs on another port",
            ["init", "--data", str(relay.data)],
            0,
            check=the_bound_address,
        )
    )
    add(
        Case(
            "address of the relay started with --listen",
            ["address", "--data", str(relay.data)],
            0,
            check=the_bound_address,
        )
    )

    # --- permissions: as nobody, the way a service runs as its own user ---
    ro = world.folder("ro")  # root's, readable by all, writable by root only
    ro_owner = world.file(ro / "owner.json", owner.read_bytes(), mode=0o644)
    ro_member = world.file(ro / "member.json", member.read_bytes(), mode=0o644)
    world.folder("nobody-home", owner=NOBODY, mode=0o700)
    mine = world.folder("mine", owner=NOBODY, mode=0o700)
    secret_owner = world.file(mine / "owner.json", owner.read_bytes())  # root's 0600 file in nobody's folder
    secret_member = world.file(mine / "member.json", member.read_bytes())
    for name, argv, says in (
        (
            "owner post, read-only folder",
            ["owner", "post", "--state", str(ro_owner), "x"],
            "permission denied",
        ),
        (
            "owner publish, read-only folder",
            ["owner", "publish", "--state", str(ro_owner)],
            "permission denied",
        ),
        (
            "owner add-relay, read-only folder",
            ["owner", "add-relay", "--state", str(ro_owner), contact],
            "permission",
        ),
        ("member read, read-only folder", ["member", "read", "--state", str(ro_member)], "permission denied"),
        (
            "member status, read-only folder",
            ["member", "status", "--state", str(ro_member)],
            "permission denied",
        ),
        (
            "member join, read-only folder",
            ["member", "join", "--state", str(ro / "new.json"), link],
            "permission",
        ),
        (
            "owner create, read-only folder",
            ["owner", "create", "--state", str(ro / "new.json"), "--name", "x"],
            "permission",
        ),
        (
            "owner new-key, read-only folder",
            ["owner", "new-key", "--state", str(ro / "k.json")],
            "permission",
        ),
        (
            "owner post, unreadable state",
            ["owner", "post", "--state", str(secret_owner), "x"],
            "permission denied",
        ),
        (
            "owner link, unreadable state",
            ["owner", "link", "--state", str(secret_owner)],
            "permission denied",
        ),
        (
            "member read, unreadable state",
            ["member", "read", "--state", str(secret_member)],
            "permission denied",
        ),
        (
            "member invitations, unreadable state",
            ["member", "invitations", "--state", str(secret_member)],
            "permission",
        ),
        (
            "owner post --file unreadable",
            ["owner", "post", "--state", str(ro_owner), "--file", str(secret_owner)],
            "permission",
        ),
        (
            "owner create, registry unwritable",
            ["owner", "create", "--state", str(mine / "c.json"), "--name", "x"],
            "registry",
        ),
    ):
        env = {"CHAT_RELAY_OWNER_KEYS": str(ro / "reg" / "keys.json")} if "registry" in name else {}
        keep = (ro, mine)
        add(Case(f"nobody: {name}", argv, 1, nobody=True, unchanged=keep, env=env, says=says))

    def handed(name: str, *, theirs: tuple[str, ...]) -> Path:
        """A data folder relay init made as root, then given to the service user with only
        the files ``theirs`` (the rest stays root's, mode 0600)."""
        path = datadir(name)
        os.chown(path, NOBODY, NOBODY)
        for name_ in theirs:
            os.chown(path / name_, NOBODY, NOBODY)
        return path

    prepared: dict[str, Callable[[str], Path]] = {
        "root's data folder": lambda tag: datadir(f"roots-{tag}"),  # root's 0700 folder
        "root's files in the service's folder": lambda tag: handed(f"handed-{tag}", theirs=()),
        "root's relay.db": lambda tag: handed(f"db-{tag}", theirs=("identity.key", "admin.token")),
        "root's admin.token": lambda tag: handed(f"token-{tag}", theirs=("identity.key", "relay.db")),
        "a data folder it cannot write": lambda tag: world.folder(f"data/readonly-{tag}"),  # root's, empty
    }
    says_for = {
        "root's data folder": "permission denied",
        "root's files in the service's folder": "belongs to root",
        "root's relay.db": "relay.db",
        "root's admin.token": "admin.token",
        "a data folder it cannot write": "permission denied",
    }
    for name, make in prepared.items():
        # serve takes its lock (an empty relay.lock) before it opens the database: a folder each
        add(
            Case(
                f"nobody serve: {name}",
                ["serve", "--data", str(make("serve")), *serve_args],
                1,
                nobody=True,
                log=True,
                says=says_for[name],
            )
        )
        folder = make("init")
        add(
            Case(f"nobody init: {name}", ["init", "--data", str(folder)], 1, nobody=True, unchanged=(folder,))
        )
    roots = datadir("roots")
    add(
        Case(
            "nobody address: root's data folder",
            ["address", "--data", str(roots)],
            1,
            nobody=True,
            says="permission",
        )
    )
    add(
        Case(
            "nobody admin stats: root's data folder",
            ["admin", "stats", "--data", str(roots)],
            1,
            nobody=True,
            says="permission",
        )
    )
    root_toml = world.file(data / "root.toml", "[policy]\n")
    add(
        Case(
            "nobody serve: root's config file",
            ["serve", "--data", str(mine / "d"), "--config", str(root_toml)],
            1,
            nobody=True,
            log=True,
        )
    )
    add(
        Case(
            "nobody config check: root's config file",
            ["config", "check", "--config", str(root_toml)],
            1,
            nobody=True,
        )
    )
    add(
        Case(
            "nobody admin: root's token file",
            [
                "admin",
                "stats",
                "--admin",
                relay.admin_listen,
                "--token-file",
                str(relay.data / "admin.token"),
            ],
            1,
            nobody=True,
        )
    )
    return cases


def _run_all(cases: list[Case], world: World, python: str = sys.executable) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(lambda case: (case, run_case(case, world, python)), cases))
    took = time.monotonic() - started
    failures = [f"- {case.name}: {'; '.join(problems)}" for case, problems in results if problems]
    print(f"{len(cases)} mistakes in {took:.1f} s")
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)
    assert world.relay.proc is not None and world.relay.proc.poll() is None  # the relay took it all


def test_a_corpus_of_user_mistakes(cases: list[Case], world: World) -> None:
    names = [case.name for case in cases]
    assert len(set(names)) == len(names), {n for n in names if names.count(n) > 1}
    assert len(cases) >= MIN_CASES, len(cases)
    _run_all([case for case in cases if not case.nobody], world)


def test_permission_mistakes_as_an_unprivileged_user(cases: list[Case], world: World) -> None:
    """The mistakes where permissions matter, made as ``nobody`` (the tests run as root, who
    may read and write anything): root's files in a service's folder, read-only folders."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to run commands as the user nobody")
    found = nobody_python()
    if isinstance(found, str):
        pytest.skip(found)
    python, env = found
    mine = [case for case in cases if case.nobody]
    assert len(mine) >= 20, len(mine)
    for case in mine:
        case.env = {**env, **case.env}
    _run_all(mine, world, python)


def test_the_group_states_of_the_command_line_are_the_relays() -> None:
    from relay.cli.admin import GROUP_STATES
    from relay.protocol.state import GroupState

    assert set(GROUP_STATES) == {state.value for state in GroupState}


def test_a_status_line_shows_a_long_wait_on_a_terminal(tmp_path: Path) -> None:
    """On a terminal, a wait longer than a second says what it waits for; with --json, nothing."""
    import pty

    peer = Peer("silent")
    try:
        owner = tmp_path / "o.json"
        save_new_channel(create_channel("Tty"), owner, tmp_path / "o.root.json")
        for extra, shown in (([], True), (["--json"], False)):
            leader, follower = pty.openpty()
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "relay",
                    "owner",
                    "add-relay",
                    "--state",
                    str(owner),
                    peer.contact(FP),
                    "--timeout",
                    "2.5",
                    *extra,
                ],
                stdout=subprocess.PIPE,
                stderr=follower,
                env={k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
            )
            os.close(follower)
            seen = b""
            while True:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
            proc.wait(10)
            os.close(leader)
            assert proc.returncode == 1
            text = seen.decode()
            assert ("waiting for" in text and peer.hostport in text) is shown, text
            assert "Traceback" not in text
    finally:
        peer.close()


def test_a_failed_join_writes_no_file_and_the_retry_with_the_right_link_works(
    world: World, tmp_path: Path
) -> None:
    """The issue's case: a mistyped link, then the corrected one, with the same --state."""
    path = tmp_path / "member.json"
    typo = world.link.replace(world.link.split("%23")[1][:4], "AAAA")
    code = subprocess.run(
        [sys.executable, "-m", "relay", "member", "join", "--state", str(path), typo], capture_output=True
    ).returncode
    assert code == 1 and not path.exists()
    done = subprocess.run(
        [sys.executable, "-m", "relay", "member", "join", "--state", str(path), world.link, "--json"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert [r["status"] for r in json.loads(done.stdout)["relays"]] == ["admitted"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_refused_post_is_not_delivered_later(world: World, tmp_path: Path) -> None:
    """A post every relay refused (the group suspended) leaves the owner's history again, so the
    next post after the resume does not deliver it as a repair."""
    owner, _, member = _owner_state(tmp_path, world.relay, name="Suspended")
    groups = world.relay.admin_get("/admin/groups").json()["groups"]
    [group] = [g for g in groups if g["name"] == "Suspended"]
    assert world.relay.admin_post(f"/admin/groups/{group['id']}/suspend").status_code == 200
    before = OwnerState.load(owner).history
    refused = subprocess.run(
        [sys.executable, "-m", "relay", "owner", "post", "--state", str(owner), "while suspended"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1, refused
    assert len(refused.stderr.splitlines()) == 1 and "suspended" in refused.stderr, refused.stderr
    assert OwnerState.load(owner).history == before
    assert world.relay.admin_post(f"/admin/groups/{group['id']}/resume").status_code == 200
    posted = subprocess.run(
        [sys.executable, "-m", "relay", "owner", "post", "--state", str(owner), "after", "--json"],
        capture_output=True,
        text=True,
    )
    assert posted.returncode == 0, posted.stderr
    answer = json.loads(posted.stdout)
    assert answer["seq"] == 4 and not answer["relays"][0].get("repaired"), answer
    read = subprocess.run(
        [sys.executable, "-m", "relay", "member", "read", "--state", str(member), "--since", "3"],
        capture_output=True,
        text=True,
    )
    assert read.stdout.splitlines() == ["#4 after"], read
