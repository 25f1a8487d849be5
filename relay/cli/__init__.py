"""The ``relay`` command: daemon, owner, member and operator commands.

Every command accepts ``--json`` and then prints exactly one JSON object on
stdout.  Exit status: 0 success, 1 refusal or failure, 2 usage (a number out of
range too), 130 Ctrl-C.  A failure is one line on stderr saying what happened and
what to do (with ``--json``: the object's ``code`` and ``reason``), never a
traceback.  The daemon's own output is its JSON log, one event per line.

This package assembles the parser from the audiences' modules and runs a
command: ``serve`` (the daemon and its configuration), ``owner``, ``member``
and ``admin`` (the operator), with what they share in ``common``.  This module
must not hold commands itself, and nothing here may import ``relay.server`` or
``relay.client`` at import time: the commands import what they use.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from typing import Any

from relay import __version__
from relay.cli import admin, member, migrate, owner, serve
from relay.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Failure,
    Interrupted,
    Parser,
    UsageError,
    emit,
    human,
    print_result,
)
from relay.cli.progress import status_line

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "Failure", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="relay", description="chat-relay: a relay for owner-signed channels")
    parser.add_argument("--version", action="version", version=f"chat-relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_commands(sub)  # init, serve, config check, address
    owner.add_commands(sub)
    member.add_commands(sub)
    admin.add_commands(sub)
    migrate.add_commands(sub)
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
    """Run one command; its exit status: 0 success, 1 refusal or failure, 2 usage error,
    130 (143) interrupted by Ctrl-C (SIGTERM).  Every failure is one line on stderr, or the
    one JSON object on stdout with ``--json``; a closed stdout (``| head``) ends quietly."""
    argv = sys.argv[1:] if argv is None else argv
    as_json = "--json" in argv
    try:
        try:
            return _main(argv)
        except KeyboardInterrupt:  # Ctrl-C outside trio: loading, printing
            return _interrupted(as_json, Interrupted(signal.SIGINT))
        except BaseExceptionGroup as group:
            interrupts, rest = group.split((KeyboardInterrupt, Interrupted))
            if interrupts is not None and _only_cancelled(rest):
                first = _leaves(interrupts)[0]
                return _interrupted(
                    as_json, first if isinstance(first, Interrupted) else Interrupted(signal.SIGINT)
                )
            pipes, rest = group.split(BrokenPipeError)
            if pipes is not None and _only_cancelled(rest):
                return _output_closed()
            raise
    except BrokenPipeError:
        return _output_closed()


def _main(argv: list[str]) -> int:
    from relay.client.errors import RelayError

    try:
        args = build_parser().parse_args(member_ids_last(argv))
    except UsageError as exc:
        return _usage(exc, "--json" in argv)
    except SystemExit as exc:  # --help, --version: printed; a closed stdout shows on the flush
        sys.stdout.flush()
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    if args.func is serve.cmd_serve:
        try:
            serve.cmd_serve(args)
            return EXIT_OK
        except Failure as exc:  # its stdout is the log: the reason goes to stderr, as JSON with --json
            emit(json.dumps(exc.fields) if args.json else f"error: {exc.reason}", err=True)
            return EXIT_FAILED
        except UsageError as exc:  # --processes with SQLite
            return _usage(exc, args.json)
    try:
        # Waits longer than a second show on a terminal's stderr (never with --json).
        with status_line(not args.json):
            result: dict[str, Any] | None = args.func(args)
    except Failure as exc:
        return _failed(args, exc.fields)
    except RelayError as exc:
        return _failed(args, {"status": "error", "code": exc.code, "reason": exc.reason})
    except UsageError as exc:
        return _usage(exc, args.json)
    except Interrupted as exc:
        return _interrupted(args.json, exc)
    if result is not None:  # ``member read`` prints as it goes
        print_result(args, result, human)
    return EXIT_OK


def _failed(args: argparse.Namespace, fields: dict[str, Any]) -> int:
    """A refusal or failure: the JSON object on stdout, or one line on stderr."""
    status = EXIT_USAGE if fields.get("code") == "usage" else EXIT_FAILED
    if args.json:
        emit(json.dumps(fields))
    else:
        word = "refused" if fields.get("status") == "refused" else "error"
        reason = str(fields.get("reason") or fields.get("code") or "failed")
        code = str(fields.get("code") or "")
        if code and code not in ("error", "usage") and code not in reason:
            word += f" ({code})"  # for scripts that look for it, as --json gives it
        # one line, except a list of errors of its own (relay config check's, one per line)
        emit(f"{word}: {reason if 'errors' in fields else _one_line(reason)}", err=True)
    return status


def _usage(exc: UsageError, as_json: bool) -> int:
    reason = f"{exc.prog}: {exc.message} (see '{exc.prog} --help')"
    if as_json:
        emit(json.dumps({"status": "error", "code": "usage", "reason": reason}))
    else:
        emit(f"usage error: {reason}", err=True)
    return EXIT_USAGE


def _interrupted(as_json: bool, exc: Interrupted) -> int:
    how = "interrupted (Ctrl-C)" if exc.signum == signal.SIGINT else "stopped (SIGTERM)"
    reason = f"{how}{': ' + exc.note if exc.note else ''}"
    if as_json:
        emit(json.dumps({"status": "interrupted", "code": "interrupted", "reason": reason}))
    else:
        emit(reason, err=True)
    return EXIT_INTERRUPTED if exc.signum == signal.SIGINT else 128 + signal.SIGTERM


def _output_closed() -> int:
    """stdout was closed early (``relay member read | head -1``): the reader wanted no more.
    Nothing more is written (Python would complain when it flushes stdout on the way out)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.dup2(devnull, sys.stderr.fileno())
    except (OSError, ValueError):
        pass
    return EXIT_FAILED


def _one_line(text: str) -> str:
    """A reason on one line (a relay's reason may hold a newline)."""
    return " ".join(text.split("\n")).strip()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _only_cancelled(rest: BaseException | None) -> bool:
    import trio

    return rest is None or all(isinstance(leaf, trio.Cancelled) for leaf in _leaves(rest))
