"""The operator's client for the admin API on the operator port (httpx, synchronous).

Finds the port from ``DATA/run.json`` (written by a running daemon) or takes
``HOST:PORT`` directly, and the access token from ``DATA/admin.token``, a token
file, or ``RELAY_ADMIN_TOKEN``; every request carries it as a bearer token.
Errors become :class:`relay.client.errors.RelayError` (:func:`relay.client.errors.translate`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from relay.client.errors import (
    RelayError,
    RelayProtocolError,
    RelayRefused,
    RelayUnreachable,
    file_error,
    translated,
)
from relay.client.progress import waiting

# The file the relay keeps its operator token in (relay.server.admintoken.TOKEN_FILE).
TOKEN_FILE = "admin.token"
TOKEN_VARIABLE = "RELAY_ADMIN_TOKEN"


def host_port(text: str) -> str:
    """``HOST:PORT`` (``[v6]:PORT`` for an IPv6 address) as given, checked; RelayError if not."""
    host, sep, port = text.rpartition(":")
    if (
        not sep
        or not host
        or not port.isdigit()
        or not 0 < int(port) <= 65535
        or any(c in host for c in "/@ #?")
    ):
        raise RelayError(f"{text!r} is not HOST:PORT (for example 127.0.0.1:7301)", code="usage")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise RelayError(f"{text!r}: write an IPv6 address in brackets, [::1]:7301", code="usage")
    return text


def admin_address(data_dir: Path | None, admin: str | None) -> str:
    """The operator port's ``HOST:PORT``: ``admin`` if given, else the one the relay running
    with ``data_dir`` wrote to its ``run.json``."""
    if admin:
        return host_port(admin)
    if data_dir is None:
        raise RelayError("give --data DIR (of a running relay) or --admin HOST:PORT", code="usage")
    run = data_dir / "run.json"
    try:
        info = json.loads(run.read_text())
        address, pid = str(info["admin_listen"]), int(info["pid"])
    except FileNotFoundError:
        why = "no relay is running there" if data_dir.is_dir() else "there is no such folder"
        raise RelayUnreachable(
            f"{why} ({run} is missing): start it with 'relay serve --data {data_dir}'"
        ) from None
    except OSError as exc:
        raise file_error(exc, run, doing="read") from None
    except (ValueError, KeyError, TypeError):
        raise RelayError(
            f"{run} is damaged; restart the relay (it writes the file again)", code="bad_file"
        ) from None
    if not process_alive(pid):
        raise RelayUnreachable(
            f"the relay recorded in {run} is not running any more: "
            f"start it with 'relay serve --data {data_dir}'"
        )
    return host_port(address)


def process_alive(pid: int) -> bool:
    """Whether the process ``pid`` (a relay that wrote ``run.json``) still runs."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it runs, as another user
    except OverflowError:
        return False
    return True


def admin_token(
    data_dir: Path | None, token_file: Path | None, environ: Mapping[str, str] | None = None
) -> str:
    """The operator token: ``token_file`` if given, else ``DATA/admin.token``, else the
    ``RELAY_ADMIN_TOKEN`` variable; RelayError with a one-line reason when there is none."""
    env = os.environ if environ is None else environ
    path = token_file or (data_dir / TOKEN_FILE if data_dir is not None else None)
    if path is None:
        token = env.get(TOKEN_VARIABLE, "").strip()
        if not token:
            raise RelayError(
                f"no operator token: give --data DIR (reads DIR/{TOKEN_FILE}), --token-file PATH "
                f"or {TOKEN_VARIABLE}",
                code="no_token",
            )
        return token
    try:
        token = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        hint = " (start the relay or run 'relay init' once)" if token_file is None else ""
        raise RelayError(f"no operator token: {path} does not exist{hint}", code="no_token") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise RelayError(
            f"cannot read the operator token {path}: {reason} (run as the relay's user)", code="no_token"
        ) from None
    if not token:
        raise RelayError(f"no operator token: {path} is empty", code="no_token")
    return token


class AdminClient:
    def __init__(self, address: str, token: str, *, timeout: float = 15.0) -> None:
        self.where = f"the operator port at {address}"
        self.timeout = timeout
        with translated(where=self.where):
            self._client = httpx.Client(
                base_url=f"http://{address}",
                timeout=timeout,
                headers={"authorization": f"Bearer {token}"},
                # The operator port is local: an HTTP(S)_PROXY of the shell must not see the token.
                trust_env=False,
            )

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def _call(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> Any:
        bound = self.timeout if timeout is None else timeout
        with waiting(f"an answer from {self.where}"), translated(where=self.where, timeout=bound):
            response = self._client.request(method, path, timeout=bound, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            if isinstance(body, dict) and isinstance(body.get("reason"), str):
                raise RelayRefused(
                    body["reason"], code=str(body.get("error") or f"http_{response.status_code}")
                )
            raise RelayRefused(
                f"{self.where} answered HTTP {response.status_code} {response.reason_phrase}".rstrip(),
                code=f"http_{response.status_code}",
            )
        if not isinstance(body, dict):
            raise RelayProtocolError(
                f"{self.where} answered HTTP {response.status_code} without a JSON object: is that the "
                "operator port (admin_listen), not the public one?"
            )
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
        return dict(self._call("POST", f"/admin/groups/{group_id}/approve", json={}))

    def reject(self, group_id: int, reason: str) -> dict[str, Any]:
        return dict(self._call("POST", f"/admin/groups/{group_id}/reject", json={"reason": reason}))

    def held(self, *, dead_only: bool = False, after: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Join requests still queued (held or dead-lettered), in arrival order, one page."""
        params: dict[str, str | int] = {"after": after, "limit": limit}
        if dead_only:
            params["status"] = "dead"
        return list(self._call("GET", "/admin/held", params=params)["requests"])

    def retry(self, request_id: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/admin/held/{request_id}/retry", json={}))

    def suspend(self, group_id: int, reason: str | None = None) -> dict[str, Any]:
        body = {"reason": reason} if reason else {}
        return dict(self._call("POST", f"/admin/groups/{group_id}/suspend", json=body))

    def resume(self, group_id: int) -> dict[str, Any]:
        return dict(self._call("POST", f"/admin/groups/{group_id}/resume", json={}))

    def remove(self, group_id: int, reason: str | None = None) -> dict[str, Any]:
        body = {"reason": reason} if reason else {}
        return dict(self._call("POST", f"/admin/groups/{group_id}/remove", json=body))

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/admin/stats"))

    def backup(self, path: str, *, timeout: float = 3600.0) -> dict[str, Any]:
        """Ask the relay to write an online backup to ``path``: a file name (written into the
        relay's backup folder) or an absolute path inside that folder, on the relay's machine.
        A large database takes a while: the answer is waited for up to ``timeout`` seconds."""
        return dict(self._call("POST", "/admin/backup", json={"path": path}, timeout=timeout))
