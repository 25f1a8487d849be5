"""The public port: ``GET /`` (public info) and WebSocket sessions on contact and group addresses.

Each accepted TCP connection is one task in the connections nursery.  A session
answers every request with exactly one frame; a bad request gets a typed
``error`` frame and fails alone, while framing-level faults (oversized or text
frames, time-outs, a bad handshake) close only that connection.  Every wait is
bounded by a time-out, and the number of connections by ``max_connections``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from functools import partial

import structlog
import trio

from relay import __version__
from relay.protocol.addresses import contact_address
from relay.protocol.encoding import b64e, encode
from relay.protocol.errors import ErrorCode, PolicyRefusal, RemoteProtocolError
from relay.protocol.handshake import make_welcome
from relay.protocol.messages import (
    Error,
    Hello,
    Invite,
    Join,
    JoinStatus,
    LogRequest,
    OwnerCommand,
    ProfileRequest,
    ProfileUpdate,
    RelayFrame,
)
from relay.protocol.session import Endpoint, Session
from relay.server.admission import Admissions, GroupBinding
from relay.server.config import ServerConfig
from relay.server.http import (
    ConnectionClosed,
    HttpRequest,
    HttpResponse,
    MessageTooLarge,
    NotBinary,
    WebSocket,
    WebSocketHandler,
    serve_http_connection,
)
from relay.server.metrics import Metrics
from relay.server.service import GroupService

log = structlog.get_logger("relay.public")

SOFTWARE = f"chat-relay/{__version__}"
MAX_ERRORS_PER_CONNECTION = 16
# WebSocket close codes (RFC 6455 plus the private 4000-4999 range).
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_UNSUPPORTED = 1003
CLOSE_INTERNAL = 1011
CLOSE_UNKNOWN_GROUP = 4404


class PublicEndpoint:
    def __init__(
        self,
        service: GroupService,
        admissions: Admissions,
        config: ServerConfig,
        metrics: Metrics,
        *,
        log_client_ip: bool = False,
    ) -> None:
        self.service = service
        self.admissions = admissions
        self.config = config
        self.metrics = metrics
        self.identity = service.identity
        self.log_client_ip = log_client_ip
        self.open_connections = 0
        self.draining = False
        self._idle: set[trio.CancelScope] = set()
        self._ids = itertools.count(1)
        # Derived once: the ML-KEM public key costs a computation on every call.
        self._seal_public = self.identity.seal_keys.public_keys()

    @property
    def contact_address(self) -> str:
        return contact_address(self.service.public_base, self.identity.fingerprint)

    def info(self) -> dict[str, object]:
        seal_keys = self._seal_public
        return {
            "software": SOFTWARE,
            "protocol": 1,
            "address": self.contact_address,
            "fingerprint": self.identity.fingerprint_text,
            "identity_key": b64e(self.identity.public_key),
            "seal_suites": list(seal_keys),
            "seal_keys": {name: b64e(key) for name, key in seal_keys.items()},
            "limits": {
                "max_frame_bytes": self.config.max_frame_bytes,
                "handshake_timeout": self.config.handshake_timeout,
                "idle_timeout": self.config.idle_timeout,
            },
            "policy": self.service.policy.policy.summary(),
        }

    async def handle(self, stream: trio.SocketStream) -> None:
        """One accepted connection, from first byte to close."""
        if self.open_connections >= self.config.max_connections:
            self.metrics.inc("relay_bounds_hit_total", bound="max_connections")
            log.warning("bound.hit", bound="max_connections", limit=self.config.max_connections)
            await stream.aclose()
            return
        self.open_connections += 1
        self.metrics.inc("relay_connections_total")
        self.metrics.set("relay_connections_open", self.open_connections)
        try:
            # Client addresses are personal data: bound only if the operator opted in.
            peer = {"peer": _peer(stream)} if self.log_client_ip else {}
            with structlog.contextvars.bound_contextvars(conn=f"c{next(self._ids)}", **peer):
                if peer:
                    log.info("connection.opened")
                try:
                    await serve_http_connection(
                        stream,
                        on_http=self._http,
                        on_websocket=self._route,
                        head_timeout=self.config.handshake_timeout,
                        max_message=self.config.max_frame_bytes,
                    )
                except Exception:
                    # Last line of defence: one connection's failure never stops the relay.
                    log.exception("connection.internal_error")
        finally:
            self.open_connections -= 1
            self.metrics.set("relay_connections_open", self.open_connections)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    def drain(self) -> None:
        """Shutdown: close sessions waiting for their next frame now; requests in flight finish."""
        self.draining = True
        for scope in self._idle:
            scope.cancel()
        self.admissions.waiters.wake_all()

    async def _http(self, request: HttpRequest) -> HttpResponse:
        if request.method == "GET" and request.target.split("?")[0] in ("/", "/info"):
            return HttpResponse(200, json.dumps(self.info()).encode())
        return HttpResponse(404, b'{"error":"not_found"}')

    def _route(self, target: str) -> WebSocketHandler | HttpResponse:
        path = target.split("?")[0]
        if path == "/r":
            return partial(self._session, Endpoint.CONTACT, None)
        if path.startswith("/g/") and 0 < len(path) - 3 <= 64:
            return partial(self._session, Endpoint.GROUP, path[3:])
        return HttpResponse(404, b'{"error":"not_found","reason":"not a relay address"}')

    async def _session(self, endpoint: Endpoint, address_id: str | None, ws: WebSocket) -> None:
        session = _Connection(
            Session(
                endpoint,
                max_frame=self.config.max_frame_bytes,
                rate=self.config.requests_per_second,
                burst=self.config.request_burst,
            ),
            address_id,
        )
        errors = 0
        log.debug("session.opened", endpoint=endpoint.value)
        while True:
            timeout = self.config.idle_timeout if session.rules.greeted else self.config.handshake_timeout
            if self.draining:
                await ws.close(CLOSE_GOING_AWAY, "relay shutting down")
                return
            # One scope for both ways out of the wait (its deadline, or drain() cancelling it):
            # a second, nested scope per frame is a measurable share of a small request.
            idle = trio.CancelScope(deadline=trio.current_time() + timeout)
            self._idle.add(idle)
            try:
                with idle:
                    data = await ws.receive()
            except MessageTooLarge as exc:
                await self._fail(ws, ErrorCode.FRAME_TOO_LARGE, str(exc), CLOSE_TOO_BIG)
                return
            except NotBinary:
                await self._fail(ws, ErrorCode.BAD_TYPE, "only binary frames are accepted", CLOSE_UNSUPPORTED)
                return
            except ConnectionClosed:
                return
            finally:
                self._idle.discard(idle)
            if idle.cancelled_caught:
                if self.draining:
                    await ws.close(CLOSE_GOING_AWAY, "relay shutting down")
                else:
                    await self._fail(
                        ws, ErrorCode.TIMEOUT, f"nothing received for {timeout:g} s", CLOSE_POLICY
                    )
                return
            try:
                reply = await self._dispatch(session, data)
            except RemoteProtocolError as exc:
                errors += 1
                self._count_refusal(exc, session)
                if not session.rules.greeted or errors >= MAX_ERRORS_PER_CONNECTION:
                    close = CLOSE_UNKNOWN_GROUP if exc.code is ErrorCode.UNKNOWN_GROUP else CLOSE_POLICY
                    await self._fail(ws, exc.code, exc.reason, close)
                    return
                reply = Error(code=exc.code.value, reason=exc.reason)
            except Exception:
                # Our bug, not the peer's rule break: fail this connection alone.  Left to
                # escape, it would cancel the connections nursery and stop the whole relay.
                log.exception("session.internal_error")
                self.metrics.inc("relay_refusals_total", code=ErrorCode.INTERNAL.value)
                await self._fail(
                    ws, ErrorCode.INTERNAL, "the relay could not handle this request", CLOSE_INTERNAL
                )
                return
            try:
                await ws.send(encode(reply))
            except ConnectionClosed:
                return
            if isinstance(reply, Error) and reply.code == ErrorCode.UNKNOWN_GROUP:
                await ws.close(CLOSE_UNKNOWN_GROUP, "unknown group")
                return

    async def _dispatch(self, session: _Connection, data: bytes) -> RelayFrame:
        frame = session.rules.receive(data, trio.current_time())
        if isinstance(frame, Hello):
            if session.address_id is not None:
                session.group = await self.admissions.bind(session.address_id)
            return make_welcome(
                self.identity.signing_key,
                self._seal_public,
                frame.nonce,
                self.service.now(),
                SOFTWARE,
            )
        if isinstance(frame, Invite):
            return await self.service.invite(frame)
        if isinstance(frame, LogRequest):
            return await self.service.read_log(frame)
        if isinstance(frame, OwnerCommand):
            return await self.admissions.owner_command(frame)
        # The session admits the frames below only on a group address, bound at hello.
        group = session.group
        assert group is not None
        if isinstance(frame, ProfileUpdate):
            return await self.service.update_profile(group.address_id, frame)
        if isinstance(frame, Join):
            return await self.admissions.join(group, frame)
        if isinstance(frame, JoinStatus):
            return await self.admissions.status(group, frame)
        if isinstance(frame, ProfileRequest):
            return await self.admissions.profile(group)
        raise AssertionError(f"session let through {type(frame).__name__}")

    def _count_refusal(self, exc: RemoteProtocolError, session: _Connection) -> None:
        self.metrics.inc("relay_refusals_total", code=exc.code.value)
        if exc.code is ErrorCode.RATE_LIMITED:
            # One event per connection: logging every refused frame of a flood would be a flood.
            if not session.rate_limited:
                session.rate_limited = True
                self.metrics.inc("relay_bounds_hit_total", bound="request_rate")
                log.warning("bound.hit", bound="request_rate", limit=self.config.requests_per_second)
            return
        # Literal event names, so that tests/test_logging.py can check the catalogue statically.
        if isinstance(exc, PolicyRefusal):
            log.info("request.refused_by_policy", code=exc.code.value, reason=exc.reason)
        else:
            log.info("request.refused", code=exc.code.value, reason=exc.reason)

    async def _fail(self, ws: WebSocket, code: ErrorCode, reason: str, close_code: int) -> None:
        """Tell the peer why, then close only this connection."""
        if code in (ErrorCode.TIMEOUT, ErrorCode.FRAME_TOO_LARGE, ErrorCode.BAD_TYPE):
            self.metrics.inc("relay_refusals_total", code=code.value)
            log.info("connection.failed", code=code.value, reason=reason)
        with trio.move_on_after(1):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(encode(Error(code=code.value, reason=reason)))
            await ws.close(close_code, code.value)


class _Connection:
    """One WebSocket session: the protocol rules, and the group its address named."""

    def __init__(self, rules: Session, address_id: str | None) -> None:
        self.rules = rules
        self.address_id = address_id
        self.group: GroupBinding | None = None
        self.rate_limited = False


def _peer(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "unknown"
