"""The storage boundary: ``relay.store`` owns every SQL statement, and writes only SQL that SQLite
and PostgreSQL share.

Two kinds of check.  A scan of the source: the server and the command line import no database
driver and run no statement, and the store's modules of SQL name no engine.  And the store's
functions run on a real SQLite file and on a real PostgreSQL server (through the store's
adapter) behind :class:`StrictConn`, which hands them exactly what ``relay.store.conn.Conn``
promises and nothing more (no ``lastrowid``, no ``close``, no ``in_transaction``), and refuses a
statement outside the common subset (``INSERT OR ...``, named parameters, parameters in a
mapping): the same answers from both engines.
"""

from __future__ import annotations

import ast
import re
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from relay.protocol.admission import Decision, JoinState
from relay.protocol.state import GroupState
from relay.store import events, groups, joins, sqlitefile
from relay.store.conn import Conn, savepoint
from relay.store.migrations import migrate

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = {"sqlite3", "psycopg", "psycopg_pool", "psycopg2", "aiosqlite"}
# The store's modules of SQL; db.py and migrations.py are the SQLite engine itself.
PORTABLE_MODULES = ("groups.py", "joins.py", "events.py", "conn.py", "timeline.py", "retention.py")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _executes(path: Path) -> list[int]:
    """Lines calling a method named ``execute``/``executemany``/``executescript``."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("execute", "executemany", "executescript")
    ]


SQL = re.compile(
    r"\b(SELECT\s+[\w*(]|INSERT\s+(OR\s+\w+\s+)?INTO\b|UPDATE\s+\w+\s+SET\b|DELETE\s+FROM\b|SAVEPOINT\b|PRAGMA\b)"
)


def _sql_strings(path: Path) -> list[tuple[int, str]]:
    return [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value)
    ]


SERVER_FILES = sorted([*(ROOT / "relay" / "server").glob("*.py"), *(ROOT / "relay" / "cli").glob("*.py")])


def test_the_scan_sees_the_server_and_would_catch_sql(tmp_path: Path) -> None:
    assert len(SERVER_FILES) > 30
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import sqlite3\nfrom psycopg import sql\n"
        "def f(conn):\n    return conn.execute('SELECT id FROM groups WHERE id = ?', (1,))\n"
    )
    assert _imports(bad) & DRIVERS == {"sqlite3", "psycopg"}
    assert _executes(bad) == [4]
    assert [line for line, _ in _sql_strings(bad)] == [4]


@pytest.mark.parametrize("path", SERVER_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_server_imports_no_driver_and_writes_no_sql(path: Path) -> None:
    assert not _imports(path) & DRIVERS, f"{path} imports a database driver: use relay.store"
    assert not _executes(path), f"{path} runs statements (lines {_executes(path)}): move them to relay.store"
    assert not _sql_strings(path), f"{path} holds SQL: move it to relay.store"


@pytest.mark.parametrize("name", PORTABLE_MODULES)
def test_the_store_modules_of_sql_name_no_engine(name: str) -> None:
    path = ROOT / "relay" / "store" / name
    assert not _imports(path) & DRIVERS
    tree = ast.parse(path.read_text(), str(path))
    engine_only = {"lastrowid", "executescript", "executemany", "in_transaction", "close", "commit"}
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)} & engine_only
    assert not used, f"{name} uses {used}: a Conn offers execute, and its rows fetchone/fetchall/rowcount"
    for _, sql in _sql_strings(path):
        assert not NOT_PORTABLE.search(sql) and not SCALAR_MAX_MIN.search(sql), f"{name}: {sql}"


# --- the store's functions on a real SQLite file, through exactly a Conn ---------------------

NOT_PORTABLE = re.compile(
    r"INSERT\s+OR\b|REPLACE\s+INTO|:[a-z_]+\b|\$\d|\bifnull\s*\(|\bgroup_concat\s*\(|\bstrftime\s*\(|"
    r"\bjulianday\s*\(|\bGLOB\b|\bprintf\s*\(|\bhex\s*\(|\bsubstr\s*\(|\blength\s*\(",
    re.IGNORECASE,
)
# Scalar max()/min() of two values (GREATEST/LEAST in PostgreSQL); the aggregates take one.
SCALAR_MAX_MIN = re.compile(r"\b(max|min)\s*\([^()]*,", re.IGNORECASE)


class StrictRows:
    """What ``Conn.execute`` promises to return, and nothing else."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cursor)


class StrictConn:
    """A ``Conn`` over a real SQLite connection that refuses SQL outside the common subset."""

    def __init__(self, conn: Conn) -> None:
        self._conn = conn
        self.statements: list[str] = []

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> StrictRows:
        assert isinstance(parameters, tuple | list), f"parameters must be a sequence: {sql}"
        assert not NOT_PORTABLE.search(sql), f"not portable SQL: {sql}"
        assert not SCALAR_MAX_MIN.search(sql), f"a scalar max()/min(): {sql}"
        assert sql.count("?") == len(parameters), sql
        self.statements.append(sql)
        return StrictRows(self._conn.execute(sql, parameters))


@pytest.fixture(params=["sqlite", "postgresql"])
def conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StrictConn]:
    """One transaction on either engine (rolled back after the test): the store's functions
    must give the same answers on both."""
    if request.param == "sqlite":
        raw = sqlite3.connect(tmp_path / "relay.db", isolation_level=None)
        migrate(raw)
        raw.execute("BEGIN")
        yield StrictConn(raw)
        raw.execute("ROLLBACK")
        raw.close()
        return
    from relay.store.postgres import PgConn, PostgresDatabase, connect

    url = request.getfixturevalue("pg_url")
    PostgresDatabase(url).close()  # the schema
    pg = connect(url)
    pg.execute("BEGIN")
    yield StrictConn(PgConn(pg))
    pg.execute("ROLLBACK")
    pg.close()


def _group(n: int) -> groups.NewGroup:
    return groups.NewGroup(
        channel=n.to_bytes(32, "big"),
        service_group=bytes(16),
        profile=b"signed profile",
        profile_version=1,
        kind="channel",
        name=f"group {n}",
    )


def test_a_new_group_is_returned_as_stored(conn: StrictConn) -> None:
    record = groups.insert(conn, _group(1), state=GroupState.INVITED, now=10, address_id="a1")
    assert record == groups.by_id(conn, record.id)
    assert record.id > 0 and record.admission == "auto" and record.admission_suspended is False
    assert type(record.channel) is bytes and type(record.profile) is bytes
    assert record.address_issued_at == 10
    other = groups.insert(conn, _group(2), state=GroupState.ACTIVE, now=11)
    assert other.id > record.id


def test_state_and_version_follow_the_row(conn: StrictConn) -> None:
    record = groups.insert(conn, _group(1), state=GroupState.ACTIVE, now=10)
    assert groups.state_and_version(conn, record.id) == (GroupState.ACTIVE, 1)
    groups.set_profile(conn, record.id, _group(1), 3, now=11)
    groups.set_state(conn, record.id, GroupState.SUSPENDED, 12)
    assert groups.state_and_version(conn, record.id) == (GroupState.SUSPENDED, 3)
    assert groups.state_and_version(conn, record.id + 1) is None


def test_channels_by_state_and_by_id(conn: StrictConn) -> None:
    states = [GroupState.ACTIVE, GroupState.SUSPENDED, GroupState.INVITED, GroupState.REMOVED]
    ids = [groups.insert(conn, _group(n), state=s, now=n).id for n, s in enumerate(states)]
    serving = groups.channels_in_states(conn, (GroupState.ACTIVE, GroupState.SUSPENDED))
    assert sorted(serving) == [(ids[0], _group(0).channel), (ids[1], _group(1).channel)]
    assert all(type(channel) is bytes for _, channel in serving)
    assert sorted(groups.channels_of(conn, [ids[2], ids[3], 999])) == [
        (ids[2], _group(2).channel),
        (ids[3], _group(3).channel),
    ]
    assert groups.channels_of(conn, []) == []


def test_joins_insert_returns_the_arrival_order(conn: StrictConn) -> None:
    group = groups.insert(conn, _group(1), state=GroupState.ACTIVE, now=1)
    held = Decision(JoinState.HELD)
    ann = joins.NewJoin(group.id, b"k" * 32, b"request", "ann")
    first = joins.insert(conn, ann, held, 5)
    second = joins.insert(conn, joins.NewJoin(group.id, b"m" * 32, b"request", "bob"), held, 6)
    assert 0 < first < second
    assert joins.by_id(conn, first) == joins.row_of(ann, held, 5, first)
    # The intake's insert returns the row as stored but for its id, which it does not read back.
    carl = joins.NewJoin(group.id, b"c" * 32, b"request", "carl")
    stored = joins.insert_row(conn, carl, Decision(JoinState.ADMITTED), 7)
    assert stored.id == 0
    assert joins.by_member(conn, group.id, b"c" * 32) == joins.row_of(
        carl, Decision(JoinState.ADMITTED), 7, second + 1
    )
    assert [row.id for row in joins.due(conn, group.id, 0, 10)] == [first, second]
    assert joins.totals(conn) == joins.QueueCounts(held=2, members=1)
    view = joins.intake_view(conn, group.id, b"m" * 32)
    assert view is not None and view.existing_id == second and view.held == 2 and view.undecided == 2
    joins.record_failure(conn, second, "boom", 100, dead=True)
    joins.record_failure(conn, first, "boom", 100, dead=False)
    assert joins.counts(conn, group.id) == joins.QueueCounts(held=1, dead=1, members=1)
    assert joins.retry(conn, second) is True and joins.retry(conn, second) is False


def test_the_event_head_is_upserted_and_retention_drops_the_oldest(conn: StrictConn) -> None:
    group = groups.insert(conn, _group(1), state=GroupState.ACTIVE, now=1).id
    head = events.head(conn, group)
    for seq in range(1, 6):
        head = events.append(
            conn, group, head, seq=seq, event_id=bytes([seq]) * 32, event=b"e" * 10, created_at=seq, now=seq
        )
        assert events.head(conn, group) == head
    assert type(head.head_id) is bytes and head.count == 5 and head.bytes == 50
    assert events.prune_to_size(conn, group, head, max_events=3, max_bytes=10_000) == 2
    assert events.head(conn, group).first_seq == 3
    assert events.prune_older_than(conn, stored_before=5, limit=100) == {group: 2}  # never the head
    assert [seq for seq, _ in events.read_after(conn, group, 0, 10)] == [5]
    assert events.totals(conn) == events.Totals(events=1, bytes=10, pruned=4)
    totals = events.totals(conn)
    assert all(type(v) is int for v in (totals.events, totals.bytes, totals.pruned, totals.inbox))


def test_a_savepoint_undoes_its_block_alone(conn: StrictConn) -> None:
    kept = groups.insert(conn, _group(1), state=GroupState.ACTIVE, now=1).id
    with pytest.raises(ValueError), savepoint(conn, "request"):
        groups.set_state(conn, kept, GroupState.REMOVED, 2)
        raise ValueError("undo")
    assert groups.state_and_version(conn, kept) == (GroupState.ACTIVE, 1)
    with savepoint(conn, "request"):
        groups.set_state(conn, kept, GroupState.SUSPENDED, 3)
    assert groups.state_and_version(conn, kept) == (GroupState.SUSPENDED, 1)


def test_the_sqlite_file_problems_in_words(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"
    path.write_bytes(b"x" * 4096)
    with pytest.raises(sqlite3.DatabaseError) as damaged:
        migrate(sqlite3.connect(path))
    assert sqlitefile.problem(damaged.value, path) == (
        f"{path} is not a chat-relay database (file is not a database): restore it from a backup, "
        "or give another --data"
    )
    locked = sqlite3.OperationalError("database is locked")
    assert sqlitefile.problem(locked, path) == f"cannot open the database {path}: database is locked"
    assert sqlitefile.problem(ValueError("no"), path) is None
