"""Signed requests between a portal and the licensing service: HMAC-SHA256 with the licence key.

The signature covers a version tag, the method, the path, the portal's serial, a timestamp, the
idempotency key and the SHA-256 of the body as sent (for reports, the gzip bytes), one per line:

    licensing-v1\\nPOST\\n/licensing/v1/reports/\\n<serial>\\n<unix seconds>\\n<key>\\n<sha256 hex>

so a signature made for one endpoint, body or moment is worth nothing for another. The service
refuses a timestamp more than REPLAY_WINDOW from its clock (a stale replay) and deduplicates
within the window by the idempotency key, so a replayed request changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

from licensing.conf import REPLAY_WINDOW

SERIAL_HEADER = "Licensing-Serial"
TIMESTAMP_HEADER = "Licensing-Timestamp"
SIGNATURE_HEADER = "Licensing-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
VERSION = "v1"


class SignatureError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def canonical_message(
    *, method: str, path: str, serial: str, timestamp: str, idempotency_key: str, body: bytes
) -> bytes:
    parts = ["licensing-" + VERSION, method.upper(), path, serial, timestamp, idempotency_key]
    return "\n".join([*parts, hashlib.sha256(body).hexdigest()]).encode()


def signature(key: str, message: bytes) -> str:
    return f"{VERSION}=" + hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(
    *, key: str, serial: str, method: str, path: str, body: bytes, idempotency_key: str, now: float | None = None
) -> dict[str, str]:
    """Return the headers that authenticate one request."""
    timestamp = str(int(time.time() if now is None else now))
    message = canonical_message(
        method=method, path=path, serial=serial, timestamp=timestamp, idempotency_key=idempotency_key, body=body
    )
    return {
        SERIAL_HEADER: serial,
        TIMESTAMP_HEADER: timestamp,
        IDEMPOTENCY_HEADER: idempotency_key,
        SIGNATURE_HEADER: signature(key, message),
    }


def header(headers: Mapping[str, str], name: str) -> str:
    """Read a header from Django's request.headers (case-insensitive) or a plain dict."""
    return str(headers.get(name, "") or "")


def verify(*, key: str, headers: Mapping[str, str], method: str, path: str, body: bytes, now: float) -> None:
    """Raise SignatureError unless the request was signed with `key` recently."""
    timestamp = header(headers, TIMESTAMP_HEADER)
    given = header(headers, SIGNATURE_HEADER)
    if not timestamp.isdigit() or not given:
        raise SignatureError("not_signed", "The request carries no signature or timestamp.")
    expected = signature(
        key,
        canonical_message(
            method=method,
            path=path,
            serial=header(headers, SERIAL_HEADER),
            timestamp=timestamp,
            idempotency_key=header(headers, IDEMPOTENCY_HEADER),
            body=body,
        ),
    )
    # Compare first, so that a forger learns nothing from which check failed.
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise SignatureError("bad_signature", "The signature does not match.")
    if abs(now - int(timestamp)) > REPLAY_WINDOW.total_seconds():
        raise SignatureError("stale", "The request's timestamp is outside the replay window.")
