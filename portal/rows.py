"""Model instances from the columns of one hand-written join.

For the few reads every request or command makes: one statement instead of several compiled ORM
lookups (compiling them was a fifth of an API request's CPU, bench/README.md). The columns come
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

    def select(self) -> str:
        quote = connection.ops.quote_name
        return ", ".join(f"{self.alias}.{quote(field.column)}" for field in self.fields)

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
