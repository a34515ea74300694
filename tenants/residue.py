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
# Identifiers per regular expression.
REGEX_CHUNK = 500


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


def token_regexes(variants: list[str]) -> list[str]:
    """Return regular expressions (valid for PostgreSQL and Python alike) that find any of the
    variants as a whole token, in chunks: one pattern for thousands of identifiers is too complex."""
    chunks = [variants[start : start + REGEX_CHUNK] for start in range(0, len(variants), REGEX_CHUNK)]
    return [rf"(^|[^0-9a-z_])({'|'.join(re.escape(variant) for variant in chunk)})($|[^0-9a-z_])" for chunk in chunks]


def residue_scan(*, identifiers: Iterable[str], exclude: Iterable[tuple[str, str]] = ()) -> ResidueReport:
    """Search every text column of every table for the identifiers (case-insensitive whole tokens).

    One query per table counts, per column, the rows where any identifier occurs, with one pass of
    the database's regular-expression engine per chunk of identifiers (LIKE per identifier was
    quadratic: a 1,000-device account has 3,000 of them). `exclude` names (table, column) pairs to
    skip: the request's own copy of the identifiers it is checking.
    """
    variants = search_variants(identifiers)
    skipped = set(exclude)
    report = ResidueReport()
    if not variants:
        return report
    quote = connection.ops.quote_name
    regex_operator = connection.operators["regex"]  # type: ignore[attr-defined]  # "~ %s" or "REGEXP %s"
    patterns = token_regexes(variants)
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
                matches = " OR ".join(f"{text} {regex_operator}" for _ in patterns)
                selects.append(f"COALESCE(SUM(CASE WHEN {matches} THEN 1 ELSE 0 END), 0)")
                parameters.extend(patterns)
            cursor.execute(f"SELECT {', '.join(selects)} FROM {quote(table)}", parameters)  # noqa: S608 - names from introspection
            for column, count in zip(columns, cursor.fetchone(), strict=True):
                if count:
                    report.hits.append(Hit(table=table, column=column, rows=int(count)))
    return report
