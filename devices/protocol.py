"""The device protocol's constants and message schemas (docs/protocol.md), without Django.

parse() turns a frame into a validated dict or raises ProtocolError with the code the device is
sent back. The reference agent imports the constants from here too.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

VERSION = 1
SUBPROTOCOL = "backup-device.v1"
TOKEN_SUBPROTOCOL_PREFIX = "token."
MAX_FRAME_BYTES = 64 * 1024
MESSAGES_PER_SECOND = 20
BURST = 40
MAX_BAD_MESSAGES = 20
MISSED_HEARTBEATS = 3
MAX_LOG_LINES = 500

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 4000
CLOSE_UNAUTHENTICATED = 4001
CLOSE_REPLACED = 4002
CLOSE_REVOKED = 4003
CLOSE_HEARTBEAT_TIMEOUT = 4008
CLOSE_FRAME_TOO_LARGE = 4009
CLOSE_RATE_LIMITED = 4029
# The server is busy (a reconnect storm): try again later; 4000 + RFC 6455's 1013. The close
# reason says when: `retry_after=<seconds>` (see busy_reason).
CLOSE_TRY_AGAIN_LATER = 4013
RETRY_AFTER_MAX_SECONDS = 120.0


def busy_reason(retry_after: float) -> str:
    """The close reason of a 4013: when the device should come back, in seconds."""
    return f"retry_after={min(max(retry_after, 0.0), RETRY_AFTER_MAX_SECONDS):.1f}"


def retry_after_of(reason: str) -> float | None:
    """Read busy_reason's seconds back; None for any other reason (an older portal sends none)."""
    name, _, value = (reason or "").partition("=")
    if name != "retry_after":
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(seconds, RETRY_AFTER_MAX_SECONDS) if seconds >= 0 else None


ENGINES = {
    "files",
    "disk_image",
    "mssql",
    "mysql",
    "exchange",
    "hyperv",
    "vmware",
    "office365",
    "program_output",
}
COMMAND_RESULT_STATUSES = {"succeeded", "failed", "cancelled"}
JOB_KINDS = {"backup", "restore", "retention", "verify"}
JOB_FINISHED_STATUSES = {"succeeded", "warning", "failed", "cancelled"}
COUNTERS = ("files_done", "files_total", "bytes_read", "bytes_uploaded")
# Optional since the encrypted backup (docs/protocol.md): older agents leave them out.
BACKUP_COUNTERS = ("chunks_total", "chunks_new", "bytes_new", "vault_bytes_used")


class ProtocolError(Exception):
    def __init__(self, code: str, message: str, in_reply_to: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.in_reply_to = code, message, in_reply_to


class RateLimiter:
    """A token bucket: MESSAGES_PER_SECOND sustained, BURST at once; `exhausted` after long abuse."""

    def __init__(self, rate: float = MESSAGES_PER_SECOND, burst: float = BURST) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.updated = time.monotonic()
        self.dropped = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.dropped = max(0, self.dropped - 1)
            return True
        self.dropped += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.dropped > 5 * self.burst


def _fail(message_type: str, text: str) -> ProtocolError:
    return ProtocolError("invalid_message", text, message_type)


def _string(message: dict[str, Any], field: str, *, required: bool = True, limit: int = 200) -> None:
    value = message.get(field)
    if value is None and not required:
        return
    if not isinstance(value, str) or len(value) > limit or (required and not value):
        raise _fail(message["type"], f"'{field}' must be a non-empty string of at most {limit} characters.")


def _count(message: dict[str, Any], field: str, *, required: bool = False) -> None:
    value = message.get(field)
    if value is None and not required:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(message["type"], f"'{field}' must be a whole number of at least 0.")


def _uuid(message: dict[str, Any], field: str, *, required: bool = True) -> None:
    value = message.get(field)
    if value is None and not required:
        return
    try:
        uuid.UUID(str(value))
    except ValueError:
        raise _fail(message["type"], f"'{field}' must be a UUID.") from None


def _list_of_objects(message: dict[str, Any], field: str, limit: int) -> list[dict[str, Any]]:
    value = message.get(field, [])
    if not isinstance(value, list) or len(value) > limit or not all(isinstance(entry, dict) for entry in value):
        raise _fail(message["type"], f"'{field}' must be a list of at most {limit} objects.")
    return value


def _validate_hello(message: dict[str, Any]) -> None:
    for field in ("name", "os", "arch", "client_version", "timezone"):
        _string(message, field, required=field == "name", limit=64 if field != "name" else 200)
    consents = message.get("consents", {})
    if not isinstance(consents, dict) or not all(isinstance(value, bool) for value in consents.values()):
        raise _fail("hello", "'consents' must map names to true or false.")


def _validate_status(message: dict[str, Any]) -> None:
    for item in _list_of_objects(message, "protected_items", 500):
        for field in ("item_id", "name", "engine"):
            _string({"type": "status", **item}, field, limit=200)
        if item["engine"] not in ENGINES:
            raise _fail("status", f"Unknown engine {item['engine']!r}.")
        _count({"type": "status", **item}, "size_bytes", required=True)
    for vault in _list_of_objects(message, "vaults", 100):
        for field in ("vault_id", "name", "kind"):
            _string({"type": "status", **vault}, field, limit=200)
        _count({"type": "status", **vault}, "bytes_used", required=True)
        _count({"type": "status", **vault}, "encryption_format")
        _string({"type": "status", **vault}, "key_id", required=False, limit=64)


def _validate_command_result(message: dict[str, Any]) -> None:
    _uuid(message, "command_id")
    if message.get("status") not in COMMAND_RESULT_STATUSES:
        raise _fail("command_result", "'status' must be succeeded, failed or cancelled.")
    if "result" in message and not isinstance(message["result"], dict | None):
        raise _fail("command_result", "'result' must be an object.")
    _string(message, "error", required=False, limit=500)


def _validate_job_started(message: dict[str, Any]) -> None:
    _uuid(message, "job_id")
    _uuid(message, "command_id", required=False)
    if message.get("kind", "backup") not in JOB_KINDS:
        raise _fail("job_started", "Unknown job kind.")
    _string(message, "protected_item_id", required=False, limit=64)
    _string(message, "vault_id", required=False, limit=64)
    _count(message, "files_total")


def _validate_job_progress(message: dict[str, Any]) -> None:
    _uuid(message, "job_id")
    for field in COUNTERS + BACKUP_COUNTERS:
        _count(message, field)
    percent = message.get("percent", 0)
    if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
        raise _fail("job_progress", "'percent' must be a number from 0 to 100.")


def _validate_job_finished(message: dict[str, Any]) -> None:
    _uuid(message, "job_id")
    if message.get("status") not in JOB_FINISHED_STATUSES:
        raise _fail("job_finished", "'status' must be succeeded, warning, failed or cancelled.")
    for field in COUNTERS + BACKUP_COUNTERS:
        _count(message, field)
    _string(message, "snapshot_id", required=False, limit=64)
    for line in _list_of_objects(message, "log_lines", MAX_LOG_LINES):
        _string({"type": "job_finished", **line}, "message", limit=1000)


VALIDATORS = {
    "hello": _validate_hello,
    "status": _validate_status,
    "heartbeat": lambda message: None,
    "command_ack": lambda message: _uuid(message, "command_id"),
    "command_result": _validate_command_result,
    "job_started": _validate_job_started,
    "job_progress": _validate_job_progress,
    "job_finished": _validate_job_finished,
}


def parse(text: str | None) -> dict[str, Any]:
    """Return the frame as a validated message, or raise ProtocolError."""
    if text is None:
        raise ProtocolError("malformed_json", "Send text frames holding JSON objects.")
    try:
        message = json.loads(text)
    except ValueError:
        raise ProtocolError("malformed_json", "The frame is not valid JSON.") from None
    if not isinstance(message, dict):
        raise ProtocolError("malformed_json", "The frame must hold a JSON object.")
    if message.get("v") != VERSION:
        raise ProtocolError("unsupported_version", f"This server speaks protocol version {VERSION}.")
    message_type = message.get("type")
    if message_type not in VALIDATORS:
        raise ProtocolError("unknown_type", f"Unknown message type {message_type!r}.")
    VALIDATORS[message_type](message)
    return message
