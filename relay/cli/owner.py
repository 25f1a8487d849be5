"""The channel owners' commands: ``relay owner ...``.

Creating a channel, inviting and dropping relays, publishing the profile,
posting, co-owners, and the admission decisions the relays ask the owners
for.  Each command loads the owner's state file, calls ``relay.client`` and
turns its answer into one dict.  This module must not speak the protocol or
sign anything itself (``relay.client`` does), and must not print.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relay.cli import groups
from relay.cli.common import (
    DEFAULT_TIMEOUT,
    Failure,
    Interrupted,
    add_body_arguments,
    add_command,
    count,
    message_body,
    per_relay,
    post_answers,
    relay_name,
    run_async,
    state_path,
    warn,
)

if TYPE_CHECKING:
    from relay.client.owner import OwnerState


def _load(args: argparse.Namespace, *, writes: bool = False) -> tuple[OwnerState, Path]:
    """The owner state of ``--state``; a file that still holds the root key gets a warning.
    ``writes``: the command will write it, so a file it could not write stops it first."""
    from relay.client.owner import OwnerState
    from relay.client.statefile import check_writable

    path = state_path(args)
    state = OwnerState.load(path)
    if writes:
        check_writable(path)
    if state.has_root:
        warn(
            args,
            {"warning": "root_in_state", "state": str(path)},
            f"warning: {path} still holds the channel's root key; move it to a file of its own "
            f"that you can keep offline with 'relay owner export-root --state {path}'",
        )
    return state, path


def _root_path(args: argparse.Namespace, path: Path) -> Path:
    """``--root``, else the root key file beside the state file."""
    from relay.client.rootkey import default_root_path

    return Path(args.root) if args.root else default_root_path(path)


def _root_told(root: Path, first: str) -> dict[str, Any]:
    """Where the root key is, that it belongs offline and when it is needed: text and JSON."""
    from relay.client.rootkey import KEEP_OFFLINE, WHEN_NEEDED

    return {
        "root": str(root),
        "root_advice": KEEP_OFFLINE,
        "root_needed_for": WHEN_NEEDED,
        "summary": f"{first}\nThe channel's root key is in {root} (mode 0600). {KEEP_OFFLINE}\n"
        f"It is needed {WHEN_NEEDED}.",
    }


def cmd_owner_create(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client import ownerkeys
    from relay.client.owner import create_channel
    from relay.client.rootkey import save_new_channel
    from relay.client.statefile import check_writable
    from relay.protocol import crypto
    from relay.protocol.encoding import b64e

    path = state_path(args)
    root = _root_path(args, path)
    if path.resolve() == root.resolve():
        raise Failure("the root key needs a file of its own, not the state file", code="usage")
    for taken in (path, root):
        check_writable(taken)  # a folder, a missing or read-only folder: said as such
        if taken.exists() or taken.is_symlink():
            raise Failure(f"{taken} already exists; it may hold another channel's secrets", code="exists")
    state = create_channel(
        args.name,
        kind=args.kind,
        description=args.description,
        admission=args.admission,
        max_members=args.max_members,
        comments=args.comments,
        max_message_bytes=args.max_message_bytes,
        messages_per_minute=args.messages_per_minute,
        slow_mode=args.slow_mode,
    )
    owner_key = crypto.public_bytes(state.owner_key)
    ownerkeys.register([(owner_key, state.channel)])
    save_new_channel(state, path, root)
    channel = b64e(state.channel)
    return {
        "status": "ok",
        "channel": channel,
        "kind": state.kind,
        "name": state.name,
        "state": str(path),
        "owner_key": b64e(owner_key),
        **_root_told(root, f"created the {state.kind} {state.name!r} ({channel}) in {path}"),
    }


def cmd_owner_export_root(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client import ownerkeys
    from relay.client.owner import OwnerState
    from relay.client.rootkey import export_root
    from relay.protocol import crypto

    path = state_path(args)
    state = OwnerState.load(path)
    root = _root_path(args, path)
    ownerkeys.register([(crypto.public_bytes(state.owner_key), state.channel)])
    export_root(state, path, root)
    return {
        "status": "ok",
        "state": str(path),
        **_root_told(root, f"moved the channel's root key out of {path}"),
    }


def cmd_owner_add_relay(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owner import add_relay, parse_address_or_raise

    parse_address_or_raise(args.relay_address)  # a mistyped address before the state file is read
    state, path = _load(args, writes=True)
    before = path.read_bytes()
    try:
        result = run_async(args, partial(add_relay, state, path, args.relay_address, timeout=args.timeout))
    except Interrupted as exc:
        exc.note = (
            f"the invitation may have reached the relay: {path} keeps its service group, so the same "
            "command asks for the same address again"
            if path.read_bytes() != before
            else f"{path} was not changed"
        )
        raise
    out = {k: v for k, v in result.__dict__.items() if v is not None}
    if result.status == "refused":
        why = f"{result.code}: {result.reason}" if result.code else str(result.reason or "no reason given")
        raise Failure(f"{relay_name(args.relay_address)}: {why}", **{**out, "status": "refused"})
    return out


def cmd_owner_publish(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owner import publish

    state, path = _load(args, writes=True)
    if args.admission is not None:
        state.admission = args.admission
    if args.max_members is not None:
        state.max_members = args.max_members
    for name in ("comments", "max_message_bytes", "messages_per_minute", "slow_mode"):
        if getattr(args, name) is not None:
            setattr(state, name, getattr(args, name))
    return _published(run_async(args, partial(publish, state, path, timeout=args.timeout)))


def _published(result: Any, share: str | None = None) -> dict[str, Any]:
    """A publish's answer; a relay that did not take the profile makes it a failure."""
    out = {"status": "ok", "version": result.version, "link": result.link, "relays": result.relays}
    if share:
        out["share"] = share
    failed = [r for r in result.relays if r.get("status") == "error"]
    if failed:
        if len(failed) == len(result.relays):
            what = "no relay took the new profile, so nothing changed"
        else:
            what = f"a relay did not take profile version {result.version}"
        reason = f"{what}: {per_relay(failed)}"
        raise Failure(reason, **{**out, "status": "error", "code": failed[0].get("code")})
    return out


def cmd_owner_remove_relay(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owner import remove_relay

    state, path = _load(args, writes=True)
    return _published(
        run_async(args, partial(remove_relay, state, path, args.relay_address, timeout=args.timeout))
    )


def cmd_owner_post(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.posting import post

    body = message_body(args, "post")
    state, path = _load(args, writes=True)
    outcome = run_async(
        args, partial(post, state, path, body, content_type=args.content_type, timeout=args.timeout)
    )
    relays = post_answers(outcome)
    out = {"status": "ok", "seq": outcome.seq, "id": outcome.id, "relays": relays}
    if all(r["status"] == "error" for r in relays):
        reason = f"no relay stored post #{outcome.seq}: {per_relay(relays)}"
        raise Failure(reason, **{**out, "status": "error", "code": relays[0].get("code")})
    return out


def cmd_owner_new_key(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owners import new_key

    path = state_path(args)
    return {"status": "ok", "owner_key": new_key(path), "state": str(path)}


def cmd_owner_add_owner(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owners import add_owner, check_share_target, write_share

    state, path = _load(args, writes=True)
    if args.share:
        check_share_target(Path(args.share))  # before anything is signed or sent
    published = run_async(args, partial(add_owner, state, path, args.owner_key, timeout=args.timeout))
    if args.share:
        write_share(state, Path(args.share))
    return _published(published, share=args.share)


def cmd_owner_remove_owner(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owners import remove_owner

    state, path = _load(args, writes=True)
    root = _root_path(args, path)
    return _published(
        run_async(args, partial(remove_owner, state, path, args.owner_key, root=root, timeout=args.timeout))
    )


def cmd_owner_adopt(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owners import adopt
    from relay.protocol.encoding import b64e

    path = state_path(args)
    state = adopt(path, Path(args.share))
    return {"status": "ok", "channel": b64e(state.channel), "name": state.name, "state": str(path)}


def cmd_owner_link(args: argparse.Namespace) -> dict[str, Any]:
    state, _ = _load(args)
    if not state.listed_addresses():
        raise Failure(
            "no relay has granted this channel an address yet (run 'relay owner add-relay')", code="no_relay"
        )
    return {"status": "ok", "link": str(state.link())}


def cmd_owner_log(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owner import read_log

    state, _ = _load(args)
    if not state.relays:
        raise Failure("no relay serves this channel yet (run 'relay owner add-relay')", code="no_relay")
    relays = run_async(args, partial(read_log, state, timeout=args.timeout))
    out = {"status": "ok", "relays": relays}
    if all("error" in r for r in relays):
        raise Failure(f"no relay could be asked: {per_relay(relays)}", **{**out, "status": "error"})
    return out


def _owner_command(args: argparse.Namespace, action: str, member: str = "", note: str = "") -> dict[str, Any]:
    from relay.client.owner import owner_command

    state, _ = _load(args)
    views = run_async(
        args, partial(owner_command, state, action, member=member, note=note, timeout=args.timeout)
    )
    relays = [{k: v for k, v in view.__dict__.items() if v not in (None, "")} for view in views]
    if not relays:
        raise Failure("no relay serves this channel yet (add one and publish)", code="no_relay")
    out = {"status": "ok", "relays": relays}
    if all("error" in r for r in relays):
        reason = f"no relay took the command: {per_relay(relays)}"
        raise Failure(reason, **{**out, "status": "error", "code": relays[0]["error"]})
    return out


def cmd_owner_pending(args: argparse.Namespace) -> dict[str, Any]:
    return _owner_command(args, "list_pending")


def cmd_owner_approve(args: argparse.Namespace) -> dict[str, Any]:
    return _owner_command(args, "approve_member", member=args.member)


def cmd_owner_refuse(args: argparse.Namespace) -> dict[str, Any]:
    return _owner_command(args, "refuse_member", member=args.member, note=args.reason or "")


def cmd_owner_suspend(args: argparse.Namespace) -> dict[str, Any]:
    return _owner_command(args, "suspend_admission")


def cmd_owner_resume(args: argparse.Namespace) -> dict[str, Any]:
    return _owner_command(args, "resume_admission")


def add_commands(sub: Any) -> None:
    """``relay owner`` and its subcommands on the top-level subparsers."""
    owner = sub.add_parser(
        "owner",
        help="channel owner commands",
        description="Channel owner commands. The state file (--state, mode 0600) holds this owner's "
        "key; the channel's root key is in a file of its own that 'create' writes beside it "
        "(owner.root.json for owner.json) and that belongs offline: only 'remove-owner' may need "
        "it. 'add-owner' and 'adopt' refuse a key seen in another channel. See docs/owners.md.",
    ).add_subparsers(dest="owner", required=True)
    p = add_command(
        owner,
        "create",
        cmd_owner_create,
        "create a channel: an owner key in the state file, the root key in a file of its own",
    )
    p.add_argument("--state", required=True, help="the new owner state file (the owner key)")
    p.add_argument(
        "--root",
        metavar="FILE",
        help="the new root key file, to keep offline (default: beside the state, owner.root.json "
        "for owner.json)",
    )
    p.add_argument("--name", required=True)
    p.add_argument("--kind", choices=["channel", "group"], default="channel")
    p.add_argument("--description", default="")
    p.add_argument("--admission", choices=["auto", "approval"], default="auto", help="how members get in")
    p.add_argument("--max-members", type=count, default=0, help="the owners' member limit (0: none)")
    groups.add_limits(p, create=True)
    p = add_command(
        owner,
        "add-relay",
        cmd_owner_add_relay,
        "invite a relay to serve the channel",
        timeout=DEFAULT_TIMEOUT,
    )
    p.add_argument("--state", required=True)
    p.add_argument("relay_address", metavar="RELAY_ADDRESS")
    p = add_command(
        owner,
        "publish",
        cmd_owner_publish,
        "sign the profile listing the relays and notify them",
        timeout=DEFAULT_TIMEOUT,
    )
    p.add_argument("--state", required=True)
    p.add_argument("--admission", choices=["auto", "approval"], help="change how members get in")
    p.add_argument("--max-members", type=count, help="change the owners' member limit (0: none)")
    groups.add_limits(p, create=False)
    p = add_command(
        owner,
        "remove-relay",
        cmd_owner_remove_relay,
        "publish a profile without a relay; it stops serving",
        timeout=DEFAULT_TIMEOUT,
    )
    p.add_argument("--state", required=True)
    p.add_argument("relay_address", metavar="RELAY_ADDRESS")
    p = add_command(
        owner,
        "post",
        cmd_owner_post,
        "sign a post and store it on every relay of the channel",
        timeout=DEFAULT_TIMEOUT,
    )
    p.add_argument("--state", required=True)
    add_body_arguments(p, "post")
    p = add_command(
        owner, "new-key", cmd_owner_new_key, "a co-owner's first step: make an owner key, print it"
    )
    p.add_argument("--state", required=True, help="the co-owner's new file (never over an existing one)")
    p = add_command(
        owner,
        "add-owner",
        cmd_owner_add_owner,
        "authorise another owner key (signed with this file's key) and publish the profile; "
        "a key seen in another channel is refused",
        timeout=DEFAULT_TIMEOUT,
    )
    p.add_argument("--state", required=True)
    p.add_argument(
        "owner_key", metavar="OWNER_KEY", help="as 'relay owner new-key' printed it (of no other channel)"
    )
    p.add_argument("--share", help="write the channel (no secrets) for the new owner to adopt to this file")
    p = add_command(
        owner,
        "adopt",
        cmd_owner_adopt,
        "a co-owner's second step: take over the channel file shared (refused for a key seen in "
        "another channel)",
    )
    p.add_argument("--state", required=True, help="the file 'relay owner new-key' made")
    p.add_argument("share", metavar="SHARE", help="the file 'relay owner add-owner --share' wrote")
    p = add_command(
        owner,
        "remove-owner",
        cmd_owner_remove_owner,
        "withdraw an owner key and publish the profile (needs the root key only if that key "
        "authorised yours)",
        timeout=DEFAULT_TIMEOUT,
    )
    p.add_argument("--state", required=True)
    p.add_argument("owner_key", metavar="OWNER_KEY")
    p.add_argument(
        "--root",
        metavar="FILE",
        help="the channel's root key file, read only if that owner authorised this file's own key, "
        "directly or through other owners (default: beside the state, owner.root.json for owner.json)",
    )
    p = add_command(
        owner,
        "export-root",
        cmd_owner_export_root,
        "move the root key out of a state file made by an older version, into a file of its own",
    )
    p.add_argument("--state", required=True)
    p.add_argument(
        "--root", metavar="FILE", help="the new root key file (default: beside the state, owner.root.json)"
    )
    p = add_command(owner, "link", cmd_owner_link, "print the channel link members join with")
    p.add_argument("--state", required=True)
    p = add_command(
        owner, "log", cmd_owner_log, "print the service-group log each relay keeps", timeout=DEFAULT_TIMEOUT
    )
    p.add_argument("--state", required=True)
    p = add_command(
        owner,
        "pending",
        cmd_owner_pending,
        "list members waiting for the owners' approval",
        timeout=DEFAULT_TIMEOUT,
    )
    p.add_argument("--state", required=True)
    p = add_command(
        owner, "approve", cmd_owner_approve, "admit a member waiting for approval", timeout=DEFAULT_TIMEOUT
    )
    p.add_argument("--state", required=True)
    p.add_argument("member", metavar="MEMBER", help="the member id, as 'relay owner pending' shows it")
    p = add_command(
        owner, "refuse", cmd_owner_refuse, "turn down a member waiting for approval", timeout=DEFAULT_TIMEOUT
    )
    p.add_argument("--state", required=True)
    p.add_argument("member", metavar="MEMBER", help="the member id, as 'relay owner pending' shows it")
    p.add_argument("--reason", help="told to the member")
    p = add_command(
        owner,
        "suspend-admission",
        cmd_owner_suspend,
        "pause admissions on every relay",
        timeout=DEFAULT_TIMEOUT,
    )
    p.add_argument("--state", required=True)
    p = add_command(
        owner,
        "resume-admission",
        cmd_owner_resume,
        "resume admissions on every relay",
        timeout=DEFAULT_TIMEOUT,
    )
    p.add_argument("--state", required=True)
    groups.add_owner_commands(owner)
