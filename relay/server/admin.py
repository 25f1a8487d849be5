"""The operator port (loopback by default): health, readiness, metrics and the admin API.

Plain HTTP/1.1 with JSON bodies, served through the same h11 glue as the public
port.  It exposes what an operator needs to run the relay (groups and their
state changes, stats, online backups written by the relay to a new file the
operator names) and nothing a client could use; it must never be bound to a
public interface without a firewall, since it has no authentication.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl

import structlog
import trio

from relay import __version__
from relay.protocol.encoding import b64e
from relay.protocol.errors import ProtocolError
from relay.server.http import HttpRequest, HttpResponse, serve_http_connection
from relay.server.metrics import Metrics
from relay.server.service import GroupService
from relay.store import events, groups, joins
from relay.store.groups import GroupRecord
from relay.store.joins import JoinRow

log = structlog.get_logger("relay.admin")

_GROUP = re.compile(r"^/admin/groups/(\d+)(/approve|/reject|/suspend|/resume|/remove)?$")
_STATES = ("invited", "accepted", "active", "rejected", "suspended", "removed")
MAX_REASON = 500
_RETRY = re.compile(r"^/admin/held/(\d+)/retry$")


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


def _json(status: int, body: object) -> HttpResponse:
    return HttpResponse(status, json.dumps(body).encode())


_BAD_PAGE = _json(400, {"error": "bad_request", "reason": "after and limit must be integers"})
MAX_PAGE = 1000


def _page(params: dict[str, str]) -> tuple[int, int] | None:
    """``after`` and ``limit`` of a listing (limit clamped to 1..1000), or None if not integers."""
    try:
        return int(params.get("after") or 0), min(max(int(params.get("limit") or 100), 1), MAX_PAGE)
    except ValueError:
        return None


class BadRequest(Exception):
    """The request itself is wrong (HTTP 400); the message says how."""


def _body(body: bytes) -> dict[str, object]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        raise BadRequest("the body must be a JSON object") from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    return value


def _reason(body: bytes, default: str) -> str:
    return str(_body(body).get("reason") or default)[:MAX_REASON]


class AdminEndpoint:
    def __init__(
        self,
        service: GroupService,
        metrics: Metrics,
        ready: Callable[[], bool],
        head_timeout: float,
        *,
        open_connections: Callable[[], int] = lambda: 0,
        started: float | None = None,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.ready = ready
        self.head_timeout = head_timeout
        self.open_connections = open_connections
        self.started = time.time() if started is None else started

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            await serve_http_connection(stream, on_http=self._http, head_timeout=self.head_timeout)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    async def _http(self, request: HttpRequest) -> HttpResponse:
        path, _, query = request.target.partition("?")
        try:
            return await self._route(request.method, path, query, request.body)
        except ProtocolError as exc:
            status = 404 if exc.code.value == "unknown_group" else 409
            return _json(status, {"error": exc.code.value, "reason": exc.reason})
        except BadRequest as exc:
            return _json(400, {"error": "bad_request", "reason": str(exc)})

    async def _route(self, method: str, path: str, query: str, body: bytes) -> HttpResponse:
        if path == "/healthz":
            return _json(200, {"status": "ok"})
        if path == "/readyz":
            ready = self.ready()
            return _json(200 if ready else 503, {"ready": ready})
        if path == "/metrics":
            await self._refresh_gauges()
            return HttpResponse(200, self.metrics.render().encode(), "text/plain; version=0.0.4")
        if path == "/admin/stats" and method == "GET":
            return _json(200, await self._stats())
        if path == "/admin/backup" and method == "POST":
            return await self._backup(body)
        if path == "/admin/groups" and method == "GET":
            params = dict(parse_qsl(query))
            state = params.get("state") or None
            page = _page(params)
            if page is None:
                return _BAD_PAGE
            after, limit = page
            records = await self.service.db.transact(
                lambda conn: groups.listing(conn, state=state, limit=limit, after=after)
            )
            return _json(200, {"groups": [group_view(r, self.service.address_of(r)) for r in records]})
        if path == "/admin/held" and method == "GET":
            params = dict(parse_qsl(query))
            statuses = ("dead",) if params.get("status") == "dead" else ("held", "dead")
            page = _page(params)
            if page is None:
                return _BAD_PAGE
            after, limit = page
            queued = await self.service.db.transact(
                lambda conn: joins.listing(conn, statuses=statuses, after=after, limit=limit)
            )
            return _json(200, {"requests": [held_view(r) for r in queued]})
        retry = _RETRY.match(path)
        if retry is not None and method == "POST":
            return await self._retry(int(retry.group(1)))
        match = _GROUP.match(path)
        if match is None:
            return _json(404, {"error": "not_found"})
        group_id, action = int(match.group(1)), match.group(2)
        if action is None and method == "GET":
            record, rows = await self.service.db.transact(
                lambda conn: (groups.by_id(conn, group_id), groups.read_log(conn, group_id, 100))
            )
            if record is None:
                return _json(404, {"error": "unknown_group", "reason": f"no group {group_id}"})
            view = group_view(record, self.service.address_of(record))
            view["log"] = [{"seq": r.seq, "at": r.at, "event": r.event, "detail": r.detail} for r in rows]
            return _json(200, view)
        if method != "POST" or action is None:
            return _json(405, {"error": "method_not_allowed"})
        if action == "/approve":
            record = await self.service.approve(group_id)
        elif action == "/reject":
            record = await self.service.reject(group_id, _reason(body, "no reason given"))
        elif action == "/suspend":
            record = await self.service.suspend(group_id, _reason(body, "no reason given"))
        elif action == "/resume":
            record = await self.service.resume(group_id)
        else:
            record = await self.service.remove(group_id, _reason(body, "no reason given"))
        self.metrics.inc("relay_operator_actions_total", action=action[1:])
        return _json(200, group_view(record, self.service.address_of(record)))

    async def _stats(self) -> dict[str, object]:
        counts = await self.service.db.transact(groups.count_by_state)
        queue = await self.service.db.transact(joins.totals)
        traffic = await self.service.db.transact(events.totals)
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
            "db": {
                "commits": db.commits,
                "jobs": db.jobs,
                "largest_batch": db.largest_batch,
                "commit_seconds": round(db.commit_seconds, 6),
                "queue_full": db.queue_full,
            },
        }

    async def _backup(self, body: bytes) -> HttpResponse:
        raw = _body(body).get("path")
        if not isinstance(raw, str) or not raw:
            raise BadRequest('give {"path": "/absolute/path/of/a/new/file"}')
        target = Path(raw)
        if not target.is_absolute():
            raise BadRequest(f"{raw!r} is not an absolute path (the relay's working folder is not yours)")
        if target.exists() or target.is_symlink():
            raise BadRequest(f"{raw} already exists; the relay never overwrites a file")
        if not target.parent.is_dir():
            raise BadRequest(f"the folder {target.parent} does not exist")
        started = time.monotonic()
        try:
            size = await self.service.db.backup(target)
        except FileExistsError:
            raise BadRequest(f"{raw} already exists; the relay never overwrites a file") from None
        except OSError as exc:
            # Permission denied, read-only file system (systemd's ProtectSystem), disk full.
            raise BadRequest(f"cannot write {raw}: {exc.strerror or exc}") from None
        seconds = round(time.monotonic() - started, 3)
        self.metrics.inc("relay_operator_actions_total", action="backup")
        log.info("backup.written", path=str(target), bytes=size, seconds=seconds)
        return _json(200, {"status": "ok", "path": str(target), "bytes": size, "seconds": seconds})

    async def _retry(self, request_id: int) -> HttpResponse:
        def apply(conn: sqlite3.Connection) -> JoinRow | None:
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
        totals = await self.service.db.transact(joins.totals)
        self.metrics.set("relay_queue_held", totals.held)
        self.metrics.set("relay_queue_pending_approval", totals.pending)
        self.metrics.set("relay_queue_dead", totals.dead)
        self.metrics.set("relay_members", totals.members)
        traffic = await self.service.db.transact(events.totals)
        self.metrics.set("relay_events_stored", traffic.events)
        self.metrics.set("relay_events_stored_bytes", traffic.bytes)
        self.metrics.set("relay_equivocations", traffic.equivocations)
        self.metrics.set("relay_direct_inbox", traffic.inbox)
        counts = await self.service.db.transact(groups.count_by_state)
        for state in _STATES:
            self.metrics.set("relay_groups", counts.get(state, 0), state=state)
        self.metrics.set("relay_verified_profiles", len(self.service.profiles))
        self.metrics.set("relay_verified_profiles_bytes", self.service.profiles.bytes)
        stats = self.service.db.stats
        self.metrics.set("relay_db_commits_total", stats.commits)
        self.metrics.set("relay_db_jobs_total", stats.jobs)
        self.metrics.set("relay_db_commit_seconds_total", stats.commit_seconds)
        self.metrics.set("relay_bounds_hit_total", stats.queue_full, bound="db_pending_jobs")
