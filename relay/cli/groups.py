"""The group commands (issue 16): members post, owners certify and moderate, moderators moderate.

``relay member post|remove-message|remove-member|ban`` and ``relay owner certify|remove-message|
remove-member|ban|moderator grant|withdraw``, plus the profile's member-message options of
``relay owner create`` and ``publish`` (:func:`add_limits`).  Each command loads its state file,
calls ``relay.client`` (memberpost, moderation) and turns the answer into one dict; a relay
that did not take what was sent is named in the one failure line.  ``certify --keep`` is the
one command here that prints as it goes (one line per member certified) and answers ``None``.
This module must not sign or speak the protocol itself.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

from relay.cli.common import (
    DEFAULT_TIMEOUT,
    Failure,
    add_body_arguments,
    add_command,
    body_line,
    count,
    emit,
    message_body,
    per_relay,
    post_answers,
    relay_answers,
    run_async,
    shown_body,
    state_path,
    warn,
)

# the profile's bounds (relay.protocol.messages.Profile)
MAX_MESSAGE_BYTES = 2**20
MAX_MESSAGES_PER_MINUTE = 2**20
MAX_SLOW_MODE = 86400


def _bounded(limit: int) -> Any:
    def parse(text: str) -> int:
        value = count(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"{text} is out of range: give 0 to {limit}")
        return value

    return parse


def add_limits(p: argparse.ArgumentParser, *, create: bool) -> None:
    """The profile's member-message options, on ``owner create`` (defaults) and ``publish``
    (None: unchanged)."""
    if create:
        p.add_argument(
            "--comments", action="store_true", help="a channel whose members may reply to owner posts"
        )
    else:
        p.add_argument(
            "--comments",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="let members reply to owner posts (a channel), or stop it",
        )
    default = 0 if create else None
    for option, limit, metavar, help_ in (
        (
            "--max-message-bytes",
            MAX_MESSAGE_BYTES,
            "BYTES",
            "the owners' size limit of a member message (0: the relay's)",
        ),
        (
            "--messages-per-minute",
            MAX_MESSAGES_PER_MINUTE,
            "N",
            "messages per minute per member (0: the relay's limit)",
        ),
        ("--slow-mode", MAX_SLOW_MODE, "SECONDS", "seconds a member waits between two messages (0: none)"),
    ):
        p.add_argument(option, type=_bounded(limit), default=default, metavar=metavar, help=help_)


def _short(text: str) -> str:
    return text[:8]


def _published(p: Any, what: str) -> dict[str, Any]:
    """One published entry's answer; no relay took it: a failure naming each relay's reason."""
    relays = relay_answers(p.relays)
    out: dict[str, Any] = {"status": "ok", "kind": p.kind, "id": p.id, "relays": relays}
    for key in ("member", "name", "role", "action"):
        if getattr(p, key):
            out[key] = getattr(p, key)
    lines = [f"{what} ({_short(p.id)})"]
    lines += [
        f"  {r['relay']}: {r['status']}"
        + (f" ({r.get('code')}: {r.get('reason')})" if r["status"] == "error" else "")
        for r in relays
    ]
    out["summary"] = "\n".join(lines)
    if not p.stored:
        raise Failure(
            f"no relay took the {what}: {per_relay(relays)}",
            **{**out, "status": "error", "code": relays[0].get("code")},
        )
    return out


# --- owners ---------------------------------------------------------------------------------


def _owner(args: argparse.Namespace) -> tuple[Any, Path]:
    from relay.cli.owner import _load

    return _load(args, writes=True)


def _cert_line(c: Any) -> dict[str, Any]:
    return {"member": c.member, "name": c.name, "role": c.role, "id": c.id, "relays": relay_answers(c.relays)}


def cmd_owner_certify(args: argparse.Namespace) -> dict[str, Any] | None:
    from relay.client.moderation import certify, keep_certifying

    if args.keep and args.member:
        raise Failure("--keep certifies every new member; give it with --all, not --member", code="usage")
    state, path = _owner(args)
    if args.keep:
        told: set[str] = set()

        async def report(round_: Any) -> None:
            for u in round_.partial:
                if u.member not in told:
                    told.add(u.member)
                    note = _partial(u)
                    warn(args, {"type": "partial", **note}, f"warning: {note['reason']}")
            for c in round_.certified:
                line = _cert_line(c)
                failed = [r for r in line["relays"] if r["status"] == "error"]
                text = f"certified {c.member} {c.name!r} ({c.role})"
                if failed:
                    text += f"; not stored at: {per_relay(failed)}"
                emit(json.dumps({"type": "cert", **line}) if args.json else text)
            for trouble in round_.relays:
                warn(
                    args,
                    {"type": "relay", **trouble},
                    f"warning: {trouble['relay']}: {trouble['code']}: {trouble['reason']}",
                )

        run_async(args, partial(keep_certifying, state, path, report, timeout=args.timeout))
        return None
    round_ = run_async(args, partial(certify, state, path, members=args.member, timeout=args.timeout))
    certified = [_cert_line(c) for c in round_.certified]
    out: dict[str, Any] = {"status": "ok", "certified": certified, "relays": round_.relays}
    if round_.skipped:
        out["skipped"] = round_.skipped
    if round_.partial:
        out["partial"] = [_partial(u) for u in round_.partial]
    lines = [f"certified {c['member']} {c['name']!r} ({c['role']})" for c in certified] or [
        "no member is waiting for a cert"
    ]
    lines += [f"not certified: {p['reason']}" for p in out.get("partial", [])]
    lines += [f"  {r['relay']}: {r['code']}: {r['reason']}" for r in round_.relays]
    out["summary"] = "\n".join(lines)
    targets = len([r for r in state.relays if r.listed and r.group_address])
    if round_.relays and len(round_.relays) >= targets:
        raise Failure(
            f"no relay could be asked: {per_relay(round_.relays)}",
            **{**out, "status": "error", "code": round_.relays[0]["code"]},
        )
    unstored = [c for c in round_.certified if not c.stored]
    if unstored:
        relays = relay_answers(unstored[0].relays)
        raise Failure(
            f"no relay took the cert of {unstored[0].member}: {per_relay(relays)}",
            **{**out, "status": "error", "code": relays[0].get("code")},
        )
    if round_.skipped:
        raise Failure(
            f"no relay lists {', '.join(round_.skipped)} as an admitted member without a cert "
            "('relay owner certify --all' certifies whoever is waiting)",
            **{**out, "status": "error", "code": "not_waiting"},
        )
    return out


def _partial(u: Any) -> dict[str, Any]:
    """A member only some relays list: said, with what to do."""
    where = ", ".join(_relay_host(r) for r in u.relays)
    return {
        "member": u.member,
        "name": u.name,
        "relays": u.relays,
        "reason": f"{u.member} {u.name!r} is listed by {where} only, not by every relay; if it is "
        f"a member, certify it with --member {u.member}",
    }


def _relay_host(address: str) -> str:
    from relay.cli.common import relay_name

    return relay_name(address)


# what each moderation acts on (the argument holding it), and how its answer names it
MODERATIONS = {
    "remove_message": ("message", "removal of message"),
    "remove_member": ("member", "removal of member"),
    "ban": ("member", "ban of member"),
}


def _moderation(args: argparse.Namespace) -> tuple[str, str, str]:
    """The command's moderation: its action, its subject (a message id or a member key) and
    how the answer names it."""
    argument, named = MODERATIONS[args.action]
    subject = str(getattr(args, argument))
    return args.action, subject, f"{named} {subject}"


def cmd_owner_moderate(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.moderation import moderate

    action, subject, what = _moderation(args)
    state, path = _owner(args)
    published = run_async(
        args, partial(moderate, state, path, action, subject, reason=args.reason, timeout=args.timeout)
    )
    return _published(published, what)


def cmd_owner_moderator(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.moderation import set_role

    state, path = _owner(args)
    role = "moderator" if args.change == "grant" else "member"
    published = run_async(
        args, partial(set_role, state, path, args.member, role, name=args.name, timeout=args.timeout)
    )
    return _published(published, f"cert of {args.member} as {role}")


# --- members --------------------------------------------------------------------------------


def _member(args: argparse.Namespace) -> tuple[Any, Path]:
    from relay.client.member import MemberState
    from relay.client.statefile import check_writable

    path = state_path(args)
    state = MemberState.load(path)
    check_writable(path)
    return state, path


def cmd_member_post(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.memberpost import post_message, resolve_reply

    body = message_body(args, "message")
    state, path = _member(args)
    reply_to = resolve_reply(state, args.reply_to) if args.reply_to else b""
    outcome = run_async(
        args,
        partial(
            post_message,
            state,
            path,
            body,
            content_type=args.content_type,
            reply_to=reply_to,
            timeout=args.timeout,
        ),
    )
    relays = post_answers(outcome)
    stored = [r for r in relays if r["status"] in ("stored", "duplicate")]
    status = "stored" if any(r["status"] == "stored" for r in stored) else "duplicate"
    out: dict[str, Any] = {"status": status, "seq": outcome.seq, "id": outcome.id, "relays": relays}
    lines = [f"posted message #{outcome.seq} ({_short(outcome.id)})"]
    for r in relays:
        where = f" at {r['pos']}" if r.get("pos") else ""
        repaired = f", after {r['repaired']} missed messages" if r.get("repaired") else ""
        why = f" ({r.get('code')}: {r.get('reason')})" if r["status"] == "error" else ""
        lines.append(f"  {r['relay']}: {r['status']}{where}{repaired}{why}")
    out["summary"] = "\n".join(lines)
    if not stored:
        reason = f"no relay stored message #{outcome.seq}: {per_relay(relays)}"
        raise Failure(reason, **{**out, "status": "error", "code": relays[0].get("code")})
    return out


def cmd_member_moderate(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.moderation import member_moderate

    action, subject, what = _moderation(args)
    state, _ = _member(args)
    published = run_async(
        args, partial(member_moderate, state, action, subject, reason=args.reason, timeout=args.timeout)
    )
    return _published(published, what)


# --- declaring them -------------------------------------------------------------------------


def _add_moderation(parent: Any, func: Any, action: str, help_: str) -> None:
    """The command of one moderation (``remove_message`` is ``remove-message``)."""
    p = add_command(parent, action.replace("_", "-"), func, help_, timeout=DEFAULT_TIMEOUT)
    p.set_defaults(action=action)
    p.add_argument("--state", required=True)
    if MODERATIONS[action][0] == "message":
        p.add_argument(
            "message", metavar="MESSAGE_ID", help="the message's id, as 'relay member read --json' shows it"
        )
    else:
        p.add_argument(
            "member", metavar="MEMBER", help="the member's key (base64url), as 'relay member read' shows it"
        )
    p.add_argument("--reason", default="", help="a line saying why, signed with the removal")


def add_owner_commands(owner: Any) -> None:
    p = add_command(
        owner,
        "certify",
        cmd_owner_certify,
        "sign a member cert for each admitted member without one and publish it to every relay",
        timeout=DEFAULT_TIMEOUT,
    )
    p.add_argument("--state", required=True)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every admitted member without a cert")
    which.add_argument("--member", action="append", metavar="MEMBER", help="this member key (repeatable)")
    p.add_argument("--keep", action="store_true", help="with --all: keep certifying new members until Ctrl-C")
    for action, help_ in (
        ("remove_message", "remove a member message on every relay (signed)"),
        ("remove_member", "void a member's cert on every relay (signed)"),
        ("ban", "ban a member on every relay (signed): no new cert or join counts"),
    ):
        _add_moderation(owner, cmd_owner_moderate, action, help_)
    moderator = owner.add_parser(
        "moderator", help="grant or withdraw the moderator role (a new member cert)"
    ).add_subparsers(dest="change", required=True)
    for change, help_ in (
        ("grant", "make a certified member a moderator"),
        ("withdraw", "make a moderator a member again"),
    ):
        p = add_command(moderator, change, cmd_owner_moderator, help_, timeout=DEFAULT_TIMEOUT)
        p.add_argument("--state", required=True)
        p.add_argument("member", metavar="MEMBER", help="the member's key (base64url)")
        p.add_argument("--name", help="the name to certify (default: the one this file certified)")


def add_member_commands(member: Any) -> None:
    p = add_command(
        member,
        "post",
        cmd_member_post,
        "sign a message and store it on every relay of the group",
        timeout=DEFAULT_TIMEOUT,
    )
    p.add_argument("--state", required=True)
    add_body_arguments(p, "message")
    p.add_argument(
        "--reply-to",
        metavar="REF",
        help="reply to an owner post (#SEQ, as 'relay member read' shows it) or a message (its id)",
    )
    for action, help_ in (
        ("remove_message", "a moderator removes a member message (signed)"),
        ("remove_member", "a moderator voids a member's cert (signed)"),
        ("ban", "a moderator bans a member (signed)"),
    ):
        _add_moderation(member, cmd_member_moderate, action, help_)


# --- what ``relay member read`` shows of a timeline -----------------------------------------


def show_timeline_item(args: argparse.Namespace, item: Any, messages: list[dict[str, Any]]) -> bool:
    """Show a member message (stdout), a cert or a moderation (stderr, as notes); False: the
    item is not a timeline's."""
    from relay.protocol.encoding import b64e
    from relay.protocol.timeline_reader import CertAccepted, MessageAccepted, ModerationAccepted

    if isinstance(item, MessageAccepted):
        message = item.message.message
        author = b64e(item.message.author)
        shown: dict[str, Any] = {
            "id": b64e(item.message.id),
            "author": author,
            "name": item.author_name,
            "role": item.author_role,
            "seq": message.seq,
            "created_at": message.created_at,
            "content_type": message.content_type,
            "pos": item.pos,
            "after": item.after,
            "relay": item.relay,
        }
        if message.reply_to:
            shown["reply_to"] = b64e(message.reply_to)
        shown.update(shown_body(message.content_type, message.body))
        messages.append(shown)
        if args.follow and args.json:
            emit(json.dumps({"type": "message", **shown}))
        elif not args.json:
            text = body_line(message.content_type, message.body)
            reply = f" re {_short(shown['reply_to'])}" if message.reply_to else ""
            role = " [moderator]" if item.author_role == "moderator" else ""
            emit(f"{item.author_name} ({_short(author)}){role}{reply}: {text}")
        return True
    if isinstance(item, CertAccepted):
        cert = item.cert.cert
        note = {
            "type": "cert",
            "member": b64e(cert.member),
            "name": cert.name,
            "role": cert.role,
            "pos": item.pos,
        }
        warn(args, note, f"member {cert.name!r} ({_short(str(note['member']))}) certified as {cert.role}")
        return True
    if isinstance(item, ModerationAccepted):
        moderation = item.moderation.moderation
        note = {
            "type": "moderation",
            "action": moderation.action,
            "subject": b64e(moderation.subject),
            "by": b64e(item.moderation.signed.signer),
            "reason": moderation.reason,
            "pos": item.pos,
        }
        what = "message" if moderation.action == "remove_message" else "member"
        done = {"remove_message": "removed", "remove_member": "removed", "ban": "banned"}.get(
            moderation.action, moderation.action
        )
        why = f": {moderation.reason}" if moderation.reason else ""
        warn(args, note, f"{what} {_short(str(note['subject']))} {done} by {_short(str(note['by']))}{why}")
        return True
    return False
