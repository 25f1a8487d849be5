"""Configuration: RELAY_* environment overrides, precedence, and ``relay config check``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from relayproc import RelayFactory, RunningRelay

from relay.server.config import Config, ConfigError, check_config, load_config
from relay.store.pgurl import redacted as redacted_url

ROOT = Path(__file__).parent.parent


def check(*args: str, env: dict[str, str]) -> tuple[int, dict[str, object]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    done = subprocess.run(
        [sys.executable, "-m", "relay", "config", "check", "--json", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
    )
    return done.returncode, json.loads(done.stdout)


def test_environment_values_are_typed_and_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[policy]\nmax_groups = 7\napproval = "manual"\n[server]\nshutdown_grace = 3.0\n')
    config = load_config(
        path,
        {
            "RELAY_SERVER_LISTEN": "0.0.0.0:8000",
            "RELAY_SERVER_SHUTDOWN_GRACE": "2.5",
            "RELAY_POLICY_MAX_GROUPS": "500",
            "RELAY_POLICY_KINDS": "channel",
            "RELAY_POLICY_DENY_PATTERNS": r'["a{1,3}", "\\bspam\\b"]',  # commas inside: TOML array
            "RELAY_LOGGING_LOG_CLIENT_IP": "true",
            "RELAY_STORAGE_SYNCHRONOUS": "NORMAL",
            "RELAY_HOME": "/somewhere",  # not an option, and nothing like one: ignored
            "PATH": "/bin",
        },
    )
    assert config.server.listen == "0.0.0.0:8000" and config.server.shutdown_grace == 2.5
    assert config.policy.max_groups == 500 and config.policy.approval == "manual"  # file kept
    assert config.policy.kinds == ["channel"] and config.policy.deny_patterns == ["a{1,3}", r"\bspam\b"]
    assert config.logging.log_client_ip is True and config.storage.synchronous == "NORMAL"
    assert load_config(None, {"RELAY_POLICY_KINDS": "channel, group", "RELAY_POLICY_DENY_PATTERNS": ""}) == (
        Config()
    )


def test_every_error_is_reported_with_its_key_and_source(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[server]\nmax_connections = 0\n[policy]\nmax_owner = 3\ndeny_patterns = ["("]\n')
    config, errors, variables = check_config(
        path,
        {
            "RELAY_SERVER_LISTN": "127.0.0.1:1",
            "RELAY_POLYCY_KINDS": "channel",
            "RELAY_POLICY_MAX_GROUPS": "many",
            "RELAY_LOGGING_LOG_CLIENT_IP": "perhaps",
            "RELAY_SERVER_PUBLIC_URL": "relay.example.org",
        },
    )
    assert config is None
    expected = [
        "RELAY_SERVER_LISTN: no such option (did you mean RELAY_SERVER_LISTEN?)",
        "RELAY_POLYCY_KINDS: no such option (did you mean RELAY_POLICY_KINDS?)",
        f"{path}: Expected `int` >= 1 - at `server.max_connections`",
        f"{path}: unknown option `policy.max_owner` (did you mean `policy.max_owners`?)",
        "RELAY_POLICY_MAX_GROUPS: Expected `int`, got `str` - at `policy.max_groups`",
        "RELAY_LOGGING_LOG_CLIENT_IP: Expected `bool`, got `str` - at `logging.log_client_ip`",
        "RELAY_SERVER_PUBLIC_URL: server.public_url:",
        "policy.deny_patterns[0]: not a regular expression",
    ]
    assert len(errors) == len(expected), errors
    for want in expected:
        assert any(error.startswith(want) for error in errors), (want, errors)
    assert variables == ["RELAY_LOGGING_LOG_CLIENT_IP", "RELAY_POLICY_MAX_GROUPS", "RELAY_SERVER_PUBLIC_URL"]
    try:
        load_config(path, {})
    except ConfigError as exc:
        assert len(exc.errors) == 3 and str(exc).startswith(f"{path}: Expected `int` >= 1")
    else:
        raise AssertionError("a bad file loaded")


def test_config_check_command(tmp_path: Path) -> None:
    code, out = check("--config", str(ROOT / "config" / "relay.toml"), env={"RELAY_POLICY_MAX_GROUPS": "5"})
    assert code == 0 and out["status"] == "ok" and out["environment"] == ["RELAY_POLICY_MAX_GROUPS"]
    assert "relay.toml + RELAY_POLICY_MAX_GROUPS" in str(out["summary"])
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nlisten = "nowhere"\n[storage]\nsynchronous = "SOMETIMES"\n')
    code, out = check("--config", str(bad), env={"RELAY_SERVER_IDLE_TIMEOUT": "-1"})
    assert code == 1 and out["code"] == "bad_config"
    errors = out["errors"]
    assert isinstance(errors, list) and len(errors) == 3, errors
    assert any("RELAY_SERVER_IDLE_TIMEOUT" in e and "server.idle_timeout" in e for e in errors)
    assert any("storage.synchronous" in e for e in errors) and any("server.listen" in e for e in errors)
    code, out = check("--config", str(tmp_path / "missing.toml"), env={})
    assert code == 1 and "missing.toml" in str(out["errors"])


def test_the_daemon_takes_the_environment_and_flags_win(tmp_path: Path) -> None:
    relay = RunningRelay(
        data=tmp_path / "d",
        env={
            "RELAY_SERVER_LISTEN": "127.0.0.1:1",  # the --listen flag of the test helper wins
            "RELAY_POLICY_KINDS": "channel",
            "RELAY_LOGGING_LOG_CLIENT_IP": "true",
        },
    )
    relay.start()
    try:
        assert not relay.listen.endswith(":1")
        assert httpx.get(relay.base_url + "/").json()["policy"]["kinds"] == ["channel"]
        assert relay.wait_for_event("connection.opened")["peer"] == "127.0.0.1"
    finally:
        assert relay.stop() == 0


OVERLAPPING = [
    ("127.0.0.1:7300", "127.0.0.1:7300"),
    ("0.0.0.0:7300", "127.0.0.1:7300"),  # the wildcard takes the port on every IPv4 address
    ("127.0.0.1:7300", "0.0.0.0:7300"),
    ("localhost:7300", "127.0.0.1:7300"),
    ("[::]:7300", "[::1]:7300"),
    ("[0:0::1]:7300", "[::1]:7300"),  # one address, written two ways
]
APART = [
    ("127.0.0.1:7300", "127.0.0.1:7301"),
    ("127.0.0.1:0", "127.0.0.1:0"),  # two free ports, whichever they are
    ("127.0.0.1:7300", "127.0.0.2:7300"),
    ("0.0.0.0:7300", "[::1]:7300"),  # IPv6 listeners are IPv6-only
]


def test_the_public_and_operator_ports_must_not_overlap(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    for listen, admin in OVERLAPPING + APART:
        path.write_text(f'[server]\nlisten = "{listen}"\nadmin_listen = "{admin}"\n')
        config, errors, _ = check_config(path, {})
        if (listen, admin) in APART:
            assert config is not None and not errors, (listen, admin, errors)
        else:
            assert config is None and len(errors) == 1, (listen, admin, errors)
            assert errors[0].startswith("server.admin_listen:") and "port of server.listen" in errors[0]

    # the real commands: `relay config check` lists it, `relay serve` does not start
    path.write_text('[server]\nlisten = "0.0.0.0:7399"\nadmin_listen = "127.0.0.1:7399"\n')
    code, out = check("--config", str(path), env={})
    assert code == 1 and out["code"] == "bad_config", out
    assert "server.admin_listen" in str(out["errors"]), out
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    same = "127.0.0.1:7399"
    command = [sys.executable, "-m", "relay", "serve", "--data", str(tmp_path / "d")]
    served = subprocess.run(
        [*command, "--listen", same, "--admin-listen", same],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean,
    )
    assert served.returncode == 1, served
    [line] = [json.loads(text) for text in served.stdout.splitlines()]
    assert line["event"] == "relay.start_failed" and "server.admin_listen" in line["reason"], line
    assert "Traceback" not in served.stdout + served.stderr


def _next(relay: RunningRelay, name: str, seen: int, timeout: float = 10.0) -> dict[str, object]:
    """The event ``name`` logged after the first ``seen`` of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = relay.events(name)
        if len(found) > seen:
            return found[seen]
        time.sleep(0.02)
    raise AssertionError(f"no new {name} event within {timeout} s")


def test_sighup_says_what_it_applied_and_what_needs_a_restart(relay_factory: RelayFactory) -> None:
    relay = relay_factory(policy={"kinds": ["channel", "group"]}, server={"idle_timeout": 120})
    assert relay.config is not None and relay.proc is not None
    sections = {"policy": 'kinds = ["channel", "group"]', "server": "idle_timeout = 120.0"}

    def reload(**changes: str) -> None:
        sections.update(changes)
        relay.config.write_text("".join(f"[{name}]\n{body}\n" for name, body in sections.items()))
        relay.proc.send_signal(signal.SIGHUP)

    # only options a restart applies: nothing is said to be reloaded, and nothing is
    reload(server="idle_timeout = 60.0", events="history = 5")
    waiting = _next(relay, "config.restart_needed", 0)
    assert waiting["level"] == "warning" and waiting["options"] == ["server.idle_timeout", "events.history"]
    assert not relay.events("config.reloaded")
    assert httpx.get(relay.base_url + "/").json()["limits"]["idle_timeout"] == 120.0

    # a [policy] change is applied and named; the others still wait, and are named again
    reload(policy='kinds = ["channel"]')
    applied = _next(relay, "config.reloaded", 0)
    assert applied["applied"] == ["policy.kinds"]
    assert _next(relay, "config.restart_needed", 1)["options"] == ["server.idle_timeout", "events.history"]
    assert httpx.get(relay.base_url + "/").json()["policy"]["kinds"] == ["channel"]

    # the file as the relay runs it: nothing to do
    reload(server="idle_timeout = 120.0", events="")
    _next(relay, "config.unchanged", 0)
    assert len(relay.events("config.reloaded")) == 1 and len(relay.events("config.restart_needed")) == 2
    assert relay.stop() == 0


def test_a_storage_url_must_name_postgresql_and_its_password_is_never_shown(tmp_path: Path) -> None:
    config, errors, _ = check_config(None, {"RELAY_STORAGE_URL": "mysql://relay:hunter2@db/relay"})
    assert config is None
    assert errors == [
        "RELAY_STORAGE_URL: storage.url: 'mysql://relay:***@db/relay' is not a PostgreSQL URL "
        "(postgresql://USER@HOST:PORT/DB)"
    ]
    good = load_config(None, {"RELAY_STORAGE_URL": "postgresql://relay@db:5433/relay"})
    assert good.storage.url == "postgresql://relay@db:5433/relay"
    assert redacted_url("postgresql://relay:hunter2@db/relay") == "postgresql://relay:***@db/relay"
    assert redacted_url("postgresql://relay@db/relay?password=hunter2&sslmode=require") == (
        "postgresql://relay@db/relay?password=***&sslmode=require"
    )
    assert (
        redacted_url("postgresql:///relay?host=/run/postgresql") == "postgresql:///relay?host=/run/postgresql"
    )
