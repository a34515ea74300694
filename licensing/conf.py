"""Which side of licensing this installation runs, and the fixed numbers both sides agree on.

`settings.LICENSING_ROLE` is "portal" (build and send usage reports), "service" (receive them and
bill) or "both" (the embedded default: the portal reports to its own service over HTTP).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

PORTAL = "portal"
SERVICE = "service"
BOTH = "both"
ROLES = (PORTAL, SERVICE, BOTH)

# A signed request whose timestamp is further than this from the service's clock is refused: a
# captured request cannot be replayed later, and a portal's clock may drift this much.
REPLAY_WINDOW = timedelta(minutes=5)
# Exponential backoff between failed deliveries (Celery's own full-jitter formula): 30 s, 60 s,
# 120 s ... capped at one hour, so a service that is down for days gets about one try an hour.
BACKOFF_FACTOR_SECONDS = 30
BACKOFF_MAX_SECONDS = 3600
# The sweeper re-enqueues a send that should have happened this long ago and did not (a worker
# died holding the retry): nothing waits for a message that was lost.
SWEEP_OVERDUE = timedelta(minutes=2)
# Limits on what the service accepts: the compressed body on the wire and the JSON inside it.
MAX_WIRE_BYTES = 64 * 1024 * 1024
MAX_PAYLOAD_BYTES = 512 * 1024 * 1024


def role() -> str:
    value = settings.LICENSING_ROLE
    if value not in ROLES:
        raise ImproperlyConfigured(f"LICENSING_ROLE must be one of {', '.join(ROLES)}, not {value!r}.")
    return value


def reports_enabled() -> bool:
    """Return whether this installation builds and sends usage reports (the portal side)."""
    return role() in (PORTAL, BOTH)


def service_enabled() -> bool:
    """Return whether this installation is (also) the licensing service that receives them."""
    return role() in (SERVICE, BOTH)


def request_timeout() -> float:
    """Seconds the portal waits for the service before counting an attempt as failed."""
    return float(settings.LICENSING_TIMEOUT_SECONDS)


def send_lease() -> timedelta:
    """How long a sender holds the oldest unsent report; a crashed sender's claim lapses after it."""
    return timedelta(seconds=2 * request_timeout() + 30)


def grace_period() -> timedelta:
    """How long the portal may go without a delivered report before every page says so."""
    return timedelta(hours=settings.LICENSING_GRACE_HOURS)


def service_url(endpoint: str) -> str:
    """Return the URL of one of the service's endpoints ("v1/reports/", "v1/erasures/")."""
    return settings.LICENSING_SERVICE_URL.rstrip("/") + "/" + endpoint.lstrip("/")
