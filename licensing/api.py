"""The licensing service's HTTP endpoints, called by portals with signed requests (no session, no
cookies, hence no CSRF token). Errors are JSON: {"error": code, "detail": sentence}.

    POST /licensing/v1/reports/    a usage report (gzip JSON); 201 stored, 200 a repeat of a stored key
    POST /licensing/v1/erasures/   {"username", "subject_kind", "reference"}; 200 with the receipt
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from licensing import conf, services_receiver
from licensing.services_receiver import ReceiveError
from licensing.signing import IDEMPOTENCY_HEADER
from tenants.net import request_client_ip

MAX_ERASURE_BYTES = 16 * 1024


def _error(status: int, code: str, detail: str) -> JsonResponse:
    return JsonResponse({"error": code, "detail": detail}, status=status)


def service_endpoint(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Answer 404 unless this installation is the licensing service; turn ReceiveError into JSON."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not conf.service_enabled():
            return _error(404, "not_found", "This installation is not a licensing service.")
        try:
            return view(request, *args, **kwargs)
        except ReceiveError as error:
            return _error(error.status, error.code, error.detail)

    return wrapper


def _body(request: HttpRequest, limit: int) -> bytes:
    """Read the raw body up to `limit` bytes (Django's in-memory limit is far smaller than a report)."""
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise ReceiveError(413, "too_large", f"The body is larger than {limit} bytes.")
    body = request.read(limit + 1)
    if len(body) > limit:
        raise ReceiveError(413, "too_large", f"The body is larger than {limit} bytes.")
    return body


@csrf_exempt
@require_POST
@service_endpoint
def reports(request: HttpRequest) -> HttpResponse:
    body = _body(request, conf.MAX_WIRE_BYTES)
    portal = services_receiver.portal_authenticate(
        headers=request.headers, method=request.method or "POST", path=request.path, body=body
    )
    receipt, stored = services_receiver.report_receive(
        portal=portal,
        idempotency_key=request.headers.get(IDEMPOTENCY_HEADER, ""),
        body=body,
        content_encoding=request.headers.get("Content-Encoding", "").strip().lower(),
        source_ip=request_client_ip(request.META),
    )
    return JsonResponse(receipt, status=201 if stored else 200)


@csrf_exempt
@require_POST
@service_endpoint
def erasures(request: HttpRequest) -> HttpResponse:
    body = _body(request, MAX_ERASURE_BYTES)
    portal = services_receiver.portal_authenticate(
        headers=request.headers, method=request.method or "POST", path=request.path, body=body
    )
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        data = None
    if not isinstance(data, dict):
        return _error(400, "invalid_erasure", "The body must be a JSON object.")
    receipt = services_receiver.erasure_apply(
        portal=portal,
        username=str(data.get("username", "")),
        subject_kind=str(data.get("subject_kind", "")),
        reference=str(data.get("reference", "")),
    )
    return JsonResponse(receipt, status=200)
