"""Bulk writes that cost a few statements per batch, whatever its size.

Django's ``bulk_create`` and ``bulk_update`` send every value as a query parameter; psycopg
turns a query with tens of thousands of parameters into one long literal string in Python
(client-side binding), which costs seconds for a few thousand rows. Scans and batched
transitions write tens of thousands of rows, so large batches go through PostgreSQL
``COPY`` here instead:

* :func:`copy_rows` — ``COPY table (columns) FROM STDIN`` of ready rows (one statement);
* :func:`insert_models` — model instances, primary keys reserved from the table's sequence
  first (one ``SELECT nextval … FROM generate_series``), then one ``COPY``; the instances
  get their ``pk`` as with ``bulk_create``; small batches use ``bulk_create``;
* :func:`update_rows` / :func:`bulk_update_values` — ``UPDATE … FROM`` either a typed
  ``VALUES`` list (small batches, one statement) or a temporary table filled by ``COPY``
  (large batches: create, copy, update, drop).

All of it runs on Django's default connection, inside the caller's transaction (a batch
that is not in one gets its own), so it commits or rolls back with the rest.
"""
from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from django.db import connection, models, transaction

#: From this many rows on, writes use COPY (below it, one ordinary statement is cheaper).
COPY_THRESHOLD = 100

_temp_names = itertools.count(1)

# Field types whose Python value (of the expected type) is already what the database takes.
_PLAIN_FIELDS = (
    models.CharField, models.TextField, models.IntegerField, models.BooleanField, models.FloatField,
    models.AutoField, models.BigAutoField,
)


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def _preparer(field: models.Field) -> Callable[[Any], Any] | None:
    """How to turn the field's attribute value into a database value; None means as is."""
    if isinstance(field, models.ForeignKey):
        return None  # the attname value (the id) is stored
    if isinstance(field, models.DateTimeField):
        def prep_datetime(value: Any, field: models.Field = field) -> Any:
            if value is None:
                return value
            if isinstance(value, datetime) and value.tzinfo is not None:
                return value.isoformat()  # the same timestamptz; psycopg dumps a str several times faster
            return field.get_db_prep_save(value, connection)  # naive / string: Django's rules
        return prep_datetime
    if isinstance(field, _PLAIN_FIELDS):
        def prep_plain(value: Any, field: models.Field = field) -> Any:
            if value is None or isinstance(value, (str, int, float, bool)):
                return value
            return field.get_db_prep_save(value, connection)
        return prep_plain

    def prep(value: Any, field: models.Field = field) -> Any:
        return field.get_db_prep_save(value, connection)
    return prep


_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})


def row_maker(fields: Sequence[models.Field]) -> Callable[[models.Model], list]:
    """A function giving the database values of ``fields`` of an instance (as Django would save them).

    The attributes are read with one ``attrgetter`` call; a plain field's value of a plain
    type (most of them) is taken as is without a function call, date-times are written as
    ISO text, anything else goes through the field's own preparation.
    """
    preparers = [_preparer(f) for f in fields]
    get = operator.attrgetter(*[f.attname for f in fields])
    single = len(fields) == 1
    plain = [(i, prep) for i, (f, prep) in enumerate(zip(fields, preparers))
             if prep is not None and isinstance(f, _PLAIN_FIELDS)]
    other = [(i, prep) for i, (f, prep) in enumerate(zip(fields, preparers))
             if prep is not None and not isinstance(f, _PLAIN_FIELDS)]
    plain_types = _PLAIN_TYPES

    def make(obj: models.Model) -> list:
        values = [get(obj)] if single else list(get(obj))
        for i, prep in plain:
            if values[i].__class__ not in plain_types:
                values[i] = prep(values[i])
        for i, prep in other:
            values[i] = prep(values[i])
        return values
    return make


def copy_rows(table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> int:
    """``COPY table (columns) FROM STDIN`` of ``rows`` (tuples of database values); returns the count.

    Values are adapted by psycopg as for query parameters: ``str`` into a ``jsonb`` column
    must be JSON text, a ``list`` becomes an array, ``None`` is NULL.
    """
    names = ", ".join(_quote(c) for c in columns)
    count = 0
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY {_quote(table)} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
    return count


def reserve_ids(model: type[models.Model], count: int) -> list[int]:
    """``count`` new primary keys from the table's sequence (ascending), in one statement."""
    if count <= 0:
        return []
    meta = model._meta
    with connection.cursor() as cursor:
        cursor.execute(  # the sequence is looked up once, not per row
            "SELECT nextval(q.seq) FROM (SELECT pg_get_serial_sequence(%s, %s)::regclass AS seq) AS q, "
            "generate_series(1, %s)",
            [meta.db_table, meta.pk.column, count],
        )
        return sorted(row[0] for row in cursor.fetchall())


def insert_models(objs: Sequence[models.Model], *, threshold: int = COPY_THRESHOLD, batch_size: int = 1000) -> list:
    """Insert new instances of one model and set their ``pk``; ``bulk_create`` below ``threshold``."""
    objs = list(objs)
    if not objs:
        return objs
    model = type(objs[0])
    if len(objs) < threshold:
        return model.objects.bulk_create(objs, batch_size=batch_size)
    meta = model._meta
    fields = list(meta.concrete_fields)
    automatic = [f for f in fields if getattr(f, "auto_now", False) or getattr(f, "auto_now_add", False)]
    for obj in objs:
        obj._prepare_related_fields_for_save(operation_name="bulk_create")  # as bulk_create does
        for f in automatic:
            setattr(obj, f.attname, f.pre_save(obj, add=True))
    with transaction.atomic(savepoint=False):
        without_pk = [obj for obj in objs if obj.pk is None]
        for obj, pk in zip(without_pk, reserve_ids(model, len(without_pk))):
            obj.pk = pk
        copy_rows(meta.db_table, [f.column for f in fields], map(row_maker(fields), objs))
    for obj in objs:
        obj._state.adding = False
        obj._state.db = connection.alias
    return objs


def update_rows(model: type[models.Model], fields: Sequence[str], rows: Sequence[Sequence[Any]], *,
                threshold: int = COPY_THRESHOLD, batch_size: int = 2000) -> int:
    """Set ``fields`` of the rows matched by primary key; ``rows`` are ``(pk, value, …)`` database values.

    Returns the number of rows updated.
    """
    if not rows:
        return 0
    meta = model._meta
    columns = [meta.get_field(name) for name in fields]
    pk = meta.pk
    table, pk_column = _quote(meta.db_table), _quote(pk.column)
    names = [_quote(f.column) for f in columns]
    assignments = ", ".join(f"{name} = v.{name}" for name in names)
    written = 0
    if len(rows) >= threshold:
        temp = _quote(f"l2_bulk_{meta.db_table}_{next(_temp_names)}")
        with transaction.atomic(savepoint=False), connection.cursor() as cursor:
            cursor.execute(
                f"CREATE TEMPORARY TABLE {temp} ON COMMIT DROP AS SELECT {pk_column}, {', '.join(names)} "
                f"FROM {table} WITH NO DATA"
            )
            with cursor.cursor.copy(f"COPY {temp} ({pk_column}, {', '.join(names)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
            cursor.execute(f"UPDATE {table} AS t SET {assignments} FROM {temp} AS v WHERE t.{pk_column} = v.{pk_column}")
            written = cursor.rowcount
            cursor.execute(f"DROP TABLE {temp}")
        return written
    casts = [f"%s::{pk.db_type(connection)}"] + [f"%s::{f.db_type(connection)}" for f in columns]
    row_sql = "(" + ", ".join(casts) + ")"
    with connection.cursor() as cursor:
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            cursor.execute(
                f"UPDATE {table} AS t SET {assignments} FROM (VALUES {', '.join([row_sql] * len(batch))}) "
                f"AS v({pk_column}, {', '.join(names)}) WHERE t.{pk_column} = v.{pk_column}",
                [value for row in batch for value in row],
            )
            written += cursor.rowcount
    return written


def bulk_update_values(objs: Iterable[models.Model], fields: Sequence[str], *, batch_size: int = 2000,
                       threshold: int = COPY_THRESHOLD) -> int:
    """Write ``fields`` of every object (matched by primary key); a few statements per batch."""
    objs = list(objs)
    if not objs:
        return 0
    model = type(objs[0])
    meta = model._meta
    columns = [meta.pk] + [meta.get_field(name) for name in fields]
    rows = list(map(row_maker(columns), objs))
    return update_rows(model, fields, rows, threshold=threshold, batch_size=batch_size)
