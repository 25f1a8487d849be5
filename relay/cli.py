"""The ``relay`` command: daemon, owner and operator commands.

Every command accepts ``--json`` and then prints exactly one JSON object on
stdout.  Exit status: 0 success, 1 refusal or failure (with the reason), 2
usage.  The daemon's own output is its JSON log, one event per line.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import trio

from relay import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Failure(Exception):
    """A command failed; ``fields`` go into the JSON answer."""

    def __init__(self, reason: str, /, **fields: Any) -> None:
        super().__init__(reason)
        self.fields = {"status": "error", "reason": reason, **fields}


def _print(args: argparse.Namespace, result: dict[str, Any], human: Callable[[dict[str, Any]], str]) -> None:
    if args.json:
        print(json.dumps(result))
    else:
        print(human(result))


# --- daemon ------------------------------------------------------------------


def _load_config(args: argparse.Namespace) -> Any:
    from relay.server.config import ConfigError, load_config, validate

    try:
        config = load_config(Path(args.config) if getattr(args, "config", None) else None)
    except ConfigError as exc:
        raise Failure(str(exc), code="bad_config") from None
    server_overrides = {}
    if getattr(args, "listen", None):
        server_overrides["listen"] = args.listen
    if getattr(args, "admin_listen", None):
        server_overrides["admin_listen"] = args.admin_listen
    if server_overrides:
        config = msgspec.structs.replace(
            config, server=msgspec.structs.replace(config.server, **server_overrides)
        )
        try:
            validate(config)
        except ConfigError as exc:
            raise Failure(str(exc), code="bad_config") from None
    return config


def cmd_config_check(args: argparse.Namespace) -> dict[str, Any]:
    """Every error in the file and the RELAY_* environment, each naming its key and source."""
    from relay.server.config import check_config

    path = Path(args.config) if args.config else None
    config, errors, variables = check_config(path, os.environ)
    if config is None:
        lines = "\n".join(f"  - {error}" for error in errors)
        count = f"{len(errors)} error{'s' if len(errors) > 1 else ''}"
        raise Failure(f"{count} in the configuration:\n{lines}", code="bad_config", errors=errors)
    source = str(path) if path else "built-in defaults"
    overrides = f" + {', '.join(variables)}" if variables else ""
    return {
        "status": "ok",
        "config": str(path) if path else None,
        "environment": variables,
        "summary": f"ok: {source}{overrides}; public {config.server.listen}, "
        f"operator {config.server.admin_listen}, approval {config.policy.approval}",
    }


def cmd_init(args: argparse.Namespace) -> dict[str, Any]:
    from relay.protocol.addresses import contact_address
    from relay.server.app import DB_FILE
    from relay.server.config import split_host_port
    from relay.server.identity import load_or_create
    from relay.store.db import Database

    config = _load_config(args)
    data = Path(args.data)
    identity, created = load_or_create(data)
    Database(data / DB_FILE).close()
    host, port = split_host_port(config.server.listen)
    base = config.server.public_url.rstrip("/") or f"http://{host}:{port}"
    return {
        "status": "ok",
        "created": created,
        "address": contact_address(base, identity.fingerprint),
        "fingerprint": identity.fingerprint_text,
    }


def _alive(pid: int) -> bool:
    """Whether the daemon that wrote ``run.json`` still runs (it may have been SIGKILLed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_address(args: argparse.Namespace) -> dict[str, Any]:
    run = Path(args.data) / "run.json"
    if run.exists():
        try:
            info = json.loads(run.read_text())
            if _alive(int(info["pid"])):
                return {"status": "ok", "address": info["address"], "running": True}
        except (ValueError, KeyError, TypeError):
            pass  # a damaged run file says nothing; fall back to the configured address
    if not (Path(args.data) / "identity.key").exists():
        raise Failure(f"no relay identity in {args.data} (run 'relay init --data {args.data}')")
    result = cmd_init(args)
    return {"status": "ok", "address": result["address"], "running": False}


def cmd_serve(args: argparse.Namespace) -> None:
    import structlog

    from relay.server.app import Relay, StartupError
    from relay.server.logsetup import configure

    os.umask(0o077)  # the database, its WAL and the run file hold nothing others should read
    config = _load_config(args)
    configure(config.logging.level)
    relay = Relay(config=config, data_dir=Path(args.data))

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def signals() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as received:
                    async for signum in received:
                        if signum == signal.SIGHUP:
                            try:
                                relay.reload_policy(_load_config(args))
                            except Failure as exc:
                                structlog.get_logger("relay.app").error(
                                    "config.reload_failed", reason=str(exc)
                                )
                        else:
                            relay.stop()

            nursery.start_soon(signals)
            await relay.run()
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except* StartupError as group:
        reason = str(group.exceptions[0])
        structlog.get_logger("relay.app").error("relay.start_failed", reason=reason)
        raise Failure(reason, code="cannot_start") from None


# --- owner -------------------------------------------------------------------


def _state_path(args: argparse.Namespace) -> Path:
    return Path(args.state)


def cmd_owner_create(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owner import create_channel

    path = _state_path(args)
    if path.exists():
        raise Failure(f"{path} already exists; it holds another channel's secrets")
    state = create_channel(
        args.name,
        kind=args.kind,
        description=args.description,
        admission=args.admission,
        max_members=args.max_members,
    )
    state.save(path)
    from relay.protocol.encoding import b64e

    return {
        "status": "ok",
        "channel": b64e(state.channel),
        "kind": state.kind,
        "name": state.name,
        "state": str(path),
    }


def cmd_owner_add_relay(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owner import OwnerState, add_relay

    path = _state_path(args)
    state = OwnerState.load(path)
    result = trio.run(add_relay, state, path, args.relay_address)
    out = {k: v for k, v in result.__dict__.items() if v is not None}
    if result.status == "refused":
        raise Failure(result.reason or "refused", **{**out, "status": "refused"})
    return out


def cmd_owner_publish(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owner import OwnerState, publish

    path = _state_path(args)
    state = OwnerState.load(path)
    if args.admission is not None:
        state.admission = args.admission
    if args.max_members is not None:
        state.max_members = args.max_members
    return _published(trio.run(publish, state, path))


def _published(result: Any) -> dict[str, Any]:
    """A publish's answer; a relay that did not take the profile makes it a failure."""
    out = {"status": "ok", "version": result.version, "link": result.link, "relays": result.relays}
    if any(r.get("status") == "error" for r in result.relays):
        raise Failure("a relay did not take the new profile", **{**out, "status": "error"})
    return out


def cmd_owner_remove_relay(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owner import OwnerState, remove_relay

    path = _state_path(args)
    state = OwnerState.load(path)
    return _published(trio.run(remove_relay, state, path, args.relay_address))


def cmd_owner_post(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owner import OwnerState
    from relay.client.posting import post

    if (args.text is None) == (args.file is None):
        raise Failure("give the post as TEXT or with --file PATH (one of them)", code="usage")
    try:
        body = args.text.encode() if args.text is not None else Path(args.file).read_bytes()
    except OSError as exc:
        raise Failure(f"cannot read {args.file}: {exc.strerror}", code="no_file") from None
    path = _state_path(args)
    state = OwnerState.load(path)
    outcome = trio.run(partial(post, state, path, body, content_type=args.content_type))
    relays = [{k: v for k, v in r.__dict__.items() if v not in (None, 0)} for r in outcome.relays]
    out = {"status": "ok", "seq": outcome.seq, "id": outcome.id, "relays": relays}
    if all(r["status"] == "error" for r in relays):
        first = relays[0]
        raise Failure(str(first.get("reason")), **{**out, "status": "error", "code": first.get("code")})
    return out


def cmd_owner_new_key(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owners import new_key

    path = _state_path(args)
    if path.exists():
        raise Failure(f"{path} already exists; it holds another owner's secrets")
    return {"status": "ok", "owner_key": new_key(path), "state": str(path)}


def cmd_owner_add_owner(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owner import OwnerState
    from relay.client.owners import add_owner, write_share

    path = _state_path(args)
    state = OwnerState.load(path)
    result = _published(trio.run(add_owner, state, path, args.owner_key))
    if args.share:
        write_share(state, Path(args.share))
        result["share"] = args.share
    return result


def cmd_owner_remove_owner(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owner import OwnerState
    from relay.client.owners import remove_owner

    path = _state_path(args)
    return _published(trio.run(remove_owner, OwnerState.load(path), path, args.owner_key))


def cmd_owner_adopt(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owners import adopt
    from relay.protocol.encoding import b64e

    path = _state_path(args)
    state = adopt(path, Path(args.share))
    return {"status": "ok", "channel": b64e(state.channel), "name": state.name, "state": str(path)}


def cmd_owner_link(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owner import OwnerState

    state = OwnerState.load(_state_path(args))
    if not state.listed_addresses():
        raise Failure("no relay has granted this channel an address yet (run 'relay owner add-relay')")
    return {"status": "ok", "link": str(state.link())}


def cmd_owner_log(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.owner import OwnerState, read_log

    state = OwnerState.load(_state_path(args))
    return {"status": "ok", "relays": trio.run(read_log, state)}


def _owner_command(args: argparse.Namespace, action: str, member: str = "", note: str = "") -> dict[str, Any]:
    from relay.client.owner import OwnerState, owner_command

    state = OwnerState.load(_state_path(args))
    views = trio.run(partial(owner_command, state, action, member=member, note=note))
    relays = [{k: v for k, v in view.__dict__.items() if v not in (None, "")} for view in views]
    if not relays:
        raise Failure("no relay serves this channel yet (add one and publish)", code="no_relay")
    out = {"status": "ok", "relays": relays}
    if all("error" in r for r in relays):
        first = relays[0]
        raise Failure(str(first.get("reason")), **{**out, "status": "error", "code": first["error"]})
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


# --- member ------------------------------------------------------------------


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

    path = _state_path(args)
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

    path = _state_path(args)
    return _member_out(trio.run(partial(status, MemberState.load(path), path, wait=args.wait)))


def cmd_member_read(args: argparse.Namespace) -> dict[str, Any] | None:
    """Print each post once as it is accepted; findings go to stderr as warnings."""
    from relay.client.member import MemberState
    from relay.client.reader import read

    path = _state_path(args)
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
        _warn(
            args, {"type": "finding", **finding}, f"warning: {item.relay}: {item.code.value}: {item.detail}"
        )
    elif isinstance(item, RelayTrouble):
        trouble = {"relay": item.relay, "code": item.code, "reason": item.reason}
        troubles.append(trouble)
        _warn(args, {"type": "relay", **trouble}, f"warning: {item.relay}: {item.code}: {item.reason}")
    elif isinstance(item, InvitationReceived):
        invitation = {"sender": item.sender, "contact": item.contact, "note": item.note}
        _warn(
            args,
            {"type": "invitation", **invitation},
            f"direct invitation from member {item.sender}: {item.contact} {item.note}".rstrip(),
        )
    elif isinstance(item, ProfileAdopted):
        _warn(
            args,
            {"type": "profile", "version": item.profile.profile.version},
            f"profile version {item.profile.profile.version} verified",
        )


def _warn(args: argparse.Namespace, as_json: dict[str, Any], text: str) -> None:
    print(json.dumps(as_json) if args.json else text, file=sys.stderr, flush=True)


def cmd_member_invite(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.direct import invite
    from relay.client.member import MemberState

    path = _state_path(args)
    state = MemberState.load(path)
    result = trio.run(partial(invite, state, args.member, contact=args.contact, note=args.note))
    return {"status": "ok", **result}


def cmd_member_invitations(args: argparse.Namespace) -> dict[str, Any]:
    from relay.client.member import MemberState

    state = MemberState.load(_state_path(args))
    return {"status": "ok", "invitations": [dict(i) for i in state.invitations]}


# --- operator ----------------------------------------------------------------


def _admin(args: argparse.Namespace) -> Any:
    from relay.client.admin import AdminClient, admin_address

    return AdminClient(admin_address(Path(args.data) if args.data else None, args.admin))


def cmd_admin_groups(args: argparse.Namespace) -> dict[str, Any]:
    limit = _limit(args)
    with _admin(args) as admin:
        return _paged("groups", admin.groups(args.state_filter, after=args.after, limit=limit), limit)


def _limit(args: argparse.Namespace) -> int:
    return int(min(max(args.limit, 1), 1000))  # what the operator port serves at most


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
    # The relay writes the file itself, so it needs a path that means the same to it.
    target = Path(args.file).expanduser().absolute()
    with _admin(args) as admin:
        return {"status": "ok", **admin.backup(str(target))}


# --- human output ------------------------------------------------------------


def _human(result: dict[str, Any]) -> str:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay", description="chat-relay: a relay for owner-signed channels"
    )
    parser.add_argument("--version", action="version", version=f"chat-relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(parent: Any, name: str, func: Callable[..., Any], help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, help=help_, description=help_)
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.set_defaults(func=func)
        return p

    p = command(sub, "init", cmd_init, "create the relay's identity keys and database")
    p.add_argument("--data", required=True)
    p.add_argument("--config")
    p = command(sub, "serve", cmd_serve, "run the relay daemon")
    p.add_argument("--data", required=True)
    p.add_argument("--config")
    p.add_argument("--listen", help="public HOST:PORT (port 0 picks a free port)")
    p.add_argument("--admin-listen", help="operator HOST:PORT (loopback by default)")
    config = sub.add_parser("config", help="configuration commands").add_subparsers(
        dest="config_cmd", required=True
    )
    p = command(
        config, "check", cmd_config_check, "check a config file and the RELAY_* environment; list every error"
    )
    p.add_argument("--config", help="the relay.toml to check (default: built-in defaults)")
    p = command(sub, "address", cmd_address, "print the relay's contact address")
    p.add_argument("--data", required=True)
    p.add_argument("--config")

    owner = sub.add_parser("owner", help="channel owner commands").add_subparsers(dest="owner", required=True)
    p = command(owner, "create", cmd_owner_create, "create a channel: root key, owner key, profile")
    p.add_argument("--state", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--kind", choices=["channel", "group"], default="channel")
    p.add_argument("--description", default="")
    p.add_argument("--admission", choices=["auto", "approval"], default="auto", help="how members get in")
    p.add_argument("--max-members", type=int, default=0, help="the owners' member limit (0: none)")
    p = command(owner, "add-relay", cmd_owner_add_relay, "invite a relay to serve the channel")
    p.add_argument("--state", required=True)
    p.add_argument("relay_address", metavar="RELAY_ADDRESS")
    p = command(owner, "publish", cmd_owner_publish, "sign the profile listing the relays and notify them")
    p.add_argument("--state", required=True)
    p.add_argument("--admission", choices=["auto", "approval"], help="change how members get in")
    p.add_argument("--max-members", type=int, help="change the owners' member limit (0: none)")
    p = command(
        owner, "remove-relay", cmd_owner_remove_relay, "publish a profile without a relay; it stops serving"
    )
    p.add_argument("--state", required=True)
    p.add_argument("relay_address", metavar="RELAY_ADDRESS")
    p = command(owner, "post", cmd_owner_post, "sign a post and store it on every relay of the channel")
    p.add_argument("--state", required=True)
    p.add_argument("text", metavar="TEXT", nargs="?", help="the post (or --file)")
    p.add_argument("--file", help="post the bytes of this file")
    p.add_argument("--content-type", default="text/plain", help="what the body is (default text/plain)")
    p = command(owner, "new-key", cmd_owner_new_key, "a co-owner's first step: make an owner key, print it")
    p.add_argument("--state", required=True, help="the co-owner's new file")
    p = command(
        owner, "add-owner", cmd_owner_add_owner, "authorise another owner key and publish the profile"
    )
    p.add_argument("--state", required=True)
    p.add_argument("owner_key", metavar="OWNER_KEY", help="as 'relay owner new-key' printed it")
    p.add_argument("--share", help="write the channel (no secrets) for the new owner to adopt to this file")
    p = command(
        owner, "adopt", cmd_owner_adopt, "a co-owner's second step: take over the channel file shared"
    )
    p.add_argument("--state", required=True, help="the file 'relay owner new-key' made")
    p.add_argument("share", metavar="SHARE", help="the file 'relay owner add-owner --share' wrote")
    p = command(
        owner, "remove-owner", cmd_owner_remove_owner, "withdraw an owner key and publish the profile"
    )
    p.add_argument("--state", required=True)
    p.add_argument("owner_key", metavar="OWNER_KEY")
    p = command(owner, "link", cmd_owner_link, "print the channel link members join with")
    p.add_argument("--state", required=True)
    p = command(owner, "log", cmd_owner_log, "print the service-group log each relay keeps")
    p.add_argument("--state", required=True)
    p = command(owner, "pending", cmd_owner_pending, "list members waiting for the owners' approval")
    p.add_argument("--state", required=True)
    p = command(owner, "approve", cmd_owner_approve, "admit a member waiting for approval")
    p.add_argument("--state", required=True)
    p.add_argument("member", metavar="MEMBER", help="the member id, as 'relay owner pending' shows it")
    p = command(owner, "refuse", cmd_owner_refuse, "turn down a member waiting for approval")
    p.add_argument("--state", required=True)
    p.add_argument("member", metavar="MEMBER", help="the member id, as 'relay owner pending' shows it")
    p.add_argument("--reason", help="told to the member")
    p = command(owner, "suspend-admission", cmd_owner_suspend, "pause admissions on every relay")
    p.add_argument("--state", required=True)
    p = command(owner, "resume-admission", cmd_owner_resume, "resume admissions on every relay")
    p.add_argument("--state", required=True)

    member = sub.add_parser("member", help="member commands").add_subparsers(dest="member_cmd", required=True)
    p = command(member, "join", cmd_member_join, "ask every relay of a channel link to admit you")
    p.add_argument("--state", required=True, help="your member file (created on first join; one per channel)")
    p.add_argument("--name", default="member", help="the name the owners see")
    p.add_argument("--about", default="", help="a line about you for the owners")
    p.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds for a decision")
    p.add_argument("link", metavar="LINK")
    p = command(member, "status", cmd_member_status, "ask each relay for the decision on your request")
    p.add_argument("--state", required=True)
    p.add_argument("--wait", type=float, default=0.0, help="wait up to this many seconds for a decision")

    p = command(member, "read", cmd_member_read, "print the channel's posts, verified, from every relay")
    p.add_argument("--state", required=True)
    p.add_argument(
        "--since", type=int, help="the posts after this sequence number (default: after the last shown)"
    )
    p.add_argument("--follow", action="store_true", help="keep printing live posts until Ctrl-C")
    p = command(member, "invite", cmd_member_invite, "send another member a sealed direct-message invitation")
    p.add_argument("--state", required=True)
    p.add_argument("member", metavar="MEMBER", help="the other member's id (its member key, base64url)")
    p.add_argument("--contact", required=True, help="where the other member can reach you")
    p.add_argument("--note", default="", help="a line for the other member")
    p = command(member, "invitations", cmd_member_invitations, "list the direct invitations received")
    p.add_argument("--state", required=True)

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
        ("backup", cmd_admin_backup, "write an online backup of the database to a new FILE"),
    ):
        p = command(admin, name, func, help_)
        p.add_argument("--data")
        p.add_argument("--admin", help="operator HOST:PORT")
        if name in ("groups", "held"):
            p.add_argument("--after", type=int, default=0, help="only those with an id above this")
            p.add_argument("--limit", type=int, default=100, help="at most this many (up to 1000)")
        if name == "groups":
            p.add_argument("--state", dest="state_filter", help="only groups in this state")
        elif name == "held":
            p.add_argument("--dead", action="store_true", help="only dead-lettered requests")
        elif name == "backup":
            p.add_argument("file", metavar="FILE", help="a new file, written by the relay itself (mode 0600)")
        elif name != "stats":
            p.add_argument("id", type=int)
        if name == "reject":
            p.add_argument("--reason", required=True)
        if name in ("suspend", "remove"):
            p.add_argument("--reason", help="told to the owners in the service log")
    return parser


def main(argv: list[str] | None = None) -> int:
    from relay.client.errors import RelayError

    args = build_parser().parse_args(argv)
    if args.func is cmd_serve:
        try:
            cmd_serve(args)
            return EXIT_OK
        except Failure as exc:
            print(json.dumps(exc.fields) if args.json else f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
    try:
        result: dict[str, Any] | None = args.func(args)
    except Failure as exc:
        _print(
            args, exc.fields, lambda r: f"{r['status']}: {r.get('code', '')} {r['reason']}".replace("  ", " ")
        )
        return EXIT_FAILED
    except RelayError as exc:
        _print(
            args,
            {"status": "error", "code": exc.code, "reason": exc.reason},
            lambda r: f"error: {r['code']}: {r['reason']}",
        )
        return EXIT_FAILED
    if result is not None:  # ``member read`` prints as it goes
        _print(args, result, _human)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
