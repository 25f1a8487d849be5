"""The operator's files: the shipped ``config/relay.toml`` and the systemd unit."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest

from relay.server.config import Config, load_config

ROOT = Path(__file__).parent.parent


def test_shipped_config_is_exactly_the_defaults() -> None:
    assert load_config(ROOT / "config" / "relay.toml") == Config()


def test_shipped_config_documents_every_option() -> None:
    text = (ROOT / "config" / "relay.toml").read_text()
    for section, struct in msgspec.structs.asdict(Config()).items():
        assert re.search(rf"^\[{section}\]$", text, re.M), section
        for key in msgspec.structs.asdict(struct):
            # each key set on its own line, with a comment line just above it
            match = re.search(rf"^#.*\n{key} = ", text, re.M)
            assert match, f"{section}.{key} is missing or has no comment"


NO_SYSTEMD = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed on this machine"
)
UNIT = ROOT / "systemd" / "chat-relay.service"


@NO_SYSTEMD
def test_systemd_unit_verifies() -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(UNIT)], capture_output=True, text=True, timeout=60
    )
    # On a build machine the relay is not installed at the unit's ExecStart path; nothing else
    # may be reported.
    problems = [line for line in done.stderr.splitlines() if line and "is not executable" not in line]
    assert not problems, done.stderr


@NO_SYSTEMD
def test_systemd_unit_is_hardened() -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for chat-relay.service: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0, match.group(0)
