"""Give this portal the serial and licence key the licensing service issued for it."""

from __future__ import annotations

import getpass
import os
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from licensing import services


class Command(BaseCommand):
    help = (
        "Set this portal's licensing serial and key. The key is read from the environment variable named by "
        "--key-env, or asked for (never taken from the command line, where other users could read it)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--serial", required=True)
        parser.add_argument("--key-env", default="", help="Read the key from this environment variable.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["key_env"]:
            key = os.environ.get(options["key_env"], "")
        elif sys.stdin.isatty():
            key = getpass.getpass("Licence key: ")
        else:
            key = sys.stdin.readline()
        key = key.strip()
        if len(key) < 20:
            raise CommandError("The licence key is missing or too short.")
        licence = services.licence_configure(serial=options["serial"].strip(), licence_key=key)
        self.stdout.write(f"This portal reports as {licence.serial}.")
