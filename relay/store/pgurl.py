"""PostgreSQL connection strings as the operator gives them, shown without their password.

The URL is often in a config file or the environment, and it reaches logs, errors and
``relay config check``: the password must reach none of them.  Pure text work, so that the
configuration can use it without loading the database driver.

Must not: connect, or return anything that still holds a password.
"""

from __future__ import annotations

import re
import urllib.parse


def is_postgres_url(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme in ("postgresql", "postgres") and bool(parts.path.strip("/") or parts.hostname)


def redacted(url: str) -> str:
    """``url`` (a ``postgresql://`` URL or a ``key=value`` conninfo) without its password;
    a URL without one comes back unchanged."""
    if "://" not in url:
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)
    parts = urllib.parse.urlsplit(url)
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    if parts.password is None and all(key != "password" for key, _ in pairs):
        return url
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    query = "&".join(f"{key}=***" if key == "password" else f"{key}={value}" for key, value in pairs)
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
