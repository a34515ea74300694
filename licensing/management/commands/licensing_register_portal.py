"""Register a portal with this licensing service and print its serial and key (shown only once)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from licensing import conf
from licensing.services_receiver import portal_register
from tenants.audit import Actor


class Command(BaseCommand):
    help = "Register a portal for billing; print the serial and licence key to give its operator."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--name", required=True, help="A name for the portal, shown on the billing pages.")

    def handle(self, *args: Any, **options: Any) -> None:
        if not conf.service_enabled():
            raise CommandError(f"LICENSING_ROLE is {conf.role()!r}: this installation is not a licensing service.")
        registration = portal_register(actor=Actor(label="manage.py", role="system"), name=options["name"])
        self.stdout.write(f"serial {registration.portal.serial}\nkey    {registration.licence_key}")
