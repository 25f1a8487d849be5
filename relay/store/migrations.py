"""Numbered schema migrations, applied in order inside one transaction each.

The schema version lives in ``PRAGMA user_version``.  Never edit a migration
that has shipped: add the next number.  No policy here.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE groups (
            id INTEGER PRIMARY KEY,
            channel BLOB NOT NULL UNIQUE,
            service_group BLOB NOT NULL,
            state TEXT NOT NULL,
            reason_code TEXT,
            reason TEXT,
            address_id TEXT UNIQUE,
            address_issued_at INTEGER,
            profile BLOB NOT NULL,
            profile_version INTEGER NOT NULL,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            invited_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            activation_deadline INTEGER
        );
        CREATE INDEX groups_by_state ON groups (state, activation_deadline);
        CREATE TABLE service_log (
            group_id INTEGER NOT NULL REFERENCES groups (id),
            seq INTEGER NOT NULL,
            at INTEGER NOT NULL,
            event TEXT NOT NULL,
            detail TEXT NOT NULL,
            PRIMARY KEY (group_id, seq)
        ) WITHOUT ROWID;
        """,
    ),
]

LATEST = MIGRATIONS[-1][0]


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to the latest version; return the version found before."""
    (found,) = conn.execute("PRAGMA user_version").fetchone()
    if found > LATEST:
        raise RuntimeError(f"the database schema is version {found}, newer than this relay knows ({LATEST})")
    for version, script in MIGRATIONS:
        if version <= found:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return int(found)
