"""The operator's files: the shipped ``config/relay.toml`` and the systemd unit."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import msgspec
import msgspec.inspect as mi
import pytest
import trio
from docs_tables import DOCS, marked_tables, render_option, toml_value, unquote

from relay.server.app import RELOADABLE
from relay.server.config import Config, load_config
from relay.server.public import keep_alive

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


OPERATIONS = marked_tables(DOCS / "operations.md")


def test_the_operations_guide_has_a_table_per_config_section() -> None:
    sections = [table.name for table in OPERATIONS if table.kind == "config"]
    assert sections == list(Config.__struct_fields__)


@pytest.mark.parametrize("section", list(Config.__struct_fields__))
def test_a_config_table_matches_its_struct(section: str) -> None:
    """Every option of the section, in order, with its default, its values, and whether SIGHUP
    applies it: an option added to relay/server/config.py without a row fails here."""
    [table] = [t for t in OPERATIONS if t.kind == "config" and t.name == section]
    assert table.header == [f"`[{section}]` option", "default", "values", "on SIGHUP", "what"]
    defaults = getattr(Config(), section)
    info = mi.type_info(type(defaults))
    assert isinstance(info, mi.StructType)
    assert [unquote(row[0]) for row in table.rows] == [field.name for field in info.fields]
    for row, field in zip(table.rows, info.fields, strict=True):
        where = f"operations.md:{table.line}: {section}.{field.name}"
        default = toml_value(row[1])
        wanted = getattr(defaults, field.name)
        assert default == wanted and type(default) is type(wanted), f"{where}: default {row[1]}"
        assert row[2] == render_option(field.type), f"{where}: values"
        assert row[3] == ("applied" if section in RELOADABLE else "restart"), f"{where}: on SIGHUP"
        assert len(row[4]) >= 10, f"{where}: say what it does"


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


DOCKERFILE = ROOT / "Dockerfile"


def test_dockerfile_meets_the_container_checklist() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert len(stages) == 2 and "python:3.11-slim" in text, stages  # multi-stage, slim base
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("0", "root")), user  # non-root
    assert re.search(r'^VOLUME \["/data"\]', text, re.M)
    assert re.search(r"^EXPOSE 7300 7301$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*127\.0\.0\.1:7301/healthz", text, re.M)
    entry = re.search(r"^ENTRYPOINT (.*)$", text, re.M)
    cmd = re.search(r"^CMD (.*)$", text, re.M)
    assert entry and cmd
    argv = [*json.loads(entry.group(1)), *json.loads(cmd.group(1))]
    assert argv == [
        "relay",
        "serve",
        "--data",
        "/data",
        "--listen",
        "0.0.0.0:7300",
        "--admin-listen",
        "127.0.0.1:7301",
    ]
    # the documented entry point is this one, with a stop time-out longer than the drain and the
    # public URL (inside, the relay listens on 0.0.0.0, which no client can dial)
    line = re.search(r"`docker build -t chat-relay \. && (docker run .*)`", (ROOT / "README.md").read_text())
    assert line, "no container line in the README"
    assert "--stop-timeout 30" in line.group(1) and "-e RELAY_SERVER_PUBLIC_URL=http" in line.group(1)
    assert line.group(1).endswith("-v relay-data:/data -p 7300:7300 chat-relay")


def _docker_works() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "version"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _docker_works(), reason="docker is not installed or its daemon is not running")
def test_docker_image_builds() -> None:
    done = subprocess.run(
        ["docker", "build", "-q", "-t", "chat-relay:test", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr


async def test_public_connections_get_tcp_keepalive() -> None:
    """A subscribed member has no idle time-out: the kernel's keepalive finds a vanished one."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = trio.socket.socket()
    await client.connect(listener.getsockname())
    accepted, _ = await listener.accept()
    on, off = trio.SocketStream(accepted), trio.SocketStream(client)
    keep_alive(on, Config().server.tcp_keepalive)
    keep_alive(off, 0)
    assert on.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    assert on.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
    assert on.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 15
    assert off.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    for stream in (on, off):
        await stream.aclose()
    listener.close()
