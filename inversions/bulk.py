"""One UPDATE for many rows: ``UPDATE … FROM (VALUES …)``.

Django's ``bulk_update`` builds a ``CASE WHEN`` per field and row, which costs seconds of
Python for a few thousand rows; scans and batched transitions update tens of thousands.
This writes each batch as one statement with typed VALUES, and nothing else.
"""
from __future__ import annotations

from typing import Iterable, Sequence

from django.db import connection, models


def bulk_update_values(objs: Iterable[models.Model], fields: Sequence[str], *, batch_size: int = 2000) -> int:
    """Write ``fields`` of every object (matched by primary key) with one statement per batch."""
    objs = list(objs)
    if not objs:
        return 0
    model = type(objs[0])
    meta = model._meta
    columns = [meta.get_field(name) for name in fields]
    pk = meta.pk
    casts = [f"%s::{pk.db_type(connection)}"] + [f"%s::{field.db_type(connection)}" for field in columns]
    row_sql = "(" + ", ".join(casts) + ")"
    names = ", ".join(connection.ops.quote_name(field.column) for field in columns)
    assignments = ", ".join(f"{connection.ops.quote_name(f.column)} = v.{connection.ops.quote_name(f.column)}" for f in columns)
    table = connection.ops.quote_name(meta.db_table)
    pk_column = connection.ops.quote_name(pk.column)
    written = 0
    with connection.cursor() as cursor:
        for start in range(0, len(objs), batch_size):
            batch = objs[start : start + batch_size]
            params: list = []
            for obj in batch:
                params.append(obj.pk)
                for field in columns:
                    params.append(field.get_db_prep_save(getattr(obj, field.attname), connection))
            values = ", ".join([row_sql] * len(batch))
            cursor.execute(
                f"UPDATE {table} AS t SET {assignments} FROM (VALUES {values}) AS v({pk_column}, {names}) "
                f"WHERE t.{pk_column} = v.{pk_column}",
                params,
            )
            written += cursor.rowcount
    return written
