"""The operator's commands: ``relay admin ...``, over the operator port.

Listing and deciding groups, the join-request queue, statistics and online
backups.  Each command is one call of ``relay.client.admin.AdminClient`` on the
operator port (found from ``--admin`` or the running relay's ``run.json`` in
``--data``), carrying the operator token (``DATA/admin.token``, ``--token-file``
or ``RELAY_ADMIN_TOKEN``).  This module must not open the relay's database or
files itself: the running relay does all the work, even writing the backup.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from relay.cli.common import DEFAULT_TIMEOUT, add_command, count, host_port, ident, page_size

# The states a group can be in (relay.protocol.state.GroupState; a test keeps them equal).
GROUP_STATES = ("invited", "accepted", "active", "rejected", "suspended", "removed")
BACKUP_TIMEOUT = 3600.0  # a large database takes a while to copy


def _admin(args: argparse.Namespace) -> Any:
    from relay.client.admin import AdminClient, admin_address, admin_token

    data = Path(args.data) if args.data else None
    address = admin_address(data, args.admin)
    token_file = Path(args.token_file).expanduser() if args.token_file else None
    return AdminClient(address, admin_token(data, token_file), timeout=args.timeout)


def cmd_admin_groups(args: argparse.Namespace) -> dict[str, Any]:
    limit = _limit(args)
    with _admin(args) as admin:
        return _paged("groups", admin.groups(args.state_filter, after=args.after, limit=limit), limit)


def _limit(args: argparse.Namespace) -> int:
    return int(args.limit)


def _paged(key: str, page: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    result: dict[str, Any] = {"status": "ok", key: page}
    if len(page) == limit:
        result["next_after"] = page[-1]["id"]  # more may follow: pass it as --after
    return result


def cmd_admin_group(args: argparse.Namespace) -> dict[str, Any]:
    with _admin(args) as admin:
        return {"status": "ok", "group": admin.group(args.id)}


def cmd_admin_approve(args: argparse.Namespace) -> dict[str, Any]:
    with _admin(args) as admin:
        return {"status": "ok", "group": admin.approve(args.id)}


def cmd_admin_reject(args: argparse.Namespace) -> dict[str, Any]:
    with _admin(args) as admin:
        return {"status": "ok", "group": admin.reject(args.id, args.reason)}


def cmd_admin_held(args: argparse.Namespace) -> dict[str, Any]:
    limit = _limit(args)
    with _admin(args) as admin:
        return _paged("requests", admin.held(dead_only=args.dead, after=args.after, limit=limit), limit)


def cmd_admin_retry(args: argparse.Namespace) -> dict[str, Any]:
    with _admin(args) as admin:
        return {"status": "ok", "request": admin.retry(args.id)}


def cmd_admin_suspend(args: argparse.Namespace) -> dict[str, Any]:
    with _admin(args) as admin:
        return {"status": "ok", "group": admin.suspend(args.id, args.reason)}


def cmd_admin_resume(args: argparse.Namespace) -> dict[str, Any]:
    with _admin(args) as admin:
        return {"status": "ok", "group": admin.resume(args.id)}


def cmd_admin_remove(args: argparse.Namespace) -> dict[str, Any]:
    with _admin(args) as admin:
        return {"status": "ok", "group": admin.remove(args.id, args.reason)}


def cmd_admin_stats(args: argparse.Namespace) -> dict[str, Any]:
    with _admin(args) as admin:
        return {"status": "ok", **admin.stats()}


def cmd_admin_backup(args: argparse.Namespace) -> dict[str, Any]:
    # The relay writes the file itself, into its backup folder: a bare name is sent as it is
    # (the relay puts it there), any other path made absolute, to mean the same to the relay.
    name = str(args.file)
    target = name if "/" not in name else str(Path(name).expanduser().absolute())
    with _admin(args) as admin:
        return {"status": "ok", **admin.backup(target, timeout=args.timeout)}


def add_commands(sub: Any) -> None:
    """``relay admin`` and its subcommands on the top-level subparsers."""
    admin = sub.add_parser("admin", help="operator commands (operator port)").add_subparsers(
        dest="admin_cmd", required=True
    )
    for name, func, help_ in (
        ("groups", cmd_admin_groups, "list groups"),
        ("group", cmd_admin_group, "show one group and its service log"),
        ("approve", cmd_admin_approve, "approve a group waiting for manual approval"),
        ("reject", cmd_admin_reject, "reject a group waiting for manual approval"),
        ("held", cmd_admin_held, "list join requests still queued (held or dead-lettered)"),
        ("retry", cmd_admin_retry, "put a dead-lettered join request back in its queue"),
        ("suspend", cmd_admin_suspend, "suspend an active group (resume undoes it)"),
        ("resume", cmd_admin_resume, "resume a suspended group"),
        ("remove", cmd_admin_remove, "remove a group for good; repeated invitations are refused"),
        ("stats", cmd_admin_stats, "groups by state, connections, database commits, uptime, version"),
        ("backup", cmd_admin_backup, "write an online backup of the database to a new FILE (backup folder)"),
    ):
        p = add_command(
            admin, name, func, help_, timeout=BACKUP_TIMEOUT if name == "backup" else DEFAULT_TIMEOUT
        )
        p.add_argument("--data", help="the relay's data folder: its run.json and admin.token")
        p.add_argument("--admin", type=host_port, help="operator HOST:PORT")
        p.add_argument(
            "--token-file", help="the operator token's file (default: DATA/admin.token or $RELAY_ADMIN_TOKEN)"
        )
        if name in ("groups", "held"):
            p.add_argument("--after", type=count, default=0, help="only those with an id above this")
            p.add_argument("--limit", type=page_size, default=100, help="at most this many (1 to 1000)")
        if name == "groups":
            p.add_argument(
                "--state", dest="state_filter", choices=GROUP_STATES, help="only groups in this state"
            )
        elif name == "held":
            p.add_argument("--dead", action="store_true", help="only dead-lettered requests")
        elif name == "backup":
            p.add_argument(
                "file",
                metavar="FILE",
                help="a new file name, written by the relay into storage.backup_dir (default DATA/backups), "
                "or an absolute path inside that folder (mode 0600)",
            )
        elif name != "stats":
            p.add_argument("id", type=ident, help="the id 'relay admin groups' (or 'held') shows")
        if name == "reject":
            p.add_argument("--reason", required=True)
        if name in ("suspend", "remove"):
            p.add_argument("--reason", help="told to the owners in the service log")
