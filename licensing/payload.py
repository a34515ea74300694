"""How a usage report is written down: compact JSON, produced piece by piece straight into gzip.

The builder never holds the whole JSON text: each piece is checked against the allow-list
(licensing.schema), hashed (SHA-256 of the JSON bytes) and compressed as it is written, so memory
stays bounded by the compressed size. The gzip bytes are what the portal stores and what it sends,
so "the report exactly as sent" is the stored body, byte for byte. The writer also records where
each tenant's part starts and ends in the JSON, so that a tenant admin's page can show exactly the
bytes sent about that tenant without parsing the rest.

Both sides use these functions: the service to read what it received, either side to rewrite a
report when a username is erased.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from licensing.schema import (
    SCHEMA_VERSION,
    DevicePart,
    PortalPart,
    SchemaError,
    TenantPart,
    UsageReportPayload,
    check,
    fields_of,
)

# The writer emits these keys in this order; a new key in the schema must be written here too.
if (
    fields_of(UsageReportPayload) != ("schema_version", "tenants", "portal")
    or fields_of(TenantPart) != ("admins", "backup_accounts", "devices")
    or fields_of(DevicePart) != ("name", "account", "boosters")
):  # pragma: no cover - a schema change without a writer change
    raise ImportError("licensing.payload does not write the fields licensing.schema declares")


FLUSH_BYTES = 64 * 1024


class PayloadTooLarge(ValueError):
    pass


def dumps(value: Any) -> str:
    """Serialise one piece: compact, UTF-8 text (not \\u escapes), keys in insertion order.

    Strings are written as encode_basestring writes them, the same function json uses here."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Serialised:
    body: bytes  # gzip
    sha256: str  # of the JSON (uncompressed)
    size: int  # of the JSON, in bytes
    # [start, end) byte offsets of each tenant's part in the JSON, in the report's order.
    spans: list[tuple[int, int]]


class PayloadWriter:
    """Write one report: begin(), then per tenant tenant_begin() / admin() / account() / device() /
    tenant_end(), then finish(portal_part)."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        # mtime=0: the same JSON always compresses to the same bytes.
        self._gzip = gzip.GzipFile(fileobj=self._buffer, mode="wb", compresslevel=6, mtime=0)
        self._sha = hashlib.sha256()
        self._size = 0
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._spans: list[tuple[int, int]] = []
        self._tenant_start: int | None = None
        self._section = ""
        self._first_in_section = True
        self._first_tenant = True

    def _write(self, text: str) -> None:
        # Pieces are small (a device is ~80 bytes): collect them and compress ~64 KiB at a time.
        data = text.encode()
        self._pending.append(data)
        self._pending_size += len(data)
        self._size += len(data)
        if self._pending_size >= FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        chunk = b"".join(self._pending)
        self._gzip.write(chunk)
        self._sha.update(chunk)
        self._pending, self._pending_size = [], 0

    def begin(self) -> None:
        self._write(f'{{"schema_version":{SCHEMA_VERSION},"tenants":[')

    def tenant_begin(self) -> None:
        if not self._first_tenant:
            self._write(",")
        self._first_tenant = False
        self._tenant_start = self._size
        self._write('{"admins":[')
        self._section, self._first_in_section = "admins", True

    def _enter(self, section: str) -> None:
        order = ("admins", "backup_accounts", "devices")
        if order.index(section) < order.index(self._section):
            raise SchemaError(f"{section} written after {self._section}")
        while self._section != section:
            following = order[order.index(self._section) + 1]
            self._write(f'],"{following}":[')
            self._section, self._first_in_section = following, True

    def _item(self, text: str) -> None:
        if not self._first_in_section:
            self._write(",")
        self._first_in_section = False
        self._write(text)

    def admin(self, username: str) -> None:
        check(username, str, "admins[]")
        self._enter("admins")
        self._item(encode_basestring(username))

    def account(self, username: str) -> None:
        check(username, str, "backup_accounts[]")
        self._enter("backup_accounts")
        self._item(encode_basestring(username))

    def device(self, part: DevicePart) -> None:
        check(part, DevicePart, "devices[]")
        self._enter("devices")
        # What dumps(part) writes, without its per-call overhead (100,000 times a report).
        boosters = ",".join(map(encode_basestring, part["boosters"]))
        self._item(
            f'{{"name":{encode_basestring(part["name"])},"account":{encode_basestring(part["account"])},'
            f'"boosters":[{boosters}]}}'
        )

    def tenant_end(self) -> None:
        self._enter("devices")
        self._write("]}")
        assert self._tenant_start is not None
        self._spans.append((self._tenant_start, self._size))
        self._tenant_start = None

    def tenant(self, part: TenantPart) -> None:
        """Write a whole tenant part at once (when rewriting a parsed report)."""
        check(part, TenantPart, "tenants[]")
        self.tenant_begin()
        for username in part["admins"]:
            self.admin(username)
        for username in part["backup_accounts"]:
            self.account(username)
        for device in part["devices"]:
            self.device(device)
        self.tenant_end()

    def finish(self, portal: PortalPart) -> Serialised:
        check(portal, PortalPart, "portal")
        self._write('],"portal":' + dumps(portal) + "}")
        self._flush()
        self._gzip.close()
        return Serialised(
            body=self._buffer.getvalue(), sha256=self._sha.hexdigest(), size=self._size, spans=self._spans
        )


def serialise(payload: UsageReportPayload) -> Serialised:
    """Write a parsed (and possibly rewritten) report again, exactly as the builder would."""
    writer = PayloadWriter()
    writer.begin()
    for tenant in payload["tenants"]:
        writer.tenant(tenant)
    return writer.finish(payload["portal"])


def decompress(body: bytes, *, limit: int) -> bytes:
    """Return the JSON inside a gzip body; refuse more than `limit` bytes (a gzip bomb)."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise ValueError(f"not gzip: {error}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"the report is larger than {limit} bytes")
    return data


def json_prefix(body: bytes, end: int) -> bytes:
    """Return the first `end` bytes of the JSON inside a gzip body, decompressing no further."""
    inflater = zlib.decompressobj(wbits=31)
    return inflater.decompress(body, end)


def parse(data: bytes) -> UsageReportPayload:
    """Parse and validate a report's JSON; SchemaError (a ValueError) names the first bad path."""
    try:
        payload = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SchemaError(f"not JSON: {error}") from None
    check(payload, UsageReportPayload)
    return payload


# --- Erasure --------------------------------------------------------------------------------


def mentions(data: bytes, username: str) -> bool:
    """Return whether the JSON may contain `username` as a value (a cheap test before parsing)."""
    return dumps(username).encode() in data


def pseudonymise(
    payload: UsageReportPayload, *, usernames: Iterable[str], pseudonym: str, subject_kind: str
) -> dict[str, int]:
    """Replace a username in a parsed report, in place; return how many values were replaced.

    An admin's username appears in `admins`; a backup account's in `backup_accounts` and as the
    `account` of its devices, whose names (often the person's own host name) are replaced too.
    """
    names = set(usernames)
    counts = {"usernames": 0, "device_names": 0}
    for tenant in payload["tenants"]:
        if subject_kind == "admin":
            replaced = [pseudonym if name in names else name for name in tenant["admins"]]
            counts["usernames"] += sum(1 for name in tenant["admins"] if name in names)
            tenant["admins"] = replaced
            continue
        counts["usernames"] += sum(1 for name in tenant["backup_accounts"] if name in names)
        tenant["backup_accounts"] = [pseudonym if name in names else name for name in tenant["backup_accounts"]]
        for device in tenant["devices"]:
            if device["account"] in names:
                device["account"] = pseudonym
                device["name"] = f"{pseudonym}-device"
                counts["usernames"] += 1
                counts["device_names"] += 1
    return counts


def pseudonym_for(*, serial: str, reference: str) -> str:
    """Return the value that replaces an erased username: the same on the portal and the service,
    derived from the erasure request, never from the name, so it cannot be guessed back."""
    return "erased-" + hashlib.sha256(f"{serial}:{reference}".encode()).hexdigest()[:12]
