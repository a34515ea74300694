"""Recompute the audit chains and check them against their signed digests."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.audit_chain import chains_verify
from tenants.models import Tenant


class Command(BaseCommand):
    help = "Verify the hash-chained audit log; report the first modified, deleted or inserted row of each chain."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenant", help="Verify only this tenant's chain (its slug).")

    def handle(self, *args: Any, **options: Any) -> None:
        tenant_id = None
        if options["tenant"]:
            tenant = Tenant.objects.filter(slug=options["tenant"]).first()
            if tenant is None:
                raise CommandError(f"No tenant {options['tenant']!r}.")
            tenant_id = tenant.pk
        reports = chains_verify(tenant_id=tenant_id)
        for report in reports:
            status = "intact" if report.intact else "BROKEN"
            self.stdout.write(
                f"{report.chain}: {status}, {report.rows} rows, {report.digests_checked} signed digests matched"
            )
            for problem in report.problems:
                self.stdout.write(f"  {problem}")
        broken = [report.chain for report in reports if not report.intact]
        if broken:
            raise CommandError(f"Audit chains failed verification: {', '.join(broken)}")
