r"""Bulk writes to the console's own tables: COPY and unnest() on PostgreSQL, the ORM elsewhere.

A sync writes thousands of rows per batch. Django's bulk_create builds a model
instance per row and a multi-row INSERT, and its bulk_update a CASE with a
branch per row for every column; on PostgreSQL these helpers send plain tuples
instead (COPY, or one statement over unnest() of arrays). On other databases
(SQLite, in tests and small installs) they fall back to the ORM, so callers
never branch on the vendor.

JSON columns take either a Python value or `JsonText`, JSON text read from a
source and written unchanged (see `json_text`).
"""

import json
import re
from collections import defaultdict

import orjson
import psycopg
from django.db import connection
from django.db.models import JSONField

from checkpoints import decode


class JsonText(str):
    """JSON text read from the source (PostgreSQL's jsonb), written to the mirror unchanged.

    Parsing every checkpoint's metadata only to serialize it again cost time
    and exactness: orjson turns integers beyond 64 bits into floats and
    refuses numbers beyond a double, both of which jsonb keeps.
    """


def json_value(value):
    """The Python value of mirror JSON: JsonText parsed exactly, anything else as it is."""
    return json.loads(value) if isinstance(value, JsonText) else value


def json_text(value) -> str:
    r"""Text for a JSON column of the mirror.

    >>> json_text({"n": 1}), json_text({"n": 2**70}), json_text(JsonText('{"a": 1}'))
    ('{"n":1}', '{"n": 1180591620717411303424}', '{"a": 1}')
    >>> json_text({"n": 2**70, "x": float("inf")})
    '{"n": 1180591620717411303424, "x": {"__float__": "inf"}}'
    >>> print(json_text({"a\x00": "b\x00", "c": "\\u0000"}))
    {"a\ufffd":"b\ufffd","c":"\\u0000"}
    """
    if isinstance(value, JsonText):
        return str(value)
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # integers beyond 64 bits (SQLite's metadata, parsed exactly)
        try:
            text = json.dumps(value, allow_nan=False)
        except ValueError:  # NaN or infinity, which jsonb rejects: the display markers of decode.plain
            text = json.dumps(decode.plain(value, clip=False))
    if "\\u0000" in text:  # jsonb cannot hold NUL: shown as U+FFFD (an escaped backslash stays)
        text = _JSON_NUL.sub(r"\1\\ufffd", text)
    return text


_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def reserve_ids(model, count):
    """On PostgreSQL, `count` new primary keys from the table's sequence; None elsewhere.

    Known up front, they let the rows go in by COPY and spare reading them
    back to link other rows to them.
    """
    if connection.vendor != "postgresql":
        return None
    if not count:
        return []
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
                       [model._meta.db_table, count])
        return [r[0] for r in cursor.fetchall()]


def insert_rows(model, columns, rows):
    """Insert plain tuples: COPY on PostgreSQL, bulk_create elsewhere."""
    if not rows:
        return
    if connection.vendor != "postgresql":
        model.objects.bulk_create([model(**dict(zip(columns, row))) for row in rows], batch_size=1000)
        return
    # COPY is several times faster than multi-row INSERT, and skips building
    # model instances: it carries the initial sync of a large source.
    json_columns = [i for i, c in enumerate(columns) if isinstance(model._meta.get_field(c), JSONField)]
    table = model._meta.db_table
    with connection.cursor() as cursor:
        with cursor.connection.cursor() as raw, raw.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                if json_columns:
                    row = list(row)
                    for i in json_columns:
                        row[i] = json_text(row[i])
                copy.write_row(row)


def execute_bound(sql, params):
    """Run one statement on the console's PostgreSQL with its parameters bound by the server.

    Django's psycopg cursors inline every parameter into the query text, and
    psycopg quotes an array's items one by one with a regular expression: the
    arrays of an incremental sync (thousands of keys) cost tens of
    milliseconds that way. Here the placeholders are `%b`, sent in binary
    beside the query. Same connection and transaction as the ORM; errors
    arrive as Django's. Returns the rows, or None for a statement without.
    """
    with connection.cursor() as cursor, connection.wrap_database_errors:
        with psycopg.Cursor(cursor.connection) as raw:
            raw.execute(sql, params)
            return raw.fetchall() if raw.description is not None else None


def update_rows(model, fields, rows):
    """Update rows given as (pk, value per field) tuples.

    On PostgreSQL one UPDATE ... FROM unnest(arrays) per call: Django's
    bulk_update writes a CASE with a branch per row for every column, which
    took 0.7 s for the 160 threads of an incremental sync (and grows with
    the square of the rows on the server).
    """
    if not rows:
        return
    if connection.vendor != "postgresql":
        objs = [model(pk=row[0], **dict(zip(fields, row[1:]))) for row in rows]
        model.objects.bulk_update(objs, fields, batch_size=1000)
        return
    quote = connection.ops.quote_name
    columns = [model._meta.get_field(f) for f in fields]
    sets, arrays = [], []
    for field in columns:
        name = quote(field.column)
        if isinstance(field, JSONField):  # sent as text, stored as jsonb
            sets.append(f"{name} = v.{name}::jsonb")
            arrays.append("%b::text[]")
        else:
            sets.append(f"{name} = v.{name}")
            arrays.append(f"%b::{field.db_type(connection)}[]")
    values = [list(column) for column in zip(*rows)]
    for i, field in enumerate(columns, 1):
        if isinstance(field, JSONField):
            values[i] = [json_text(v) for v in values[i]]
    names = ", ".join(quote(f.column) for f in columns)
    table = quote(model._meta.db_table)
    execute_bound(
        f"UPDATE {table} AS t SET {', '.join(sets)} FROM unnest(%b::bigint[], {', '.join(arrays)})"
        f" AS v(id, {names}) WHERE t.id = v.id",
        values,
    )


def delete_pairs(model, columns, types, pairs):
    """Delete the rows whose two `columns` (of SQL `types`) hold one of `pairs`, e.g. (thread pk, tag key).

    On PostgreSQL one DELETE ... USING unnest(arrays); elsewhere one query per
    distinct first value.
    """
    if not pairs:
        return
    first, second = columns
    if connection.vendor == "postgresql":
        quote = connection.ops.quote_name
        a, b = (quote(model._meta.get_field(c).column) for c in columns)
        execute_bound(
            f"DELETE FROM {quote(model._meta.db_table)} AS t"
            f" USING unnest(%b::{types[0]}[], %b::{types[1]}[]) AS d(a, b)"
            f" WHERE t.{a} = d.a AND t.{b} = d.b",
            [[p[0] for p in pairs], [p[1] for p in pairs]],
        )
        return
    by_first = defaultdict(list)
    for x, y in pairs:
        by_first[x].append(y)
    for x, ys in by_first.items():
        model.objects.filter(**{first: x, f"{second}__in": ys})._raw_delete(model.objects.db)
