"""Configuration from the environment: ``RELAY_<SECTION>_<KEY>`` variables, as raw values.

``RELAY_POLICY_MAX_GROUPS=500`` sets ``policy.max_groups``.  Each text is turned
into the value the option's type expects (numbers, ``true``/``false``, lists as
``a,b`` or a TOML array ``["a", "b"]``); range and type checks are left to the
same struct validation the file goes through (``relay/server/config.py``), so
the messages are the same.  A ``RELAY_*`` variable that looks like an option
but names none (``RELAY_SERVER_LISTN``) is an error naming it.

Pure: reads only the mapping it is given, never ``os.environ`` itself.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from typing import Any

import msgspec

PREFIX = "RELAY_"


def variable(section: str, key: str) -> str:
    """The environment variable for ``section.key``."""
    return f"{PREFIX}{section}_{key}".upper()


def read_env(
    environ: Mapping[str, str], schema: type[msgspec.Struct]
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], str], list[str]]:
    """The overrides found in ``environ`` for the sections of ``schema``.

    Returns ``(values, sources, errors)``: ``values[section][key]`` (not yet validated),
    ``sources[(section, key)]`` the variable each came from, and the unknown variables.
    """
    defaults = schema()
    sections: dict[str, msgspec.Struct] = {name: getattr(defaults, name) for name in schema.__struct_fields__}
    known = {
        variable(section, key): (section, key)
        for section, struct in sections.items()
        for key in struct.__struct_fields__
    }
    values: dict[str, dict[str, Any]] = {}
    sources: dict[tuple[str, str], str] = {}
    errors: list[str] = []
    for name in sorted(environ):
        if not name.upper().startswith(PREFIX):
            continue
        target = known.get(name.upper())
        if target is None:
            # Only what looks like an option is an error: other RELAY_* names may be anyone's.
            in_section = any(name.upper().startswith(variable(s, "")) for s in sections)
            close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.8)
            if in_section or close:
                hint = f" (did you mean {close[0]}?)" if close else ""
                errors.append(f"{name}: no such option{hint}")
            continue
        section, key = target
        values.setdefault(section, {})[key] = _typed(environ[name], getattr(sections[section], key))
        sources[target] = name
    return values, sources, errors


def _typed(text: str, default: object) -> object:
    """``text`` as the type of the option's default; left as text when it does not parse,
    so that validation reports the wrong type with the usual message."""
    stripped = text.strip()
    if isinstance(default, bool):
        lowered = stripped.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        return text
    if isinstance(default, int | float):
        try:
            return int(stripped) if isinstance(default, int) else float(stripped)
        except ValueError:
            return text
    if isinstance(default, list):
        if stripped.startswith("["):
            try:
                value: object = tomllib.loads(f"v = {stripped}")["v"]
            except tomllib.TOMLDecodeError:
                return text  # not a list: validation says so
            return value
        return [item.strip() for item in stripped.split(",") if item.strip()]
    return text
