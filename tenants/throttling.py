"""API throttles that keep the API up when their cache (Redis) is down.

Throttling protects the portal; refusing every request because the counter store is unreachable
would turn a Redis outage into an API outage. While the cache fails, requests are let through and
the failure is logged.
"""

from __future__ import annotations

import logging
from typing import Any

from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

logger = logging.getLogger(__name__)


class FailOpenMixin:
    def allow_request(self, request: Any, view: Any) -> bool:
        try:
            return super().allow_request(request, view)  # type: ignore[misc]
        except Exception as error:  # the cache back-end is unreachable
            logger.warning("Throttling skipped: its cache is unavailable (%s)", error)
            return True


class ResilientAnonRateThrottle(FailOpenMixin, AnonRateThrottle):
    pass


class ResilientUserRateThrottle(FailOpenMixin, UserRateThrottle):
    pass
