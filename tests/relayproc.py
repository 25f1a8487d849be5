"""Run the real ``relay serve`` daemon as a subprocess on loopback, for tests and benchmarks.

Nothing is mocked: the daemon binds port 0, writes its SQLite file in a temp
folder, and reports readiness through its ``relay.ready`` JSON log line, which
this helper waits for.  Every line the daemon logs is kept for assertions.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx


@dataclass
class RunningRelay:
    data: Path
    config: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    listen_on: str = "127.0.0.1:0"
    env: dict[str, str] = field(default_factory=dict)  # extra environment variables
    # A context trusting the relay's certificate, when its public port speaks TLS.
    client_tls: ssl.SSLContext | None = None
    preexec: Callable[[], None] | None = None  # run in the child before the daemon (resource limits)
    proc: subprocess.Popen[bytes] | None = None
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw_lines: list[str] = field(default_factory=list)
    address: str = ""
    listen: str = ""
    admin_listen: str = ""
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self, timeout: float = 20.0) -> RunningRelay:
        self._ready.clear()
        args = [
            sys.executable,
            "-m",
            "relay",
            "serve",
            "--data",
            str(self.data),
            "--listen",
            self.listen_on,
            "--admin-listen",
            "127.0.0.1:0",
        ]
        if self.config is not None:
            args += ["--config", str(self.config)]
        self.proc = subprocess.Popen(
            args + self.extra_args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=self.preexec,
            # RELAY_* variables of the shell running the tests would override the test's config.
            env={
                **{k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
                "PYTHONUNBUFFERED": "1",
                **self.env,
            },
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        if not self._ready.wait(timeout):
            self.kill()
            raise RuntimeError("relay did not become ready:\n" + "\n".join(self.raw_lines[-20:]))
        return self

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.raw_lines.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.lines.append(event)
            if event.get("event") == "relay.ready":
                self.address = event["address"]
                self.listen = event["listen"]
                self.admin_listen = event["admin_listen"]
                self._ready.set()

    @property
    def base_url(self) -> str:
        return f"{'https' if self.client_tls else 'http'}://{self.listen}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.admin_listen}"

    @property
    def admin_token(self) -> str:
        """The operator port's token, from the data folder (as ``relay admin --data`` reads it)."""
        return (self.data / "admin.token").read_text().strip()

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.admin_token}"}

    def admin_get(self, path: str, **kwargs: Any) -> httpx.Response:
        """GET ``path`` on the operator port as the operator (with the token)."""
        return httpx.get(f"{self.admin_url}{path}", headers=self.admin_headers, **kwargs)

    def admin_post(self, path: str, body: object = None) -> httpx.Response:
        """POST ``path`` on the operator port as the operator: the token, a JSON object body."""
        return httpx.post(
            f"{self.admin_url}{path}", headers=self.admin_headers, json={} if body is None else body
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == name]

    def wait_for_event(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(name)
            if found:
                return found[-1]
            time.sleep(0.02)
        raise AssertionError(f"no {name} event within {timeout} s")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait, and return the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> RunningRelay:
        self.stop()
        return self.start()


class RelayFactory(Protocol):
    """The ``relay_factory`` fixture: start a relay with the given ``relay.toml`` sections."""

    def __call__(self, **sections: dict[str, object]) -> RunningRelay: ...
