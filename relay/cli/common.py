"""What every ``relay`` command shares: declaring it, failing, printing its answer.

A command is a function of the parsed arguments that returns one JSON-able
dict (or ``None`` when it printed as it went) or raises :class:`Failure`;
:func:`add_command` gives it the ``--json`` option, and :func:`print_result`
prints its answer as one JSON object or as text for people.  This module must
not hold commands or know one audience's arguments, and must not import
``relay.server`` or ``relay.client``: the command modules import them lazily so
that ``relay --help`` and the client commands do not load the daemon.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Failure(Exception):
    """A command failed; ``fields`` go into the JSON answer."""

    def __init__(self, reason: str, /, **fields: Any) -> None:
        super().__init__(reason)
        self.fields = {"status": "error", "reason": reason, **fields}


def add_command(parent: Any, name: str, func: Callable[..., Any], help_: str) -> argparse.ArgumentParser:
    """A subcommand of ``parent`` (a subparsers action) that runs ``func`` and takes ``--json``."""
    p: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=func)
    return p


def state_path(args: argparse.Namespace) -> Path:
    """The owner's or member's state file (``--state``)."""
    return Path(args.state)


def print_result(
    args: argparse.Namespace, result: dict[str, Any], human: Callable[[dict[str, Any]], str]
) -> None:
    if args.json:
        print(json.dumps(result))
    else:
        print(human(result))


def warn(args: argparse.Namespace, as_json: dict[str, Any], text: str) -> None:
    """A line on stderr: the JSON object with ``--json``, else the text."""
    print(json.dumps(as_json) if args.json else text, file=sys.stderr, flush=True)


def human(result: dict[str, Any]) -> str:
    """A command's answer as text for people, told apart by the keys it has."""
    if set(result) == {"status", "link"}:
        return str(result["link"])
    if "summary" in result:
        return str(result["summary"])
    if "address" in result and len(result) <= 4:
        return str(result["address"])
    if "requests" in result:
        rows = [
            f"{r['id']:>8}  {r['group']:>6}  {r['status']:<8} {r['attempts']:>3}  {r.get('last_error') or ''}"
            for r in result["requests"]
        ]
        return "\n".join(["      id   group  status   try  last error", *rows]) if rows else "no requests"
    if "seq" in result and "id" in result and "relays" in result:  # owner post
        lines = [f"posted #{result['seq']} ({result['id'][:8]})"]
        for relay in result["relays"]:
            repaired = f", after {relay['repaired']} missed posts" if relay.get("repaired") else ""
            why = f" ({relay.get('code')}: {relay.get('reason')})" if relay["status"] == "error" else ""
            lines.append(f"  {relay['relay']}: {relay['status']}{repaired}{why}")
        return "\n".join(lines)
    if "member" in result and "relays" in result:
        lines = [f"member {result['member']}"]
        for relay in result["relays"]:
            why = f" ({relay.get('code')}: {relay.get('reason')})" if relay.get("code") else ""
            lines.append(f"  {relay['address']}: {relay['status']}{why}")
        return "\n".join(lines)
    if "relays" in result and result["relays"] and "admission" in result["relays"][0]:
        lines = []
        for relay in result["relays"]:
            admission, members = relay["admission"], relay["members"]
            lines.append(f"{relay['relay']}: {relay['state']}, admission {admission}, {members} members")
            for p in relay.get("pending", []):
                lines.append(f"  pending {p['member']}  {p['name']!r}  {p['about']}")
        return "\n".join(lines)
    if isinstance(result.get("groups"), list):
        rows = [f"{g['id']:>6}  {g['state']:<10} {g['kind']:<8} {g['name']}" for g in result["groups"]]
        return "\n".join(["    id  state      kind     name", *rows]) if rows else "no groups"
    if "relays" in result and "link" not in result:
        lines = []
        for relay in result["relays"]:
            lines.append(f"{relay['relay']} ({relay.get('state', relay.get('error'))})")
            for entry in relay.get("entries", []):
                lines.append(f"  #{entry['seq']} {entry['event']}: {entry['detail']}")
        return "\n".join(lines)
    return "\n".join(
        f"{k}: {v if not isinstance(v, (dict, list)) else json.dumps(v)}" for k, v in result.items()
    )
