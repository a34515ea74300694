"""Model instances from the columns of one hand-written join, and new rows in one statement.

For the few reads and writes every request or command makes: one statement instead of several
compiled ORM queries (compiling them was a fifth of an API request's CPU, bench/README.md). The columns come
from the models, so a new field is read without touching the SQL, and each value passes through
its field's converters as in the ORM.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connection
from django.db.models import Field, Model


class Columns:
    """The concrete columns of `model` under a table alias, minus `skip` (left deferred)."""

    def __init__(self, model: type[Model], alias: str, *, skip: Sequence[str] = ()) -> None:
        self.model = model
        self.alias = alias
        self.fields: list[Field] = [field for field in model._meta.concrete_fields if field.attname not in skip]
        self.table = connection.ops.quote_name(model._meta.db_table)
        self._columns = [field.get_col(alias) for field in self.fields]
        self._converters = [
            [*connection.ops.get_db_converters(column), *field.get_db_converters(connection)]
            for field, column in zip(self.fields, self._columns, strict=True)
        ]
        self._attnames = [field.attname for field in self.fields]
        quote = connection.ops.quote_name
        self._select = ", ".join(f"{alias}.{quote(str(field.column))}" for field in self.fields)

    def select(self) -> str:
        return self._select

    def instance(self, values: Sequence[Any]) -> Model | None:
        """The instance these values (in select() order) make; None for a row a LEFT JOIN missed."""
        if values[0] is None and self.fields[0].primary_key:
            return None
        converted = []
        for column, converters, value in zip(self._columns, self._converters, values, strict=True):
            for converter in converters:
                value = converter(value, column, connection)
            converted.append(value)
        return self.model.from_db(connection.alias, self._attnames, converted)


def instances_from_row(columns: Sequence[Columns], row: Sequence[Any]) -> list[Model | None]:
    """Split a row selected as `, `.join(c.select() for c in columns) into one instance per model."""
    instances, start = [], 0
    for group in columns:
        end = start + len(group.fields)
        instances.append(group.instance(row[start:end]))
        start = end
    return instances


def insert(instance: Model) -> None:
    """Write a new instance as Model.save() would (field defaults, auto_now_add, the database's
    form of each value), in one statement that returns its primary key, without compiling the
    ORM's insert. No signals are sent: for models that have no receivers."""
    meta = instance._meta
    pk = meta.pk
    assert pk is not None and instance._state.adding, "insert() writes new rows only"
    fields = [field for field in meta.concrete_fields if not (field is pk and getattr(instance, field.attname) is None)]
    values = [field.get_db_prep_save(field.pre_save(instance, True), connection) for field in fields]
    quote = connection.ops.quote_name
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(str(field.column)) for field in fields)}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(fields))})"
    )
    returning = pk not in fields and connection.features.can_return_columns_from_insert
    if returning:
        sql += f" RETURNING {quote(str(pk.column))}"
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        if pk not in fields:
            setattr(instance, pk.attname, cursor.fetchone()[0] if returning else cursor.lastrowid)
    instance._state.adding = False
    instance._state.db = connection.alias
