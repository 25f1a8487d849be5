"""TLS for the public port: the server's ``ssl.SSLContext``, built once at start.

``server.tls_cert`` (a PEM chain, leaf first) and ``server.tls_key`` make the public
port speak TLS 1.2 or newer, so a relay without a reverse proxy is not open to
reading and rewriting on the network.  Each accepted connection is wrapped in a
``trio.SSLStream`` by the public endpoint; the handshake runs inside the request
head's time-out like any other first byte.

Must not: read the files again after start (certificate reload is not done: restart
the relay), or log the key.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import trio


class TlsError(Exception):
    """The certificate or key cannot be used; the message names the file and why."""


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for ``cert`` and ``key``; TlsError with a readable reason otherwise."""
    for option, path in (("server.tls_cert", cert), ("server.tls_key", key)):
        try:
            with Path(path).open("rb"):
                pass
        except OSError as exc:
            raise TlsError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # One protocol: a client offering ALPN learns that this port speaks HTTP/1.1 (WebSocket).
    context.set_alpn_protocols(["http/1.1"])
    try:
        # A password callback, so that an encrypted key fails here instead of prompting on a TTY.
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        raise TlsError(
            f"server.tls_cert/server.tls_key: {cert} and {key} are not a PEM certificate chain "
            f"and its unencrypted private key ({exc.reason or exc})"
        ) from None
    except (OSError, ValueError) as exc:
        raise TlsError(f"server.tls_cert/server.tls_key: {exc}") from None
    return context


def wrap(stream: trio.SocketStream, context: ssl.SSLContext) -> trio.SSLStream[trio.SocketStream]:
    """The TLS server side of an accepted connection (the handshake runs on first use).

    ``https_compatible``: a peer that ends the TCP connection without TLS's close_notify
    reads as an ordinary end of stream, and closing does not wait to send one; the
    WebSocket's own Close frames are what end a session in order.
    """
    return trio.SSLStream(stream, context, server_side=True, https_compatible=True)
