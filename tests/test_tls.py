"""TLS on the public port (server.tls_cert, server.tls_key) against the real daemon.

A private CA and a certificate for 127.0.0.1 are made per test (tests/tlscerts.py).
Clients trust it through ``SSL_CERT_FILE`` (the command line and the library's default
context) or an ``ssl_context`` of their own; everything else must fail cleanly.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
import trio
from relayproc import RelayFactory, RunningRelay
from test_cli import run, run_json
from tlscerts import Certificates, make_certificates
from traffic import (
    Poster,
    active_channel,
    group_session,
    join_member,
    metric,
    raw_feed,
    read_events,
    subscribe,
)
from trio_websocket import open_websocket_url
from wsproto import ConnectionType
from wsproto.connection import Connection as WSFrames

from relay.client.connection import open_session
from relay.client.errors import RelayUnreachable
from relay.protocol.addresses import parse_address
from relay.server.http import WebSocket, prepared_message


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return make_certificates(tmp_path / "tls")


def tls_relay(
    relay_factory: RelayFactory, certs: Certificates, **sections: dict[str, object]
) -> RunningRelay:
    server = {"tls_cert": str(certs.cert), "tls_key": str(certs.key), **sections.pop("server", {})}
    relay = relay_factory(server=server, **sections)
    relay.client_tls = certs.client_context()
    return relay


def assert_clean_log(relay: RunningRelay) -> None:
    """Every line JSON (no traceback), nothing at error level."""
    assert len(relay.lines) == len(relay.raw_lines), [r for r in relay.raw_lines if not r.startswith("{")]
    assert [line for line in relay.lines if line["level"] == "error"] == []


def test_owner_and_member_flow_over_wss(
    relay_factory: RelayFactory, certificates: Certificates, tmp_path: Path
) -> None:
    """The README's tour, over TLS: the command line trusts the CA through SSL_CERT_FILE."""
    relay = tls_relay(relay_factory, certificates)
    assert relay.address.startswith(f"https://{relay.listen}/r#")
    env = {"SSL_CERT_FILE": str(certificates.ca)}
    owner, member = str(tmp_path / "owner.json"), str(tmp_path / "member.json")
    code, out = run_json("address", "--data", str(relay.data))
    assert code == 0 and out["address"] == relay.address
    assert run_json("owner", "create", "--state", owner, "--name", "Weather", env=env)[0] == 0
    code, added = run_json("owner", "add-relay", "--state", owner, relay.address, env=env)
    assert code == 0 and str(added["group_address"]).startswith(f"https://{relay.listen}/g/"), added
    code, published = run_json("owner", "publish", "--state", owner, env=env)
    assert code == 0, published
    code, joined = run_json(
        "member", "join", "--state", member, "--name", "Ada", str(published["link"]), env=env
    )
    assert code == 0 and [r["status"] for r in joined["relays"]] == ["admitted"], joined  # type: ignore[union-attr]
    for text in ("Sunny, 24 C", "Rain by 6 pm"):
        code, posted = run_json("owner", "post", "--state", owner, text, env=env)
        assert code == 0, posted
    code, out, err = run("member", "read", "--state", member, env=env)
    assert code == 0 and out.splitlines() == ["#1 Sunny, 24 C", "#2 Rain by 6 pm"], (out, err)
    # without the CA the same command refuses the relay at once, and says why
    code, refused = run_json("owner", "post", "--state", owner, "no trust")
    assert code == 1 and refused["code"] == "unreachable", refused
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused["reason"]), refused
    assert_clean_log(relay)


async def test_live_fan_out_over_tls(
    relay_factory: RelayFactory, certificates: Certificates, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Members subscribed over TLS get live posts through the generic stream path (the
    socket fast paths are for plain sockets), a member that stops reading is cut off, the
    others keep up, and SIGTERM closes subscribed TLS members at once."""
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates.ca))  # the library's default context
    relay = tls_relay(relay_factory, certificates, events={"stall_timeout": 0.5})
    owner, _, address_id = await active_channel(relay, tmp_path)
    members = [await join_member(relay, owner, address_id) for _ in range(4)]
    stuck = members.pop()
    poster = Poster(owner)
    async with (
        group_session(relay, address_id) as owner_session,
        group_session(relay, address_id) as ada,
        group_session(relay, address_id) as bob,
        group_session(relay, address_id) as cy,
        raw_feed(relay, address_id, owner, stuck, receive_buffer=4096) as stuck_feed,
    ):
        feeds = [ada, bob, cy]
        for feed, member in zip(feeds, members, strict=True):
            await subscribe(feed, relay, owner, address_id, member)
        for n in range(3):
            await poster.post(owner_session, f"post {n}".encode())
        for feed in feeds:
            assert await read_events(feed, 3) == poster.events
        # the kernel's keepalive is on the TCP socket under TLS
        if shutil.which("ss"):
            port = relay.listen.rsplit(":", 1)[1]
            sockets = subprocess.run(
                ["ss", "-tnoH", "state", "established", f"( sport = :{port} )"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            # (a socket with bytes in flight shows its retransmission timer instead)
            idle = [line for line in sockets.splitlines() if line.split()[:2] == ["0", "0"]]
            assert len(idle) >= 3 and all("keepalive" in line for line in idle), sockets
        # one member stops reading: it is disconnected, the others are served on
        body = b"z" * 30_000
        for _ in range(300):
            await poster.post(owner_session, body)
            for feed in feeds:
                assert await read_events(feed, 1) == poster.events[-1:]
            if relay.events("feed.stalled"):
                break
        relay.wait_for_event("feed.stalled", timeout=5)
        assert metric(relay, "relay_feed_stalled_total") == 1
        with trio.fail_after(10):  # its connection ends (interrupt reached the TLS reader)
            try:
                while await stuck_feed.stream.receive_some(65536):
                    pass
            except trio.BrokenResourceError:
                pass
        await poster.post(owner_session, b"after")
        for feed in feeds:
            assert await read_events(feed, 1) == poster.events[-1:]
        assert relay.proc is not None
        relay.proc.terminate()
        for feed in feeds:
            assert await feed.expect_closed(timeout=5) == 1001
    proc = relay.proc
    assert await trio.to_thread.run_sync(lambda: proc.wait(20)) == 0  # one SIGTERM, a clean exit
    assert not relay.events("connection.internal_error")
    assert_clean_log(relay)


async def test_plain_and_untrusting_clients_fail_cleanly(
    relay_factory: RelayFactory, certificates: Certificates
) -> None:
    relay = tls_relay(relay_factory, certificates, server={"handshake_timeout": 0.5})
    address = parse_address(relay.address)
    host, port = relay.listen.rsplit(":", 1)
    async with open_session(address, ssl_context=relay.client_tls) as trusted:
        # plain HTTP to the TLS port: no answer, the connection is closed
        with pytest.raises(httpx.HTTPError):
            await trio.to_thread.run_sync(lambda: httpx.get(f"http://{relay.listen}/", timeout=5))
        # a plain WebSocket client: refused (trio-websocket reports a closed connection or a time-out)
        with pytest.raises(Exception):  # noqa: B017 - any failure, as long as it ends
            async with open_websocket_url(f"ws://{relay.listen}/r", connect_timeout=3):
                pass
        # a client with its own trust store only (not this CA): refused at once, with the reason
        other = ssl.create_default_context(cafile=str(make_certificates(Path(relay.data) / "other").ca))
        with trio.fail_after(5), pytest.raises(RelayUnreachable, match="CERTIFICATE_VERIFY_FAILED"):
            async with open_session(address, ssl_context=other):
                pass
        # a peer that connects and sends nothing is closed after the handshake time-out
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream(host, int(port))
            assert await stream.receive_some(100) == b""
            await stream.aclose()
        # a peer that starts TLS and stops halfway, too
        with trio.fail_after(5):
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(b"\x16\x03\x01\x00\xff")  # a TLS record header, no body
            assert await stream.receive_some(100) == b""
            await stream.aclose()
        # the trusted session was served all along
        card = trusted.card
        assert card is not None
    async with open_session(address, ssl_context=relay.client_tls) as again:
        assert again.card.relay_key == card.relay_key
    info = await trio.to_thread.run_sync(
        lambda: httpx.get(f"https://{relay.listen}/", verify=relay.client_tls)
    )
    assert info.json()["address"] == relay.address
    assert relay.stop() == 0
    assert_clean_log(relay)


def test_certificate_problems_stop_the_start_with_one_line(
    relay_factory: RelayFactory, certificates: Certificates, tmp_path: Path
) -> None:
    other = make_certificates(tmp_path / "other")
    config = tmp_path / "relay.toml"
    for server, reason in (
        ({"tls_cert": str(tmp_path / "missing.pem"), "tls_key": str(certificates.key)}, "cannot read"),
        ({"tls_cert": str(certificates.cert), "tls_key": str(other.key)}, "not a PEM certificate chain"),
        (
            {"tls_cert": str(certificates.key), "tls_key": str(certificates.key)},
            "not a PEM certificate chain",
        ),
    ):
        config.write_text("[server]\n" + "".join(f'{k} = "{v}"\n' for k, v in server.items()))
        code, out, err = run(
            "serve", "--data", str(tmp_path / "d"), "--config", str(config), "--listen", "127.0.0.1:0"
        )
        assert code == 1 and reason in err and "Traceback" not in out + err, (out, err)
        assert '"relay.start_failed"' in out, out
        code, checked = run_json("config", "check", "--config", str(config))
        assert code == 1 and reason in str(checked["reason"]), checked
    # both or neither, and no http:// public URL in front of a TLS port
    config.write_text(f'[server]\ntls_cert = "{certificates.cert}"\n')
    code, checked = run_json("config", "check", "--config", str(config))
    assert (
        code == 1
        and "server.tls_key" in str(checked["reason"])
        and "both or neither" in str(checked["reason"])
    )
    config.write_text(
        f'[server]\ntls_cert = "{certificates.cert}"\ntls_key = "{certificates.key}"\n'
        'public_url = "http://relay.example.org:443"\n'
    )
    code, checked = run_json("config", "check", "--config", str(config))
    assert code == 1 and "server.public_url" in str(checked["reason"]), checked
    config.write_text(f'[server]\ntls_cert = "{certificates.cert}"\ntls_key = "{certificates.key}"\n')
    assert run_json("config", "check", "--config", str(config))[0] == 0
    code, init = run_json("init", "--data", str(tmp_path / "fresh"), "--config", str(config))
    assert code == 0 and "address" not in init  # not running: its port is not known yet
    config.write_text(
        f'[server]\ntls_cert = "{certificates.cert}"\ntls_key = "{certificates.key}"\n'
        'public_url = "https://relay.example.org:443"\n'
    )
    code, init = run_json("init", "--data", str(tmp_path / "fresh"), "--config", str(config))
    assert code == 0 and str(init["address"]).startswith("https://relay.example.org:443/r#"), init


async def test_tls_connections_take_the_generic_stream_path(certificates: Certificates) -> None:
    """The fan-out's one-system-call write (``send_now``) is for plain sockets only: over
    TLS the bytes must be encrypted first, so it declines and the awaited send is used."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(certificates.cert, certificates.key)
    message = prepared_message(b"an event")
    for secure in (False, True):
        a, b = trio.socket.socketpair()
        server: trio.abc.Stream = trio.SocketStream(a)
        client: trio.abc.Stream = trio.SocketStream(b)
        if secure:
            server = trio.SSLStream(server, server_context, server_side=True, https_compatible=True)
            client = trio.SSLStream(client, certificates.client_context(), server_hostname="127.0.0.1")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.do_handshake)  # type: ignore[attr-defined]
                nursery.start_soon(client.do_handshake)  # type: ignore[attr-defined]
        ws = WebSocket(server, WSFrames(ConnectionType.SERVER), 1024)
        assert ws.send_now(message) is not secure
        if secure:
            await ws.send_prepared(message)
        received = b""
        with trio.fail_after(5):
            while len(received) < len(message):
                received += await client.receive_some(1024)
        assert received == message
        for stream in (server, client):
            await stream.aclose()
