"""The ``relay`` command's contract: one JSON object with --json, exit 0/1/2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from relayproc import RelayFactory, RunningRelay

from relay.cli import build_parser, member_ids_last
from relay.cli.common import body_line, shown_body
from relay.protocol.encoding import b64e


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``relay ARGS`` in a subprocess; ``env`` adds variables (RELAY_* of the shell are dropped)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    done = subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**clean, **(env or {})},
    )
    return done.returncode, done.stdout, done.stderr


def run_json(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    code, out, err = run(*args, "--json", env=env)
    lines = out.strip().splitlines()
    assert len(lines) == 1, (out, err)
    return code, json.loads(lines[0])


def test_init_creates_keys_once_and_never_guesses_the_address(tmp_path: Path) -> None:
    code, first = run_json("init", "--data", str(tmp_path / "d"))
    assert code == 0 and first["created"] is True and "address" not in first
    assert oct((tmp_path / "d" / "identity.key").stat().st_mode & 0o777) == "0o600"
    code, second = run_json("init", "--data", str(tmp_path / "d"))
    assert code == 0 and second["created"] is False and second["fingerprint"] == first["fingerprint"]
    # stopped, the relay's port is not known (--listen may pick any): an error, not 7300
    code, address = run_json("address", "--data", str(tmp_path / "d"))
    assert code == 1 and address["code"] == "not_running", address
    # with server.public_url the address is known without the relay running
    config = tmp_path / "relay.toml"
    config.write_text('[server]\npublic_url = "https://relay.example.org:443"\n')
    code, address = run_json("address", "--data", str(tmp_path / "d"), "--config", str(config))
    assert code == 0 and address["running"] is False
    assert address["address"] == f"https://relay.example.org:443/r#{first['fingerprint']}"
    code, third = run_json("init", "--data", str(tmp_path / "d"), "--config", str(config))
    assert code == 0 and third["address"] == address["address"]


def test_address_of_a_running_relay_uses_the_bound_port(relay: RunningRelay) -> None:
    code, out = run_json("address", "--data", str(relay.data))
    assert code == 0 and out["address"] == relay.address and out["running"] is True


def test_failures_exit_1_with_a_reason(tmp_path: Path) -> None:
    code, out = run_json("address", "--data", str(tmp_path / "nothing"))
    assert code == 1 and out["status"] == "error" and "relay init" in str(out["reason"])
    code, out = run_json(
        "owner", "add-relay", "--state", str(tmp_path / "missing.json"), "http://127.0.0.1:1/r#" + "A" * 43
    )
    assert code == 1 and "owner create" in str(out["reason"])
    code, out = run_json("admin", "groups", "--data", str(tmp_path))
    assert code == 1 and out["code"] == "unreachable"
    bad = tmp_path / "bad.toml"
    bad.write_text("[policy]\nmax_owners = 'many'\n")
    code, out = run_json("init", "--data", str(tmp_path / "d"), "--config", str(bad))
    assert code == 1 and "max_owners" in str(out["reason"])


def test_a_member_id_that_begins_with_a_dash_is_taken_as_the_member() -> None:
    # One key in 64 has a base64url text that begins with '-', which argparse reads as an option.
    member = "-B2XlcViL_sXoo5NxD7pFwLtP0lcrGDCDkROZoSpBjk"
    parser = build_parser()
    args = parser.parse_args(member_ids_last(["owner", "approve", "--state", "o.json", member, "--json"]))
    assert (args.member, args.state, args.json) == (member, "o.json", True)
    args = parser.parse_args(
        member_ids_last(["member", "invite", "--state", "m.json", member, "--contact", "c@example.org"])
    )
    assert (args.member, args.contact) == (member, "c@example.org")
    # what the user wrote with '--' stays as written; other dashed words are still options
    assert member_ids_last(["owner", "approve", "--", member]) == ["owner", "approve", "--", member]
    pending = ["owner", "pending", "--state", "o.json"]
    assert member_ids_last(pending) == pending


def test_a_body_shows_as_its_text_or_as_its_type_and_size() -> None:
    """What ``relay member read`` shows of an owner post's or a member message's body."""
    assert shown_body("text/plain", b"caf\xc3\xa9\xff\n") == {"text": "caf\u00e9\ufffd\n"}
    assert body_line("text/plain", b"two\nlines\n") == "two\nlines"  # the final newline is no line
    assert shown_body("image/png", b"\x89PNG") == {"body_b64": b64e(b"\x89PNG")}
    assert body_line("image/png", b"\x89PNG\n") == "<image/png, 5 bytes>"


def test_usage_errors_exit_2() -> None:
    code, out, err = run("owner", "create", "--json")
    answer = json.loads(out)  # with --json the usage error is the one JSON object, on stdout
    assert code == 2 and answer["code"] == "usage" and "--state" in answer["reason"] and not err
    code, out, err = run("owner", "create")
    assert code == 2 and not out and len(err.splitlines()) == 1 and "--state" in err
    code, _, _ = run("no-such-command")
    assert code == 2


def test_owner_commands_and_a_refusal(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = relay_factory(policy={"max_description_length": 10})
    state = str(tmp_path / "o.json")
    code, created = run_json(
        "owner", "create", "--state", state, "--name", "Ok", "--description", "far too long a description"
    )
    assert code == 0 and created["status"] == "ok"
    code, again = run_json("owner", "create", "--state", state, "--name", "Other")
    assert code == 1 and "already exists" in str(again["reason"])
    code, refused = run_json("owner", "add-relay", "--state", state, relay.address)
    assert code == 1 and refused["status"] == "refused" and refused["code"] == "description_too_long"

    good = str(tmp_path / "g.json")
    run_json("owner", "create", "--state", good, "--name", "Good")
    code, added = run_json("owner", "add-relay", "--state", good, relay.address)
    assert code == 0 and added["status"] == "accepted"
    code, published = run_json("owner", "publish", "--state", good)
    assert code == 0 and published["version"] == 2 and str(published["link"]).startswith("chat-relay:/c/")
    code, log = run_json("owner", "log", "--state", good)
    assert code == 0 and log["relays"][0]["state"] == "active"  # type: ignore[index]
    code, removed = run_json("owner", "remove-relay", "--state", good, relay.address)
    assert code == 0 and removed["version"] == 3 and "relay=" not in str(removed["link"])
    assert [r["state"] for r in removed["relays"]] == ["removed"]  # type: ignore[union-attr]
    code, again = run_json("owner", "remove-relay", "--state", good, relay.address)
    assert code == 1 and again["code"] == "unknown_relay"


def test_admin_commands(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = relay_factory(policy={"approval": "manual"})
    for name in ("First", "Second"):
        state = str(tmp_path / f"{name}.json")
        run_json("owner", "create", "--state", state, "--name", name)
        code, pending = run_json("owner", "add-relay", "--state", state, relay.address)
        assert code == 0 and pending["status"] == "pending_approval"
    code, listing = run_json("admin", "groups", "--data", str(relay.data))
    assert code == 0 and [g["state"] for g in listing["groups"]] == ["invited", "invited"]  # type: ignore[union-attr]
    code, page = run_json("admin", "groups", "--data", str(relay.data), "--limit", "1")
    assert code == 0 and [g["id"] for g in page["groups"]] == [1] and page["next_after"] == 1  # type: ignore[union-attr]
    code, page = run_json("admin", "groups", "--data", str(relay.data), "--limit", "1", "--after", "1")
    assert code == 0 and [g["id"] for g in page["groups"]] == [2]  # type: ignore[union-attr]
    token = ("--token-file", str(relay.data / "admin.token"))
    code, approved = run_json("admin", "approve", "1", "--admin", relay.admin_listen, *token)
    assert code == 0 and approved["group"]["state"] == "accepted"  # type: ignore[index]
    code, rejected = run_json("admin", "reject", "2", "--reason", "spam", "--data", str(relay.data))
    assert code == 0 and rejected["group"]["reason"] == "spam"  # type: ignore[index]
    code, shown = run_json("admin", "group", "2", "--data", str(relay.data))
    assert code == 0 and shown["group"]["log"][-1]["event"] == "refused"  # type: ignore[index]
    code, missing = run_json("admin", "group", "99", "--data", str(relay.data))
    assert code == 1 and missing["code"] == "unknown_group"
    code, again = run_json("owner", "add-relay", "--state", str(tmp_path / "First.json"), relay.address)
    assert (
        code == 0 and again["status"] == "accepted" and again["group_address"] == approved["group"]["address"]
    )  # type: ignore[index]


def test_serve_refuses_a_busy_port_and_a_busy_data_folder(relay: RunningRelay, tmp_path: Path) -> None:
    """Start-up failures exit 1 with one readable reason, not a traceback."""
    code, out, err = run("serve", "--data", str(tmp_path / "other"), "--listen", relay.listen, "--json")
    assert code == 1, (out, err)
    failure = json.loads(err.strip().splitlines()[-1])
    assert failure["code"] == "cannot_start" and relay.listen in failure["reason"], failure
    assert "Traceback" not in err
    assert any(json.loads(line)["event"] == "relay.start_failed" for line in out.splitlines())

    code, _, err = run("serve", "--data", str(relay.data), "--listen", "127.0.0.1:0", "--json")
    assert code == 1
    assert "already running" in json.loads(err.strip().splitlines()[-1])["reason"]
    # the running relay was not disturbed by either attempt
    code, answer = run_json("address", "--data", str(relay.data))
    assert code == 0 and answer["address"] == relay.address


def test_bad_addresses_in_the_configuration_name_the_key(tmp_path: Path) -> None:
    for toml, key in (
        ('[server]\npublic_url = "relay.example.org"\n', "server.public_url"),
        ('[server]\npublic_url = "https://relay.example.org:443/chat"\n', "server.public_url"),
        ('[server]\nlisten = "0.0.0.0"\n', "server.listen"),
        ('[server]\nadmin_listen = "127.0.0.1:70000"\n', "server.admin_listen"),
    ):
        path = tmp_path / "relay.toml"
        path.write_text(toml)
        code, out = run_json("init", "--data", str(tmp_path / "d"), "--config", str(path))
        assert code == 1 and str(out["reason"]).startswith(key), (toml, out)
    code, _, err = run("serve", "--data", str(tmp_path / "d"), "--listen", "nowhere", "--json")
    assert code == 1 and json.loads(err)["reason"].startswith("server.listen"), err


def test_private_files_and_a_stale_run_file(relay_factory: RelayFactory, tmp_path: Path) -> None:
    relay = relay_factory()
    for name in ("relay.db", "relay.db-wal", "identity.key", "run.json"):
        assert (relay.data / name).stat().st_mode & 0o077 == 0, name
    relay.kill()  # SIGKILL leaves run.json behind, naming a dead pid
    assert (relay.data / "run.json").exists()
    code, out = run_json("address", "--data", str(relay.data))
    assert code == 1 and out["code"] == "not_running", out


def test_members_and_owners_decide_through_the_command_line(relay: RunningRelay, tmp_path: Path) -> None:
    owner, member = str(tmp_path / "owner.json"), str(tmp_path / "member.json")
    assert run_json("owner", "create", "--state", owner, "--name", "Club", "--admission", "approval")[0] == 0
    assert run_json("owner", "add-relay", "--state", owner, relay.address)[0] == 0
    code, _ = run_json("owner", "link", "--state", str(tmp_path / "none.json"))
    assert code == 1
    code, link = run_json("owner", "link", "--state", owner)
    # joining before the owners publish: held, and kept
    code, joined = run_json("member", "join", "--state", member, "--name", "Ada", str(link["link"]))
    assert code == 0 and [r["status"] for r in joined["relays"]] == ["held"]  # type: ignore[union-attr,index]
    code, held = run_json("admin", "held", "--data", str(relay.data))
    assert code == 0 and [r["status"] for r in held["requests"]] == ["held"]  # type: ignore[union-attr,index]
    assert run_json("owner", "publish", "--state", owner)[0] == 0
    code, status = run_json("member", "status", "--state", member, "--wait", "10")
    assert [r["status"] for r in status["relays"]] == ["pending_approval"]  # type: ignore[union-attr,index]
    code, pending = run_json("owner", "pending", "--state", owner)
    [view] = pending["relays"]  # type: ignore[misc]
    assert [p["member"] for p in view["pending"]] == [joined["member"]]
    code, approved = run_json("owner", "approve", "--state", owner, str(joined["member"]))
    assert code == 0 and approved["relays"][0]["members"] == 1  # type: ignore[index]
    code, status = run_json("member", "status", "--state", member)
    assert code == 0 and [r["status"] for r in status["relays"]] == ["admitted"]  # type: ignore[union-attr,index]
    # a member id that is not one, and a refusal of someone not waiting
    code, out = run_json("owner", "refuse", "--state", owner, "not-a-key")
    assert code == 1 and out["code"] == "bad_type"
    code, out = run_json("owner", "refuse", "--state", owner, str(joined["member"]), "--reason", "late")
    assert code == 1 and out["code"] == "out_of_order"
    code, out = run_json("admin", "retry", "--data", str(relay.data), "12345")
    assert code == 1 and out["code"] == "not_found"
    code, text, _ = run("member", "status", "--state", member)
    assert code == 0 and "admitted" in text
