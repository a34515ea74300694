"""Search every table and text column for a subject's identifiers; exit non-zero on any hit.

manage.py residue_scan --request 12            # a running request's held identifiers
manage.py residue_scan --identifier alice --identifier 198.51.100.7
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tenants.models_erasure import ErasureRequest
from tenants.residue import residue_scan
from tenants.services_erasure import OWN_COLUMNS


class Command(BaseCommand):
    help = "Search every table and text column for an erased subject's identifiers and report each hit."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--identifier", action="append", default=[], help="A string to search for (repeat).")
        parser.add_argument("--request", type=int, help="Use the identifiers a running erasure request holds.")

    def handle(self, *args: Any, **options: Any) -> None:
        identifiers = list(options["identifier"])
        if options["request"] is not None:
            request = ErasureRequest.objects.filter(pk=options["request"]).first()
            if request is None:
                raise CommandError("No such erasure request.")
            if not request.identifiers:
                raise CommandError(
                    "This request holds no identifiers (it completed, or has not started): pass --identifier."
                )
            identifiers += request.identifiers.get("values", [])
        if not identifiers:
            raise CommandError("Give --identifier (one or more) or --request.")
        report = residue_scan(identifiers=identifiers, exclude=OWN_COLUMNS)
        for hit in report.hits:
            self.stdout.write(f"{hit.table}.{hit.column}: {hit.rows} row(s)")
        summary = f"Searched {report.columns} columns in {report.tables} tables: {len(report.hits)} hit(s)."
        if report.hits:
            self.stdout.write(summary)
            raise CommandError("Residue found.")
        self.stdout.write(summary + " Nothing found.")
