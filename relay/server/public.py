"""The public port: ``GET /`` (public info) and WebSocket sessions on contact and group addresses.

Each accepted TCP connection is one task in the connections nursery.  A session
answers every request with exactly one frame; a bad request gets a typed
``error`` frame and fails alone, while framing-level faults (oversized or text
frames, time-outs, a bad handshake) close only that connection.  Every wait is
bounded by a time-out, and the number of connections by ``max_connections``.

Budgets per source (relay.server.budgets) are checked by :meth:`PublicEndpoint.admit`
at the TCP accept, before anything is read (connections and connection rate), and for
every frame but a post (requests per source, beside each connection's own bucket).
Subscribed sessions have no idle time-out: the sweeper (relay.server.sweeper) pings
them, and ends messages that take too long, without a task or timer per connection.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import json
import secrets
import socket
import ssl
from collections.abc import Awaitable, Callable

import structlog
import trio

from relay import __version__
from relay.protocol.addresses import contact_address
from relay.protocol.encoding import b64e, encode
from relay.protocol.errors import (
    ErrorCode,
    PolicyRefusal,
    ProtocolError,
    RemoteProtocolError,
    ServiceUnavailable,
)
from relay.protocol.handshake import make_welcome
from relay.protocol.messages import (
    PROTOCOL_VERSION,
    ClientFrame,
    DirectInvite,
    Discover,
    Error,
    HeadRequest,
    Hello,
    Invite,
    Join,
    JoinStatus,
    LogRequest,
    MemberCardRequest,
    MemberPost,
    OwnerCommand,
    Post,
    ProfileRequest,
    ProfileUpdate,
    Publish,
    RelayFrame,
    Subscribe,
)
from relay.protocol.session import ConnectionRateLimited, Endpoint, Session
from relay.server.admission import Admissions, GroupBinding
from relay.server.bounds import Bounds, LogThrottle
from relay.server.budgets import (
    BUFFERED_BYTES_PER_IP,
    CONNECTION_RATE_PER_IP,
    CONNECTIONS_PER_IP,
    BufferBudget,
    SourceBudgets,
)
from relay.server.config import EventsConfig, ServerConfig
from relay.server.direct import DirectMessages
from relay.server.events import Channels
from relay.server.fanout import Feed
from relay.server.http import (
    CLOSE_POLICY,
    Aborted,
    BufferFull,
    ConnectionClosed,
    HttpRequest,
    HttpResponse,
    MessageTooLarge,
    NotBinary,
    WebSocket,
    accept_http_connection,
    prepared_message,
)
from relay.server.metrics import Metrics
from relay.server.service import GroupService
from relay.server.sources import UNKNOWN, source_key
from relay.server.tasks import ConnectionTasks
from relay.server.timeline import Timelines
from relay.server.tls import wrap

log = structlog.get_logger("relay.public")

SOFTWARE = f"chat-relay/{__version__}"
MAX_ERRORS_PER_CONNECTION = 16
REFUSAL_LOG_INTERVAL = 1.0  # seconds between two ``request.refused`` lines of one code
# WebSocket close codes (RFC 6455 plus the private 4000-4999 range).
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_UNSUPPORTED = 1003
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013  # RFC 6455 registry: "Try Again Later" (the relay's own budget is spent)
CLOSE_UNKNOWN_GROUP = 4404


class PublicEndpoint:
    def __init__(
        self,
        service: GroupService,
        admissions: Admissions,
        config: ServerConfig,
        metrics: Metrics,
        *,
        channels: Channels,
        timelines: Timelines | None = None,
        bounds: Bounds | None = None,
        log_client_ip: bool = False,
    ) -> None:
        self.service = service
        self.admissions = admissions
        self.channels = channels
        self.timelines = timelines
        self.direct = DirectMessages(channels)
        self.events_config: EventsConfig = channels.config
        self.config = config
        self.metrics = metrics
        self.bounds = bounds if bounds is not None else Bounds(metrics)
        self._refusals_log = LogThrottle(REFUSAL_LOG_INTERVAL)
        self.identity = service.identity
        self.log_client_ip = log_client_ip
        self.open_connections = 0
        # Bytes of partly received messages over all connections, and the budgets per source.
        self.buffers = BufferBudget(config.max_buffered_bytes)
        self.sources = SourceBudgets(config, self.buffers)
        self.draining = False
        self._idle: set[trio.CancelScope] = set()
        self._idle_feeds: set[Feed] = set()  # subscribed sessions waiting for their next frame
        # Where connections' helper tasks run (see relay.server.tasks): the nursery that runs
        # the connections, set by the daemon before the first one is accepted.
        self.helpers: trio.Nursery | None = None
        # TLS (server.tls_cert): each connection is wrapped once accepted; set by the daemon.
        self.tls: ssl.SSLContext | None = None
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
            "protocol": PROTOCOL_VERSION,
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

    def admit(self, address: object) -> str | None:
        """At the TCP accept, before a byte is read: the connection's source key if the global
        and per-source budgets let it in (it is counted from now on), else None (the caller
        closes it).  ``address`` is the peer address the accept returned."""
        config = self.config
        if self.open_connections >= config.max_connections:
            self.bounds.hit("max_connections", config.max_connections)
            return None
        host = address[0] if isinstance(address, tuple) and address else None
        # The key of this source's budgets; never logged (it is the client's address).
        source = source_key(str(host), config.ipv6_prefix) if host is not None else UNKNOWN
        admitted = self.sources.admit(source, trio.current_time())
        if isinstance(admitted, str):
            if admitted == CONNECTIONS_PER_IP:
                self.bounds.hit(admitted, config.max_connections_per_ip)
            else:
                assert admitted == CONNECTION_RATE_PER_IP
                self.bounds.hit(admitted, config.connections_per_ip_per_second)
            return None
        self.open_connections += 1
        self.metrics.inc("relay_connections_total")
        self.metrics.set("relay_connections_open", self.open_connections)
        return source

    async def handle(self, stream: trio.SocketStream, source: str | None = None) -> None:
        """One connection, from first byte to close; ``source`` is what :meth:`admit` returned
        for it (when the caller did not admit it, this does)."""
        if source is None:
            source = self.admit(_peer_address(stream))
            if source is None:
                await stream.aclose()
                return
        keep_alive(stream, self.config.tcp_keepalive)
        try:
            # Client addresses are personal data: bound only if the operator opted in.
            address = _peer(stream) if self.log_client_ip else UNKNOWN
            peer = {"peer": address} if self.log_client_ip else {}
            # Bound in this task's own context (trio gives each task a copy), which ends with
            # the task: no context manager to keep alive for the connection's lifetime.
            structlog.contextvars.bind_contextvars(conn=f"c{next(self._ids)}", **peer)
            if peer:
                log.info("connection.opened")
            del peer, address
            try:
                accepted = await accept_http_connection(
                    stream if self.tls is None else wrap(stream, self.tls),
                    on_http=self._http,
                    on_websocket=self._route,
                    head_timeout=self.config.handshake_timeout,
                    max_message=self.config.max_frame_bytes,
                    share=self.sources.share(source),
                    on_bound=self.bounds.hit,
                )
                if accepted is not None:
                    # The session runs here, not in a handler of its own: one coroutine frame
                    # less kept for as long as a member stays connected (days).
                    ws = accepted.socket
                    session = self._open_session(accepted.target, source)
                    del accepted  # only what the session needs stays referenced while it runs
                    try:
                        try:
                            post = await self._serve(session, ws, None)
                            if post is not None:
                                await self._serve_posting(session, ws, post)
                        finally:
                            if session.feed is not None:
                                self.channels.detach(session.feed)
                            if session.tasks is not None:
                                await session.tasks.aclose()
                        # A feed that ended sent a Close from its sender: the peer's Close is
                        # read here, by the task that was reading (and only after it stopped).
                        await ws.finish()
                    finally:
                        ws.dispose()  # a message cut short gives its bytes back, and more
            except Exception:
                # Last line of defence: one connection's failure never stops the relay.
                log.exception("connection.internal_error")
        finally:
            self.open_connections -= 1
            self.sources.release(source, trio.current_time())
            self.metrics.set("relay_connections_open", self.open_connections)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    def drain(self) -> None:
        """Shutdown: close sessions waiting for their next frame now; requests in flight finish."""
        self.draining = True
        for scope in self._idle:
            scope.cancel()
        for feed in tuple(self._idle_feeds):
            feed.end(None, CLOSE_GOING_AWAY, "relay shutting down")
        self.admissions.waiters.wake_all()

    async def _http(self, request: HttpRequest) -> HttpResponse:
        if request.method in ("GET", "HEAD") and request.target.split("?")[0] in ("/", "/info"):
            return HttpResponse(200, json.dumps(self.info()).encode())
        return HttpResponse(404, b'{"error":"not_found"}')

    def _route(self, target: str) -> HttpResponse | None:
        if _address(target) is not None:
            return None
        return HttpResponse(404, b'{"error":"not_found","reason":"not a relay address"}')

    def _open_session(self, target: str, source: str) -> _Connection:
        """The session of a WebSocket accepted on ``target`` (an address, checked by ``_route``)."""
        address = _address(target)
        assert address is not None  # accepted only then
        endpoint, address_id = address
        events = self.events_config
        log.debug("session.opened", endpoint=endpoint.value)
        return _Connection(
            Session(
                endpoint,
                max_frame=self.config.max_frame_bytes,
                rate=self.config.requests_per_second,
                burst=self.config.request_burst,
                post_rate=events.posts_per_second,
                post_burst=events.post_burst,
                discover_rate=events.discover_per_second,
                discover_burst=events.discover_burst,
            ),
            address_id,
            source,
        )

    async def _serve_posting(self, session: _Connection, ws: WebSocket, post: Posting) -> None:
        """The rest of a session from its first post: the task that answers its posts in order
        runs beside this one, in a nursery of the connection's own (owners' posts, members'
        messages, certs and moderation; a member's connection that only reads, open for days,
        has none)."""
        async with trio.open_nursery() as nursery:
            session.nursery = nursery
            try:
                await self._serve(session, ws, post)
            finally:
                nursery.cancel_scope.cancel()

    def _start_feed(
        self, session: _Connection, ws: WebSocket, feed: Feed, context: contextvars.Context
    ) -> None:
        """Called when a subscription is attached (in its read's commit hook)."""
        session.feed = feed
        session.rules.subscribed = True
        assert self.helpers is not None
        session.tasks = ConnectionTasks(self.helpers, ws.interrupt)
        feed.start(session.tasks, context)

    async def _serve(self, session: _Connection, ws: WebSocket, post: Posting | None) -> Posting | None:
        """Read and answer frames until the connection ends (None), or until a first post
        arrives on a connection without the nursery its answers need: the post is returned,
        and the caller comes back with it and the nursery.

        One frame for the whole loop, the wait included: an idle member waits here for days,
        and every coroutine frame it waits in is kept that long.
        """
        while True:
            if post is None:
                if self.draining:
                    await ws.close(CLOSE_GOING_AWAY, "relay shutting down")
                    return None
                feed = session.feed
                idle: trio.CancelScope | None = None
                if feed is None:
                    timeout = (
                        self.config.idle_timeout if session.rules.greeted else self.config.handshake_timeout
                    )
                    # One scope both for the time-out and for drain(): drain sets ``draining`` first.
                    idle = trio.CancelScope(deadline=trio.current_time() + timeout)
                    self._idle.add(idle)
                else:
                    # A feed has no time-out (it only reads; a dead peer shows when a send
                    # stalls) and waits here for days: no scope of its own (about 0.7 KiB
                    # each).  drain() ends the feed instead, whose sender sends the Close and
                    # ends the connection (WebSocket.interrupt wakes this wait).
                    self._idle_feeds.add(feed)
                failure: tuple[ErrorCode, str, int] | None = None
                try:
                    if idle is None:
                        data = await ws.receive()
                    else:
                        with idle:
                            data = await ws.receive()
                except MessageTooLarge as exc:
                    failure = (ErrorCode.FRAME_TOO_LARGE, str(exc), CLOSE_TOO_BIG)
                except BufferFull as exc:
                    limit = (
                        self.buffers.per_source if exc.bound == BUFFERED_BYTES_PER_IP else self.buffers.limit
                    )
                    self.bounds.hit(exc.bound, limit)
                    failure = (ErrorCode.UNAVAILABLE, str(exc) + "; try again later", CLOSE_TRY_AGAIN)
                except NotBinary:
                    failure = (ErrorCode.BAD_TYPE, "only binary frames are accepted", CLOSE_UNSUPPORTED)
                except Aborted as exc:
                    # Ended by the sweeper (a message too slow, no answer to a ping), which sent
                    # the error frame and the Close: only the log line is left, in this context.
                    self.metrics.inc("relay_refusals_total", code=exc.code)
                    log.info("connection.failed", code=exc.code, reason=exc.reason)
                    return None
                except ConnectionClosed:
                    return None
                finally:
                    if idle is None:
                        self._idle_feeds.discard(feed)
                    else:
                        self._idle.discard(idle)
                if failure is not None:
                    # Out of the except block, so the exception is gone: its traceback held
                    # the read that broke the rule (up to 64 KiB).  What the connection holds
                    # is given back before the close handshake waits (up to a second).
                    ws.dispose()
                    await self._fail(ws, *failure)
                    return None
                if idle is not None and idle.cancelled_caught:
                    if self.draining:
                        await ws.close(CLOSE_GOING_AWAY, "relay shutting down")
                    else:
                        await self._fail(
                            ws, ErrorCode.TIMEOUT, f"nothing received for {timeout:g} s", CLOSE_POLICY
                        )
                    return None
                del idle, feed
            frame: ClientFrame | None = None
            try:
                if post is None:
                    now = trio.current_time()
                    frame = session.rules.receive(data, now)
                    del data  # not kept while waiting for the next frame
                    # The source's bucket, shared by its connections; owners' posts have their
                    # own.  Members' messages, certs and moderations are charged here too: each
                    # can cost a signature check before it is refused, and any member may send
                    # them, so a source's connections together get no more than its budget.
                    if not isinstance(frame, Post) and not self.sources.charge_request(session.source, now):
                        self.bounds.hit("requests_per_ip", self.config.requests_per_ip_per_second)
                        raise RemoteProtocolError(
                            ErrorCode.RATE_LIMITED,
                            "too many requests from your network address over all its connections "
                            f"(at most {self.config.requests_per_ip_per_second:g}/s); slow down",
                        )
                else:
                    frame, post = post, None
                reply = await self._dispatch(session, ws, frame)
            except _NeedsNursery as needs:
                return needs.post
            except (RemoteProtocolError, ServiceUnavailable) as exc:
                if session.pipeline is not None and session.pipeline.in_flight:
                    # Answers go in order: this error waits behind the posts in flight.
                    await session.pipeline.put(_raise(exc))
                    continue
                reply = await self._refused(session, ws, exc)
                if reply is None:
                    return None
            except Exception:
                # Our bug, not the peer's rule break: fail this connection alone.  Left to
                # escape, it would cancel the connections nursery and stop the whole relay.
                log.exception("session.internal_error")
                self.metrics.inc("relay_refusals_total", code=ErrorCode.INTERNAL.value)
                await self._fail(
                    ws, ErrorCode.INTERNAL, "the relay could not handle this request", CLOSE_INTERNAL
                )
                return None
            finally:
                frame = None  # not kept while waiting for the next frame
            if reply is None:  # subscribed (the feed answers), or a post in flight
                continue
            try:
                await ws.send(encode(reply))
            except ConnectionClosed:
                return None
            if isinstance(reply, Error) and reply.code == ErrorCode.UNKNOWN_GROUP:
                await ws.close(CLOSE_UNKNOWN_GROUP, "unknown group")
                return None

    async def _refused(self, session: _Connection, ws: WebSocket, exc: ProtocolError) -> Error | None:
        """The error frame for a refused request, or None once the connection is closed for it."""
        if not isinstance(exc, ServiceUnavailable):  # the relay's trouble is not the client's error
            session.errors += 1
        self._count_refusal(exc, session)
        if not session.rules.greeted or session.errors >= MAX_ERRORS_PER_CONNECTION:
            close = CLOSE_UNKNOWN_GROUP if exc.code is ErrorCode.UNKNOWN_GROUP else CLOSE_POLICY
            await self._fail(ws, exc.code, exc.reason, close)
            return None
        return Error(code=exc.code.value, reason=exc.reason)

    async def _answer_posts(self, session: _Connection, ws: WebSocket, pipeline: _Pipeline) -> None:
        """The answers of pipelined posts, in the order they came (one task per posting connection).

        The posts queued behind the one answered first were mostly committed with it: their
        answers are gathered and written together, one system call per batch instead of one
        per post (about a quarter of the relay's CPU per post with one pipelining publisher).
        """
        assert session.nursery is not None
        async for first in pipeline.receive:
            waits = [first]
            while len(waits) < ANSWER_BATCH:
                try:
                    waits.append(pipeline.receive.receive_nowait())
                except trio.WouldBlock:
                    break
            out: list[bytes] = []
            for wait in waits:
                reply: RelayFrame | None
                try:
                    reply = await wait()
                except (RemoteProtocolError, ServiceUnavailable) as exc:
                    # The answers gathered so far go first: a refusal may close the connection.
                    if not await _send_answers(ws, out):
                        session.nursery.cancel_scope.cancel()
                        return
                    reply = await self._refused(session, ws, exc)
                except Exception:
                    log.exception("session.internal_error")
                    self.metrics.inc("relay_refusals_total", code=ErrorCode.INTERNAL.value)
                    reply = None
                    if await _send_answers(ws, out):
                        await self._fail(
                            ws, ErrorCode.INTERNAL, "the relay could not handle this request", CLOSE_INTERNAL
                        )
                if reply is None:
                    session.nursery.cancel_scope.cancel()
                    return
                out.append(prepared_message(encode(reply)))
            if not await _send_answers(ws, out):
                session.nursery.cancel_scope.cancel()
                return
            for _ in waits:
                pipeline.done()

    async def _dispatch(self, session: _Connection, ws: WebSocket, frame: ClientFrame) -> RelayFrame | None:
        pipeline = session.pipeline
        if isinstance(frame, POSTING):
            # Owners' posts, members' messages, certs and moderation: answered in order by the
            # connection's pipeline (several in flight, committed together).
            group = session.group
            assert group is not None
            if pipeline is None:
                if session.nursery is None:
                    raise _NeedsNursery(frame)
                pipeline = session.pipeline = _Pipeline()
                session.nursery.start_soon(self._answer_posts, session, ws, pipeline)
            wait: Callable[[], Awaitable[RelayFrame]]
            if isinstance(frame, Post):
                wait = await self.channels.submit_post(group, frame)
            elif self.timelines is None:
                raise RemoteProtocolError(ErrorCode.MEMBER_POSTS_OFF, "this relay takes no member posts")
            elif isinstance(frame, MemberPost):
                wait = await self.timelines.submit_member_post(group, frame)
            else:
                wait = await self.timelines.submit_publish(group, frame)
            await pipeline.put(wait)
            return None
        if pipeline is not None:
            await pipeline.idle()  # one answer per request, in order: the posts' answers first
        if isinstance(frame, Hello):
            if session.address_id is not None:
                session.group = await self.admissions.bind(session.address_id)
            # Every signed request on this connection must name this challenge: none can be
            # replayed on another connection (relay.protocol.invitation.check_session).
            session.challenge = secrets.token_bytes(32)
            return make_welcome(
                self.identity.signing_key,
                self._seal_public,
                frame.nonce,
                session.challenge,
                self.service.now(),
                SOFTWARE,
            )
        if isinstance(frame, Invite):
            return await self.service.invite(frame, session.source, session.challenge)
        if isinstance(frame, LogRequest):
            return await self.service.read_log(frame, session.challenge)
        if isinstance(frame, OwnerCommand):
            return await self.admissions.owner_command(frame, session.challenge)
        if isinstance(frame, Discover):
            return await self.channels.discover(frame)
        # The session admits the frames below only on a group address, bound at hello.
        group = session.group
        assert group is not None
        if isinstance(frame, ProfileUpdate):
            return await self.service.update_profile(group.address_id, frame)
        if isinstance(frame, Join):
            return await self.admissions.join(group, frame, session.challenge)
        if isinstance(frame, JoinStatus):
            return await self.admissions.status(group, frame, session.challenge)
        if isinstance(frame, ProfileRequest):
            return await self.admissions.profile(group)
        if isinstance(frame, HeadRequest):
            return await self.channels.head(group)
        if isinstance(frame, Subscribe):
            # The feed's sender tasks run in this connection's context (its log binding).
            context = contextvars.copy_context()
            await self.channels.subscribe(
                group, frame, session.challenge, ws, lambda feed: self._start_feed(session, ws, feed, context)
            )
            return None
        if isinstance(frame, MemberCardRequest):
            return await self.direct.member_card(group, frame)
        if isinstance(frame, DirectInvite):
            assert session.feed is not None  # the session admits it only once subscribed
            return await self.direct.invite(group, session.feed.member, frame, session.challenge)
        raise AssertionError(f"session let through {type(frame).__name__}")

    def _count_refusal(self, exc: ProtocolError, session: _Connection) -> None:
        self.metrics.inc("relay_refusals_total", code=exc.code.value)
        if isinstance(exc, ConnectionRateLimited):
            # One event per connection: logging every refused frame of a flood would be a flood.
            if not session.rate_limited:
                session.rate_limited = True
                self.bounds.hit("request_rate", self.config.requests_per_second)
            return
        if exc.code is ErrorCode.RATE_LIMITED:
            return  # a budget shared by connections: its bound reports it (relay.server.bounds)
        # At most one line per code a second: a client can make refusals at will (the metric
        # above counts every one).
        hits = self._refusals_log.due(exc.code.value)
        if not hits:
            return
        # Literal event names, so that tests/test_logging.py can check the catalogue statically.
        if isinstance(exc, PolicyRefusal):
            log.info("request.refused_by_policy", code=exc.code.value, reason=exc.reason, hits=hits)
        else:
            log.info("request.refused", code=exc.code.value, reason=exc.reason, hits=hits)

    async def _fail(self, ws: WebSocket, code: ErrorCode, reason: str, close_code: int) -> None:
        """Tell the peer why, then close only this connection."""
        if code in (ErrorCode.TIMEOUT, ErrorCode.FRAME_TOO_LARGE, ErrorCode.BAD_TYPE, ErrorCode.UNAVAILABLE):
            self.metrics.inc("relay_refusals_total", code=code.value)
            log.info("connection.failed", code=code.value, reason=reason)
        with trio.move_on_after(1):
            with contextlib.suppress(ConnectionClosed):
                await ws.send(encode(Error(code=code.value, reason=reason)))
            await ws.close(close_code, code.value)


class _Connection:
    """One WebSocket session: the protocol rules, and the group its address named."""

    # One per connection, kept while it is open (members' for days): no per-object dict.
    __slots__ = (
        "address_id",
        "challenge",
        "errors",
        "feed",
        "group",
        "nursery",
        "pipeline",
        "rate_limited",
        "rules",
        "source",
        "tasks",
    )

    def __init__(self, rules: Session, address_id: str | None, source: str) -> None:
        self.rules = rules
        self.address_id = address_id
        self.source = source  # the budget key of the client's address (relay.server.sources)
        # Picked at hello and sent in the welcome card: the ``session`` every signed request on
        # this connection must name.  One bytes object (members' connections stay for days).
        self.challenge = b""
        self.group: GroupBinding | None = None
        self.rate_limited = False
        self.nursery: trio.Nursery | None = None  # a posting connection's, from its first post
        self.tasks: ConnectionTasks | None = None  # a subscribed connection's helpers
        self.feed: Feed | None = None
        self.pipeline: _Pipeline | None = None
        self.errors = 0


class _NeedsNursery(Exception):
    """A first post on a connection without a nursery for the task that answers posts."""

    def __init__(self, post: Posting) -> None:
        super().__init__()
        self.post = post


# The frames a connection's pipeline answers in order (see ``_dispatch``).
Posting = Post | MemberPost | Publish
POSTING = (Post, MemberPost, Publish)
POST_WINDOW = 256  # posts in flight per connection; reading waits beyond
ANSWER_BATCH = 64  # post answers gathered into one write at most


class _Pipeline:
    """A connection's posts in flight: their answers are sent in order by one task."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[Callable[[], Awaitable[RelayFrame]]](POST_WINDOW)
        self.in_flight = 0
        self._idle = trio.Event()
        self._idle.set()

    async def put(self, wait: Callable[[], Awaitable[RelayFrame]]) -> None:
        if self.in_flight == 0:
            self._idle = trio.Event()
        self.in_flight += 1
        await self.send.send(wait)

    def done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def idle(self) -> None:
        await self._idle.wait()


async def _send_answers(ws: WebSocket, answers: list[bytes]) -> bool:
    """Write prepared answers in one go and empty the list; False if the connection is gone."""
    if not answers:
        return True
    data = b"".join(answers)
    answers.clear()
    try:
        await ws.send_prepared(data)
    except ConnectionClosed:
        return False
    return True


def _raise(exc: ProtocolError) -> Callable[[], Awaitable[RelayFrame]]:
    async def wait() -> RelayFrame:
        raise exc

    return wait


def keep_alive(stream: trio.SocketStream, idle: int) -> None:
    """Let the kernel probe an idle connection: it finds a peer that vanished without a word
    (and keeps NAT mappings open); the sweeper's WebSocket pings find one that stopped answering.

    Costs no task and no timer per connection.  The per-socket timings are Linux's; elsewhere
    the system's keepalive defaults apply.
    """
    if idle <= 0:
        return
    with contextlib.suppress(OSError):
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 4))
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)


def _address(target: str) -> tuple[Endpoint, str | None] | None:
    """The endpoint a target names and its group address id; None if it names neither."""
    path = target.split("?")[0]
    if path == "/r":
        return Endpoint.CONTACT, None
    if path.startswith("/g/") and 0 < len(path) - 3 <= 64:
        return Endpoint.GROUP, path[3:]
    return None


def _peer(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return UNKNOWN


def _peer_address(stream: trio.SocketStream) -> object:
    try:
        return stream.socket.getpeername()
    except OSError:
        return None
