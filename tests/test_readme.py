"""The README's contract: its test command is what CI runs, and its quick tour works as printed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def bash_blocks(section: str) -> list[str]:
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", body, re.S)


def test_ci_runs_the_readme_test_command() -> None:
    test_command = bash_blocks("Two commands")[1].strip()
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.skipif(
    not _port_free(7300) or not _port_free(7301),
    reason="the tour uses the default ports 7300/7301, which are taken here",
)
def test_quick_tour_works_as_printed(tmp_path: Path) -> None:
    serve_block, owner_block = bash_blocks("Quick tour")
    venv = Path(sys.executable).parent.parent
    (tmp_path / ".venv").symlink_to(venv)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    relay = subprocess.Popen(
        ["bash", "-c", serve_block],
        cwd=tmp_path,
        env=env,
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
    finally:
        os.killpg(relay.pid, signal.SIGTERM)
        assert relay.wait(20) == 0
