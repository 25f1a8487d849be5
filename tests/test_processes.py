"""Several relay processes sharing one port: ``server.reuse_port`` and ``relay serve --processes N``.

Real parts only: the supervisor and its relay processes are the real ``python -m relay serve``
on loopback, storing in a real PostgreSQL server (``pg_server``); the SQLite refusals run the
real command line.  Which process answered a client is read from each process's own operator
port (``relay_process_info``, ``relay_invitations_total``), which names the process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pgserver import PgServer
from relayproc import RunningRelay
from test_flow import new_owner

from relay.client import add_relay

ENV = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**ENV, **(env or {})},
    )


def metrics_of(admin_listen: str) -> dict[str, float]:
    values = {}
    for line in httpx.get(f"http://{admin_listen}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def wait_ready(relay: RunningRelay, count: int, timeout: float = 30.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = relay.events("relay.ready")
        if len(ready) >= count:
            return ready
        assert relay.proc is not None and relay.proc.poll() is None, relay.raw_lines[-20:]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} relay.ready within {timeout} s: {relay.raw_lines[-20:]}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (already ended, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def fleet(pg_server: PgServer, tmp_path: Path) -> RunningRelay:
    if not pg_server.running():
        pg_server.start()
    port = free_port()
    relay = RunningRelay(
        data=tmp_path / "data",
        listen_on=f"127.0.0.1:{port}",
        extra_args=["--processes", "2"],
        env={"RELAY_STORAGE_URL": pg_server.create_database()},
    )
    yield relay.start()
    relay.kill()


async def test_two_processes_share_the_port_and_each_serves(fleet: RunningRelay, tmp_path: Path) -> None:
    ready = wait_ready(fleet, 2)
    assert len({line["pid"] for line in ready}) == 2
    assert {line["listen"] for line in ready} == {fleet.listen}, "one public port for both"
    assert len({line["address"] for line in ready}) == 1, "one identity, one contact address"
    processes = {str(line["process"]): str(line["admin_listen"]) for line in ready}
    assert len(processes) == 2 and all(len(p) == 8 for p in processes)
    for process, admin in processes.items():
        pid = next(line["pid"] for line in ready if line["process"] == process)
        assert metrics_of(admin)[f'relay_process_info{{pid="{pid}",process="{process}"}}'] == 1

    def accepted(admin: str) -> float:
        return metrics_of(admin).get('relay_invitations_total{outcome="accepted"}', 0)

    # Each invitation is a new connection: the kernel spreads them over the two processes.
    # Invite new channels until each process has accepted one (2^-40 that 40 all land on one).
    for n in range(40):
        state, path = new_owner(tmp_path, name=f"Channel {n}")
        await add_relay(state, path, fleet.address)
        if all(accepted(admin) >= 1 for admin in processes.values()):
            break
    counts = [accepted(admin) for admin in processes.values()]
    assert all(c >= 1 for c in counts), counts
    # Both processes store in the one database: either one's operator port sees every group.
    for admin in processes.values():
        token = (fleet.data / "admin.token").read_text().strip()
        groups = httpx.get(
            f"http://{admin}/admin/groups", headers={"authorization": f"Bearer {token}"}, timeout=10
        ).json()["groups"]
        assert len(groups) == sum(counts)
    run = json.loads((fleet.data / "run.json").read_text())
    assert run["pid"] in {line["pid"] for line in ready} and run["address"] == fleet.address
    assert not (fleet.data / "relay.lock").exists(), "no lock on a folder the processes share"

    # SIGTERM to the supervisor stops every process; it exits 0 once they have.
    assert fleet.stop() == 0
    for line in ready:
        assert not pid_alive(int(str(line["pid"])))
    assert len(fleet.events("relay.stopped")) == 2
    stopped = fleet.events("supervisor.stopped")
    assert stopped and stopped[-1]["failed"] == 0


def test_a_process_failing_at_start_stops_the_others(pg_server: PgServer, tmp_path: Path) -> None:
    if not pg_server.running():
        pg_server.start()
    admin = free_port()
    with socket.socket() as taken:  # the second process's operator port (admin + 1) is in use
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", admin + 1))
        taken.listen()
        done = run_cli(
            "serve",
            "--data",
            str(tmp_path / "data"),
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--admin-listen",
            f"127.0.0.1:{admin}",
            "--processes",
            "2",
            env={"RELAY_STORAGE_URL": pg_server.create_database()},
        )
    assert done.returncode == 1, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    failed = [line for line in lines if line["event"] == "relay.start_failed"]
    assert failed and str(admin + 1) in failed[0]["reason"]
    supervisor = [line["event"] for line in lines if line["event"].startswith("supervisor.")]
    assert supervisor[-1] == "supervisor.stopped"
    assert "relay process ended on its own" in done.stderr


def test_processes_refused_with_sqlite(tmp_path: Path) -> None:
    done = run_cli("serve", "--data", str(tmp_path / "data"), "--processes", "2")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--processes needs PostgreSQL" in done.stderr
    assert not (tmp_path / "data" / "relay.db").exists(), "nothing started"
    done = run_cli("serve", "--data", str(tmp_path / "data"), "--processes", "0")
    assert done.returncode == 2 and "1 or more" in done.stderr


def test_reuse_port_with_sqlite_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text("[server]\nreuse_port = true\n")
    done = run_cli("config", "check", "--config", str(config))
    assert done.returncode == 1
    assert "server.reuse_port" in done.stderr and "storage.url" in done.stderr
    done = run_cli("config", "check", env={"RELAY_SERVER_REUSE_PORT": "true"})
    assert done.returncode == 1 and "RELAY_SERVER_REUSE_PORT" in done.stderr
    done = run_cli(
        "config",
        "check",
        "--config",
        str(config),
        env={"RELAY_STORAGE_URL": "postgresql://relay@127.0.0.1:5432/relay"},
    )
    assert done.returncode == 0, done.stderr
    # serve refuses it too, before anything starts.
    done = run_cli("serve", "--data", str(tmp_path / "data"), "--config", str(config))
    assert done.returncode == 1 and "server.reuse_port" in done.stderr


ROOT = Path(__file__).resolve().parent.parent


def _compose_works() -> bool:
    try:
        return (
            subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _compose_works(), reason="docker compose is not installed")
def test_docker_compose_file_is_valid() -> None:
    done = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**ENV, "RELAY_DB_PASSWORD": "secret", "RELAY_PUBLIC_URL": "https://relay.example.org:443"},
    )
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert services["postgres"]["image"] == "postgres:15"
    for name in ("relay-1", "relay-2"):
        relay = services[name]
        assert relay["environment"]["RELAY_STORAGE_URL"].endswith("@postgres:5432/relay")
        assert [v["source"] for v in relay["volumes"]] == ["relay-identity"]
        assert relay["healthcheck"] and relay["stop_grace_period"]


def test_docker_compose_file_has_the_fleet() -> None:
    """Without a YAML parser among the dependencies, the file's parts are read as text: one
    PostgreSQL 15, two relay services built from one anchor (one identity volume, one database
    URL, a health check, a stop grace period), each on its own host port."""
    text = (ROOT / "docker-compose.yml").read_text()
    services = text.split("\nservices:\n", 1)[1].split("\nvolumes:\n", 1)[0]
    names = [
        line.strip().rstrip(":")
        for line in services.splitlines()
        if line.startswith("  ") and not line.startswith("   ")
    ]
    assert names == ["postgres", "relay-1", "relay-2"]
    assert "    image: postgres:15\n" in services and "pg_isready" in services
    anchor = text.split("x-relay: &relay\n", 1)[1].split("\nservices:\n", 1)[0]
    assert 'RELAY_STORAGE_URL: "postgresql://relay:${RELAY_DB_PASSWORD' in anchor
    assert "@postgres:5432/relay" in anchor and "relay-identity:/data" in anchor
    assert "healthcheck:" in anchor and "/healthz" in anchor and "stop_grace_period: 30s" in anchor
    assert "condition: service_healthy" in anchor
    assert services.count("<<: *relay") == 2 and services.count("stop_grace_period") == 1
    assert '"7300:7300"' in services and '"7310:7300"' in services
