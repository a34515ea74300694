"""The schedules: created by a migration, editable like any beat schedule, and end to end with a
real beat and a real worker on the embedded (filesystem) broker delivering a report to the portal's
own licensing service over HTTP."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass

import pytest
from django.apps import apps as installed_apps
from django.utils import timezone
from django_celery_beat.models import IntervalSchedule, PeriodicTask, PeriodicTasks

from licensing.models import UsageReport
from licensing.tasks import build_usage_report, sweep_usage_outbox
from portal.management.commands.rundemo import beat_argv, worker_argv
from tests.live import REPO, LivePortal, live_portal, wait_for

migration = importlib.import_module("licensing.migrations.0002_schedule_usage_reports")
SCHEDULES = {
    "build usage report": "licensing.tasks.build_usage_report",
    "sweep usage report outbox": "licensing.tasks.sweep_usage_outbox",
}


@pytest.mark.django_db
def test_it_schedules_building_and_sweeping_after_migrations():
    for name, task_name in SCHEDULES.items():
        task = PeriodicTask.objects.get(name=name)
        assert task.task == task_name and task.enabled
        assert (task.interval.every, task.interval.period) == (300, IntervalSchedule.SECONDS)
        assert task.expire_seconds == 600


@pytest.mark.django_db
def test_it_keeps_the_schedules_once_when_migrated_twice():
    migration.schedule(installed_apps, None)

    assert PeriodicTask.objects.filter(name__in=SCHEDULES).count() == 2


@pytest.mark.django_db
def test_it_removes_the_schedules_when_migrated_back_and_tells_beat():
    before = timezone.now()

    migration.unschedule_reports(installed_apps, None)

    assert not PeriodicTask.objects.filter(name__in=SCHEDULES).exists()
    assert PeriodicTasks.objects.get(ident=1).last_update >= before
    migration.schedule(installed_apps, None)
    assert PeriodicTask.objects.filter(name__in=SCHEDULES).count() == 2


@pytest.mark.django_db
def test_it_builds_once_per_period_however_often_beat_sends_the_task(small_fleet, licence):
    assert build_usage_report.apply().get().endswith("built")
    assert build_usage_report.apply().get().endswith("exists")
    assert UsageReport.objects.count() == 1


@pytest.mark.django_db
def test_it_builds_nothing_without_a_licence_or_on_the_service(small_fleet, settings):
    settings.LICENSING_ROLE = "portal"
    assert build_usage_report.apply().get() == "not_configured"
    settings.LICENSING_ROLE = "service"
    assert build_usage_report.apply().get() == "disabled"
    assert sweep_usage_outbox.apply().get() is False
    assert not UsageReport.objects.exists()


# --- End to end ------------------------------------------------------------------------------


@dataclass
class SelfReportingPortal(LivePortal):
    """A live portal whose licensing service is itself (the embedded default, on its own port)."""

    def __post_init__(self) -> None:
        self.env["LICENSING_SERVICE_URL"] = self.url + "/licensing/"


SEED = """
from datetime import timedelta
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from devices.models import BackupAccount, Device, ProtectedItem
from tenants.models import Tenant
tenant = Tenant.objects.create(slug="e2e", name="End to end")
account = BackupAccount.objects.create(tenant=tenant, username="e2e-user", login_verifier="x")
device = Device.objects.create(tenant=tenant, account=account, device_id="e2e-device-1", name="e2e-laptop",
                               token_hash="e" * 64, timezone="Asia/Kathmandu", public_ip="198.51.100.9")
ProtectedItem.objects.create(tenant=tenant, device=device, item_id="1", name="/srv/secret", engine="mysql")
# What an operator would do in the Django admin: run the build every second instead of every 5 minutes.
every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
task = PeriodicTask.objects.get(name="build usage report")
task.interval = every_second
task.save()
print(json.dumps(True))
"""

STATE = """
from licensing.models import ReceivedReport, UsageReport
from licensing.payload import decompress
print(json.dumps({
    "reports": list(UsageReport.objects.values_list("status", flat=True)),
    "attempts": list(UsageReport.objects.values_list("attempts__outcome", flat=True)),
    "received": [decompress(bytes(r.body), limit=10**7).decode() for r in ReceivedReport.objects.all()],
    "ips": list(ReceivedReport.objects.values_list("source_ip", flat=True)),
}))
"""


def _start(argv: list[str], env: dict[str, str], log) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@pytest.mark.timeout(180)
def test_it_builds_and_delivers_a_report_with_a_real_beat_and_worker(tmp_path):
    with live_portal(tmp_path, redis_url="", seed=SEED, portal_class=SelfReportingPortal) as portal:
        assert "REDIS_URL" not in portal.env  # the embedded broker: folders under the portal's data dir
        logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("worker", "beat")}  # noqa: SIM115
        processes = [_start(worker_argv(), portal.env, logs["worker"]), _start(beat_argv(), portal.env, logs["beat"])]
        try:

            def delivered():
                state = portal.django(STATE)
                return state if state["reports"] == ["delivered"] and state["received"] else None

            started = time.monotonic()
            state = wait_for(delivered, timeout=90, what="a delivered report")
            elapsed = time.monotonic() - started
        finally:
            for process in processes:
                _stop(process)
            for log in logs.values():
                log.close()
        beat_log = (tmp_path / "beat.log").read_text()
        worker_log = (tmp_path / "worker.log").read_text()
        assert "Sending due task build usage report" in beat_log, beat_log
        assert "licensing.tasks.send_usage_reports" in worker_log, worker_log
        (received,) = state["received"]
        assert '"name":"e2e-laptop","account":"e2e-user","boosters":["mysql"]' in received
        for never_sent in ("Asia/Kathmandu", "198.51.100.9", "/srv/secret", "End to end", '"e2e"'):
            assert never_sent not in received
        assert state["attempts"] == ["delivered"] and state["ips"] == ["127.0.0.1"]
        assert elapsed < 90
