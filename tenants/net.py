"""Where a request came from, believing X-Forwarded-For only from configured proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from django.conf import settings
from django.http import HttpRequest


def _is_trusted_proxy(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(entry, strict=False) for entry in settings.TRUSTED_PROXIES)


def client_ip(remote_addr: str | None, forwarded_for: str | None) -> str | None:
    """Return the client's address: the first untrusted hop, walking X-Forwarded-For from the right."""
    if not remote_addr:
        return None
    if not forwarded_for or not _is_trusted_proxy(remote_addr):
        return remote_addr
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted_proxy(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return remote_addr
    return remote_addr


def request_client_ip(meta: Mapping[str, str]) -> str | None:
    return client_ip(meta.get("REMOTE_ADDR"), meta.get("HTTP_X_FORWARDED_FOR"))


def axes_client_ip(request: HttpRequest) -> str | None:
    """Give django-axes the client's own address, so that a lockout behind a proxy hits one client."""
    return request_client_ip(request.META)
