"""The operator port against a web page in the operator's browser, against the real daemon.

A page can send "simple" cross-origin requests to loopback (a form POST with a text
body, no preflight) and, by DNS rebinding, read answers under a name that resolves
here.  Each attack must be refused and change nothing, while the operator, with the
token from the data folder, is served throughout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from relayproc import RelayFactory, RunningRelay
from test_admin import new_owner
from test_cli import run, run_json

from relay.client import add_relay, publish
from relay.client.admin import TOKEN_FILE, AdminClient
from relay.server import admintoken
from relay.server.admin import host_allowed

ROOT = Path(__file__).parent.parent


def refused_metric(relay: RunningRelay) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in httpx.get(f"{relay.admin_url}/metrics").text.splitlines():
        if line.startswith("relay_admin_refused_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            counts[reason] = float(line.rsplit(" ", 1)[1])
    return counts


def test_the_token_file_is_made_by_init_and_serve_with_mode_0600(tmp_path: Path) -> None:
    data = tmp_path / "d"
    assert run_json("init", "--data", str(data))[0] == 0
    path = data / "admin.token"
    token = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(token) == 43  # 32 random bytes, base64url
    assert run_json("init", "--data", str(data))[0] == 0 and path.read_text().strip() == token  # kept
    assert TOKEN_FILE == admintoken.TOKEN_FILE
    # a file that holds no usable token stops the start, with one line saying what to do
    path.write_text("short\n")
    code, out, err = run(
        "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"
    )
    assert code == 1 and "delete it" in err and "Traceback" not in out + err, (out, err)
    assert '"relay.start_failed"' in out


def test_serve_makes_the_token_on_first_start(relay: RunningRelay) -> None:
    path = relay.data / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert relay.wait_for_event("admin_token.created")["path"] == str(path)
    assert relay.admin_token not in "\n".join(relay.raw_lines)  # never logged


async def test_web_page_attacks_are_refused_while_the_operator_is_served(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory()
    state, path = new_owner(tmp_path, "Target")
    await add_relay(state, path, relay.address)
    await publish(state, path)
    url = relay.admin_url
    token = relay.admin_token
    backups = relay.data / "backups"
    outside = tmp_path / "outside"
    outside.mkdir()
    served, failures = 0, []
    done = threading.Event()  # read by the operator's thread

    def operator() -> None:
        """The operator's own tool, with the token: every request must succeed."""
        nonlocal served
        with AdminClient(relay.admin_listen, token) as admin:
            while not done.is_set():
                try:
                    assert admin.stats()["groups"]["active"] == 1
                    assert [g["state"] for g in admin.groups()] == ["active"]
                    served += 1
                except Exception as exc:  # every failure is the test's finding
                    failures.append(repr(exc))

    def attack(method: str, target: str, status: int, error: str, **kwargs: object) -> None:
        answer = httpx.request(method, f"{url}{target}", **kwargs)  # type: ignore[arg-type]
        assert answer.status_code == status, (method, target, kwargs, answer.text)
        assert answer.json()["error"] == error, answer.text
        assert "access-control-allow-origin" not in answer.headers

    page = {"origin": "http://evil.example", "content-type": "text/plain"}
    bearer = {"authorization": f"Bearer {token}"}
    attacks = [
        # a cross-origin form POST from a page: text body, Origin, no token
        ("POST", "/admin/groups/1/suspend", 403, "cross_origin", {"headers": page, "content": "reason=x"}),
        ("POST", "/admin/groups/1/remove", 403, "cross_origin", {"headers": page, "content": "{}"}),
        # the same with no Origin (an old browser, a page in a sandbox): no token
        ("POST", "/admin/groups/1/suspend", 401, "unauthorised", {"headers": {"content-type": "text/plain"}}),
        ("POST", "/admin/groups/1/remove", 401, "unauthorised", {"json": {"reason": "x"}}),
        # a wrong token
        (
            "POST",
            "/admin/groups/1/remove",
            401,
            "unauthorised",
            {"json": {}, "headers": {"authorization": "Bearer " + "A" * 43}},
        ),
        ("GET", "/admin/groups", 401, "unauthorised", {"headers": {"authorization": f"Basic {token}"}}),
        # even a page that knew the token: a browser's request, or a body that is not JSON
        (
            "POST",
            "/admin/groups/1/suspend",
            403,
            "cross_origin",
            {"headers": {**page, **bearer}, "content": "{}"},
        ),
        (
            "POST",
            "/admin/groups/1/suspend",
            403,
            "cross_origin",
            {
                "headers": {**bearer, "sec-fetch-site": "cross-site", "content-type": "application/json"},
                "content": "{}",
            },
        ),
        (
            "POST",
            "/admin/groups/1/suspend",
            415,
            "unsupported_media_type",
            {"headers": {**bearer, "content-type": "text/plain"}, "content": "{}"},
        ),
        (
            "POST",
            "/admin/groups/1/suspend",
            400,
            "bad_request",
            {"headers": bearer, "json": ["not", "an object"]},
        ),
        # a CORS preflight gets no CORS answer
        (
            "OPTIONS",
            "/admin/groups/1/remove",
            403,
            "cross_origin",
            {"headers": {"origin": "http://evil.example", "access-control-request-method": "POST"}},
        ),
        # DNS rebinding: a name that resolves here, read by the page's origin
        ("GET", "/admin/groups", 421, "bad_host", {"headers": {**bearer, "host": "evil.example:7301"}}),
        ("GET", "/metrics", 421, "bad_host", {"headers": {"host": "rebind.evil.example"}}),
        ("GET", "/healthz", 421, "bad_host", {"headers": {"host": "127.0.0.1.evil.example"}}),
        # backups outside the backup folder: a path of the attacker's choice, .., a symlink
        (
            "POST",
            "/admin/backup",
            400,
            "bad_backup_path",
            {"headers": bearer, "json": {"path": str(outside / "a.db")}},
        ),
        (
            "POST",
            "/admin/backup",
            400,
            "bad_backup_path",
            {"headers": bearer, "json": {"path": str(backups / ".." / "b.db")}},
        ),
        ("POST", "/admin/backup", 400, "bad_backup_path", {"headers": bearer, "json": {"path": "../c.db"}}),
        (
            "POST",
            "/admin/backup",
            400,
            "bad_backup_path",
            {"headers": bearer, "json": {"path": str(backups / "escape" / "d.db")}},
        ),
        ("POST", "/admin/backup", 400, "bad_backup_path", {"headers": bearer, "json": {"path": "link.db"}}),
        (
            "POST",
            "/admin/backup",
            400,
            "bad_backup_path",
            {"headers": bearer, "json": {"path": str(backups / "link.db")}},
        ),
    ]
    backups.mkdir(mode=0o700)
    (backups / "escape").symlink_to(outside, target_is_directory=True)  # a folder link leading out
    (backups / "link.db").symlink_to(outside / "e.db")  # a dangling link to a file outside
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, operator)
        for method, target, status, error, kwargs in attacks * 3:
            await trio.to_thread.run_sync(partial(attack, method, target, status, error, **kwargs))
        done.set()
    assert failures == [] and served > 0
    # nothing changed: the group is active, nothing was written outside the folder
    assert relay.admin_get("/admin/groups/1").json()["state"] == "active"
    assert sorted(p.name for p in outside.iterdir()) == []
    assert sorted(p.name for p in backups.iterdir()) == ["escape", "link.db"]
    assert not relay.events("group.suspended") and not relay.events("group.removed")
    assert refused_metric(relay) == {"browser": 15, "token": 12, "content_type": 3, "host": 9}
    refusals = relay.events("admin.refused")
    assert {line["reason"] for line in refusals} == {"browser", "token", "content_type", "host"}
    assert len(refusals) == 4  # one line per reason within the interval, not one per request
    # the well-behaved operator's backup goes where it should
    answer = relay.admin_post("/admin/backup", {"path": "good.db"})
    assert answer.status_code == 200 and (backups / "good.db").exists(), answer.text


def test_health_and_metrics_need_no_token_but_a_host_of_ours(relay_factory: RelayFactory) -> None:
    relay = relay_factory(server={"admin_hosts": ["metrics.internal"]})
    url = relay.admin_url
    for path, status in (("/healthz", 200), ("/readyz", 200), ("/metrics", 200)):
        assert httpx.get(f"{url}{path}").status_code == status, path
        head = httpx.head(f"{url}{path}")
        assert head.status_code == status and head.content == b"", path
        assert httpx.post(f"{url}{path}", json={}).status_code == 405, path
    for host in (
        "localhost:7301",
        "LOCALHOST",
        "127.0.0.5",
        "[::1]:1",
        "metrics.internal",
        "Metrics.Internal.:9",
    ):
        answer = httpx.get(f"{url}/metrics", headers={"host": host})
        assert answer.status_code == 200, host
    for host in ("metrics.internal.evil", "10.1.2.3", "[::1", "::1", "a b", "localhost.evil.example"):
        answer = httpx.get(f"{url}/healthz", headers={"host": host})
        assert answer.status_code in (400, 421), host  # h11 itself refuses some as bad HTTP
    # the Dockerfile's health check, as written (only the port is this relay's)
    line = re.search(r"^HEALTHCHECK .*\n\s*CMD (.*)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert line is not None
    argv = [arg.replace("127.0.0.1:7301", relay.admin_listen) for arg in json.loads(line.group(1))]
    assert argv[0] == "python"
    done = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_relay_admin_finds_its_token(relay: RunningRelay, tmp_path: Path) -> None:
    at = ("--admin", relay.admin_listen)
    # --data reads DATA/admin.token
    assert run_json("admin", "stats", "--data", str(relay.data))[0] == 0
    # --admin needs a token: none given is one clear line
    code, out, err = run("admin", "stats", *at)
    assert code == 1 and out == "" and err.count("\n") == 1 and "--token-file" in err, (out, err)
    code, out_json = run_json("admin", "stats", *at)
    assert code == 1 and out_json["code"] == "no_token"
    # ... from a file or the environment
    token_file = tmp_path / "token"
    token_file.write_text(relay.admin_token + "\n")
    assert run_json("admin", "stats", *at, "--token-file", str(token_file))[0] == 0
    assert run_json("admin", "stats", *at, env={"RELAY_ADMIN_TOKEN": relay.admin_token})[0] == 0
    # a wrong one is refused by the relay
    code, out_json = run_json("admin", "stats", *at, env={"RELAY_ADMIN_TOKEN": "B" * 43})
    assert code == 1 and out_json["code"] == "unauthorised"
    code, out_json = run_json("admin", "stats", *at, "--token-file", str(tmp_path / "missing"))
    assert code == 1 and out_json["code"] == "no_token" and "does not exist" in str(out_json["reason"])
    # RELAY_ADMIN_TOKEN is not taken for a misspelt option by the daemon's configuration
    code, checked = run_json("config", "check", env={"RELAY_ADMIN_TOKEN": "x"})
    assert code == 0, checked


def test_a_deleted_token_is_replaced_on_sighup(relay: RunningRelay) -> None:
    old = relay.admin_token
    (relay.data / "admin.token").unlink()
    assert relay.proc is not None
    relay.proc.send_signal(signal.SIGHUP)
    relay.wait_for_event("config.unchanged")  # the token is read before the configuration
    new = relay.admin_token
    assert new != old and len(relay.events("admin_token.created")) == 2
    assert stat.S_IMODE((relay.data / "admin.token").stat().st_mode) == 0o600
    assert (
        httpx.get(f"{relay.admin_url}/admin/stats", headers={"authorization": f"Bearer {old}"}).status_code
        == 401
    )
    assert relay.admin_get("/admin/stats").status_code == 200
    assert run_json("admin", "stats", "--data", str(relay.data))[0] == 0
    # an unreadable file keeps the token in force
    (relay.data / "admin.token").write_text("x\n")
    relay.proc.send_signal(signal.SIGHUP)
    relay.wait_for_event("admin_token.reload_failed")
    assert (
        httpx.get(f"{relay.admin_url}/admin/stats", headers={"authorization": f"Bearer {new}"}).status_code
        == 200
    )


def test_a_token_others_can_read_is_reported(relay_factory: RelayFactory, tmp_path: Path) -> None:
    data = tmp_path / "relay0"
    data.mkdir()
    (data / "admin.token").write_text("C" * 43 + "\n")
    os.chmod(data / "admin.token", 0o644)
    relay = relay_factory()
    assert relay.data == data and relay.admin_token == "C" * 43
    assert relay.wait_for_event("admin_token.exposed")["path"] == str(data / "admin.token")


@given(st.text(max_size=60))
def test_host_check_takes_any_header_value(value: str) -> None:
    assert isinstance(host_allowed(value, "192.0.2.7", frozenset({"relay.internal"})), bool)


NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,15}(\.[a-z][a-z0-9-]{0,15}){0,3}", fullmatch=True)


@given(NAMES, st.one_of(st.none(), st.integers(0, 65535)))
def test_host_check_refuses_every_other_name(name: str, port: int | None) -> None:
    """A rebinding page's Host is a DNS name of the attacker's: never served unless listed."""
    value = name if port is None else f"{name}:{port}"
    allowed = host_allowed(value, "192.0.2.7", frozenset({"relay.internal"}))
    assert allowed is (name in ("localhost", "relay.internal")), value


@pytest.mark.parametrize(
    ("value", "local", "allowed"),
    [
        ("10.0.0.5:7301", "10.0.0.5", True),  # the address the connection arrived at (bound to 0.0.0.0)
        ("10.0.0.5", "::ffff:10.0.0.5", True),  # the same on a dual-stack socket
        ("10.0.0.6:7301", "10.0.0.5", False),
        ("[fe80::1%25eth0]:7301", "fe80::1", True),
        ("127.1.2.3", None, True),
        (None, None, True),  # HTTP/1.0 without Host: no browser sends that
        ("", None, False),
        ("relay.internal:9090", None, True),
        ("relay.internal.evil.example", None, False),
    ],
)
def test_host_check_cases(value: str | None, local: str | None, allowed: bool) -> None:
    assert host_allowed(value, local, frozenset({"relay.internal"})) is allowed


def test_admin_hosts_are_checked_by_config_check(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('[server]\nadmin_hosts = ["metrics.internal", "http://evil.example/", "a:1"]\n')
    code, checked = run_json("config", "check", "--config", str(config))
    reason = str(checked["reason"])
    assert code == 1 and "server.admin_hosts[1]" in reason and "server.admin_hosts[2]" in reason, reason
    assert "server.admin_hosts[0]" not in reason
    code, checked = run_json(
        "config", "check", env={"RELAY_SERVER_ADMIN_HOSTS": "metrics.internal,[::1],10.0.0.5"}
    )
    assert code == 0, checked


HUGE = "9" * 5000  # longer than Python's int() reads from text by default
# (method, path with query, status, error code): what the operator port answers each, with the token.
MALFORMED = [
    ("GET", "/admin/groups/99999999999999999999999", 400, "bad_request"),
    ("GET", "/admin/groups/9223372036854775808", 400, "bad_request"),  # one above SQLite's integers
    ("GET", "/admin/groups/9223372036854775807", 404, "unknown_group"),  # the largest id: no such group
    ("GET", f"/admin/groups/{HUGE}", 400, "bad_request"),
    ("GET", "/admin/groups/-1", 400, "bad_request"),
    ("GET", "/admin/groups/0", 400, "bad_request"),
    ("GET", "/admin/groups/abc", 400, "bad_request"),
    ("GET", "/admin/groups/1.5", 400, "bad_request"),
    ("GET", "/admin/groups/%31", 400, "bad_request"),
    ("GET", "/admin/groups/%D9%A1", 400, "bad_request"),  # an Arabic-Indic digit one, encoded
    ("GET", "/admin/groups/\u0661", 400, "bad_request"),  # the digit itself (int() would take it)
    ("POST", "/admin/groups/99999999999999999999999/approve", 400, "bad_request"),
    ("POST", "/admin/groups/-7/suspend", 400, "bad_request"),
    ("POST", "/admin/groups/42/approve", 404, "unknown_group"),
    ("POST", "/admin/held/99999999999999999999999/retry", 400, "bad_request"),
    ("POST", "/admin/held/x/retry", 400, "bad_request"),
    ("POST", "/admin/held/42/retry", 404, "not_found"),
    ("GET", "/admin/groups/1/approve/extra", 404, "not_found"),
    ("GET", "/admin/groups/1/extra", 404, "not_found"),
    ("GET", "/admin/groups/", 404, "not_found"),
    ("GET", "/admin/groups//approve", 404, "not_found"),
    ("GET", "/admin/stats/extra", 404, "not_found"),
    ("GET", "/admin", 404, "not_found"),
    ("GET", "/", 404, "not_found"),
    ("GET", "/healthz/extra", 404, "not_found"),
    ("DELETE", "/admin/groups/1", 405, "method_not_allowed"),
    ("PUT", "/admin/stats", 405, "method_not_allowed"),
    ("PATCH", "/admin/groups", 405, "method_not_allowed"),
    ("GET", "/admin/groups/1/approve", 405, "method_not_allowed"),
    ("GET", "/admin/backup", 405, "method_not_allowed"),
    ("POST", "/admin/groups", 405, "method_not_allowed"),
    ("OPTIONS", "/admin/held", 405, "method_not_allowed"),
    ("DELETE", "/healthz", 405, "method_not_allowed"),
    ("GET", "/admin/groups?after=99999999999999999999999", 400, "bad_request"),
    ("GET", "/admin/groups?after=-5", 400, "bad_request"),
    ("GET", "/admin/groups?after=1e3", 400, "bad_request"),
    ("GET", f"/admin/groups?after={HUGE}", 400, "bad_request"),
    ("GET", "/admin/groups?limit=0", 400, "bad_request"),
    ("GET", "/admin/groups?limit=1001", 400, "bad_request"),
    ("GET", "/admin/groups?state=bogus", 400, "bad_request"),
    ("GET", "/admin/held?status=bogus", 400, "bad_request"),
    ("GET", "/admin/held?limit=-3", 400, "bad_request"),
]


def test_every_malformed_id_path_or_method_gets_a_typed_4xx(relay: RunningRelay) -> None:
    """Never an internal error: ``relay admin group 99999999999999999999999`` once made the
    relay log ``http.internal_error`` (an OverflowError from SQLite)."""
    with httpx.Client(base_url=relay.admin_url, headers=relay.admin_headers) as client:
        for method, path, status, error in MALFORMED:
            answer = client.request(method, path, json={} if method == "POST" else None)
            assert answer.status_code == status, (method, path, answer.text)
            body = answer.json()
            assert body["error"] == error and body.get("reason"), (method, path, body)
            if status == 405:
                assert answer.headers["allow"] in ("GET, HEAD", "POST"), (method, path)
        # the well-formed neighbours of those paths are served
        assert client.get("/admin/groups", params={"after": 9223372036854775807, "limit": 1000}).json() == {
            "groups": []
        }
        assert client.get("/admin/held", params={"status": "dead", "limit": 1}).json() == {"requests": []}
    assert not [line for line in relay.lines if line["event"].endswith("internal_error")]
    assert relay.proc is not None and relay.proc.poll() is None


def _raw(address: str, request: bytes) -> bytes:
    """Send one raw HTTP request and read the whole answer, until the relay closes."""
    import socket

    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _head_and_body(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    return status, dict(line.lower().split(": ", 1) for line in lines), body


def test_head_gets_the_head_of_get_and_no_body(relay: RunningRelay) -> None:
    token = f"Authorization: Bearer {relay.admin_token}\r\n"
    cases = [(relay.admin_listen, path, "") for path in ("/healthz", "/readyz")]
    cases += [(relay.admin_listen, path, token) for path in ("/admin/groups", "/admin/held")]
    cases += [(relay.listen, path, "") for path in ("/", "/info")]  # the public port's info
    for address, path, extra in cases:
        request = f"{{}} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n"
        got = _head_and_body(_raw(address, request.format("GET").encode()))
        head = _head_and_body(_raw(address, request.format("HEAD").encode()))
        assert head[0] == got[0] and head[0].endswith(" OK"), (path, head[0])
        assert head[1]["content-length"] == got[1]["content-length"] == str(len(got[2])), path
        assert head[1]["content-type"] == got[1]["content-type"], path
        assert head[2] == b"" and got[2], path  # the same head, with no body after it
    # /metrics and /admin/stats change between two reads; their HEAD still carries a length, no body
    for path, extra in (("/metrics", ""), ("/admin/stats", token)):
        answer = _raw(relay.admin_listen, f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
        status, headers, body = _head_and_body(answer)
        assert status == "HTTP/1.1 200 OK" and int(headers["content-length"]) > 100 and body == b"", path
    assert not [line for line in relay.lines if line["event"].endswith("internal_error")]
