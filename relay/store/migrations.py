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
    (
        2,
        # Capacity and remembered-refusal checks run on every invitation, on the one writer
        # thread: counting rows there grew with the table (6 ms at 100,000 groups).  Triggers
        # keep a count per state in the same transaction as the change, so reading it is O(1).
        """
        CREATE TABLE group_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
        INSERT INTO group_counts (state, n)
            SELECT value, (SELECT count(*) FROM groups WHERE groups.state = value)
            FROM (SELECT 'invited' AS value UNION ALL SELECT 'accepted' UNION ALL SELECT 'active'
                  UNION ALL SELECT 'rejected' UNION ALL SELECT 'suspended' UNION ALL SELECT 'removed');
        CREATE TRIGGER groups_count_insert AFTER INSERT ON groups BEGIN
            UPDATE group_counts SET n = n + 1 WHERE state = NEW.state;
        END;
        CREATE TRIGGER groups_count_delete AFTER DELETE ON groups BEGIN
            UPDATE group_counts SET n = n - 1 WHERE state = OLD.state;
        END;
        CREATE TRIGGER groups_count_state AFTER UPDATE OF state ON groups
        WHEN OLD.state IS NOT NEW.state BEGIN
            UPDATE group_counts SET n = n - 1 WHERE state = OLD.state;
            UPDATE group_counts SET n = n + 1 WHERE state = NEW.state;
        END;
        CREATE INDEX groups_closed_by_age ON groups (updated_at, id) WHERE state IN ('rejected', 'removed');
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
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={version}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return int(found)


def _statements(script: str) -> list[str]:
    """Split a script into statements; trigger bodies hold semicolons of their own."""
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending)
            pending = ""
    return statements
