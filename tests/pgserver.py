"""A real PostgreSQL server for the tests, started from the Debian server binaries.

``PgServer`` runs ``initdb`` and ``pg_ctl`` in a temporary folder on a free loopback port, as
an unprivileged user (``initdb`` refuses root: as root the commands run as ``nobody`` through
``runuser``), reachable over TCP only, with PostgreSQL's own durability settings (fsync on).
``create_database()`` gives each test a fresh database; ``stop()``/``start()`` restart the
server under a running test.

Must not: touch a server it did not start, or leave one running after the session.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "relay"  # the cluster's superuser (trust authentication on loopback only)


def find_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None when this machine has none."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        try:
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.CalledProcessError):
            pass
    # Debian keeps the server binaries out of PATH, one folder per major version: newest first.
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    candidates += [Path(p) for p in debian]
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One throw-away PostgreSQL cluster (see the module's docstring)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        # Not under pytest's tmp folder: that one is private to root, and the server runs as nobody.
        self.folder = Path(tempfile.mkdtemp(prefix="relay-pg-"))
        self.data = self.folder / "data"
        self.logfile = self.folder / "server.log"
        self.port = _free_port()
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", "nobody", "--"]
            shutil.chown(self.folder, "nobody")
        self._names = itertools.count(1)
        self._run(
            "initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-instructions"
        )

    @property
    def url(self) -> str:
        """The maintenance database's URL (``postgres``)."""
        return self.url_of("postgres")

    def url_of(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c max_connections=100 -c shared_buffers=32MB"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o", options, "-w", "-t", "60", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back open transactions and disconnect every client)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        if not self.data.exists():
            return False
        done = subprocess.run(
            [*self._as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "status"],
            cwd=self.folder,
            capture_output=True,
        )
        return done.returncode == 0

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"relay_{next(self._names)}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url_of(name)

    def destroy(self) -> None:
        if self.running():
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as_user, str(self.bindir / program), *args],
            cwd=self.folder,  # the unprivileged user may not be able to read the caller's folder
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-2000:] if self.logfile.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}\n{log}")
