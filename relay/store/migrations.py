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
    (
        3,
        # Members' join requests: the durable queue.  A row is the member key's one request per
        # group (UNIQUE), so a duplicate can never become a second membership.  The per-group
        # counts live in their own small table, kept by triggers: updating them in ``groups``
        # would rewrite the profile blob on every request.  The owners' admission rules are
        # copied out of the signed profile into columns, so the intake never decodes it.
        """
        ALTER TABLE groups ADD COLUMN admission TEXT NOT NULL DEFAULT 'auto';
        ALTER TABLE groups ADD COLUMN max_members INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE groups ADD COLUMN admission_suspended INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE group_queues (
            group_id INTEGER PRIMARY KEY,
            held INTEGER NOT NULL DEFAULT 0,
            pending INTEGER NOT NULL DEFAULT 0,
            dead INTEGER NOT NULL DEFAULT 0,
            members INTEGER NOT NULL DEFAULT 0,
            refused INTEGER NOT NULL DEFAULT 0
        );
        INSERT INTO group_queues (group_id) SELECT id FROM groups;
        CREATE TRIGGER groups_queue_insert AFTER INSERT ON groups BEGIN
            INSERT INTO group_queues (group_id) VALUES (NEW.id);
        END;
        CREATE TRIGGER groups_queue_delete AFTER DELETE ON groups BEGIN
            DELETE FROM group_queues WHERE group_id = OLD.id;
        END;
        CREATE TABLE join_requests (
            id INTEGER PRIMARY KEY,
            group_id INTEGER NOT NULL REFERENCES groups (id),
            member_key BLOB NOT NULL,
            request BLOB NOT NULL,
            name TEXT NOT NULL,
            status TEXT NOT NULL,
            code TEXT,
            reason TEXT,
            received_at INTEGER NOT NULL,
            decided_at INTEGER,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_ms INTEGER NOT NULL DEFAULT 0,
            last_error TEXT
        );
        CREATE UNIQUE INDEX join_requests_member ON join_requests (group_id, member_key);
        CREATE INDEX join_requests_held ON join_requests (group_id, id) WHERE status = 'held';
        CREATE INDEX join_requests_waiting_age ON join_requests (received_at)
            WHERE status IN ('held', 'dead');
        CREATE INDEX join_requests_dead ON join_requests (id) WHERE status = 'dead';
        CREATE INDEX join_requests_pending ON join_requests (group_id, id) WHERE status = 'pending_approval';
        CREATE INDEX join_requests_refused ON join_requests (group_id, id) WHERE status = 'refused';
        CREATE TRIGGER join_count_insert AFTER INSERT ON join_requests BEGIN
            UPDATE group_queues SET
                held = held + (NEW.status = 'held'),
                pending = pending + (NEW.status = 'pending_approval'),
                dead = dead + (NEW.status = 'dead'),
                members = members + (NEW.status = 'admitted'),
                refused = refused + (NEW.status = 'refused')
            WHERE group_id = NEW.group_id;
        END;
        CREATE TRIGGER join_count_delete AFTER DELETE ON join_requests BEGIN
            UPDATE group_queues SET
                held = held - (OLD.status = 'held'),
                pending = pending - (OLD.status = 'pending_approval'),
                dead = dead - (OLD.status = 'dead'),
                members = members - (OLD.status = 'admitted'),
                refused = refused - (OLD.status = 'refused')
            WHERE group_id = OLD.group_id;
        END;
        CREATE TRIGGER join_count_status AFTER UPDATE OF status ON join_requests
        WHEN OLD.status IS NOT NEW.status BEGIN
            UPDATE group_queues SET
                held = held - (OLD.status = 'held') + (NEW.status = 'held'),
                pending = pending - (OLD.status = 'pending_approval') + (NEW.status = 'pending_approval'),
                dead = dead - (OLD.status = 'dead') + (NEW.status = 'dead'),
                members = members - (OLD.status = 'admitted') + (NEW.status = 'admitted'),
                refused = refused - (OLD.status = 'refused') + (NEW.status = 'refused')
            WHERE group_id = NEW.group_id;
        END;
        """,
    ),
    (
        4,
        # Channel traffic.  ``events`` holds each owner event exactly as signed (the encoded
        # ``Signed``), one row per (group, seq); ``event_heads`` is the per-group summary read on
        # every post (head, oldest kept, count and bytes for retention), kept in the same
        # transaction as the rows.  Equivocation proofs keep both signed events.  The direct
        # invitation inbox holds sealed invitations for members who are not subscribed.
        # Triggers forget a group's traffic with the group.
        """
        CREATE TABLE events (
            group_id INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            id BLOB NOT NULL,
            event BLOB NOT NULL,
            created_at INTEGER NOT NULL,
            stored_at INTEGER NOT NULL,
            size INTEGER NOT NULL,
            PRIMARY KEY (group_id, seq)
        );
        CREATE INDEX events_age ON events (stored_at);
        CREATE TABLE event_heads (
            group_id INTEGER PRIMARY KEY,
            head_seq INTEGER NOT NULL,
            head_id BLOB NOT NULL,
            head_created_at INTEGER NOT NULL,
            first_seq INTEGER NOT NULL,
            count INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            pruned INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE equivocations (
            id INTEGER PRIMARY KEY,
            group_id INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            kept BLOB NOT NULL,
            other BLOB NOT NULL,
            at INTEGER NOT NULL
        );
        CREATE INDEX equivocations_group ON equivocations (group_id, seq);
        CREATE TABLE direct_inbox (
            id INTEGER PRIMARY KEY,
            group_id INTEGER NOT NULL,
            member_key BLOB NOT NULL,
            request BLOB NOT NULL,
            stored_at INTEGER NOT NULL
        );
        CREATE INDEX direct_inbox_member ON direct_inbox (group_id, member_key, id);
        CREATE INDEX direct_inbox_age ON direct_inbox (stored_at);
        CREATE TRIGGER groups_traffic_delete AFTER DELETE ON groups BEGIN
            DELETE FROM events WHERE group_id = OLD.id;
            DELETE FROM event_heads WHERE group_id = OLD.id;
            DELETE FROM equivocations WHERE group_id = OLD.id;
            DELETE FROM direct_inbox WHERE group_id = OLD.id;
        END;
        """,
    ),
    (
        5,
        # A refused invitation is remembered by the digest of its profile and the reason, not the
        # profile itself (an empty ``profile``): refusals cost an attacker nothing to cause.
        # Refusals stored whole before this are reduced the same way.
        """
        ALTER TABLE groups ADD COLUMN profile_digest BLOB;
        UPDATE groups SET profile = X'' WHERE state = 'rejected' AND reason_code NOT IN
            ('rejected_by_operator');
        """,
    ),
    (
        7,
        # Groups (issue 16): each group's timeline of member certs, messages and moderations,
        # placed by this relay (``pos`` 1, 2, ... per group), with ``after`` the owner head at
        # the moment it was placed.  ``entry`` is the signed entry as its signer sent it, NULL
        # once a message is removed (the place and its id stay: the running hash still
        # checks).  ``author``/``author_seq`` index members' own chains, ``subject`` what a
        # moderation names.  ``timeline_heads`` is the per-group summary (last place, running
        # hash, oldest kept, count and bytes for retention); ``member_roster`` each member's
        # current cert, the head of its own chain, and what moderation did to it.  (Version 6
        # is another branch's.)
        """
        CREATE TABLE timeline (
            group_id INTEGER NOT NULL,
            pos INTEGER NOT NULL,
            after INTEGER NOT NULL,
            kind TEXT NOT NULL,
            id BLOB NOT NULL,
            entry BLOB,
            author BLOB,
            author_seq INTEGER,
            subject BLOB,
            stored_at INTEGER NOT NULL,
            size INTEGER NOT NULL,
            PRIMARY KEY (group_id, pos)
        );
        CREATE UNIQUE INDEX timeline_id ON timeline (group_id, id);
        CREATE UNIQUE INDEX timeline_author ON timeline (group_id, author, author_seq);
        CREATE INDEX timeline_subject ON timeline (group_id, subject) WHERE subject IS NOT NULL;
        CREATE INDEX timeline_age ON timeline (stored_at);
        CREATE TABLE timeline_heads (
            group_id INTEGER PRIMARY KEY,
            pos INTEGER NOT NULL,
            hash BLOB NOT NULL,
            first_pos INTEGER NOT NULL,
            count INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            pruned INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE member_roster (
            group_id INTEGER NOT NULL,
            member BLOB NOT NULL,
            cert_id BLOB,
            cert BLOB,
            role TEXT NOT NULL DEFAULT 'member',
            issued_at INTEGER NOT NULL DEFAULT 0,
            head_seq INTEGER NOT NULL DEFAULT 0,
            head_id BLOB,
            head_created_at INTEGER NOT NULL DEFAULT 0,
            removed_at INTEGER,
            banned INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (group_id, member)
        );
        CREATE INDEX events_id ON events (group_id, id);
        CREATE TRIGGER groups_timeline_delete AFTER DELETE ON groups BEGIN
            DELETE FROM timeline WHERE group_id = OLD.id;
            DELETE FROM timeline_heads WHERE group_id = OLD.id;
            DELETE FROM member_roster WHERE group_id = OLD.id;
        END;
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
