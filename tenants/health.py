"""Platform health: proof that background processes are alive, and which back-ends are in use."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection
from django.utils import timezone

from tenants.models import ServiceHeartbeat

WORKER = "worker"
# Beat sends a heartbeat every 30 s; three missed beats mean the worker (or beat) is down.
HEARTBEAT_FRESH_FOR = timedelta(seconds=90)


def heartbeat_record(*, service: str, detail: str = "") -> ServiceHeartbeat:
    """Record that `service` is alive now: one row per service, updated in place."""
    heartbeat, _ = ServiceHeartbeat.objects.update_or_create(
        service=service, defaults={"last_seen_at": timezone.now(), "detail": detail[:200]}
    )
    return heartbeat


def this_process_label() -> str:
    """Return "host pid N", which tells the operator which process sent a heartbeat."""
    return f"{socket.gethostname()} pid {os.getpid()}"


@dataclass(frozen=True)
class PlatformHealth:
    worker_last_seen_at: datetime | None
    worker_age_seconds: float | None
    worker_detail: str
    # False when no heartbeat arrived recently: either the worker or beat (which schedules it) is down.
    worker_fresh: bool
    database_vendor: str
    channel_layer: str
    broker_transport: str


def platform_health(*, now: datetime | None = None) -> PlatformHealth:
    """Return the worker's heartbeat age and freshness and the database, channel layer and broker in use."""
    now = now or timezone.now()
    heartbeat = ServiceHeartbeat.objects.filter(service=WORKER).first()
    age = (now - heartbeat.last_seen_at).total_seconds() if heartbeat else None
    layer_backend = str(settings.CHANNEL_LAYERS.get("default", {}).get("BACKEND", ""))
    return PlatformHealth(
        worker_last_seen_at=heartbeat.last_seen_at if heartbeat else None,
        worker_age_seconds=age,
        worker_detail=heartbeat.detail if heartbeat else "",
        worker_fresh=age is not None and age < HEARTBEAT_FRESH_FOR.total_seconds(),
        database_vendor=connection.vendor,
        channel_layer=layer_backend.rsplit(".", 1)[-1] or "none",
        # Only the scheme: the URL may carry a password.
        broker_transport=urlsplit(settings.CELERY_BROKER_URL).scheme or "unknown",
    )
