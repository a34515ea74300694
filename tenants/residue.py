"""The residue scanner: search every table and text column of the database for a subject's identifiers.

The tables and their columns come from database introspection, not from a list kept by hand, so a
table added by any app (or a third-party one) is searched without anyone remembering to add it.
Binary, numeric, boolean and date columns are skipped: they cannot hold a name. The report says
where identifiers were found (table, column, number of rows), never the values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import connection

# Introspected field types that cannot contain an identifier written as text.
SKIPPED_TYPES = frozenset(
    {
        "AutoField",
        "BigAutoField",
        "SmallAutoField",
        "IntegerField",
        "BigIntegerField",
        "SmallIntegerField",
        "PositiveIntegerField",
        "PositiveBigIntegerField",
        "PositiveSmallIntegerField",
        "FloatField",
        "DecimalField",
        "BooleanField",
        "NullBooleanField",
        "DateField",
        "DateTimeField",
        "TimeField",
        "DurationField",
        "BinaryField",
    }
)
# Shorter strings match too much to mean anything (and are not identifiers a portal holds).
MIN_IDENTIFIER_LENGTH = 3
# Up to this many LIKE matches per column are re-checked for whole-token matches.
CONFIRM_LIMIT = 10_000


@dataclass(frozen=True)
class Hit:
    table: str
    column: str
    rows: int


@dataclass
class ResidueReport:
    tables: int = 0
    columns: int = 0
    hits: list[Hit] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.hits

    def as_list(self) -> list[dict[str, object]]:
        return [{"table": hit.table, "column": hit.column, "rows": hit.rows} for hit in self.hits]


def search_variants(identifiers: Iterable[str]) -> list[str]:
    """Return the lowercased identifiers and their JSON-escaped forms (a JSON column may store
    "josé" as "jos\\u00e9"), without duplicates or strings too short to search for."""
    variants: list[str] = []
    for identifier in identifiers:
        text = str(identifier or "").strip().lower()
        if len(text) < MIN_IDENTIFIER_LENGTH:
            continue
        for variant in (text, json.dumps(text)[1:-1]):
            if variant not in variants:
                variants.append(variant)
    return variants


def identifiers_replace(text: str, identifiers: Iterable[str], replacement: str) -> str:
    """Return text with every case-insensitive occurrence of each identifier replaced (longest first)."""
    for identifier in sorted((str(value) for value in identifiers), key=len, reverse=True):
        if len(identifier) < MIN_IDENTIFIER_LENGTH:
            continue
        lowered, needle, pieces, start = text.lower(), identifier.lower(), [], 0
        while (found := lowered.find(needle, start)) != -1:
            pieces.append(text[start:found] + replacement)
            start = found + len(needle)
        text = "".join(pieces) + text[start:]
    return text


def token_patterns(variants: Iterable[str]) -> list[re.Pattern[str]]:
    """Return patterns finding each (lowercased) variant as a whole token, not inside a longer one."""
    return [re.compile(rf"(?<![0-9a-z_]){re.escape(variant)}(?![0-9a-z_])") for variant in variants]


def mentions(value: Any, patterns: list[re.Pattern[str]]) -> bool:
    """Return whether a value (text, or JSON as stored either way) holds one of the identifiers."""
    if value is None or value == "":
        return False
    if isinstance(value, str):
        texts = [value.lower()]
    else:
        texts = [json.dumps(value, ensure_ascii=False).lower(), json.dumps(value).lower()]
    return any(pattern.search(text) for text in texts for pattern in patterns)


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def text_columns() -> dict[str, list[str]]:
    """Return every table of the database with the columns that can hold text, by introspection."""
    tables: dict[str, list[str]] = {}
    with connection.cursor() as cursor:
        for table in sorted(connection.introspection.table_names(cursor)):
            columns = []
            for description in connection.introspection.get_table_description(cursor, table):
                try:
                    kind = connection.introspection.get_field_type(description.type_code, description)
                except KeyError:
                    kind = "TextField"  # an unknown type is searched rather than trusted
                if kind not in SKIPPED_TYPES:
                    columns.append(description.name)
            if columns:
                tables[table] = columns
    return tables


def residue_scan(*, identifiers: Iterable[str], exclude: Iterable[tuple[str, str]] = ()) -> ResidueReport:
    """Search every text column of every table for the identifiers (case-insensitive substrings).

    One query per table counts, per column, the rows where any identifier occurs. `exclude` names
    (table, column) pairs to skip: the request's own copy of the identifiers it is checking.
    """
    variants = search_variants(identifiers)
    skipped = set(exclude)
    report = ResidueReport()
    if not variants:
        return report
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        for table, columns in text_columns().items():
            columns = [column for column in columns if (table, column) not in skipped]
            if not columns:
                continue
            report.tables += 1
            report.columns += len(columns)
            selects: list[str] = []
            parameters: list[str] = []
            for column in columns:
                text = f"LOWER(CAST({quote(column)} AS TEXT))"
                matches = " OR ".join(f"{text} LIKE %s ESCAPE '\\'" for _ in variants)
                selects.append(f"COALESCE(SUM(CASE WHEN {matches} THEN 1 ELSE 0 END), 0)")
                parameters.extend(_like_pattern(variant) for variant in variants)
            cursor.execute(f"SELECT {', '.join(selects)} FROM {quote(table)}", parameters)  # noqa: S608 - names from introspection
            for column, count in zip(columns, cursor.fetchone(), strict=True):
                if count:
                    rows = _confirmed_rows(cursor, table, column, variants, int(count))
                    if rows:
                        report.hits.append(Hit(table=table, column=column, rows=rows))
    return report


def _confirmed_rows(cursor: Any, table: str, column: str, variants: list[str], count: int) -> int:
    """Return how many of the LIKE matches hold an identifier as a whole token, not inside a longer
    one (198.51.100.2 inside 198.51.100.20, ann inside joanna); a large count is taken as it is."""
    if count > CONFIRM_LIMIT:
        return count
    quote = connection.ops.quote_name
    text = f"LOWER(CAST({quote(column)} AS TEXT))"
    matches = " OR ".join(f"{text} LIKE %s ESCAPE '\\'" for _ in variants)
    cursor.execute(
        f"SELECT {text} FROM {quote(table)} WHERE {matches}",  # noqa: S608 - names from introspection
        [_like_pattern(variant) for variant in variants],
    )
    patterns = token_patterns(variants)
    return sum(1 for (value,) in cursor.fetchall() if any(pattern.search(value or "") for pattern in patterns))
