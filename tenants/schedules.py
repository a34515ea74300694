"""Helpers for data migrations that create Celery beat schedules (django-celery-beat rows).

Schedules are created by migrations so that they exist on every installation and stay editable in
the Django admin; get_or_create leaves an operator's later edits alone.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone


def _tell_running_beat(apps: Any) -> None:
    # Beat reloads its schedule when this row changes; historical models do not fire the signal
    # that the real PeriodicTask.save() would, so touch it here.
    periodic_tasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    periodic_tasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def schedule_every(apps: Any, *, name: str, task: str, seconds: int, description: str, expire_seconds: int) -> None:
    interval_schedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    periodic_task = apps.get_model("django_celery_beat", "PeriodicTask")
    interval = interval_schedule.objects.filter(every=seconds, period="seconds").order_by("pk").first()
    if interval is None:
        interval = interval_schedule.objects.create(every=seconds, period="seconds")
    periodic_task.objects.get_or_create(
        name=name,
        defaults={
            "task": task,
            "interval": interval,
            "enabled": True,
            "expire_seconds": expire_seconds,
            "description": description,
        },
    )
    _tell_running_beat(apps)


def unschedule(apps: Any, *, name: str) -> None:
    """Remove a schedule, and its interval unless another task still uses that interval."""
    interval_schedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    periodic_task = apps.get_model("django_celery_beat", "PeriodicTask")
    interval_ids = list(periodic_task.objects.filter(name=name).values_list("interval_id", flat=True))
    periodic_task.objects.filter(name=name).delete()
    interval_schedule.objects.filter(pk__in=interval_ids, periodictask__isnull=True).delete()
    _tell_running_beat(apps)
