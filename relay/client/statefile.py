"""Local state files of owners and members: JSON, written atomically with mode 0600.

They hold secret keys, so they are never world-readable, never half-written
(a temporary file, fsync, then rename), and never sent anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from relay.client.errors import RelayError


def save_private(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def load_state(path: Path, who: str, create_with: str) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise RelayError(f"no {who} state at {path} (run '{create_with}' first)") from None
    except ValueError as exc:
        raise RelayError(f"{path} is not a {who} state file: {exc}") from None
    if not isinstance(raw, dict):
        raise RelayError(f"{path} is not a {who} state file")
    return raw
