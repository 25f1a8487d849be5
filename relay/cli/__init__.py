"""The ``relay`` command: daemon, owner, member and operator commands.

Every command accepts ``--json`` and then prints exactly one JSON object on
stdout.  Exit status: 0 success, 1 refusal or failure (with the reason), 2
usage.  The daemon's own output is its JSON log, one event per line.

This package assembles the parser from the audiences' modules and runs a
command: ``serve`` (the daemon and its configuration), ``owner``, ``member``
and ``admin`` (the operator), with what they share in ``common``.  This module
must not hold commands itself, and nothing here may import ``relay.server`` or
``relay.client`` at import time: the commands import what they use.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from relay import __version__
from relay.cli import admin, member, owner, serve
from relay.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Failure, human, print_result

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "Failure", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay", description="chat-relay: a relay for owner-signed channels"
    )
    parser.add_argument("--version", action="version", version=f"chat-relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_commands(sub)  # init, serve, config check, address
    owner.add_commands(sub)
    member.add_commands(sub)
    admin.add_commands(sub)
    return parser


# A member id is an Ed25519 key in base64url: 43 characters, and one in 64 begins with '-'.
_MEMBER_ID = re.compile(r"-[A-Za-z0-9_-]{42}")


def member_ids_last(argv: list[str]) -> list[str]:
    """Move member ids that begin with '-' behind a ``--``, where argparse takes them as the
    positional they are instead of an unknown option.

    Only arguments argparse would refuse are moved: no option takes a value that begins with
    '-'.  A command line that already has ``--`` is left as the user wrote it.
    """
    if "--" in argv:
        return argv
    ids = [arg for arg in argv if _MEMBER_ID.fullmatch(arg)]
    if not ids:
        return argv
    return [arg for arg in argv if arg not in ids] + ["--", *ids]


def main(argv: list[str] | None = None) -> int:
    from relay.client.errors import RelayError

    args = build_parser().parse_args(member_ids_last(sys.argv[1:] if argv is None else argv))
    if args.func is serve.cmd_serve:
        try:
            serve.cmd_serve(args)
            return EXIT_OK
        except Failure as exc:
            print(json.dumps(exc.fields) if args.json else f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
    try:
        result: dict[str, Any] | None = args.func(args)
    except Failure as exc:
        print_result(
            args, exc.fields, lambda r: f"{r['status']}: {r.get('code', '')} {r['reason']}".replace("  ", " ")
        )
        return EXIT_FAILED
    except RelayError as exc:
        print_result(
            args,
            {"status": "error", "code": exc.code, "reason": exc.reason},
            lambda r: f"error: {r['code']}: {r['reason']}",
        )
        return EXIT_FAILED
    if result is not None:  # ``member read`` prints as it goes
        print_result(args, result, human)
    return EXIT_OK
