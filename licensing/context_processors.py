"""The banner on every page when this portal has gone unreported for longer than the grace period."""

from __future__ import annotations

import logging
from typing import Any

from django.core.cache import cache
from django.http import HttpRequest

from licensing import conf
from licensing.selectors import ReportingStatus, reporting_status

logger = logging.getLogger(__name__)
CACHE_KEY = "licensing:reporting-status"
# The status is one query; each process asks at most once a minute.
CACHE_SECONDS = 60


def _status() -> ReportingStatus:
    try:
        status = cache.get(CACHE_KEY)
    except Exception as error:  # a cache outage must not take every page down
        logger.warning("The cache is unavailable for the usage reporting status: %s", error)
        return reporting_status()
    if status is None:
        status = reporting_status()
        try:
            cache.set(CACHE_KEY, status, CACHE_SECONDS)
        except Exception as error:
            logger.warning("The cache is unavailable for the usage reporting status: %s", error)
    return status


def usage_reporting(request: HttpRequest) -> dict[str, Any]:
    """Expose which licensing pages exist here, and `licensing_unreported` (the status) when
    reporting is overdue."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    context: dict[str, Any] = {"licensing_reports": conf.reports_enabled(), "licensing_service": conf.service_enabled()}
    if context["licensing_reports"]:
        status = _status()
        context["licensing_unreported"] = status if status.overdue else None
    return context
