"""The members' commands: ``relay member ...``.

Joining a channel link, asking for the decision, reading the verified posts,
and direct invitations between members.  ``member read`` is the one command
that prints as it goes (posts on stdout, findings and relay trouble on stderr)
and answers ``None``.  This module must not verify posts or judge relays itself
(``relay.client.reader`` and ``relay.protocol.follow`` do), only show what they
decided.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

from relay.cli import groups
from relay.cli.common import (
    DEFAULT_TIMEOUT,
    Failure,
    Interrupted,
    add_command,
    body_line,
    count,
    emit,
    human,
    per_relay,
    print_result,
    run_async,
    shown_body,
    state_path,
    wait_seconds,
    warn,
)


def _member_out(state: Any) -> dict[str, Any]:
    relays = [{k: v for k, v in r.__dict__.items() if v is not None} for r in state.relays]
    out = {
        "status": "ok",
        "member": state.member_id,
        "profile_version": state.profile_version,
        "relays": relays,
    }
    if relays and all(r["status"] in ("refused", "unusable") for r in relays):
        reason = f"no relay took the request: {per_relay(relays, address='address')}"
        raise Failure(reason, **{**out, "status": "refused", "code": relays[0].get("code")})
    return out


def _kept(state: Any, path: Path) -> str:
    """What an interrupted join or status left in the state file."""
    if state.answered():
        return (
            f"the request is held by a relay and its key kept in {path}; "
            f"'relay member status --state {path}' asks for the decision later"
        )
    return f"no relay has the request; {path} was not written"


def cmd_member_join(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.member import MemberState, join
    from relay.client.statefile import check_writable

    path = state_path(args)
    if path.exists() or path.is_symlink():
        state = MemberState.load(path)
        if state.link != args.link:
            raise Failure(
                f"{path} holds a member of another channel link; use another --state file", code="exists"
            )
    else:
        state = MemberState.new(args.link, name=args.name, about=args.about)
    check_writable(path)
    try:
        joined = run_async(args, partial(join, state, path, wait=args.wait, timeout=args.timeout))
    except Interrupted as exc:
        exc.note = _kept(state, path)
        raise
    return _member_out(joined)


def cmd_member_status(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.member import MemberState, status
    from relay.client.statefile import check_writable

    path = state_path(args)
    state = MemberState.load(path)
    check_writable(path)
    if all(r.status == "new" for r in state.relays):
        raise Failure(
            f"no relay has a request of this member yet; run 'relay member join --state {path} LINK' again",
            code="not_joined",
        )
    return _member_out(run_async(args, partial(status, state, path, wait=args.wait, timeout=args.timeout)))


def cmd_member_read(args: argparse.Namespace) -> dict[str, Any] | None:
    """Print each post once as it is accepted; findings go to stderr as warnings."""
    from relay.client.member import MemberState
    from relay.client.reader import read
    from relay.client.statefile import check_writable

    path = state_path(args)
    state = MemberState.load(path)
    check_writable(path)
    shown: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    told: list[dict[str, Any]] = []
    troubles: list[dict[str, Any]] = []

    async def main() -> None:
        printed = _position(state)  # what the reader of stdout has got
        async with read(state, path, since=args.since, follow=args.follow, timeout=args.timeout) as items:
            async for item in items:
                try:
                    if not groups.show_timeline_item(args, item, messages):
                        _show_item(args, item, shown, told, troubles)
                except BrokenPipeError:
                    # the post taken last never reached the reader: the next read shows it again
                    _restore(state, printed)
                    raise
                printed = _position(state)

    before = _position(state)
    try:
        run_async(args, main)
    except Interrupted as exc:
        exc.note = (
            f"shown up to #{state.last_seq}; the next read starts after it"
            if (state.last_seq, state.last_id) != before[:2]
            else "nothing new was shown"
        )
        raise
    lies = [t for t in told if t["lie"]]
    failed = bool(troubles) and len(troubles) >= len(state.parsed_link.relays) and not shown and not messages
    if not args.follow and not failed:
        for trouble in troubles:
            _warn_trouble(args, trouble)
    out = {"status": "ok", "events": shown, "findings": told, "relays": troubles, "last_seq": state.last_seq}
    if messages:
        out["messages"] = messages
    if failed:
        reason = f"no relay could be read: {per_relay(troubles)}"
        raise Failure(reason, **{**out, "status": "error", "code": troubles[0]["code"]})
    if lies and not args.follow:
        codes = ", ".join(sorted({f"{t['relay']}: {t['code']}" for t in lies}))
        raise Failure(f"a relay lied ({codes})", **{**out, "status": "error", "code": "relay_lied"})
    if args.json and not args.follow:
        try:
            print_result(args, out, human)
        except BrokenPipeError:
            # nobody got the answer: the next read starts where this one did
            _restore(state, before)
            state.save(path)
            raise
    return None


def _position(state: Any) -> tuple[Any, ...]:
    """What a read has shown, as the member file records it: the last post, the owner posts'
    ids and the member messages shown (copies, to put back if the reader never got them)."""
    return state.last_seq, state.last_id, dict(state.post_ids), list(state.shown_messages)


def _restore(state: Any, position: tuple[Any, ...]) -> None:
    state.last_seq, state.last_id, state.post_ids, state.shown_messages = position


def _show_item(
    args: argparse.Namespace,
    item: Any,
    shown: list[dict[str, Any]],
    told: list[dict[str, Any]],
    troubles: list[dict[str, Any]],
) -> None:
    from relay.client.reader import InvitationReceived, RelayTrouble
    from relay.protocol.encoding import b64e
    from relay.protocol.follow import Accepted, Finding, ProfileAdopted

    if isinstance(item, Accepted):
        event = item.event.event
        post: dict[str, Any] = {
            "seq": event.seq,
            "id": b64e(item.event.id),
            "created_at": event.created_at,
            "content_type": event.content_type,
            "signer": b64e(item.event.signed.signer),
            **shown_body(event.content_type, event.body),
        }
        shown.append(post)
        if args.follow and args.json:
            emit(json.dumps({"type": "post", **post}))
        elif not args.json:
            emit(f"#{event.seq} {body_line(event.content_type, event.body)}")
    elif isinstance(item, Finding):
        finding = {
            "relay": item.relay,
            "code": item.code.value,
            "detail": item.detail,
            "seq": item.seq,
            "lie": item.is_lie,
        }
        told.append(finding)
        warn(args, {"type": "finding", **finding}, f"warning: {item.relay}: {item.code.value}: {item.detail}")
    elif isinstance(item, RelayTrouble):
        trouble = {"relay": item.relay, "code": item.code, "reason": item.reason}
        troubles.append(trouble)
        if args.follow:  # else told at the end: in the one failure line if no relay could be read
            _warn_trouble(args, trouble)
    elif isinstance(item, InvitationReceived):
        invitation = {"sender": item.sender, "contact": item.contact, "note": item.note}
        warn(
            args,
            {"type": "invitation", **invitation},
            f"direct invitation from member {item.sender}: {item.contact} {item.note}".rstrip(),
        )
    elif isinstance(item, ProfileAdopted):
        warn(
            args,
            {"type": "profile", "version": item.profile.profile.version},
            f"profile version {item.profile.profile.version} verified",
        )


def _warn_trouble(args: argparse.Namespace, trouble: dict[str, Any]) -> None:
    warn(
        args,
        {"type": "relay", **trouble},
        f"warning: {trouble['relay']}: {trouble['code']}: {trouble['reason']}",
    )


def cmd_member_invite(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.direct import invite
    from relay.client.member import MemberState

    path = state_path(args)
    state = MemberState.load(path)
    result = run_async(
        args, partial(invite, state, args.member, contact=args.contact, note=args.note, timeout=args.timeout)
    )
    return {"status": "ok", **result}


def cmd_member_invitations(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.member import MemberState

    state = MemberState.load(state_path(args))
    return {"status": "ok", "invitations": [dict(i) for i in state.invitations]}


def add_commands(sub: Any) -> None:
    """``relay member`` and its subcommands on the top-level subparsers."""
    member = sub.add_parser("member", help="member commands").add_subparsers(dest="member_cmd", required=True)
    p = add_command(
        member,
        "join",
        cmd_member_join,
        "ask every relay of a channel link to admit you",
        timeout=DEFAULT_TIMEOUT,
    )
    p.add_argument("--state", required=True, help="your member file (created on first join; one per channel)")
    p.add_argument("--name", default="member", help="the name the owners see")
    p.add_argument("--about", default="", help="a line about you for the owners")
    _add_wait(p)
    p.add_argument("link", metavar="LINK")
    p = add_command(
        member,
        "status",
        cmd_member_status,
        "ask each relay for the decision on your request",
        timeout=DEFAULT_TIMEOUT,
    )
    p.add_argument("--state", required=True)
    _add_wait(p)

    p = add_command(
        member,
        "read",
        cmd_member_read,
        "print the channel's posts, verified, from every relay",
        timeout=DEFAULT_TIMEOUT,
    )
    p.add_argument("--state", required=True)
    p.add_argument(
        "--since", type=count, help="the posts after this sequence number (default: after the last shown)"
    )
    p.add_argument("--follow", action="store_true", help="keep printing live posts until Ctrl-C")
    p = add_command(
        member,
        "invite",
        cmd_member_invite,
        "send another member a sealed direct-message invitation",
        timeout=DEFAULT_TIMEOUT,
    )
    p.add_argument("--state", required=True)
    p.add_argument("member", metavar="MEMBER", help="the other member's id (its member key, base64url)")
    p.add_argument("--contact", required=True, help="where the other member can reach you")
    p.add_argument("--note", default="", help="a line for the other member")
    p = add_command(member, "invitations", cmd_member_invitations, "list the direct invitations received")
    p.add_argument("--state", required=True)
    groups.add_member_commands(member)


def _add_wait(p: Any) -> None:
    """``--wait``, shared by ``join`` and ``status``."""
    p.add_argument(
        "--wait",
        type=wait_seconds,
        default=0.0,
        metavar="SECONDS",
        help="wait up to this many seconds (at most 3600) for a decision",
    )
