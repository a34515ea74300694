"""DRF sees the API key that tenants.middleware.ApiKeyMiddleware already checked."""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, Any] | None:
        api_key = getattr(request._request, "api_key", None)
        if api_key is None:
            return None
        return (api_key.user, api_key)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
