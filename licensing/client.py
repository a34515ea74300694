"""The portal's HTTP client for the licensing service: one signed POST, and what can go wrong with it.

Failures come in two kinds. ServiceUnreachable (refused connection, timeout, a 5xx or 429, an
answer that is not JSON) is worth trying again later; ServiceRefused (another 4xx) says something
about the request itself, and its `code` says what.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from licensing import conf
from licensing.signing import signed_headers

MAX_ANSWER_BYTES = 1024 * 1024


class LicensingError(Exception):
    """Something the caller of a licensing function should know about; see the subclasses."""


class LicensingNotConfigured(LicensingError):
    """This portal has no licence yet (role "portal": run manage.py licensing_configure)."""


class ServiceUnreachable(LicensingError):
    """The service could not be reached or failed (try again later)."""

    def __init__(self, outcome: str, detail: str, http_status: int | None = None) -> None:
        super().__init__(f"The licensing service is unreachable ({outcome}): {detail}")
        self.outcome = outcome
        self.detail = detail
        self.http_status = http_status


class ServiceRefused(LicensingError):
    """The service answered with a 4xx: the request was understood and refused."""

    def __init__(self, http_status: int, code: str, detail: str, answer: dict[str, Any]) -> None:
        super().__init__(f"The licensing service refused the request ({http_status} {code}): {detail}")
        self.http_status = http_status
        self.code = code
        self.detail = detail
        self.answer = answer


@dataclass(frozen=True)
class Answer:
    status: int
    data: dict[str, Any]
    duration_ms: int


def _read_json(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def post_signed(
    *,
    endpoint: str,
    body: bytes,
    serial: str,
    licence_key: str,
    idempotency_key: str,
    content_encoding: str = "",
    timeout: float | None = None,
) -> Answer:
    """POST `body` to one of the service's endpoints, signed; return its JSON answer."""
    timeout = conf.request_timeout() if timeout is None else timeout
    url = conf.service_url(endpoint)
    headers = signed_headers(
        key=licence_key,
        serial=serial,
        method="POST",
        path=urlsplit(url).path,
        body=body,
        idempotency_key=idempotency_key,
    )
    headers["Content-Type"] = "application/json"
    if content_encoding:
        headers["Content-Encoding"] = content_encoding
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - a configured URL
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            raw = response.read(MAX_ANSWER_BYTES)
            status = response.status
    except urllib.error.HTTPError as error:
        raw = error.read(MAX_ANSWER_BYTES)
        status = error.code
        data = _read_json(raw)
        if status >= 500 or status == 429:
            raise ServiceUnreachable("server_error", f"HTTP {status}", http_status=status) from None
        raise ServiceRefused(
            status, str(data.get("error", "refused")), str(data.get("detail", raw[:200])), data
        ) from None
    except TimeoutError as error:
        raise ServiceUnreachable("timeout", f"no answer within {timeout:g} s") from error
    except urllib.error.URLError as error:
        reason = error.reason
        if isinstance(reason, TimeoutError):
            raise ServiceUnreachable("timeout", f"no answer within {timeout:g} s") from error
        raise ServiceUnreachable("unreachable", str(reason)) from error
    except (ConnectionError, http.client.HTTPException, OSError) as error:
        raise ServiceUnreachable("unreachable", f"{type(error).__name__}: {error}") from error
    duration_ms = int((time.monotonic() - started) * 1000)
    data = _read_json(raw)
    if not data:
        raise ServiceUnreachable("server_error", f"HTTP {status} without a JSON answer", http_status=status)
    return Answer(status=status, data=data, duration_ms=duration_ms)
