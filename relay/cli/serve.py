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

from relay.cli.common import Failure, UsageError, add_command


def _load_config(args: argparse.Namespace) -> Any:
    import msgspec

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
        if len(errors) == 1:
            raise Failure(f"1 error in the configuration: {errors[0]}", code="bad_config", errors=errors)
        lines = "\n".join(f"  - {error}" for error in errors)
        raise Failure(
            f"{len(errors)} errors in the configuration:\n{lines}", code="bad_config", errors=errors
        )
    if config.server.tls:
        from relay.server.tls import TlsError, server_context

        try:
            server_context(config.server.tls_cert, config.server.tls_key)
        except TlsError as exc:
            reason = f"1 error in the configuration: {exc}"
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
    from relay.server import admintoken
    from relay.server.app import DB_FILE
    from relay.server.datadir import StartupError, explained, token_problem
    from relay.server.identity import KEY_FILE, load_or_create
    from relay.store.errors import StoreError
    from relay.store.opening import open_store
    from relay.store.pgurl import redacted

    config = _load_config(args)
    data = Path(args.data)
    try:
        with explained(data / KEY_FILE, data):
            identity, created = load_or_create(data)
        with explained(data / admintoken.TOKEN_FILE, data):
            # The operator port's token: `relay admin --data` sends it (relay serve makes it too).
            admintoken.load_or_create(data)
        with explained(data / DB_FILE, data):
            # SQLite's file, or PostgreSQL's schema (storage.url): made or migrated now.
            open_store(url=config.storage.url, path=data / DB_FILE).close()
    except StartupError as exc:
        raise Failure(str(exc), code="bad_data_folder") from None
    except StoreError as exc:
        reason = f"cannot use the database {redacted(config.storage.url)}: {exc}"
        raise Failure(reason, code="database_unavailable") from None
    except admintoken.TokenError as exc:
        reason = token_problem(exc, data / admintoken.TOKEN_FILE, data)
        raise Failure(reason, code="bad_data_folder") from None
    result: dict[str, Any] = {
        "status": "ok",
        "created": created,
        "fingerprint": identity.fingerprint_text,
        "data": str(data),
    }
    done = "created" if created else "kept"
    what = f"{done} the relay's keys in {data} (fingerprint {identity.fingerprint_text})"
    known = _known_address(data, config, identity.fingerprint)
    if known is None:
        result["summary"] = (
            f"{what}; its address is known once it runs: 'relay serve --data {data}', then "
            f"'relay address --data {data}' (or set server.public_url)"
        )
    else:
        result.update(address=known[0], running=known[1], summary=f"{what}; address {known[0]}")
    return result


def _running(data: Path) -> dict[str, Any] | None:
    """What the relay running with ``data`` wrote to ``run.json``; None if none runs."""
    from relay.client.admin import process_alive
    from relay.server.app import RUN_FILE
    from relay.server.datadir import problem

    run = data / RUN_FILE
    try:
        text = run.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise Failure(problem(exc, run, data) or str(exc), code="bad_data_folder") from None
    try:
        info = json.loads(text)
        if isinstance(info, dict) and process_alive(int(info["pid"])) and isinstance(info["address"], str):
            return info
    except (ValueError, KeyError, TypeError):
        pass  # a damaged run file says nothing
    return None


def _known_address(data: Path, config: Any, fingerprint: bytes) -> tuple[str, bool] | None:
    """The relay's true address and whether it runs: the running relay's, else the one
    ``server.public_url`` names; None when neither tells (never a guessed default)."""
    from relay.protocol.addresses import contact_address

    running = _running(data)
    if running is not None:
        return str(running["address"]), True
    if config.server.public_url:
        return contact_address(config.server.base_url(""), fingerprint), False
    return None


def cmd_address(args: argparse.Namespace) -> dict[str, Any]:
    """The running relay's address (``DATA/run.json``), else the one ``server.public_url``
    makes, else a failure that says how to learn it."""
    from relay.server.datadir import StartupError, explained
    from relay.server.identity import KEY_FILE, load

    data = Path(args.data)
    running = _running(data)
    if running is not None:
        return {"status": "ok", "address": running["address"], "running": True}
    if not (data / KEY_FILE).exists():
        what = (
            "there is no such folder"
            if not data.exists()
            else "it is a file, not a folder"
            if not data.is_dir()
            else f"there is no {KEY_FILE} in it"
        )
        raise Failure(
            f"no relay identity in {data} ({what}): run 'relay init --data {data}' "
            f"or 'relay serve --data {data}'",
            code="no_identity",
        )
    config = _load_config(args)
    if not config.server.public_url:
        raise Failure(
            f"the relay of {data} is not running, so its address is not known (its port is the one it "
            f"binds when it starts): start it with 'relay serve --data {data}', or set server.public_url",
            code="not_running",
        )
    try:
        with explained(data / KEY_FILE, data):
            identity = load(data)
    except StartupError as exc:
        raise Failure(str(exc), code="bad_data_folder") from None
    from relay.protocol.addresses import contact_address

    address = contact_address(config.server.base_url(""), identity.fingerprint)
    return {"status": "ok", "address": address, "running": False}


def cmd_serve(args: argparse.Namespace) -> None:
    import structlog
    import trio

    from relay.server.app import Relay, StartupError
    from relay.server.logsetup import configure

    os.umask(0o077)  # the database, its WAL and the run file hold nothing others should read
    log = structlog.get_logger("relay.app")
    try:
        config = _load_config(args)
    except Failure as exc:
        configure("info")  # the configuration's level is not known: the default's
        log.error("relay.start_failed", reason=exc.reason)
        raise
    configure(config.logging.level)
    if args.processes is not None:
        _serve_processes(args, config)
        return
    try:
        relay = Relay(config=config, data_dir=Path(args.data))
    except StartupError as exc:
        log.error("relay.start_failed", reason=str(exc))
        raise Failure(str(exc), code="cannot_start") from None

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

    failed: list[str] = []
    try:
        trio.run(main)
    except* StartupError as group:
        failed.append(str(_first(group)))
    if failed:  # raised here, not in the except* block, which would wrap it in a group
        log.error("relay.start_failed", reason=failed[0])
        raise Failure(failed[0], code="cannot_start")


def _serve_processes(args: argparse.Namespace, config: Any) -> None:
    """``--processes N``: N relay processes sharing the public port (relay.cli.processes)."""
    from relay.cli.processes import supervise

    if not config.storage.url:
        raise UsageError(
            "relay serve",
            "--processes needs PostgreSQL (storage.url or RELAY_STORAGE_URL): "
            "several processes on one SQLite file would each believe their own answers",
        )
    status = supervise(
        config,
        processes=args.processes,
        data=Path(args.data),
        config_path=Path(args.config) if args.config else None,
        listen=args.listen,
    )
    if status:
        reason = "a relay process ended on its own (its relay.start_failed or log says why)"
        raise Failure(reason, code="cannot_start")


def _processes(text: str) -> int:
    from relay.cli.common import count

    value = count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is out of range: give 1 or more")
    return value


def _first(exc: BaseException) -> BaseException:
    """The first exception of a group (of groups), or the exception itself."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


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
    p.add_argument(
        "--processes",
        type=_processes,
        metavar="N",
        help="run N relay processes sharing the public port (PostgreSQL only; operator ports "
        "admin_listen's port + 0..N-1)",
    )
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
