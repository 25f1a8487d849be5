"""The log catalogue (docs/logging.md) against the source and against a real daemon's stdout."""

from __future__ import annotations

import ast
import base64
import re
import secrets
import signal
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import httpx
from relayproc import RelayFactory
from wire import check_error, connect

from relay.client import add_relay, create_channel, publish
from relay.client.member import MemberState, join
from relay.protocol import crypto
from relay.protocol.encoding import b64d, b64e
from relay.protocol.messages import PROTOCOL_VERSION, Hello

ROOT = Path(__file__).parent.parent
LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "msg"}


def catalogue() -> dict[str, str]:
    """Event name -> level, from the first two columns of every table in docs/logging.md."""
    rows = re.findall(
        r"^\| `([a-z_]+\.[a-z_.]+)` \| (\w+) \|", (ROOT / "docs" / "logging.md").read_text(), re.M
    )
    return dict(rows)


def documented_fields() -> dict[str, set[str]]:
    """Event name -> the fields its row lists (the third column): the names in backticks outside
    parentheses, and those inside a parenthesis that starts with ``+`` (fields some lines carry)."""
    fields: dict[str, set[str]] = {}
    for line in (ROOT / "docs" / "logging.md").read_text().splitlines():
        match = re.match(r"^\| `([a-z_]+\.[a-z_.]+)` \| \w+ \|([^|]*)\|", line)
        if match is None:
            continue
        cell, kept, depth, extra = match.group(2), [], 0, False
        for i, char in enumerate(cell):  # drop the parentheses' text, but not a "(+ ...)" group's
            if char == "(":
                if depth == 0:
                    extra = cell.startswith("(+", i)
                depth += 1
            if depth == 0 or extra:
                kept.append(char)
            if char == ")":
                depth -= 1
        fields[match.group(1)] = set(re.findall(r"`([a-z_]+)`", "".join(kept)))
    return fields


@dataclass(frozen=True)
class LogCall:
    """One ``<logger>.<level>("name", ...)`` call: its level, the fields it names, and whether
    it adds others a static read cannot see (``**fields``)."""

    where: str
    level: str
    fields: frozenset[str]
    open: bool


def log_calls() -> dict[str, list[LogCall]]:
    """Event name -> every call that logs it, under relay/."""
    found: dict[str, list[LogCall]] = {}
    for path in (ROOT / "relay").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr not in LEVELS or not node.args:
                continue
            first = node.args[0]
            assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                f"{path}:{node.lineno}: log event names must be string literals"
            )
            level = {"exception": "error", "critical": "error", "msg": "info"}.get(
                node.func.attr, node.func.attr
            )
            # structlog renders a traceback (log.exception, exc_info=...) as the field `exception`
            names = {"exception" if k.arg == "exc_info" else k.arg for k in node.keywords if k.arg}
            if node.func.attr == "exception":
                names.add("exception")
            call = LogCall(
                f"{path.relative_to(ROOT)}:{node.lineno}",
                level,
                frozenset(names),
                any(k.arg is None for k in node.keywords),
            )
            found.setdefault(first.value, []).append(call)
    return found


def events_in_source() -> dict[str, set[str]]:
    """Event name -> levels, for every ``<logger>.<level>("name", ...)`` call under relay/."""
    return {name: {call.level for call in calls} for name, calls in log_calls().items()}


def test_every_event_in_the_source_is_catalogued_with_its_level() -> None:
    listed = catalogue()
    found = events_in_source()
    assert len(found) >= 30, sorted(found)  # the scan really sees the calls
    missing = sorted(set(found) - set(listed))
    assert not missing, f"add these to docs/logging.md: {missing}"
    for name, levels in found.items():
        assert listed[name] in levels, f"{name}: catalogued as {listed[name]}, logged at {levels}"
    unused = sorted(set(listed) - set(found))
    assert not unused, f"catalogued but never logged: {unused}"


def test_every_event_logs_the_fields_it_documents() -> None:
    documented = documented_fields()
    checked = 0
    for name, calls in log_calls().items():
        listed = documented[name]
        for call in calls:
            assert call.fields <= listed, (
                f"{call.where}: {name} logs {sorted(call.fields - listed)}, not listed"
            )
        if not any(call.open for call in calls):
            logged = frozenset().union(*(call.fields for call in calls))
            assert logged == listed, f"{name}: listed {sorted(listed)}, logged {sorted(logged)}"
            checked += 1
    assert checked >= 40  # most events are checked both ways


def whole_key_forms(key: bytes) -> set[str]:
    assert len(key) == 32
    return {
        b64e(key),
        base64.b64encode(key).decode(),
        base64.b64encode(key).decode().rstrip("="),
        key.hex(),
        key.hex().upper(),
    }


async def test_a_real_daemon_logs_only_catalogued_json_without_addresses_or_keys(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(logging={"level": "debug"}, policy={"deny_patterns": ["spam"]})
    assert relay.config is not None and relay.proc is not None
    owners = []
    for name in ("Weather", "spam and more"):
        state = create_channel(name)
        path = tmp_path / f"{b64e(state.channel)[:8]}.json"
        state.save(path)
        await add_relay(state, path, relay.address)
        owners.append(state)
    await publish(owners[0], tmp_path / f"{b64e(owners[0].channel)[:8]}.json")
    # bad input: an unknown group address, then a text frame
    async with connect(relay, f"/g/{b64e(secrets.token_bytes(16))}") as session:
        check_error(
            await session.request(Hello(version=PROTOCOL_VERSION, nonce=secrets.token_bytes(32))),
            "unknown_group",
        )
    async with connect(relay) as session:
        await session.hello()
        await session.send("not binary")
        check_error(await session.recv(), "bad_type")
    # operator actions
    for action in ("suspend", "resume", "remove"):
        assert relay.admin_post(f"/admin/groups/1/{action}", {"reason": "testing"}).status_code == 200
    assert relay.admin_post("/admin/backup", {"path": "b.db"}).status_code == 200
    # the operator port refuses a request without the token (logged, once per reason)
    assert httpx.post(f"{relay.admin_url}/admin/groups/1/resume", json={}).status_code == 401
    relay.wait_for_event("admin.refused")
    # SIGHUP: a good file, then a broken one
    relay.config.write_text('[policy]\nkinds = ["channel"]\n')
    relay.proc.send_signal(signal.SIGHUP)
    relay.wait_for_event("config.reloaded")
    relay.config.write_text("[policy]\nkinds = 7\n")
    relay.proc.send_signal(signal.SIGHUP)
    relay.wait_for_event("config.reload_failed")
    card = httpx.get(relay.base_url + "/").json()
    token = relay.admin_token
    assert relay.stop() == 0

    seen = {line["event"] for line in relay.lines}
    for expected in (
        "relay.ready",
        "session.opened",
        "invitation.accepted",
        "invitation.refused",
        "group.activated",
        "request.refused",
        "connection.failed",
        "group.suspended",
        "group.resumed",
        "group.removed",
        "backup.written",
        "admin_token.created",
        "admin.refused",
        "config.reloaded",
        "config.restart_needed",
        "config.reload_failed",
        "relay.stopping",
        "relay.stopped",
    ):
        assert expected in seen, expected
    listed = catalogue()
    assert len(relay.lines) == len(relay.raw_lines), "a line of stdout is not JSON"
    assert not seen - set(listed), f"not in docs/logging.md: {sorted(seen - set(listed))}"
    for line in relay.lines:
        assert listed[line["event"]] == line["level"], line
        assert isinstance(line["ts"], str)

    keys = [b64d(card["identity_key"]), b64d(card["seal_keys"][crypto.SUITE_X25519.name])]
    for state in owners:
        keys += [
            crypto.public_bytes(state.root_key),
            crypto.public_bytes(state.owner_key),
            b64d(state.root_secret),
            b64d(state.owner_secret),
            state.channel,
        ]
    forbidden = set().union(*(whole_key_forms(key) for key in keys)) | {token}
    for raw, line in zip(relay.raw_lines, relay.lines, strict=True):
        assert not any(form in raw for form in forbidden), f"a whole key in: {raw}"
        # the relay's own bound addresses are in relay.ready; no client address anywhere
        rest = {k: v for k, v in line.items() if k not in ("address", "listen", "admin_listen")}
        assert "127.0.0.1" not in str(rest), raw


async def test_a_failed_attempt_at_a_held_request_is_logged_with_its_traceback(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    """The daemon's own JSON line (the back-off and the dead letter that follow: test_timers.py)."""
    relay = relay_factory(members={"max_attempts": 1})
    state = create_channel("Weather")
    path = tmp_path / "owner.json"
    state.save(path)
    await add_relay(state, path, relay.address)
    member = MemberState.new(str(state.link()), name="Ada")
    assert [r.status for r in (await join(member, tmp_path / "member.json")).relays] == ["held"]
    # The stored request is damaged on disk (a real SQLite write beside the running relay).
    with sqlite3.connect(relay.data / "relay.db", timeout=10) as db:
        db.execute("UPDATE join_requests SET request = ?", (b"\xc1",))
    db.close()
    await publish(state, path)
    line = relay.wait_for_event("queue.dead_letter")
    assert (line["level"], line["group"], line["request"], line["attempt"]) == ("error", 1, 1, 1)
    exception = line["exception"]
    assert exception.startswith("Traceback (most recent call last):\n"), exception
    assert "stored_join" in exception and "malformed" in exception.splitlines()[-1], exception
    assert catalogue()["queue.dead_letter"] == "error"
