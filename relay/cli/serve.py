"""The daemon's commands: ``relay init``, ``serve``, ``address`` and ``config check``.

The process around the daemon lives here: loading the configuration with the
``--listen``/``--admin-listen`` overrides, the umask, and the signals (SIGHUP
reloads the policy, SIGTERM/SIGINT stop).  This module must not implement the
relay itself (``relay.server`` does) nor print: ``relay.cli.main`` prints the
answer, and ``serve`` speaks only through the daemon's JSON log.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path
from typing import Any

import msgspec
import trio

from relay.cli.common import Failure, add_command


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
    if config.server.tls:
        from relay.server.tls import TlsError, server_context

        try:
            server_context(config.server.tls_cert, config.server.tls_key)
        except TlsError as exc:
            reason = f"1 error in the configuration:\n  - {exc}"
            raise Failure(reason, code="bad_config", errors=[str(exc)]) from None
    source = str(path) if path else "built-in defaults"
    overrides = f" + {', '.join(variables)}" if variables else ""
    return {
        "status": "ok",
        "config": str(path) if path else None,
        "environment": variables,
        "summary": f"ok: {source}{overrides}; public {config.server.listen}"
        f"{' (TLS)' if config.server.tls else ''}, "
        f"operator {config.server.admin_listen}, approval {config.policy.approval}",
    }


def cmd_init(args: argparse.Namespace) -> dict[str, Any]:
    from relay.protocol.addresses import contact_address
    from relay.server import admintoken
    from relay.server.app import DB_FILE
    from relay.server.config import split_host_port
    from relay.server.identity import load_or_create
    from relay.store.db import Database

    config = _load_config(args)
    data = Path(args.data)
    identity, created = load_or_create(data)
    try:
        # The operator port's token: `relay admin --data` sends it (relay serve makes it too).
        admintoken.load_or_create(data)
    except admintoken.TokenError as exc:
        raise Failure(str(exc)) from None
    Database(data / DB_FILE).close()
    host, port = split_host_port(config.server.listen)
    base = config.server.base_url(f"{host}:{port}")
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
                            relay.reload_admin_token()  # a deleted token file is made anew
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


def add_commands(sub: Any) -> None:
    """``init``, ``serve``, ``config check`` and ``address`` on the top-level subparsers, in that order."""
    p = add_command(sub, "init", cmd_init, "create the relay's identity keys, operator token and database")
    p.add_argument("--data", required=True)
    p.add_argument("--config")
    p = add_command(sub, "serve", cmd_serve, "run the relay daemon")
    p.add_argument("--data", required=True)
    p.add_argument("--config")
    p.add_argument("--listen", help="public HOST:PORT (port 0 picks a free port)")
    p.add_argument("--admin-listen", help="operator HOST:PORT (loopback by default)")
    config = sub.add_parser("config", help="configuration commands").add_subparsers(
        dest="config_cmd", required=True
    )
    p = add_command(
        config, "check", cmd_config_check, "check a config file and the RELAY_* environment; list every error"
    )
    p.add_argument("--config", help="the relay.toml to check (default: built-in defaults)")
    p = add_command(sub, "address", cmd_address, "print the relay's contact address")
    p.add_argument("--data", required=True)
    p.add_argument("--config")
