"""The operator port (loopback by default): health, readiness, metrics and the admin API.

Plain HTTP/1.1 with JSON bodies, served through the same h11 glue as the public
port.  It exposes what an operator needs to run the relay and nothing a client
could use; it must never be bound to a public interface without a firewall.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from urllib.parse import parse_qsl

import structlog
import trio

from relay.protocol.encoding import b64e
from relay.protocol.errors import ProtocolError
from relay.server.http import HttpRequest, HttpResponse, serve_http_connection
from relay.server.metrics import Metrics
from relay.server.service import GroupService
from relay.store import groups, joins
from relay.store.groups import GroupRecord
from relay.store.joins import JoinRow

log = structlog.get_logger("relay.admin")

_GROUP = re.compile(r"^/admin/groups/(\d+)(/approve|/reject)?$")
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


class AdminEndpoint:
    def __init__(
        self, service: GroupService, metrics: Metrics, ready: Callable[[], bool], head_timeout: float
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.ready = ready
        self.head_timeout = head_timeout

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            await serve_http_connection(
                stream, on_http=self._http, on_websocket=None, head_timeout=self.head_timeout
            )
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

    async def _route(self, method: str, path: str, query: str, body: bytes) -> HttpResponse:
        if path == "/healthz":
            return _json(200, {"status": "ok"})
        if path == "/readyz":
            ready = self.ready()
            return _json(200 if ready else 503, {"ready": ready})
        if path == "/metrics":
            await self._refresh_gauges()
            return HttpResponse(200, self.metrics.render().encode(), "text/plain; version=0.0.4")
        if path == "/admin/groups" and method == "GET":
            params = dict(parse_qsl(query))
            state = params.get("state") or None
            try:
                after = int(params.get("after") or 0)
                limit = min(max(int(params.get("limit") or 100), 1), 1000)
            except ValueError:
                return _json(400, {"error": "bad_request", "reason": "after and limit must be integers"})
            records = await self.service.db.transact(
                lambda conn: groups.listing(conn, state=state, limit=limit, after=after)
            )
            return _json(200, {"groups": [group_view(r, self.service.address_of(r)) for r in records]})
        if path == "/admin/held" and method == "GET":
            params = dict(parse_qsl(query))
            statuses = ("dead",) if params.get("status") == "dead" else ("held", "dead")
            try:
                after = int(params.get("after") or 0)
                limit = min(max(int(params.get("limit") or 100), 1), 1000)
            except ValueError:
                return _json(400, {"error": "bad_request", "reason": "after and limit must be integers"})
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
        if action == "/approve" and method == "POST":
            record = await self.service.approve(group_id)
            return _json(200, group_view(record, self.service.address_of(record)))
        if action == "/reject" and method == "POST":
            try:
                reason = str(json.loads(body or b"{}").get("reason") or "no reason given")[:500]
            except (ValueError, AttributeError):
                return _json(400, {"error": "bad_request", "reason": 'body must be JSON {"reason": ...}'})
            record = await self.service.reject(group_id, reason)
            return _json(200, group_view(record, self.service.address_of(record)))
        return _json(405, {"error": "method_not_allowed"})

    async def _retry(self, request_id: int) -> HttpResponse:
        def apply(conn: sqlite3.Connection) -> JoinRow | None:
            if not joins.retry(conn, request_id):
                return None
            return joins.by_id(conn, request_id)

        row = await self.service.db.transact(apply)
        if row is None:
            return _json(404, {"error": "not_found", "reason": f"no dead-lettered request {request_id}"})
        log.info("queue.retried", request=request_id, group=row.group_id)
        self.service.group_changed(row.group_id)
        return _json(200, held_view(row))

    async def _refresh_gauges(self) -> None:
        totals = await self.service.db.transact(joins.totals)
        self.metrics.set("relay_queue_held", totals.held)
        self.metrics.set("relay_queue_pending_approval", totals.pending)
        self.metrics.set("relay_queue_dead", totals.dead)
        self.metrics.set("relay_members", totals.members)
        counts = await self.service.db.transact(groups.count_by_state)
        for state in ("invited", "accepted", "active", "rejected", "suspended", "removed"):
            self.metrics.set("relay_groups", counts.get(state, 0), state=state)
        stats = self.service.db.stats
        self.metrics.set("relay_db_commits_total", stats.commits)
        self.metrics.set("relay_db_jobs_total", stats.jobs)
        self.metrics.set("relay_db_commit_seconds_total", stats.commit_seconds)
        self.metrics.set("relay_bounds_hit_total", stats.queue_full, bound="db_pending_jobs")
