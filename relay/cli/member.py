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
import signal
from functools import partial
from typing import Any

import trio

from relay.cli.common import Failure, add_command, state_path, warn


def _member_out(state: Any) -> dict[str, Any]:
    relays = [{k: v for k, v in r.__dict__.items() if v is not None} for r in state.relays]
    out = {
        "status": "ok",
        "member": state.member_id,
        "profile_version": state.profile_version,
        "relays": relays,
    }
    if relays and all(r["status"] in ("refused", "unusable") for r in relays):
        raise Failure("no relay took the request", **{**out, "status": "refused"})
    return out


def cmd_member_join(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.member import MemberState, join
    from relay.protocol.errors import ProtocolError

    path = state_path(args)
    if path.exists():
        state = MemberState.load(path)
        if state.link != args.link:
            raise Failure(f"{path} holds a member of another channel link; use another --state file")
    else:
        try:
            state = MemberState.new(args.link, name=args.name, about=args.about)
        except ProtocolError as exc:
            raise Failure(exc.reason, code=exc.code.value) from None
    return _member_out(trio.run(partial(join, state, path, wait=args.wait)))


def cmd_member_status(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.member import MemberState, status

    path = state_path(args)
    return _member_out(trio.run(partial(status, MemberState.load(path), path, wait=args.wait)))


def cmd_member_read(args: argparse.Namespace) -> dict[str, Any] | None:
    """Print each post once as it is accepted; findings go to stderr as warnings."""
    from relay.client.member import MemberState
    from relay.client.reader import read

    path = state_path(args)
    state = MemberState.load(path)
    shown: list[dict[str, Any]] = []
    told: list[dict[str, Any]] = []
    troubles: list[dict[str, Any]] = []

    stopped = []

    async def main() -> None:
        # Ctrl-C (or SIGTERM) ends a read cleanly: the tasks are cancelled, the position saved.
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        stopped.append(True)
                        nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            async with read(state, path, since=args.since, follow=args.follow) as items:
                async for item in items:
                    _show_item(args, item, shown, told, troubles)
            nursery.cancel_scope.cancel()

    trio.run(main)
    if stopped:
        return None
    lies = [t for t in told if t["lie"]]
    out = {"status": "ok", "events": shown, "findings": told, "relays": troubles, "last_seq": state.last_seq}
    if troubles and len(troubles) >= len(state.parsed_link.relays) and not shown:
        raise Failure("no relay could be read", **{**out, "status": "error", "code": "no_relay"})
    if lies and not args.follow:
        codes = ", ".join(sorted({f"{t['relay']}: {t['code']}" for t in lies}))
        raise Failure(f"a relay lied ({codes})", **{**out, "status": "error", "code": "relay_lied"})
    return out if args.json and not args.follow else None


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
        }
        if event.content_type.startswith("text/"):
            post["text"] = event.body.decode("utf-8", "replace")
        else:
            post["body_b64"] = b64e(event.body)
        shown.append(post)
        if args.follow and args.json:
            print(json.dumps({"type": "post", **post}), flush=True)
        elif not args.json:
            # One line per post where it is one line: a file's final newline is not a line of its own.
            text = str(post.get("text", f"<{event.content_type}, {len(event.body)} bytes>")).removesuffix(
                "\n"
            )
            print(f"#{event.seq} {text}", flush=True)
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
        warn(args, {"type": "relay", **trouble}, f"warning: {item.relay}: {item.code}: {item.reason}")
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


def cmd_member_invite(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.direct import invite
    from relay.client.member import MemberState

    path = state_path(args)
    state = MemberState.load(path)
    result = trio.run(partial(invite, state, args.member, contact=args.contact, note=args.note))
    return {"status": "ok", **result}


def cmd_member_invitations(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.member import MemberState

    state = MemberState.load(state_path(args))
    return {"status": "ok", "invitations": [dict(i) for i in state.invitations]}


def add_commands(sub: Any) -> None:
    """``relay member`` and its subcommands on the top-level subparsers."""
    member = sub.add_parser("member", help="member commands").add_subparsers(dest="member_cmd", required=True)
    p = add_command(member, "join", cmd_member_join, "ask every relay of a channel link to admit you")
    p.add_argument("--state", required=True, help="your member file (created on first join; one per channel)")
    p.add_argument("--name", default="member", help="the name the owners see")
    p.add_argument("--about", default="", help="a line about you for the owners")
    p.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds for a decision")
    p.add_argument("link", metavar="LINK")
    p = add_command(member, "status", cmd_member_status, "ask each relay for the decision on your request")
    p.add_argument("--state", required=True)
    p.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds for a decision")

    p = add_command(member, "read", cmd_member_read, "print the channel's posts, verified, from every relay")
    p.add_argument("--state", required=True)
    p.add_argument(
        "--since", type=int, help="the posts after this sequence number (default: after the last shown)"
    )
    p.add_argument("--follow", action="store_true", help="keep printing live posts until Ctrl-C")
    p = add_command(
        member, "invite", cmd_member_invite, "send another member a sealed direct-message invitation"
    )
    p.add_argument("--state", required=True)
    p.add_argument("member", metavar="MEMBER", help="the other member's id (its member key, base64url)")
    p.add_argument("--contact", required=True, help="where the other member can reach you")
    p.add_argument("--note", default="", help="a line for the other member")
    p = add_command(member, "invitations", cmd_member_invitations, "list the direct invitations received")
    p.add_argument("--state", required=True)
