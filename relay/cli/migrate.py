"""``relay migrate``: a stopped relay's SQLite state moved into PostgreSQL.

An operator who outgrows one process keeps every group, address, held request, event and
proof: the relay's identity stays in the data folder, its database is copied whole into an
empty PostgreSQL database (``relay.store.copy``), and the relay is started again with
``storage.url`` naming it.  The SQLite file is left as it was, as the way back.

Must not: run while a relay serves the data folder (it takes the folder's lock, as
``relay serve`` does), copy into a database that holds a group, or print a password.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from relay.cli.common import Failure, add_command


def cmd_migrate(args: argparse.Namespace) -> dict[str, Any]:
    from relay.server.app import DB_FILE, data_dir_lock
    from relay.server.datadir import StartupError, explained
    from relay.store.copy import CopyRefused, copy_to_postgres
    from relay.store.db import Database
    from relay.store.errors import StoreError
    from relay.store.pgurl import is_postgres_url, redacted

    data = Path(args.data)
    url: str = args.to
    shown = redacted(url)
    if not is_postgres_url(url):
        raise Failure(
            f"--to {shown!r} is not a PostgreSQL URL (postgresql://USER@HOST:PORT/DB)", code="usage"
        )
    source = data / DB_FILE
    if not source.is_file():
        raise Failure(f"no relay database in {data} (no {DB_FILE}): nothing to migrate", code="no_database")
    try:
        with data_dir_lock(data):
            with explained(source, data):
                # Brings an older file to this version's schema, as `relay serve` would.
                Database(source).close()
            from relay.store.postgres import PostgresDatabase, connect

            PostgresDatabase(url).close()  # the target's schema, made or checked
            target = connect(url)
            try:
                report = copy_to_postgres(source, target)
            finally:
                target.close()
    except StartupError as exc:
        raise Failure(str(exc), code="bad_data_folder") from None
    except CopyRefused as exc:
        raise Failure(f"nothing was copied: {exc}", code="not_copied") from None
    except StoreError as exc:
        raise Failure(f"cannot use the database {shown}: {exc}", code="database_unavailable") from None
    except Exception as exc:  # the driver's own errors from the copy itself
        if type(exc).__module__.split(".")[0] != "psycopg":
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Failure(f"nothing was copied: {reason}", code="not_copied") from None
    rows = report.rows
    return {
        "status": "ok",
        "to": shown,
        "rows": rows,
        "summary": (
            f"copied {rows['groups']} groups, {rows['join_requests']} join requests and {rows['events']} "
            f'events into {shown}; now start the relay with storage.url = "{shown}" '
            f"(or RELAY_STORAGE_URL); {source} is left as it was"
        ),
    }


def add_commands(sub: Any) -> None:
    p = add_command(
        sub,
        "migrate",
        cmd_migrate,
        "copy a stopped relay's SQLite database into an empty PostgreSQL database",
    )
    p.add_argument("--data", required=True, help="the relay's data folder (it must not be running)")
    p.add_argument(
        "--to", required=True, metavar="URL", help="postgresql://USER@HOST:PORT/DB, an empty database"
    )
