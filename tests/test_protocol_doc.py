"""docs/protocol.md against the code: every wire struct's field table, and the error table.

A field added to a struct of ``relay/protocol/messages.py`` without a row, a row in another
order, a type or a default that differs, a struct with no table, an ``ErrorCode`` with no row
or a row saying nothing: each fails here.  The tables are found by their markers (see
``docs_tables.py``); the notation is the one the document's "Conventions" describe.
"""

from __future__ import annotations

import typing

import msgspec
import msgspec.inspect as mi
import pytest
from docs_tables import DOCS, Table, expand, marked_tables, render, render_default, unquote

from relay.protocol import messages
from relay.protocol.errors import ErrorCode

PROTOCOL = DOCS / "protocol.md"
TABLES = marked_tables(PROTOCOL)
STRUCTS: dict[str, type[msgspec.Struct]] = {
    name: value
    for name, value in vars(messages).items()
    if isinstance(value, type) and issubclass(value, msgspec.Struct) and value.__module__ == messages.__name__
}
# The named types of messages.py (``Key = Annotated[bytes, ...]``), by name.
NAMED = {
    name: value for name, value in vars(messages).items() if typing.get_origin(value) is typing.Annotated
}


def tables(kind: str) -> dict[str, Table]:
    found: dict[str, Table] = {}
    for table in TABLES:
        if table.kind == kind:
            assert table.name not in found, f"protocol.md:{table.line}: a second table for {table.name}"
            found[table.name] = table
    return found


def named_types() -> dict[str, str]:
    """Name -> notation, from the document's table of named types."""
    [table] = [t for t in TABLES if t.kind == "types"]
    assert table.header == ["name", "type", "meaning"]
    return {unquote(row[0]): row[1] for row in table.rows}


def test_the_named_types_are_those_of_the_code() -> None:
    documented = named_types()
    assert sorted(documented) == sorted(NAMED), "the named types differ from messages.py"
    for name, value in NAMED.items():
        assert documented[name] == render(mi.type_info(value)), name


def test_every_wire_struct_has_exactly_one_table() -> None:
    documented = tables("struct")
    assert len(STRUCTS) >= 40  # the scan really sees messages.py
    missing = sorted(set(STRUCTS) - set(documented))
    assert not missing, f"add a field table to docs/protocol.md for: {missing}"
    unknown = sorted(set(documented) - set(STRUCTS))
    assert not unknown, f"tables for structs messages.py does not have: {unknown}"


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_a_structs_table_matches_its_definition(name: str) -> None:
    struct = STRUCTS[name]
    table = tables("struct")[name]
    info = mi.type_info(struct)
    assert isinstance(info, mi.StructType)
    where = f"protocol.md:{table.line} ({name})"
    if info.tag is not None:
        assert f"`{info.tag}` (`{name}`)" in table.caption, f"{where}: the caption names the frame's type"
    if not info.fields:
        assert not table.rows and "No field" in table.caption, where
        return
    assert table.header == ["field", "type", "default", "meaning"], where
    documented = [unquote(row[0]) for row in table.rows]
    assert documented == [f.encode_name for f in info.fields], f"{where}: the fields, in encoding order"
    aliases = named_types()
    for row, field in zip(table.rows, info.fields, strict=True):
        cell = row[1]
        assert expand(cell, aliases) == render(field.type), f"{where}: the type of `{field.name}`"
        # A field the code declares with a named type is documented with that name, and the
        # other way round: Key and Digest are both bin[32], but they are not the same thing.
        annotation = struct.__annotations__[field.name]
        if annotation in NAMED or cell in NAMED:
            assert cell == annotation, f"{where}: `{field.name}` is a {annotation} in the code"
        assert row[2] == render_default(field), f"{where}: the default of `{field.name}`"
        assert row[3].strip(" —"), f"{where}: say what `{field.name}` means"


def test_no_table_marker_in_the_generated_vectors() -> None:
    """tests/make_vectors.py rewrites that section: a table there would be lost."""
    begin = (
        PROTOCOL.read_text()
        .splitlines()
        .index(
            next(
                line
                for line in PROTOCOL.read_text().splitlines()
                if line.startswith("<!-- BEGIN TEST VECTORS")
            )
        )
    )
    assert all(table.line < begin for table in TABLES)


# --- the error table ----------------------------------------------------------------------


def error_rows() -> list[tuple[str, str]]:
    [table] = [t for t in TABLES if t.kind == "errors"]
    assert table.header == ["code", "sent when"]
    return [(unquote(code), cause) for code, cause in table.rows]


def test_every_error_code_has_one_row_in_the_enums_order() -> None:
    codes = [code for code, _ in error_rows()]
    assert codes == [code.value for code in ErrorCode], "the error table differs from ErrorCode"


@pytest.mark.parametrize("code", [code.value for code in ErrorCode])
def test_each_error_row_says_what_causes_it(code: str) -> None:
    cause = dict(error_rows())[code]
    # a cause names the frame, field, option or situation; a bare restatement of the code does not
    assert len(cause) >= 40, f"{code}: {cause!r}"
