"""The residue scanner: search every table and text column of the database for a subject's identifiers.

The tables and their columns come from database introspection, not from a list kept by hand, so a
table added by any app (or a third-party one) is searched without anyone remembering to add it.
Numeric, boolean and date columns are skipped: they cannot hold a name. Binary columns are read
only where a value is gzip (the licensing outbox's and the licensing service's usage reports, which
name accounts and admins): it is decompressed as a stream and searched like text; other binary
values (encrypted secrets, logos, zip archives) are skipped. The report says where identifiers were
found (table, column, number of rows), never the values.
"""

from __future__ import annotations

import codecs
import json
import re
import zlib
from collections.abc import Callable, Iterable
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
BINARY_TYPES = frozenset({"BinaryField"})
GZIP_MAGIC = b"\x1f\x8b"
# Decompressed text is searched this many characters at a time, so a large report never sits in memory.
DECOMPRESSED_CHUNK = 1024 * 1024
# Shorter strings match too much to mean anything (and are not identifiers a portal holds).
MIN_IDENTIFIER_LENGTH = 3
# Identifiers per regular expression (SQLite).
REGEX_CHUNK = 500
# What separates tokens when values are split on PostgreSQL: the same boundary as token_patterns().
TOKEN_SEPARATORS = r"[^0-9a-z_]+"


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


def _columns(wanted: Callable[[str], bool]) -> dict[str, list[str]]:
    tables: dict[str, list[str]] = {}
    with connection.cursor() as cursor:
        for table in sorted(connection.introspection.table_names(cursor)):
            columns = []
            for description in connection.introspection.get_table_description(cursor, table):
                try:
                    kind = connection.introspection.get_field_type(description.type_code, description)
                except KeyError:
                    kind = "TextField"  # an unknown type is searched rather than trusted
                if wanted(kind):
                    columns.append(description.name)
            if columns:
                tables[table] = columns
    return tables


def text_columns() -> dict[str, list[str]]:
    """Return every table of the database with the columns that can hold text, by introspection."""
    return _columns(lambda kind: kind not in SKIPPED_TYPES)


def binary_columns() -> dict[str, list[str]]:
    """Return every table of the database with its binary columns (searched where they hold gzip)."""
    return _columns(lambda kind: kind in BINARY_TYPES)


def gzip_mentions(blob: bytes, patterns: list[re.Pattern[str]], *, overlap: int) -> bool:
    """Return whether gzip-compressed text holds one of the identifiers, decompressing as a stream.

    Each chunk is searched together with the last `overlap` characters of the one before, so a name
    split across two chunks is found; a stream that turns out not to be gzip is searched as far as
    it decompresses.
    """
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail, pending = "", blob
    while True:
        try:
            raw = inflater.decompress(pending, DECOMPRESSED_CHUNK)
        except zlib.error:
            return False
        pending = inflater.unconsumed_tail
        finished = not pending and (inflater.eof or not raw)
        text = tail + decoder.decode(raw, final=finished).lower()
        if any(pattern.search(text) for pattern in patterns):
            return True
        if finished:
            return False
        tail = text[-overlap:]


def token_regexes(variants: list[str]) -> list[str]:
    """Return regular expressions (valid for PostgreSQL and Python alike) that find any of the
    variants as a whole token, in chunks: one pattern for thousands of identifiers is too complex."""
    chunks = [variants[start : start + REGEX_CHUNK] for start in range(0, len(variants), REGEX_CHUNK)]
    return [rf"(^|[^0-9a-z_])({'|'.join(re.escape(variant) for variant in chunk)})($|[^0-9a-z_])" for chunk in chunks]


def _anchor(variant: str) -> str:
    """Return the longest token of an identifier: a value holding the identifier holds this token."""
    return max(re.split(TOKEN_SEPARATORS, variant), key=len, default="")


def _count_postgresql(
    cursor: Any, table: str, column: str, variants: list[str], matchers: list[re.Pattern[str]]
) -> int:
    """Count rows holding an identifier: values are split into tokens in the database and compared
    with the identifiers' anchor tokens through a hashed lookup (one pass, whatever the number of
    identifiers); the few candidates are confirmed here with the exact whole-token patterns."""
    quote = connection.ops.quote_name
    anchors = sorted({_anchor(variant) for variant in variants} - {""})
    cursor.execute(
        f"""
        SELECT v FROM (SELECT LOWER(CAST({quote(column)} AS TEXT)) AS v FROM {quote(table)}) AS s
        WHERE v IS NOT NULL AND EXISTS (
            SELECT 1 FROM regexp_split_to_table(s.v, %s) AS token WHERE token = ANY(%s)
        )
        """,  # noqa: S608 - names from introspection
        [TOKEN_SEPARATORS, anchors],
    )
    return sum(1 for (value,) in cursor.fetchall() if any(matcher.search(value) for matcher in matchers))


def residue_scan(*, identifiers: Iterable[str], exclude: Iterable[tuple[str, str]] = ()) -> ResidueReport:
    """Search every text column of every table for the identifiers (case-insensitive whole tokens).

    On PostgreSQL each column is read once and its values split into tokens in the database, which
    keeps the scan linear in the data whatever the number of identifiers (a 1,000-device account has
    3,000 of them; LIKE or one big regular expression per identifier was far too slow). On SQLite
    (the embedded set-up, small by nature) one regular expression per chunk of identifiers is run.
    `exclude` names (table, column) pairs to skip: the request's own copy of its identifiers.
    """
    variants = search_variants(identifiers)
    skipped = set(exclude)
    report = ResidueReport()
    if not variants:
        return report
    matchers = token_patterns(variants)
    with connection.cursor() as cursor:
        for table, columns in text_columns().items():
            columns = [column for column in columns if (table, column) not in skipped]
            if not columns:
                continue
            report.tables += 1
            report.columns += len(columns)
            if connection.vendor == "postgresql":
                counts = [_count_postgresql(cursor, table, column, variants, matchers) for column in columns]
            else:
                counts = _count_by_regex(cursor, table, columns, variants)
            for column, count in zip(columns, counts, strict=True):
                if count:
                    report.hits.append(Hit(table=table, column=column, rows=int(count)))
        overlap = max(len(variant) for variant in variants) + 2  # the variant and a boundary each side
        for table, columns in binary_columns().items():
            for column in columns:
                if (table, column) in skipped:
                    continue
                report.columns += 1
                if count := _count_gzip(cursor, table, column, matchers, overlap=overlap):
                    report.hits.append(Hit(table=table, column=column, rows=count))
    return report


def _count_gzip(cursor: Any, table: str, column: str, matchers: list[re.Pattern[str]], *, overlap: int) -> int:
    """Count the rows whose value in a binary column is gzip holding an identifier."""
    quote = connection.ops.quote_name
    cursor.execute(
        f"SELECT {quote(column)} FROM {quote(table)} WHERE SUBSTR({quote(column)}, 1, 2) = %s",  # noqa: S608 - names from introspection
        [GZIP_MAGIC],
    )
    count = 0
    while rows := cursor.fetchmany(20):
        count += sum(1 for (value,) in rows if gzip_mentions(bytes(value), matchers, overlap=overlap))
    return count


def _count_by_regex(cursor: Any, table: str, columns: list[str], variants: list[str]) -> list[int]:
    quote = connection.ops.quote_name
    regex_operator = connection.operators["regex"]  # type: ignore[attr-defined]  # "~ %s" or "REGEXP %s"
    patterns = token_regexes(variants)
    selects: list[str] = []
    parameters: list[str] = []
    for column in columns:
        text = f"LOWER(CAST({quote(column)} AS TEXT))"
        matches = " OR ".join(f"{text} {regex_operator}" for _ in patterns)
        selects.append(f"COALESCE(SUM(CASE WHEN {matches} THEN 1 ELSE 0 END), 0)")
        parameters.extend(patterns)
    cursor.execute(f"SELECT {', '.join(selects)} FROM {quote(table)}", parameters)  # noqa: S608 - names from introspection
    return [int(count) for count in cursor.fetchone()]
