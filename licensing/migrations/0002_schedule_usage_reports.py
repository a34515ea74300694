from django.db import migrations

from tenants.schedules import schedule_every, unschedule

BUILD = "build usage report"
SWEEP = "sweep usage report outbox"


def schedule(apps, schema_editor):
    # Every five minutes: a no-op (one query) once the last closed day's report exists, so a new
    # day's report is built within minutes of midnight UTC, and a newcomer's demo shows one soon.
    schedule_every(
        apps,
        name=BUILD,
        task="licensing.tasks.build_usage_report",
        seconds=300,
        description="Build the usage report for the last closed day (UTC) unless it exists; it is then sent.",
        expire_seconds=600,
    )
    schedule_every(
        apps,
        name=SWEEP,
        task="licensing.tasks.sweep_usage_outbox",
        seconds=300,
        description="Send unsent usage reports again if their scheduled retry was lost (a worker died).",
        expire_seconds=600,
    )


def unschedule_reports(apps, schema_editor):
    unschedule(apps, name=BUILD)
    unschedule(apps, name=SWEEP)


class Migration(migrations.Migration):
    dependencies = [
        ("licensing", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(schedule, unschedule_reports)]
