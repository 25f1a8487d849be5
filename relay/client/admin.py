"""The operator's client for the admin API on the operator port (httpx, synchronous).

Finds the port from ``DATA/run.json`` (written by a running daemon) or takes
``HOST:PORT`` directly.  Errors become :class:`relay.client.errors.RelayError`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from relay.client.errors import RelayError, RelayRefused, RelayUnreachable


def admin_address(data_dir: Path | None, admin: str | None) -> str:
    if admin:
        return admin
    if data_dir is None:
        raise RelayError("give --data DIR (of a running relay) or --admin HOST:PORT")
    try:
        return str(json.loads((data_dir / "run.json").read_text())["admin_listen"])
    except (OSError, ValueError, KeyError):
        raise RelayUnreachable(
            f"no running relay recorded in {data_dir} (is 'relay serve' running?)"
        ) from None


class AdminClient:
    def __init__(self, address: str, *, timeout: float = 10.0) -> None:
        self._client = httpx.Client(base_url=f"http://{address}", timeout=timeout)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise RelayUnreachable(f"operator port unreachable: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            raise RelayError(f"operator port answered {response.status_code} without JSON") from None
        if response.status_code >= 400:
            raise RelayRefused(str(body.get("reason", body)), code=str(body.get("error", "error")))
        return body

    def groups(self, state: str | None = None, *, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """One page of groups in id order: those with an id above ``after``, at most ``limit``."""
        params: dict[str, str | int] = {"after": after, "limit": limit}
        if state:
            params["state"] = state
        return list(self._call("GET", "/admin/groups", params=params)["groups"])

    def group(self, group_id: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/admin/groups/{group_id}"))

    def approve(self, group_id: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/admin/groups/{group_id}/approve"))

    def reject(self, group_id: int, reason: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/admin/groups/{group_id}/reject", json={"reason": reason}))

    def held(self, *, dead_only: bool = False, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Join requests still queued (held or dead-lettered), in arrival order, one page."""
        params: dict[str, str | int] = {"after": after, "limit": limit}
        if dead_only:
            params["status"] = "dead"
        return list(self._call("GET", "/admin/held", params=params)["requests"])

    def retry(self, request_id: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/admin/held/{request_id}/retry"))

    def suspend(self, group_id: int, reason: str | None = None) -> dict[str, Any]:
        body = {"reason": reason} if reason else {}
        return dict(self._call("POST", f"/admin/groups/{group_id}/suspend", json=body))

    def resume(self, group_id: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/admin/groups/{group_id}/resume"))

    def remove(self, group_id: int, reason: str | None = None) -> dict[str, Any]:
        body = {"reason": reason} if reason else {}
        return dict(self._call("POST", f"/admin/groups/{group_id}/remove", json=body))

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/admin/stats"))

    def backup(self, path: str, *, timeout: float = 3600.0) -> dict[str, Any]:
        """Ask the relay to write an online backup to ``path``, absolute, on the relay's machine."""
        return dict(self._call("POST", "/admin/backup", json={"path": path}, timeout=timeout))
