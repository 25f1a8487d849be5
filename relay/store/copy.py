"""Moving up: a stopped relay's whole SQLite database copied into an empty PostgreSQL one.

``relay migrate --data DIR --to postgresql://...`` runs this so that an operator who outgrows
one process keeps every group, address, held request, event and proof.  The copy is one
PostgreSQL transaction: it either lands whole, with every table's row count and the
trigger-kept counters checked against the source, or leaves the target as it was.

The base tables are copied with ``COPY`` in an order that satisfies their references; the
counters (``group_counts``, ``group_queues``) are not copied but rebuilt by the target's own
triggers as the rows arrive, and then compared with the source's: a difference means the
source's counters were wrong or the copy missed rows, and nothing is kept.

Must not: write to the SQLite file, copy into a database that already holds a group, or run
while a relay serves the SQLite file (the caller holds the data folder's lock).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from relay.store.errors import StoreError

# Parents before children; every table the relay keeps rows in, but the trigger-kept counters.
TABLES = (
    "groups",
    "service_log",
    "join_requests",
    "events",
    "event_heads",
    "equivocations",
    "direct_inbox",
    "timeline",
    "timeline_heads",
    "member_roster",
)
# Tables whose ``id`` the target numbers itself: its sequence must continue after the copy.
NUMBERED = ("groups", "join_requests", "equivocations", "direct_inbox")
COUNTERS = {
    "group_counts": "SELECT state, n FROM group_counts ORDER BY state",
    "group_queues": (
        "SELECT group_id, held, pending, dead, members, refused FROM group_queues ORDER BY group_id"
    ),
}
BATCH = 2000


class CopyRefused(StoreError):
    """The copy was not made (the target is not empty, or the checks failed); the target
    is as it was."""


@dataclass
class CopyReport:
    rows: dict[str, int] = field(default_factory=dict)


def copy_to_postgres(
    source: Path,
    target: psycopg.Connection,
    *,
    progress: Callable[[str, int], None] | None = None,
) -> CopyReport:
    """Copy the SQLite database at ``source`` into ``target``, whose schema is already the
    latest (created by opening it as a store).  ``target`` must not be in a transaction."""
    # Read-only, so a mistake here can never change the relay being moved.
    reader = sqlite3.connect(f"{source.absolute().as_uri()}?mode=ro", uri=True)
    report = CopyReport()
    try:
        reader.execute("BEGIN")  # one snapshot for every table
        with target.transaction():
            groups = _count(target, "groups")
            if groups:
                raise CopyRefused(
                    f"the target database already holds {groups} groups; copy only into an empty one"
                )
            for table in TABLES:
                report.rows[table] = _copy_table(reader, target, table)
                if progress is not None:
                    progress(table, report.rows[table])
            for table in NUMBERED:
                target.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"
                )
            _check(reader, target, report)
    finally:
        reader.close()
    return report


def _copy_table(reader: sqlite3.Connection, target: psycopg.Connection, table: str) -> int:
    columns = [row[1] for row in reader.execute(f"PRAGMA table_info({table})")]
    names = ", ".join(columns)
    copied = 0
    cursor = reader.execute(f"SELECT {names} FROM {table}")
    with target.cursor() as out, out.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
        while rows := cursor.fetchmany(BATCH):
            for row in rows:
                copy.write_row(row)
            copied += len(rows)
    return copied


def _check(reader: sqlite3.Connection, target: psycopg.Connection, report: CopyReport) -> None:
    """Every table's row count, and the counters the target's triggers built, as the source's."""
    for table, copied in report.rows.items():
        there = _count(target, table)
        (here,) = reader.execute(f"SELECT count(*) FROM {table}").fetchone()
        if not here == copied == there:
            raise CopyRefused(f"{table}: {here} rows in SQLite, {copied} copied, {there} in PostgreSQL")
    for table, query in COUNTERS.items():
        here_rows = [tuple(int(v) if isinstance(v, int) else v for v in row) for row in reader.execute(query)]
        there_rows = [
            tuple(int(v) if not isinstance(v, str) else v for v in row) for row in target.execute(query)
        ]
        if table == "group_counts":  # a state no group was ever in may be missing on one side
            here_rows = [row for row in here_rows if row[1]]
            there_rows = [row for row in there_rows if row[1]]
        if here_rows != there_rows:
            raise CopyRefused(f"{table}: the counters rebuilt in PostgreSQL differ from SQLite's")


def _count(target: psycopg.Connection, table: str) -> int:
    row = target.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(row[0]) if row else 0


def _plain(row: tuple[object, ...]) -> tuple[object, ...]:
    """A counter row as comparable values: PostgreSQL may give a number another type."""
    return tuple(value if isinstance(value, str) else int(value) for value in row)  # type: ignore[call-overload]
