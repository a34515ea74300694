"""Keyset pagination: the page after (or before) a given row, in a list's own order.

    token = keyset.cursor_of(queryset, last_row)          # for the "next" link
    rows = keyset.page(queryset, after=token, limit=51)   # the next page, however deep

OFFSET n reads and drops n rows, so page 500 of a 100,000-device list cost what 500 pages cost;
a cursor names the last row's sort values instead, and the next page starts there through the
sort's index, whatever its depth. A list qualifies when its ordering ends in the primary key
(so that the order is total); `orderable` tells. NULLs sort last going up and first going down, as
PostgreSQL does; a list ordering by a nullable column must say so in its order_by (SQLite sorts
NULLs the other way by default), e.g. `F("last_seen_at").desc(nulls_first=True)`.

A cursor is a position, not a permission: it is base64url JSON of the sort values, and the
queryset it is applied to still carries every filter (the tenant's among them). A cursor that does
not decode or does not fit the list raises InvalidCursor.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, TypeVar

from django.core.exceptions import FieldDoesNotExist, ValidationError
from django.db.models import F, Model, Q, QuerySet
from django.db.models.expressions import OrderBy

ModelT = TypeVar("ModelT", bound=Model)


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True)
class SortKey:
    field: str
    descending: bool


def sort_keys(queryset: QuerySet[Any]) -> list[SortKey] | None:
    """Return the queryset's ordering as sort keys, or None if it is not one keyset can follow."""
    keys: list[SortKey] = []
    for item in queryset.query.order_by:
        if isinstance(item, str):
            name, descending = item.removeprefix("-"), item.startswith("-")
        elif isinstance(item, OrderBy) and isinstance(item.expression, F):
            name, descending = item.expression.name, item.descending  # type: ignore[attr-defined]
        else:
            return None
        if "__" in name:
            return None
        keys.append(SortKey("pk" if name in ("pk", queryset.model._meta.pk.name) else name, descending))
    return keys if keys and keys[-1].field == "pk" else None


def orderable(queryset: QuerySet[Any]) -> bool:
    return sort_keys(queryset) is not None


def ordering(*names: str) -> list[OrderBy]:
    """Return order_by() arguments for "name" / "-name" with NULLs placed as keyset expects."""
    return [_order(SortKey(name.removeprefix("-"), name.startswith("-"))) for name in names]


def cursor_of(queryset: QuerySet[Any], row: Model) -> str:
    """Return the cursor of `row`: the page after it starts with the row that follows it."""
    keys = sort_keys(queryset)
    if keys is None:
        raise InvalidCursor("This list cannot be paged by cursor.")
    values = []
    for key in keys:
        field = _field(queryset, key.field)
        values.append(None if getattr(row, field.attname) is None else field.value_to_string(row))
    return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode().rstrip("=")


def page(queryset: QuerySet[ModelT], *, after: str = "", before: str = "", limit: int) -> list[ModelT]:
    """Return up to `limit` rows after the row of cursor `after`, or before the row of `before`
    (the first rows with neither)."""
    keys = sort_keys(queryset)
    if keys is None:
        raise InvalidCursor("This list cannot be paged by cursor.")
    if before:
        reversed_keys = [SortKey(key.field, not key.descending) for key in keys]
        condition = _beyond(queryset, reversed_keys, _decode(queryset, keys, before))
        rows = list(queryset.filter(condition).order_by(*map(_order, reversed_keys))[:limit])
        return rows[::-1]
    if after:
        queryset = queryset.filter(_beyond(queryset, keys, _decode(queryset, keys, after)))
    return list(queryset.order_by(*map(_order, keys))[:limit])


def _field(queryset: QuerySet[Any], name: str) -> Any:
    meta = queryset.model._meta
    return meta.pk if name == "pk" else meta.get_field(name)


def _decode(queryset: QuerySet[Any], keys: list[SortKey], token: str) -> list[Any]:
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(raw, list) or len(raw) != len(keys):
            raise InvalidCursor("This cursor does not belong to this list.")
        return [
            None if value is None else _field(queryset, key.field).to_python(value)
            for key, value in zip(keys, raw, strict=True)
        ]
    except (ValueError, TypeError, binascii.Error, ValidationError, FieldDoesNotExist) as error:
        if isinstance(error, InvalidCursor):
            raise
        raise InvalidCursor("This cursor cannot be read.") from None


def _order(key: SortKey) -> OrderBy:
    expression = F(key.field)
    return expression.desc(nulls_first=True) if key.descending else expression.asc(nulls_last=True)


def _beyond(queryset: QuerySet[Any], keys: list[SortKey], values: list[Any]) -> Q:
    """Rows strictly after `values` in the order of `keys`: (k1 beyond v1) or (k1 = v1 and k2 beyond v2)...

    The first key's bound is repeated on its own (k1 >= v1 going up), so that the database starts
    its index scan at the cursor instead of filtering every row before it.
    """
    condition = Q(pk__in=[])  # nothing, to start the OR
    equal = Q()
    for key, value in zip(keys, values, strict=True):
        condition |= equal & _strictly_beyond(key, value, nullable=bool(_field(queryset, key.field).null))
        equal &= Q(**{f"{key.field}__isnull": True}) if value is None else Q(**{key.field: value})
    first, value = keys[0], values[0]
    # Going down, NULLs came first, so every row after a value is at most that value; going up
    # the NULLs follow, and the bound holds only for a column without them.
    if value is not None and (first.descending or not _field(queryset, first.field).null):
        condition &= Q(**{f"{first.field}__{'lte' if first.descending else 'gte'}": value})
    return condition


def _strictly_beyond(key: SortKey, value: Any, *, nullable: bool) -> Q:
    if value is None:
        # NULLs are last going up (nothing follows within the column), first going down.
        return Q(**{f"{key.field}__isnull": False}) if key.descending else Q(pk__in=[])
    if key.descending:
        return Q(**{f"{key.field}__lt": value})
    beyond = Q(**{f"{key.field}__gt": value})
    return beyond | Q(**{f"{key.field}__isnull": True}) if nullable else beyond
