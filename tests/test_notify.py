"""systemd's notification protocol, spoken by the real daemon to a socket the test binds."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from relayproc import RunningRelay

from relay.server.notify import Notifier


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    # A short folder of its own: Unix socket paths are limited to 108 bytes.
    folder = tempfile.mkdtemp(prefix="sdn")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    yield sock, path
    sock.close()
    os.unlink(path)
    os.rmdir(folder)


def receive_all(sock: socket.socket, until: float) -> list[dict[str, str]]:
    messages = []
    while time.monotonic() < until:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
    return messages


def test_ready_watchdog_and_stopping(notify_socket: tuple[socket.socket, str], tmp_path: Path) -> None:
    sock, path = notify_socket
    relay = RunningRelay(data=tmp_path / "d", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    relay.start()
    try:
        messages = receive_all(sock, time.monotonic() + 1.0)
        ready = [m for m in messages if m.get("READY") == "1"]
        assert len(ready) == 1 and relay.listen in ready[0]["STATUS"], messages
        # every 0.1 s for a 0.2 s watchdog: several in a second, however slow the machine
        assert sum(m.get("WATCHDOG") == "1" for m in messages) >= 4, messages
        assert not any("STOPPING" in m for m in messages)
        assert relay.stop() == 0
        after = receive_all(sock, time.monotonic() + 0.3)
        assert any(m.get("STOPPING") == "1" for m in after), after
    finally:
        relay.kill()


def test_watchdog_meant_for_another_process_is_ignored(
    notify_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, path = notify_socket
    relay = RunningRelay(
        data=tmp_path / "d",
        env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"},
    )
    relay.start()
    try:
        messages = receive_all(sock, time.monotonic() + 0.6)
        assert any(m.get("READY") == "1" for m in messages)
        assert not any("WATCHDOG" in m for m in messages), messages
    finally:
        assert relay.stop() == 0


def test_abstract_socket_names_and_no_socket() -> None:
    name = f"chat-relay-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready("serving")
        assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
    quiet = Notifier({})
    assert not quiet.enabled and not quiet.ready("serving") and quiet.watchdog_seconds is None
    # a socket nobody listens on any more: dropped, not raised
    assert not Notifier({"NOTIFY_SOCKET": "@" + name}).stopping()
