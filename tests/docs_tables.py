"""Reading the reference tables of docs/*.md, and rendering msgspec types the way they are written.

The documents mark each table a test compares with the code by an HTML comment on its own
line just before it (``<!-- struct: OwnerCert -->``, ``<!-- config: server -->``, ...): the
marker is invisible on a rendered page, and a table is found by its marker, never by its
place.  The type notation of docs/protocol.md (its "Conventions") is produced here from
``msgspec.inspect``; a document's cell must be exactly that rendering, after the named types
of the "Field types" table (``Key``, ``Timestamp``, ...) are expanded.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import msgspec
import msgspec.inspect as mi

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

MARKER = re.compile(r"^<!-- (?P<kind>[a-z-]+): (?P<name>[^>]*?) -->\s*$")


@dataclass(frozen=True)
class Table:
    """A marked table: its marker's kind and name, the text between marker and table
    (the caption), its header cells and its rows of cells (backticks kept)."""

    kind: str
    name: str
    caption: str
    header: list[str]
    rows: list[list[str]]
    line: int


def _cells(line: str) -> list[str]:
    # A cell never holds a "|" of its own in these tables (the type notation avoids it).
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def marked_tables(path: Path) -> list[Table]:
    """Every marked table of ``path``, in order. A marker must be followed, after an optional
    caption (text lines), by a table, or by a caption alone for a struct with no field."""
    lines = path.read_text().splitlines()
    found: list[Table] = []
    i = 0
    while i < len(lines):
        match = MARKER.match(lines[i])
        if match is None:
            i += 1
            continue
        start = i
        i += 1
        caption: list[str] = []
        while i < len(lines) and not lines[i].startswith("|") and not MARKER.match(lines[i]):
            if lines[i].startswith("#"):
                break
            caption.append(lines[i])
            i += 1
        header: list[str] = []
        rows: list[list[str]] = []
        if i < len(lines) and lines[i].startswith("|"):
            header = _cells(lines[i])
            assert i + 1 < len(lines) and set(lines[i + 1].replace("|", "").split()) <= {"---"}, (
                f"{path.name}:{i + 2}: a table's second line must be its | --- | separator"
            )
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                row = _cells(lines[i])
                assert len(row) == len(header), f"{path.name}:{i + 1}: {len(row)} cells, not {len(header)}"
                rows.append(row)
                i += 1
        found.append(Table(match["kind"], match["name"], " ".join(caption).strip(), header, rows, start + 1))
    return found


def unquote(cell: str) -> str:
    """A cell that is one code span, without its backticks (other cells as they are)."""
    if len(cell) >= 2 and cell[0] == cell[-1] == "`" and "`" not in cell[1:-1]:
        return cell[1:-1]
    return cell


# --- the type notation -------------------------------------------------------------------


def number(value: float) -> str:
    """A bound as written: ``2^53`` for large powers of two, else the decimal integer."""
    if isinstance(value, float) and not value.is_integer():
        return repr(value)
    n = int(value)
    if n >= 2**20 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    return str(n)


def _length(name: str, low: int | None, high: int | None, exact_brackets: bool) -> str:
    if low is not None and low == high and exact_brackets:
        return f"{name}[{low}]"
    if low is None and high is None:
        return name
    if low is None or low == 0:
        return f"{name}(≤{number(high)})" if high is not None else name
    if high is None:
        return f"{name}(≥{number(low)})"
    return f"{name}({number(low)}..{number(high)})"


def _range(name: str, low: float | None, high: float | None) -> str:
    if low is None and high is None:
        return name
    if high is None:
        return f"{name} ≥{number(low)}"  # type: ignore[arg-type]
    if low is None:
        return f"{name} ≤{number(high)}"
    return f"{name} {number(low)}..={number(high)}"


def render(t: mi.Type) -> str:
    """A msgspec type in the notation of docs/protocol.md."""
    if isinstance(t, mi.BytesType):
        return _length("bin", t.min_length, t.max_length, exact_brackets=True)
    if isinstance(t, mi.StrType):
        assert t.pattern is None, "no pattern in the notation"
        return _length("str", t.min_length, t.max_length, exact_brackets=False)
    if isinstance(t, mi.IntType):
        assert t.gt is None and t.lt is None and t.multiple_of is None
        return _range("int", t.ge, t.le)
    if isinstance(t, mi.FloatType):
        assert t.gt is None and t.lt is None and t.multiple_of is None
        return _range("float", t.ge, t.le)
    if isinstance(t, mi.BoolType):
        return "bool"
    if isinstance(t, mi.NoneType):
        return "nil"
    if isinstance(t, mi.StructType):
        return t.cls.__name__
    if isinstance(t, mi.ListType):
        inner = f"list of {render(t.item_type)}"
        if t.min_length is None and t.max_length is None:
            return inner
        return f"{inner} ({_length('', t.min_length, t.max_length, exact_brackets=False)[1:-1]})"
    if isinstance(t, mi.DictType):
        assert t.min_length is None and t.max_length is None
        return f"map {render(t.key_type)} → {render(t.value_type)}"
    if isinstance(t, mi.UnionType):
        others = [x for x in t.types if not isinstance(x, mi.NoneType)]
        assert len(others) == 1 and len(t.types) == 2, f"only `X or nil` unions are written: {t}"
        return f"{render(others[0])} or nil"
    raise AssertionError(f"no notation for {t!r}")


def render_default(field: mi.Field) -> str:
    """The default column: ``—`` for a required field, else the value as MessagePack reads."""
    if field.required:
        return "—"
    value = field.default
    if field.default_factory is not msgspec.NODEFAULT:
        value = field.default_factory()
    if value is None:
        return "`nil`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, bytes):
        if value and value == bytes(len(value)):
            return f"{len(value)} zero bytes"
        assert value == b"", value
        return "empty bin"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, float):
        assert math.isfinite(value)
        return f"`{number(value)}`"
    if isinstance(value, int):
        return f"`{number(value)}`"
    raise AssertionError(f"no notation for the default {value!r}")


def expand(cell: str, aliases: dict[str, str]) -> str:
    """A type cell with every named type replaced by its notation (the alias table)."""
    if not aliases:
        return cell
    pattern = re.compile(r"\b(" + "|".join(sorted(map(re.escape, aliases), key=len, reverse=True)) + r")\b")
    return pattern.sub(lambda m: aliases[m.group(1)], cell)


# --- configuration options (docs/operations.md) ---------------------------------------------


def render_option(t: mi.Type) -> str:
    """The values an option takes, as docs/operations.md's configuration tables write them."""
    if isinstance(t, mi.StrType):
        assert t.min_length is None and t.max_length is None and t.pattern is None
        return "text"
    if isinstance(t, mi.BoolType):
        return "`true` or `false`"
    if isinstance(t, mi.LiteralType):
        return "one of " + ", ".join(f'`"{value}"`' for value in t.values)
    if isinstance(t, mi.ListType):
        assert t.min_length is None and t.max_length is None
        inner = render_option(t.item_type)
        return "list of text" if inner == "text" else f"list, each {inner}"
    if isinstance(t, mi.IntType | mi.FloatType):
        assert t.lt is None and t.multiple_of is None
        name = "int" if isinstance(t, mi.IntType) else "number"
        if t.gt is not None:
            assert t.ge is None and t.le is None
            return f"{name} >{number(t.gt)}"
        return _range(name, t.ge, t.le)
    raise AssertionError(f"no notation for the option type {t!r}")


def toml_value(cell: str) -> object:
    """A default cell (a TOML value in backticks) as Python reads it."""
    import tomllib

    return tomllib.loads(f"value = {unquote(cell)}")["value"]
