"""Servers under test, each a subprocess on loopback port 0: ``relay serve`` or the echo baseline.

The daemon's JSON log goes to a file in its temp folder (not a pipe this process would have to
drain, which would cost the benchmark process CPU); readiness is its ``relay.ready`` line, as in
``tests/relayproc.py``.  Memory (RSS), CPU time and database size are read from outside, with
psutil and the file system, so measuring changes nothing in the daemon.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import psutil

READY_EVENTS = ("relay.ready", "echo.ready", "fanout.ready")
DB_FILES = ("relay.db", "relay.db-wal")


@dataclass
class Daemon:
    """One server subprocess; ``command`` is the argument list after ``python -m``."""

    command: list[str]
    workdir: Path
    name: str = "relay"
    env: dict[str, str] = field(default_factory=dict)  # extra environment (RELAY_STORAGE_URL, say)
    proc: subprocess.Popen[bytes] | None = None
    ready: dict[str, Any] = field(default_factory=dict)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 30.0) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *self.command],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and event.get("event") in READY_EVENTS:
                    self.ready = event
                    return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.kill()
        tail = self.log_path.read_text(errors="replace").splitlines()[-20:]
        raise RuntimeError(f"{self.name} did not become ready:\n" + "\n".join(tail))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def listen(self) -> str:
        return str(self.ready["listen"])

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the daemon (all its threads) so far."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def main_thread_cpu_seconds(self) -> float:
        """User + system CPU time of the daemon's main thread (the relay's trio thread) so far."""
        for thread in psutil.Process(self.pid).threads():
            if thread.id == self.pid:
                return float(thread.user_time + thread.system_time)
        return 0.0

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, and return the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


# Every benchmark client runs on this machine, so the relay sees them all as one source (one
# IPv4 address): its budgets per source (256 connections, 20 new ones per second, 200 requests
# per second) would measure themselves, not the relay.  ``[server]`` lines every relay.toml of
# the benchmarks carries.
ONE_SOURCE = (
    "max_connections_per_ip = 1000000\nconnections_per_ip_per_second = 1000000.0\n"
    "connection_burst_per_ip = 1000000\nrequests_per_ip_per_second = 1000000.0\n"
    "request_burst_per_ip = 1000000\n"
)


def relay_config(path: Path, max_groups: int) -> Path:
    """Default configuration, except ``policy.max_groups`` raised to hold every benchmark group
    and the budgets per source out of the way (every client and owner is on loopback)."""
    path.write_text(
        "# Written by python -m benchmarks: the defaults, with room for every benchmark group.\n"
        f"[server]\n{ONE_SOURCE}[policy]\nmax_groups = {max_groups}\n"
        "invitations_per_ip_per_minute = 1000000000.0\nmax_pending_groups_per_ip = 1000000000\n"
    )
    return path


def prefill(data: Path, groups: int) -> None:
    """Put ``groups`` synthetic groups in a new relay database, as a long-running relay holds:
    three quarters live (accepted), one quarter remembered refusals (rejected)."""
    import secrets
    import sqlite3

    from relay.store.migrations import migrate

    data.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(data / "relay.db", isolation_level=None)
    migrate(conn)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO groups (channel, service_group, state, address_id, profile, profile_version, kind, "
        "name, invited_at, updated_at) VALUES (?, ?, ?, ?, ?, 1, 'channel', 'prefilled', ?, ?)",
        (
            (
                secrets.token_bytes(32),
                secrets.token_bytes(16),
                "rejected" if n % 4 == 3 else "accepted",
                None if n % 4 == 3 else secrets.token_urlsafe(16),
                secrets.token_bytes(600),
                n,
                n,
            )
            for n in range(groups)
        ),
    )
    conn.execute("COMMIT")
    conn.close()


@dataclass
class RelayDaemon(Daemon):
    """``relay serve`` with its data folder in ``workdir/data``."""

    @classmethod
    def create(
        cls, workdir: Path, max_groups: int, profile: Path | None = None, prefilled: int = 0
    ) -> RelayDaemon:
        """``profile``: run the relay under cProfile, which writes its stats there on exit;
        ``prefilled``: synthetic groups put in its database before it starts."""
        workdir.mkdir(parents=True, exist_ok=True)
        if prefilled:
            prefill(workdir / "data", prefilled)
        config = relay_config(workdir / "relay.toml", max_groups)
        profiler = ["cProfile", "-o", str(profile), "-m"] if profile is not None else []
        command = [
            *profiler,
            "relay",
            "serve",
            "--data",
            str(workdir / "data"),
            "--config",
            str(config),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ]
        return cls(command=command, workdir=workdir, name="relay")

    @property
    def address(self) -> str:
        return str(self.ready["address"])

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    def db_sizes(self) -> dict[str, int]:
        """Bytes of ``relay.db`` and ``relay.db-wal`` (0 for a file that does not exist)."""
        sizes = {}
        for name in DB_FILES:
            try:
                sizes[name] = (self.data / name).stat().st_size
            except FileNotFoundError:
                sizes[name] = 0
        return sizes

    def metrics(self) -> dict[str, float]:
        """The operator port's Prometheus text, as ``{"name{labels}": value}``."""
        return read_metrics(self, timeout=10)

    def wait_idle(self, timeout: float = 15.0) -> None:
        """Until the relay reports no open public connection (then a short settle)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.metrics().get("relay_connections_open", 0) == 0:
                break
            time.sleep(0.1)
        time.sleep(0.5)


def echo_daemon(workdir: Path) -> Daemon:
    return Daemon(command=["benchmarks.echo_server"], workdir=workdir, name="echo")


def read_metrics(relay: Daemon, timeout: float = 30.0) -> dict[str, float]:
    """A relay's ``/metrics`` (its operator port) as ``{"name{labels}": value}``."""
    text = httpx.get(f"http://{relay.ready['admin_listen']}/metrics", timeout=timeout).text
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values
