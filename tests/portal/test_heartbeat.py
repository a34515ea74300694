"""The platform heartbeat: scheduled by a data migration, written by a Celery task, read as health."""

from __future__ import annotations

import importlib
import os
from datetime import timedelta

import pytest
from django.apps import apps as installed_apps
from django.db import connection
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

from tenants.health import platform_health
from tenants.models import ServiceHeartbeat
from tenants.tasks import record_heartbeat

migration = importlib.import_module("tenants.migrations.0003_schedule_platform_heartbeat")


def test_it_schedules_the_heartbeat_every_30_seconds(db):
    task = PeriodicTask.objects.get(name="platform heartbeat")

    assert task.task == "tenants.tasks.record_heartbeat"
    assert task.enabled
    assert (task.interval.every, task.interval.period) == (30, IntervalSchedule.SECONDS)
    assert task.expire_seconds == 60


def test_it_records_a_heartbeat_when_called(db):
    record_heartbeat()

    heartbeat = ServiceHeartbeat.objects.get(service="worker")
    assert timezone.now() - heartbeat.last_seen_at < timedelta(seconds=5)
    assert f"pid {os.getpid()}" in heartbeat.detail


def test_it_records_a_heartbeat_through_celery(db):
    ServiceHeartbeat.objects.create(service="worker", last_seen_at=timezone.now() - timedelta(hours=1))

    result = record_heartbeat.apply()

    assert result.successful()
    heartbeat = ServiceHeartbeat.objects.get(service="worker")
    assert timezone.now() - heartbeat.last_seen_at < timedelta(seconds=5)


def test_it_keeps_the_schedule_once_when_migrated_twice(db):
    migration.schedule_heartbeat(installed_apps, None)

    assert PeriodicTask.objects.filter(name="platform heartbeat").count() == 1
    assert IntervalSchedule.objects.filter(every=30, period=IntervalSchedule.SECONDS).count() == 1


def test_it_removes_the_schedule_when_migrated_back(db):
    before = timezone.now()

    migration.unschedule_heartbeat(installed_apps, None)

    assert not PeriodicTask.objects.filter(name="platform heartbeat").exists()
    # The 30-second interval goes with it, unless another periodic task (the privacy sweep) uses it.
    leftover = IntervalSchedule.objects.filter(every=30, period=IntervalSchedule.SECONDS)
    assert all(schedule.periodictask_set.exists() for schedule in leftover)
    # A running beat learns of the change through this row.
    assert PeriodicTasks.objects.get(ident=1).last_update >= before

    migration.schedule_heartbeat(installed_apps, None)
    assert PeriodicTask.objects.get(name="platform heartbeat").interval.every == 30


def test_it_leaves_an_interval_that_another_task_uses(db):
    interval = PeriodicTask.objects.get(name="platform heartbeat").interval
    PeriodicTask.objects.create(name="something else", task="tenants.tasks.record_heartbeat", interval=interval)

    migration.unschedule_heartbeat(installed_apps, None)

    assert IntervalSchedule.objects.filter(pk=interval.pk).exists()


def test_it_reports_a_fresh_worker(db):
    record_heartbeat()

    health = platform_health()

    assert health.worker_fresh
    assert health.worker_age_seconds is not None and 0 <= health.worker_age_seconds < 5
    assert health.database_vendor == connection.vendor


def test_it_reports_a_stale_worker_after_90_seconds(db):
    record_heartbeat()
    seen = ServiceHeartbeat.objects.get(service="worker").last_seen_at

    assert platform_health(now=seen + timedelta(seconds=89)).worker_fresh
    stale = platform_health(now=seen + timedelta(seconds=90))
    assert not stale.worker_fresh
    assert stale.worker_age_seconds == pytest.approx(90)


def test_it_reports_no_worker_before_the_first_heartbeat(db):
    health = platform_health()

    assert health.worker_last_seen_at is None
    assert health.worker_age_seconds is None
    assert not health.worker_fresh


def test_it_names_the_back_ends_without_secrets(db, settings):
    settings.CELERY_BROKER_URL = "redis://:hunter2@redis.internal:6379/0"
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer"}}

    health = platform_health()

    assert health.broker_transport == "redis"
    assert health.channel_layer == "RedisChannelLayer"
    assert "hunter2" not in repr(health)


def test_it_names_the_embedded_back_ends(db, settings):
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

    health = platform_health()

    assert (health.broker_transport, health.channel_layer) == ("filesystem", "InMemoryChannelLayer")
