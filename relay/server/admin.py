"""The operator port (loopback by default): health, readiness, metrics and the admin API.

Plain HTTP/1.1 with JSON bodies, served through the same h11 glue as the public
port.  It exposes what an operator needs to run the relay (groups and their
state changes, stats, online backups written by the relay into its backup folder)
and nothing a client could use.

Every request is screened before routing, because the operator's own browser is
a way in: a web page can send requests to loopback (cross-origin "simple"
requests) and, by DNS rebinding, read answers from a name that resolves here.
So: the ``Host`` must name loopback, the address the connection arrived at, or
``server.admin_hosts`` (421 otherwise); a request with ``Origin`` or a browser's
``Sec-Fetch-Site`` is refused (403; no CORS, so no preflight ever succeeds);
everything but ``/healthz``, ``/readyz`` and ``/metrics`` (GET/HEAD) needs
``Authorization: Bearer`` with the token in ``DATA/admin.token`` (401); a POST
body must be ``application/json`` (415) and a JSON object (400).

Whatever the path, id, query or method, the answer is a typed JSON error, never a 500: an
unknown path is 404 ``not_found``, a method the path does not take 405 (with ``Allow``), an id
that is not a whole number SQLite can hold (1 to 2^63-1) or a query out of range 400
``bad_request``.  HEAD is answered as GET; the HTTP layer sends the head without the body.

Must not: log the token or a client address; write a backup outside the backup folder.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import parse_qsl

import structlog
import trio

from relay import __version__
from relay.protocol.crypto import same_secret
from relay.protocol.encoding import b64e
from relay.protocol.errors import ProtocolError
from relay.server.bounds import LogThrottle
from relay.server.http import HttpRequest, HttpResponse, serve_http_connection
from relay.server.metrics import Metrics
from relay.server.service import GroupService
from relay.store import events, groups, joins, timeline
from relay.store.conn import Conn
from relay.store.errors import BackupUnsupported
from relay.store.groups import GroupRecord
from relay.store.joins import JoinRow

log = structlog.get_logger("relay.admin")

_STATES = ("invited", "accepted", "active", "rejected", "suspended", "removed")
MAX_REASON = 500
MAX_ID = 2**63 - 1  # SQLite's integers: no row has a larger id, and SQLite cannot even take one
_DIGITS = re.compile(r"[0-9]{1,19}")  # ASCII only: ``\d`` and int() take other scripts' digits
_GROUP_ACTIONS = frozenset({"approve", "reject", "suspend", "resume", "remove"})
# The methods each route answers (HEAD wherever GET is: the same head, no body).
_METHODS = {
    "stats": ("GET", "HEAD"),
    "backup": ("POST",),
    "groups": ("GET", "HEAD"),
    "held": ("GET", "HEAD"),
    "group": ("GET", "HEAD"),
    "group_action": ("POST",),
    "retry": ("POST",),
}


def _resolve(path: str) -> tuple[str, str, str] | None:
    """The route ``path`` names, its id (text, unchecked) and its action; None for no route.

    An id is whatever stands in its place; it is checked (:func:`_id`) only once the path and
    the method are known to be right, so a bad id is a 400 and an unknown path a 404."""
    match path.split("/")[1:]:
        case ["admin", "stats" | "backup" | "groups" | "held" as name]:
            return name, "", ""
        case ["admin", "groups", ident] if ident:
            return "group", ident, ""
        case ["admin", "groups", ident, action] if ident and action in _GROUP_ACTIONS:
            return "group_action", ident, action
        case ["admin", "held", ident, "retry"] if ident:
            return "retry", ident, ""
    return None


def _id(text: str, what: str) -> int:
    """An id from a path: a whole number from 1 to :data:`MAX_ID`, else :class:`BadRequest`."""
    if _DIGITS.fullmatch(text) and 1 <= int(text) <= MAX_ID:
        return int(text)
    shown = text if len(text) <= 40 else text[:40] + "..."
    raise BadRequest(f"{shown!r} is not a {what} id: ids are whole numbers from 1 to {MAX_ID}")


def held_view(row: JoinRow) -> dict[str, object]:
    """A queued join request as the operator sees it: a short member tag, never the whole key."""
    return {
        "id": row.id,
        "group": row.group_id,
        "member": b64e(row.member_key)[:12],
        "status": row.status.value,
        "received_at": row.received_at,
        "attempts": row.attempts,
        "last_error": row.last_error,
    }


def group_view(record: GroupRecord, address: str | None) -> dict[str, object]:
    """What the operator sees of a group: never owner keys, only a short channel tag."""
    return {
        "id": record.id,
        "channel": b64e(record.channel)[:12],
        "state": record.state.value,
        "reason_code": record.reason_code,
        "reason": record.reason,
        "kind": record.kind,
        "name": record.name,
        "address": address,
        "profile_version": record.profile_version,
        "invited_at": record.invited_at,
        "updated_at": record.updated_at,
        "activation_deadline": record.activation_deadline,
    }


# Answers are for programs: never cached, never sniffed into something a browser would run.
_HEADERS = [("cache-control", "no-store"), ("x-content-type-options", "nosniff")]


def _totals(conn: Conn) -> tuple[dict[str, int], joins.QueueCounts, events.Totals, timeline.Totals]:
    """Groups by state, the join queue's, the traffic's and the timelines' totals: one snapshot,
    for the stats and the gauges (a read beside the writer)."""
    return groups.count_by_state(conn), joins.totals(conn), events.totals(conn), timeline.totals(conn)


def _json(status: int, body: object, headers: Iterable[tuple[str, str]] = ()) -> HttpResponse:
    return HttpResponse(status, json.dumps(body).encode(), headers=[*_HEADERS, *headers])


# The paths health checks and Prometheus use without the token (GET and HEAD only).
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
REFUSAL_LOG_INTERVAL = 10.0  # seconds between two ``admin.refused`` lines of one reason


def _host_name(value: str) -> str | None:
    """The host a ``Host`` header names, without its port; None if it is not a Host value."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1 :]
        if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        return value[1:end]
    name, sep, port = value.rpartition(":")
    if not sep:
        return value
    if ":" in name or (port and not port.isdigit()):
        return None  # an IPv6 address without brackets, or a port that is not a number
    return name


def _canonical(name: str) -> str:
    """A host as compared: lower case, no trailing dot, IP addresses in one form."""
    name = name.strip().strip("[]").lower().rstrip(".")
    ip = _ip(name)
    return name if ip is None else str(ip)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address (an IPv4-mapped IPv6 one as IPv4, no zone), else None."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def host_allowed(value: str | None, local: str | None, names: frozenset[str]) -> bool:
    """Whether a request's ``Host`` may be served (the guard against DNS rebinding).

    Allowed: loopback (127.0.0.0/8, ::1, ``localhost``), the address the connection arrived
    at (the port's own address; when bound to 0.0.0.0, whichever address the client dialled)
    and ``names`` (``server.admin_hosts``, canonical), with any port.  A request without
    ``Host`` (HTTP/1.0 only: h11 refuses HTTP/1.1 without one) is allowed, since browsers
    always send one and DNS rebinding needs a browser.
    """
    if value is None:
        return True
    name = _host_name(value)
    if not name:
        return False
    name = _canonical(name)
    if name == "localhost" or name in names:
        return True
    ip = _ip(name)
    if ip is None:
        return False
    if ip.is_loopback:
        return True
    return local is not None and ip == _ip(local)


def _refusal(status: int, error: str, reason: str) -> HttpResponse:
    headers = [("www-authenticate", 'Bearer realm="chat-relay operator"')] if status == 401 else []
    return _json(status, {"error": error, "reason": reason}, headers)


_BAD_HOST = _refusal(
    421,
    "bad_host",
    "the operator port answers only requests for loopback, its own address or a name in server.admin_hosts",
)
_BROWSER = _refusal(
    403,
    "cross_origin",
    "the operator port serves no browser: requests with Origin or Sec-Fetch-Site are refused",
)
_NO_TOKEN = _refusal(
    401,
    "unauthorised",
    "send Authorization: Bearer with the token in DATA/admin.token (relay admin --data DATA does)",
)
_BAD_TOKEN = _refusal(401, "unauthorised", "wrong token (is it the one in this relay's DATA/admin.token?)")
_NOT_JSON = _refusal(415, "unsupported_media_type", "a POST body must be Content-Type: application/json")
MAX_PAGE = 1000


def _method_not_allowed(allowed: tuple[str, ...]) -> HttpResponse:
    return _json(
        405,
        {"error": "method_not_allowed", "reason": f"this path takes {' or '.join(allowed)}"},
        [("allow", ", ".join(allowed))],
    )


_NOT_FOUND = _json(
    404,
    {
        "error": "not_found",
        "reason": "no such path on the operator port: /healthz, /readyz, /metrics and /admin/... "
        "(docs/operations.md)",
    },
)


def _whole(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within ``low..high``, else :class:`BadRequest`."""
    text = params.get(name) or str(default)
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}, not {text[:40]!r}")
    return int(text)


def _page(params: dict[str, str]) -> tuple[int, int]:
    """``after`` (0 to MAX_ID) and ``limit`` (1 to 1000) of a listing, else :class:`BadRequest`."""
    return _whole(params, "after", 0, 0, MAX_ID), _whole(params, "limit", 100, 1, MAX_PAGE)


class BadRequest(Exception):
    """The request itself is wrong (HTTP 400); the message says how."""


class BadBackupPath(BadRequest):
    """A backup path the relay will not write (HTTP 400 ``bad_backup_path``, naming the folder)."""

    def __init__(self, reason: str, folder: Path) -> None:
        super().__init__(reason)
        self.folder = folder


def _body(body: bytes) -> dict[str, object]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested a few thousand deep
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    return value


def _exists(target: Path) -> str:
    return f"{target} already exists; the relay never overwrites a file"


def _reason(fields: dict[str, object], default: str) -> str:
    return str(fields.get("reason") or default)[:MAX_REASON]


class AdminEndpoint:
    def __init__(
        self,
        service: GroupService,
        metrics: Metrics,
        ready: Callable[[], bool],
        head_timeout: float,
        *,
        token: str,
        backup_dir: Path,
        admin_hosts: Iterable[str] = (),
        open_connections: Callable[[], int] = lambda: 0,
        started: float | None = None,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.ready = ready
        self.head_timeout = head_timeout
        # Replaced in place on SIGHUP (a rotated token applies to the next request).
        self.token = token
        self.backup_dir = backup_dir
        self.admin_hosts = frozenset(_canonical(h) for h in admin_hosts)
        self.open_connections = open_connections
        self.started = time.time() if started is None else started
        self._refusals_log = LogThrottle(REFUSAL_LOG_INTERVAL)

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            try:
                local: str | None = str(stream.socket.getsockname()[0])
            except OSError:
                local = None

            async def on_http(request: HttpRequest) -> HttpResponse:
                return await self.respond(request, local)

            await serve_http_connection(stream, on_http=on_http, head_timeout=self.head_timeout)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def respond(self, request: HttpRequest, local: str | None = None) -> HttpResponse:
        """The answer to one parsed request that reached the operator port at ``local`` (the
        address it was sent to, for the Host check).  :meth:`handle` reads requests off a
        connection and sends these back; in-process tests ask here directly."""
        path, _, query = request.target.partition("?")
        method = request.method
        refused = self._screen(request, path, local)
        if refused is not None:
            return refused
        # HEAD is answered as GET: the HTTP layer sends the same head without the body.
        try:
            if path in OPEN_PATHS:
                if method not in ("GET", "HEAD"):
                    return _method_not_allowed(("GET", "HEAD"))
                return await self._open(path)
            route = _resolve(path)
            if route is None:
                return _NOT_FOUND
            name, ident, action = route
            if method not in _METHODS[name]:
                return _method_not_allowed(_METHODS[name])
            fields = _body(request.body) if method == "POST" else {}
            return await self._route(name, ident, action, query, fields)
        except ProtocolError as exc:
            status = {"unknown_group": 404, "unavailable": 503}.get(exc.code.value, 409)
            return _json(status, {"error": exc.code.value, "reason": exc.reason})
        except BadBackupPath as exc:
            return _json(400, {"error": "bad_backup_path", "reason": str(exc), "folder": str(exc.folder)})
        except BadRequest as exc:
            return _json(400, {"error": "bad_request", "reason": str(exc)})

    def _screen(self, request: HttpRequest, path: str, local: str | None) -> HttpResponse | None:
        """The refusal for a request the operator port must not serve, or None to serve it.

        In this order: a Host that is not ours (DNS rebinding), any sign of a browser, no
        token (all but the open paths), a POST body that is not JSON.  Each is counted in
        ``relay_admin_refused_total{reason}``.
        """
        headers = request.headers
        if not host_allowed(headers.get("host"), local, self.admin_hosts):
            return self._refuse("host", _BAD_HOST)
        if "origin" in headers or headers.get("sec-fetch-site", "none").strip().lower() != "none":
            # A browser: only a web page sends these, and the operator port serves no page.
            return self._refuse("browser", _BROWSER)
        if path in OPEN_PATHS:
            return None
        scheme, _, credential = headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            return self._refuse("token", _NO_TOKEN)
        if not same_secret(credential.strip().encode(), self.token.encode()):
            return self._refuse("token", _BAD_TOKEN)
        if request.method == "POST":
            media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if media != "application/json":
                return self._refuse("content_type", _NOT_JSON)
        return None

    def _refuse(self, reason: str, response: HttpResponse) -> HttpResponse:
        """Count a refusal, and log it at most once per ``REFUSAL_LOG_INTERVAL`` per reason
        (a page retrying in a loop must not flood the log)."""
        self.metrics.inc("relay_admin_refused_total", reason=reason)
        hits = self._refusals_log.due(reason)
        if hits:
            log.warning("admin.refused", reason=reason, status=response.status, hits=hits)
        return response

    async def _open(self, path: str) -> HttpResponse:
        if path == "/healthz":
            return _json(200, {"status": "ok"})
        if path == "/readyz":
            ready = self.ready()
            return _json(200 if ready else 503, {"ready": ready})
        await self._refresh_gauges()
        return HttpResponse(
            200, self.metrics.render().encode(), "text/plain; version=0.0.4", headers=list(_HEADERS)
        )

    async def _route(
        self, name: str, ident: str, action: str, query: str, fields: dict[str, object]
    ) -> HttpResponse:
        """Answer a route :func:`_resolve` found, with a method it takes."""
        params = dict(parse_qsl(query))
        if name == "stats":
            return _json(200, await self._stats())
        if name == "backup":
            return await self._backup(fields)
        if name == "groups":
            state = params.get("state") or None
            if state is not None and state not in _STATES:
                raise BadRequest(f"state must be one of {', '.join(_STATES)}, not {state[:40]!r}")
            after, limit = _page(params)
            records = await self.service.db.read(
                lambda conn: groups.listing(conn, state=state, limit=limit, after=after)
            )
            return _json(200, {"groups": [group_view(r, self.service.address_of(r)) for r in records]})
        if name == "held":
            status = params.get("status") or None
            if status not in (None, "dead"):
                raise BadRequest(f"status may only be dead (dead-lettered requests), not {status[:40]!r}")
            statuses = ("dead",) if status == "dead" else ("held", "dead")
            after, limit = _page(params)
            queued = await self.service.db.read(
                lambda conn: joins.listing(conn, statuses=statuses, after=after, limit=limit)
            )
            return _json(200, {"requests": [held_view(r) for r in queued]})
        if name == "retry":
            return await self._retry(_id(ident, "join request"))
        group_id = _id(ident, "group")
        if name == "group":
            record, rows = await self.service.db.read(
                lambda conn: (groups.by_id(conn, group_id), groups.read_log(conn, group_id, 100))
            )
            if record is None:
                return _json(404, {"error": "unknown_group", "reason": f"no group {group_id}"})
            view = group_view(record, self.service.address_of(record))
            view["log"] = [{"seq": r.seq, "at": r.at, "event": r.event, "detail": r.detail} for r in rows]
            return _json(200, view)
        if action == "approve":
            record = await self.service.approve(group_id)
        elif action == "reject":
            record = await self.service.reject(group_id, _reason(fields, "no reason given"))
        elif action == "suspend":
            record = await self.service.suspend(group_id, _reason(fields, "no reason given"))
        elif action == "resume":
            record = await self.service.resume(group_id)
        else:
            record = await self.service.remove(group_id, _reason(fields, "no reason given"))
        self.metrics.inc("relay_operator_actions_total", action=action)
        return _json(200, group_view(record, self.service.address_of(record)))

    async def _stats(self) -> dict[str, object]:
        counts, queue, traffic, places = await self.service.db.read(_totals)
        db = self.service.db.stats
        now = time.time()
        return {
            "version": __version__,
            "started": int(self.started),
            "uptime_seconds": round(now - self.started, 3),
            "groups": {state: counts.get(state, 0) for state in _STATES},
            "connections": {
                "open": self.open_connections(),
                "total": int(self.metrics.get("relay_connections_total")),
            },
            "members": {"admitted": queue.members, "held": queue.held, "pending_approval": queue.pending},
            "events": {
                "stored": traffic.events,
                "bytes": traffic.bytes,
                "pruned": traffic.pruned,
                "equivocations": traffic.equivocations,
                "inbox": traffic.inbox,
                "subscribers": int(self.metrics.get("relay_subscribers")),
            },
            "timeline": {"places": places.places, "bytes": places.bytes, "pruned": places.pruned},
            "db": {
                "commits": db.commits,
                "jobs": db.jobs,
                "largest_batch": db.largest_batch,
                "commit_seconds": round(db.commit_seconds, 6),
                "queue_full": db.queue_full,
            },
        }

    async def _backup(self, fields: dict[str, object]) -> HttpResponse:
        raw = fields.get("path")
        folder = self.backup_dir
        if not isinstance(raw, str) or not raw:
            raise BadBackupPath(f'give {{"path": "FILE"}}: a new file name, written into {folder}', folder)
        target, folder = self._backup_target(raw)
        log.info("backup.started", path=str(target))
        started = time.monotonic()
        try:
            size = await self.service.db.backup(target)
        except FileExistsError:
            raise BadBackupPath(_exists(target), folder) from None
        except BackupUnsupported as exc:  # nothing was written
            return _json(501, {"error": "backup_unsupported", "reason": str(exc)})
        except OSError as exc:
            # Permission denied, read-only file system (systemd's ProtectSystem), disk full.
            raise BadBackupPath(f"cannot write {target}: {exc.strerror or exc}", folder) from None
        seconds = round(time.monotonic() - started, 3)
        self.metrics.inc("relay_operator_actions_total", action="backup")
        log.info("backup.written", path=str(target), bytes=size, seconds=seconds)
        return _json(200, {"status": "ok", "path": str(target), "bytes": size, "seconds": seconds})

    def _backup_target(self, raw: str) -> tuple[Path, Path]:
        """Where a backup named ``raw`` goes, inside the backup folder; and the folder itself.

        A bare file name goes into the folder (made 0700 if missing).  An absolute path must
        lead into the folder or a folder below it once every symbolic link is resolved, with
        no ``..``.  The file must not exist (a dangling link counts: the write would follow
        it); ``Database.backup`` creates it with O_EXCL, so a file appearing meanwhile is
        not overwritten either.
        """
        configured = self.backup_dir
        try:
            configured.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise BadBackupPath(
                f"cannot create the backup folder {configured}: {exc.strerror or exc}", configured
            ) from None
        folder = Path(os.path.realpath(configured))
        outside = (
            f"{raw!r} is outside the backup folder {folder}: give a file name (written there) "
            "or an absolute path inside it (storage.backup_dir)"
        )
        if "\0" in raw:
            raise BadBackupPath(outside, folder)
        if "/" not in raw:
            if raw in (".", ".."):
                raise BadBackupPath(outside, folder)
            target = folder / raw
        else:
            given = Path(raw)
            if not given.is_absolute() or ".." in given.parts or not given.name:
                raise BadBackupPath(outside, folder)
            parent = Path(os.path.realpath(given.parent))
            if parent != folder and folder not in parent.parents:
                raise BadBackupPath(outside, folder)
            target = parent / given.name
        if target.is_symlink() or target.exists():
            raise BadBackupPath(_exists(target), folder)
        if not target.parent.is_dir():
            raise BadBackupPath(f"the folder {target.parent} does not exist", folder)
        return target, folder

    async def _retry(self, request_id: int) -> HttpResponse:
        def apply(conn: Conn) -> JoinRow | None:
            if not joins.retry(conn, request_id):
                return None
            return joins.by_id(conn, request_id)

        row = await self.service.db.transact(apply)
        if row is None:
            return _json(404, {"error": "not_found", "reason": f"no dead-lettered request {request_id}"})
        log.info("queue.retried", request=request_id, group=row.group_id)
        self.service.signals.requests_waiting.send(row.group_id)
        return _json(200, held_view(row))

    async def _refresh_gauges(self) -> None:
        counts, totals, traffic, places = await self.service.db.read(_totals)
        self.metrics.set("relay_queue_held", totals.held)
        self.metrics.set("relay_queue_pending_approval", totals.pending)
        self.metrics.set("relay_queue_dead", totals.dead)
        self.metrics.set("relay_members", totals.members)
        self.metrics.set("relay_events_stored", traffic.events)
        self.metrics.set("relay_events_stored_bytes", traffic.bytes)
        self.metrics.set("relay_timeline_places", places.places)
        self.metrics.set("relay_timeline_bytes", places.bytes)
        self.metrics.set("relay_equivocations", traffic.equivocations)
        self.metrics.set("relay_direct_inbox", traffic.inbox)
        for state in _STATES:
            self.metrics.set("relay_groups", counts.get(state, 0), state=state)
        self.metrics.set("relay_verified_profiles", len(self.service.profiles))
        self.metrics.set("relay_verified_profiles_bytes", self.service.profiles.bytes)
        stats = self.service.db.stats
        self.metrics.set("relay_db_commits_total", stats.commits)
        self.metrics.set("relay_db_jobs_total", stats.jobs)
        self.metrics.set("relay_db_commit_seconds_total", stats.commit_seconds)
        self.metrics.set("relay_store_unavailable_total", stats.unavailable)
        self.metrics.set("relay_bounds_hit_total", stats.queue_full, bound="db_pending_jobs")
        reads = self.service.db.read_stats()
        self.metrics.set("relay_db_reads_total", reads.total)
        self.metrics.set("relay_db_reads_in_flight", reads.in_flight)
        self.metrics.set("relay_db_reads_waiting", reads.waiting)
