"""``relay serve --processes N``: a supervisor that runs N relay processes sharing the public port.

Each child is an ordinary ``python -m relay serve`` with the same ``--data``/``--config``/
``--listen``, ``server.reuse_port`` forced on (``RELAY_SERVER_REUSE_PORT=true``) and an operator
port of its own (``admin_listen``'s port + i; port 0 stays 0).  The children write their JSON
log to the supervisor's stdout and stderr (inherited).  SIGTERM, SIGINT and SIGHUP are passed on
to every child.  A child that ends on its own (a failure at start, a crash) makes the supervisor
stop the others and exit 1, so the service manager restarts the whole: the supervisor restarts
nothing itself.  It exits once every child has.

Must not: implement any part of the relay (the children are the daemon), open the database,
or run with SQLite (processes on one SQLite file would each believe their own answers: the
caller refuses it before anything starts).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import structlog

from relay.server.config import Config, split_host_port

log = structlog.get_logger("relay.supervisor")

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def admin_listen_of(admin_listen: str, index: int) -> str:
    """Child ``index``'s operator address: the port + index (0, "any free port", stays 0)."""
    host, port = split_host_port(admin_listen)
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port + index if port else 0}"


def child_command(*, data: Path, config: Path | None, listen: str | None, admin_listen: str) -> list[str]:
    command = [sys.executable, "-m", "relay", "serve", "--data", str(data), "--admin-listen", admin_listen]
    if config is not None:
        command += ["--config", str(config)]
    if listen:
        command += ["--listen", listen]
    return command


@dataclass
class Supervisor:
    """The children and what became of them (see the module's docstring)."""

    commands: list[list[str]]
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    stopping: bool = False
    failed: list[int] = field(default_factory=list)  # exit statuses of children that ended on their own

    def _forward(self, signum: int, _: FrameType | None) -> None:
        if signum != signal.SIGHUP:
            self.stopping = True
        self._signal_all(signum)

    def _signal_all(self, signum: int) -> None:
        # os.kill, not Popen.send_signal: that one polls, and could reap a child the wait
        # below must see.  A child not yet waited for keeps its pid (a zombie), so none is reused.
        for child in self.children:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)

    def run(self) -> int:
        """Start the children, wait for them all; 0 if every one stopped cleanly when asked."""
        environ = {**os.environ, "RELAY_SERVER_REUSE_PORT": "true"}
        previous = {signum: signal.signal(signum, self._forward) for signum in FORWARDED}
        try:
            for command in self.commands:
                if self.stopping:
                    break
                self.children.append(subprocess.Popen(command, env=environ, stdin=subprocess.DEVNULL))
            log.info("supervisor.started", processes=len(self.children), pids=[c.pid for c in self.children])
            remaining = {child.pid: child for child in self.children}
            while remaining:
                pid, status = os.wait()  # PEP 475: a forwarded signal does not end the wait
                child = remaining.pop(pid, None)
                if child is None:
                    continue
                child.returncode = os.waitstatus_to_exitcode(status)
                if not self.stopping or child.returncode not in (0, -signal.SIGTERM, -signal.SIGINT):
                    log.error("supervisor.child_exited", pid=pid, status=child.returncode)
                    self.failed.append(child.returncode)
                if not self.stopping:
                    # One process gone: stop the others, so the service manager restarts the whole.
                    self.stopping = True
                    self._signal_all(signal.SIGTERM)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        log.info("supervisor.stopped", failed=len(self.failed))
        return 1 if self.failed else 0


def supervise(
    config: Config, *, processes: int, data: Path, config_path: Path | None, listen: str | None
) -> int:
    """Run ``processes`` relay processes (``config`` is the loaded configuration, overrides
    applied; PostgreSQL); the exit status."""
    commands = [
        child_command(
            data=data,
            config=config_path,
            listen=listen,
            admin_listen=admin_listen_of(config.server.admin_listen, index),
        )
        for index in range(processes)
    ]
    return Supervisor(commands).run()
