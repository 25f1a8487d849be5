"""The README's contract: its test command is what CI runs, and its quick tour works as printed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from relay.protocol.encoding import b64d, b64e, decode
from relay.protocol.messages import Signed
from relay.protocol.timeline import stored_cert
from relay.server.config import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def bash_blocks(section: str) -> list[str]:
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", body, re.S)


def test_ci_runs_the_readme_test_command() -> None:
    test_command = bash_blocks("Two commands")[1].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_tour_states_the_default_ports() -> None:
    """The tour runs on free ports (below); what it says of the defaults is checked here."""
    defaults = ServerConfig()
    tour = README.split("## Quick tour\n", 1)[1].split("\n## ", 1)[0]
    assert f"public port `{defaults.listen}`" in tour
    assert f"operator port `{defaults.admin_listen}`" in tour
    assert f"# http://{defaults.listen}/r#<fingerprint>" in tour


def test_quick_tour_works_as_printed(tmp_path: Path) -> None:
    """Both blocks run exactly as printed, in a folder of their own.  The relay listens on
    free ports instead of the defaults (7300/7301 may be taken on the machine running the
    tests): they come from the environment (``RELAY_SERVER_LISTEN``, as an operator may set
    them), which the printed commands do not mention; every later command finds the relay
    through ``./relay-data``, as printed."""
    _, owner_block = bash_blocks("Quick tour")
    with tour_relay(tmp_path) as env:
        tour = subprocess.run(
            ["bash", "-e", "-c", owner_block],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert tour.returncode == 0, tour.stdout + tour.stderr
        # the repeated add-relay printed the same group address
        addresses = re.findall(r"group_address: (\S+)", tour.stdout)
        assert len(addresses) == 2 and addresses[0] == addresses[1]
        assert "active" in tour.stdout
        state = json.loads((tmp_path / "owner.json").read_text())
        assert oct((tmp_path / "owner.json").stat().st_mode & 0o777) == "0o600"
        assert state["relays"][0]["group_address"] == addresses[0]
        # the root key went offline before any of that, and the state never held it
        root = json.loads((tmp_path / "offline" / "owner.root.json").read_text())
        assert not state.get("root_secret") and state["root_public"] == root["root_public"]
        assert "owner.root.json" in tour.stdout and "off this machine" in tour.stdout
        # the member joined through the link and was admitted, and keeps its key private
        member = json.loads((tmp_path / "member.json").read_text())
        assert [r["status"] for r in member["relays"]] == ["admitted"]
        assert oct((tmp_path / "member.json").stat().st_mode & 0o777) == "0o600"
        assert "no requests" in tour.stdout
        # the member read both posts, once each, in order
        assert re.findall(r"^#\d+ .*$", tour.stdout, re.M) == ["#1 Sunny, 24 C", "#2 Rain by 6 pm"]
        assert member["last_seq"] == 2
        # the tour ran against the relay started above, on the port it chose
        run = json.loads((tmp_path / "relay-data" / "run.json").read_text())
        assert run["listen"] != ServerConfig().listen
        assert tour.stdout.count(f"http://{run['listen']}/g/") >= 2


@contextmanager
def tour_relay(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The quick tour's relay (its first block, as printed, on free ports) in ``tmp_path``;
    yields the environment the tour's other blocks run in."""
    serve_block = bash_blocks("Quick tour")[0]
    venv = Path(sys.executable).parent.parent
    (tmp_path / ".venv").symlink_to(venv)
    # RELAY_* variables of the shell running the tests would change what the tour does.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    free_ports = {"RELAY_SERVER_LISTEN": "127.0.0.1:0", "RELAY_SERVER_ADMIN_LISTEN": "127.0.0.1:0"}
    relay = subprocess.Popen(
        ["bash", "-c", serve_block],
        cwd=tmp_path,
        env={**env, **free_ports},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "relay-data" / "run.json").exists():
            assert relay.poll() is None, relay.stdout.read().decode() if relay.stdout else ""
            assert time.monotonic() < deadline, "the relay did not start"
            time.sleep(0.05)
        yield env
    finally:
        os.killpg(relay.pid, signal.SIGTERM)
        assert relay.wait(20) == 0


def test_group_tour_works_as_printed(tmp_path: Path) -> None:
    """The group tour's block runs as printed against the quick tour's relay: two members post
    and read each other under the owner's certs, and a removed message is gone."""
    [block] = bash_blocks("Group tour")
    with tour_relay(tmp_path) as env:
        tour = subprocess.run(
            ["bash", "-e", "-c", block], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90
        )
    assert tour.returncode == 0, tour.stdout + tour.stderr
    ada = json.loads((tmp_path / "ada.json").read_text())
    bob = json.loads((tmp_path / "bob.json").read_text())
    assert ada["cert"] and ada["author_seq"] == 1 and bob["author_seq"] == 1
    assert oct((tmp_path / "ada.json").stat().st_mode & 0o777) == "0o600"
    key = b64e(stored_cert(decode(b64d(ada["cert"]), Signed, limit=10**5)).member)
    said = f"Ada ({key[:8]}): Anyone climbing on Saturday?"
    # Bob's read, then Ada's: her message each time, Bob's removed one never
    assert [line for line in tour.stdout.splitlines() if line.startswith(("Ada (", "Bob ("))] == [said, said]
    assert "Cheap ropes" not in tour.stdout
    assert "certified as member" in tour.stderr and "removed by" in tour.stderr
    club = json.loads((tmp_path / "club.json").read_text())
    assert club["kind"] == "group" and len(club["member_certs"]) == 2
