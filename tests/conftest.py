"""Shared fixtures: a factory that runs the real daemon (see ``relayproc.py``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from pgserver import PgServer, find_bindir
from relayproc import RelayFactory, RunningRelay


@pytest.fixture(autouse=True, scope="session")
def owner_key_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The owner commands' key registry (relay.client.ownerkeys) in a temporary folder, for
    the tests and every ``relay`` they start, never the user's own."""
    path = tmp_path_factory.mktemp("registry") / "owner-keys.json"
    before = os.environ.get("CHAT_RELAY_OWNER_KEYS")
    os.environ["CHAT_RELAY_OWNER_KEYS"] = str(path)
    yield path
    if before is None:
        del os.environ["CHAT_RELAY_OWNER_KEYS"]
    else:
        os.environ["CHAT_RELAY_OWNER_KEYS"] = before


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A real PostgreSQL server for the session (see ``pgserver.py``); a test that stops it
    must start it again."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): install Debian's postgresql package")
    server = PgServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database on the session's PostgreSQL server."""
    if not pg_server.running():  # a test before stopped it and failed
        pg_server.start()
    return pg_server.create_database()


ENGINES = ("sqlite", "postgresql")


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """The database the relays of a test store in: SQLite unless the test is parametrized
    with ``@pytest.mark.parametrize("engine", ENGINES, indirect=True)``."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def relay_factory(tmp_path: Path, engine: str, request: pytest.FixtureRequest) -> Iterator[RelayFactory]:
    """Start real relays: ``relay_factory(policy={...}, server={...})`` writes a relay.toml.
    With the ``postgresql`` engine each relay gets a database of its own on the session's
    server (``RELAY_STORAGE_URL``), kept across its restarts."""
    started: list[RunningRelay] = []
    counter = iter(range(1000))
    server: PgServer | None = request.getfixturevalue("pg_server") if engine == "postgresql" else None

    def start(**sections: dict[str, object]) -> RunningRelay:
        n = next(counter)
        config = None
        if sections:
            config = tmp_path / f"relay{n}.toml"
            config.write_text(to_toml(sections))
        env = {"RELAY_STORAGE_URL": server.create_database()} if server is not None else {}
        relay = RunningRelay(data=tmp_path / f"relay{n}", config=config, env=env)
        started.append(relay)
        return relay.start()

    yield start
    for relay in started:
        relay.kill()


@pytest.fixture
def relay(relay_factory: RelayFactory) -> RunningRelay:
    return relay_factory()


def to_toml(sections: dict[str, dict[str, object]]) -> str:
    import json

    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            # json.dumps writes TOML-compatible strings, numbers and arrays; booleans differ
            text = ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"
