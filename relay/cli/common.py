"""What every ``relay`` command shares: declaring it, its options' ranges, running it, failing,
printing its answer.

A command is a function of the parsed arguments that returns one JSON-able dict (or
``None`` when it printed as it went) or raises :class:`Failure`; :func:`add_command` gives
it ``--json`` (and, for a command that talks to relays or the operator port, ``--timeout``),
:func:`run_async` runs its network part under trio with Ctrl-C turned into
:class:`Interrupted` (exit 130), and :func:`print_result` prints its answer as one JSON
object or as text for people.  :mod:`relay.cli` turns every failure into one line on stderr
(or the one JSON object on stdout) and an exit status.  This module must not hold commands or
know one audience's arguments, and must not import ``relay.server`` or ``relay.client`` at
import time: the command modules import them lazily so that ``relay --help`` and the client
commands do not load the daemon.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from relay.cli.progress import pause

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_TIMEOUT = 15.0  # seconds for a connection, and for each answer
MAX_SECONDS = 24 * 3600.0
MAX_WAIT = 3600.0  # the protocol's bound on a join_status wait
MAX_ID = 2**63 - 1  # SQLite's integers

T = TypeVar("T")


class Failure(Exception):
    """A command failed; ``fields`` go into the JSON answer.  ``code="usage"``: exit 2."""

    def __init__(self, reason: str, /, **fields: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fields = {"status": "error", "reason": reason, **fields}


class UsageError(Exception):
    """The command line is wrong (argparse's complaint, or a value out of range): exit 2."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog
        self.message = message


class Interrupted(Exception):
    """Ctrl-C (SIGINT) or SIGTERM ended the command; ``note`` says what was kept, if anything."""

    def __init__(self, signum: int, note: str = "") -> None:
        super().__init__(signum)
        self.signum = signum
        self.note = note


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose complaints are raised (as :class:`UsageError`), so that the
    command line prints them as one line, or as the one JSON object with ``--json``."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


# --- option types: each value out of its range is a usage error (exit 2) ---


def _number(text: str, kind: type[float] | type[int]) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a {'number' if kind is float else 'whole number'}"
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def seconds(text: str) -> float:
    """A time-out: more than 0 seconds, at most a day."""
    value = _number(text, float)
    if not 0 < value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text} is out of range: give more than 0 and at most {MAX_SECONDS:g} seconds"
        )
    return value


def wait_seconds(text: str) -> float:
    """A wait for a decision: 0 (do not wait) to an hour."""
    value = _number(text, float)
    if not 0 <= value <= MAX_WAIT:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give 0 to {MAX_WAIT:g} seconds")
    return value


def count(text: str) -> int:
    """A whole number, 0 or more (a sequence number, a limit where 0 means none)."""
    value = int(_number(text, int))
    if not 0 <= value <= MAX_ID:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give 0 or more")
    return value


def ident(text: str) -> int:
    """An id the relay gave (a group, a join request): 1 or more."""
    value = int(_number(text, int))
    if not 1 <= value <= MAX_ID:
        raise argparse.ArgumentTypeError(f"{text} is not an id: ids are whole numbers from 1 to {MAX_ID}")
    return value


def page_size(text: str) -> int:
    """How many rows a listing shows: 1 to 1000 (what the operator port serves at most)."""
    value = int(_number(text, int))
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give 1 to 1000")
    return value


def host_port(text: str) -> str:
    """``HOST:PORT`` of the operator port."""
    from relay.client.admin import host_port as check
    from relay.client.errors import RelayError

    try:
        return check(text)
    except RelayError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None


# --- declaring and running commands ---


def add_command(
    parent: Any,
    name: str,
    func: Callable[..., Any],
    help_: str,
    *,
    timeout: float | None = None,
) -> argparse.ArgumentParser:
    """A subcommand of ``parent`` (a subparsers action) that runs ``func`` and takes ``--json``;
    ``timeout``: it talks to relays or the operator port, and takes ``--timeout`` (this default)."""
    p: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    if timeout is not None:
        p.add_argument(
            "--timeout",
            type=seconds,
            default=timeout,
            metavar="SECONDS",
            help=f"give up on a connection or an answer after this many seconds (default {timeout:g})",
        )
    p.set_defaults(func=func)
    return p


def run_async(args: argparse.Namespace, fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` under trio; Ctrl-C (or SIGTERM) cancels it and raises :class:`Interrupted`
    once its clean-up is done."""
    import trio

    received: list[int] = []

    async def main() -> T:
        box: list[T] = []
        try:
            async with trio.open_nursery() as nursery:

                async def watch() -> None:
                    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                        async for signum in signals:
                            received.append(signum)
                            nursery.cancel_scope.cancel()
                            return  # a second Ctrl-C during the clean-up interrupts at once

                nursery.start_soon(watch)
                box.append(await fn())
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        if received or not box:
            raise Interrupted(received[0] if received else signal.SIGINT)
        return box[0]

    return trio.run(main)


def state_path(args: argparse.Namespace) -> Path:
    """The owner's or member's state file (``--state``)."""
    return Path(args.state)


def emit(text: str, *, err: bool = False) -> None:
    """One line (or lines) on stdout, or stderr; a closed pipe raises BrokenPipeError."""
    stream = sys.stderr if err else sys.stdout
    with pause():
        print(text, file=stream, flush=True)


def print_result(
    args: argparse.Namespace, result: dict[str, Any], human: Callable[[dict[str, Any]], str]
) -> None:
    emit(json.dumps(result) if args.json else human(result))


def warn(args: argparse.Namespace, as_json: dict[str, Any], text: str) -> None:
    """A line on stderr: the JSON object with ``--json``, else the text."""
    emit(json.dumps(as_json) if args.json else text, err=True)


def relay_name(address: object) -> str:
    """A relay's address, short enough for one line: its scheme, host and port."""
    from urllib.parse import urlsplit

    text = str(address)
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else text


def per_relay(relays: list[dict[str, Any]], *, address: str = "relay") -> str:
    """The failed relays' reasons, on one line: ``HOST: code: reason; HOST: ...``."""
    parts = []
    for relay in relays:
        code = relay.get("code") or relay.get("error")
        reason = relay.get("reason")
        if not (code or reason):
            continue
        why = f"{code}: {reason}" if code and reason else str(code or reason)
        name = relay_name(relay.get(address, "?"))
        parts.append(why if name in why else f"{name}: {why}")
    return "; ".join(parts)


def add_body_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """TEXT, ``--file`` and ``--content-type``: the body of an owner post or a member message
    (``what``), as :func:`message_body` reads it."""
    p.add_argument("text", metavar="TEXT", nargs="?", help=f"the {what} (or --file)")
    p.add_argument("--file", help="post the bytes of this file")
    p.add_argument("--content-type", default="text/plain", help="what the body is (default text/plain)")


def message_body(args: argparse.Namespace, what: str) -> bytes:
    """The body an owner post or a member message sends: TEXT, or the bytes of ``--file``
    (exactly one of them; ``what`` names it in the usage error)."""
    if (args.text is None) == (args.file is None):
        raise Failure(f"give the {what} as TEXT or with --file PATH (one of them)", code="usage")
    if args.text is not None:
        return str(args.text).encode()
    from relay.client.errors import file_error

    try:
        return Path(args.file).read_bytes()
    except OSError as exc:
        raise file_error(exc, Path(args.file), doing="read") from None


def relay_answers(relays: list[Any]) -> list[dict[str, Any]]:
    """Each relay's answer to a sent entry, as the JSON answer shows it: the fields that say
    something (not None or 0), without the client's own bookkeeping (``sent``, ``refused``)."""
    skip = ("sent", "refused")
    return [{k: v for k, v in r.__dict__.items() if v not in (None, 0) and k not in skip} for r in relays]


def post_answers(outcome: Any) -> list[dict[str, Any]]:
    """Each relay's answer to an owner post or a member message (:func:`relay_answers`); if no
    relay could be reached, the failure saying that nothing was posted."""
    relays = relay_answers(outcome.relays)
    if not outcome.sent:
        reason = f"no relay could be reached; nothing was posted: {per_relay(relays)}"
        code = relays[0].get("code") if relays else "no_relay"
        raise Failure(reason, status="error", code=code, relays=relays)
    return relays


def shown_body(content_type: str, body: bytes) -> dict[str, str]:
    """A post's or member message's body in the JSON answer: ``text`` for a text/* type (bad
    UTF-8 replaced), else ``body_b64``."""
    from relay.protocol.encoding import b64e

    if content_type.startswith("text/"):
        return {"text": body.decode("utf-8", "replace")}
    return {"body_b64": b64e(body)}


def body_line(content_type: str, body: bytes) -> str:
    """A post's or member message's body as people read it: the text, whose final newline is
    not a line of its own, or ``<TYPE, N bytes>`` for a body that is not text."""
    if not content_type.startswith("text/"):
        return f"<{content_type}, {len(body)} bytes>"
    return body.decode("utf-8", "replace").removesuffix("\n")


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
