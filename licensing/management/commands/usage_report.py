"""Build the usage report for the last closed day (unless it exists) and send what waits, now."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from licensing import conf, services
from licensing.client import LicensingNotConfigured


class Command(BaseCommand):
    help = "Build the usage report for the last closed day (UTC) unless it exists, then send every unsent report."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-send", action="store_true", help="Only build; leave sending to the worker.")

    def handle(self, *args: Any, **options: Any) -> None:
        if not conf.reports_enabled():
            raise CommandError(f"LICENSING_ROLE is {conf.role()!r}: this installation sends no usage reports.")
        try:
            report, created = services.usage_report_create()
        except LicensingNotConfigured as error:
            raise CommandError(str(error)) from None
        self.stdout.write(
            f"{report.period}: {'built' if created else 'exists'}, {report.device_count} devices, "
            f"{report.size_bytes} bytes, sha256 {report.sha256}"
        )
        if options["no_send"]:
            return
        try:
            run = services.outbox_deliver_pending(force=True)
        except services.DeliveryFailed as failure:
            raise CommandError(str(failure)) from None
        self.stdout.write(f"sent {run.delivered} report(s); outbox {run.state}")
