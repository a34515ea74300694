"""Periodic housekeeping for the fleet. Each task takes no arguments and is safe to run twice."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings

from devices import services
from devices.protocol import MISSED_HEARTBEATS


@shared_task
def expire_commands() -> int:
    """Mark commands nobody acknowledged before their expiry as expired."""
    return services.commands_expire()


@shared_task
def mark_silent_devices_offline() -> int:
    """Mark offline devices whose connection ended without a goodbye (e.g. a web process crashed)."""
    silence = timedelta(seconds=MISSED_HEARTBEATS * settings.DEVICE_HEARTBEAT_INTERVAL + 10)
    return services.devices_mark_stale_offline(older_than=silence)
