"""Rotate the key that encrypts secrets at rest, while the portal keeps running.

    manage.py rotate_secrets_key                # embedded: add a new key to the key file, re-encrypt all
    manage.py rotate_secrets_key --reencrypt    # re-encrypt every value not under the current key (SECRETS_KEYS)
    manage.py rotate_secrets_key --generate     # print a new "id=key" entry for SECRETS_KEYS, change nothing
    manage.py rotate_secrets_key --retire       # embedded: drop keys no stored value uses any more

Each value is re-encrypted with a compare-and-swap on its row (UPDATE ... WHERE pk = ? AND column =
<the token read>), so a write by the running portal in between is never overwritten: that row is
just counted as changed meanwhile and needs no rewrite. Running processes read the key file again as
soon as it changes, so they decrypt (and encrypt with) the new key at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction

from tenants import secrets

BATCH = 500


def _names(model: Any, field: Any) -> tuple[str, str, str]:
    """Return the quoted table, column and primary-key column of an encrypted field."""
    quote = connection.ops.quote_name
    return quote(model._meta.db_table), quote(str(field.column)), quote(str(model._meta.pk.column))


def _tokens(model: Any, field: Any) -> Iterator[tuple[Any, str]]:
    """Yield (primary key, stored token) of every non-empty value of one encrypted column, raw."""
    table, column, pk = _names(model, field)
    last = None
    while True:
        with connection.cursor() as cursor:
            where = f"{column} <> ''" + (f" AND {pk} > %s" if last is not None else "")
            cursor.execute(
                f"SELECT {pk}, {column} FROM {table} WHERE {where} ORDER BY {pk} LIMIT {BATCH}",  # noqa: S608
                [last] if last is not None else [],
            )
            rows = cursor.fetchall()
        if not rows:
            return
        yield from rows
        last = rows[-1][0]


def reencrypt(*, stdout: Any = None) -> dict[str, int]:
    """Re-encrypt every stored secret that is not under the current key; return counts per field."""
    current = secrets.keyring().current_id
    counts: dict[str, int] = {}
    for model, field in secrets.encrypted_fields():
        label = f"{model._meta.label}.{field.name}"
        table, column, pk = _names(model, field)
        rewritten = 0
        for key, token in _tokens(model, field):
            if secrets.token_key_id(token) == current:
                continue
            fresh = secrets.secret_encrypt(
                secrets.secret_decrypt(token, context=field.context()), context=field.context()
            )
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {table} SET {column} = %s WHERE {pk} = %s AND {column} = %s",  # noqa: S608
                    [fresh, key, token],
                )
                rewritten += cursor.rowcount
        counts[label] = rewritten
        if stdout is not None:
            stdout.write(f"{label}: re-encrypted {rewritten} values under key {current}.")
    return counts


def keys_in_use() -> set[str]:
    used = set()
    for model, field in secrets.encrypted_fields():
        for _, token in _tokens(model, field):
            key_id = secrets.token_key_id(token)
            if key_id:
                used.add(key_id)
    return used


class Command(BaseCommand):
    help = "Add a key for secrets at rest and re-encrypt every stored secret under it, without downtime."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--generate", action="store_true", help="Only print a new key entry for SECRETS_KEYS.")
        parser.add_argument(
            "--reencrypt", action="store_true", help="Do not add a key: re-encrypt under the current one."
        )
        parser.add_argument("--retire", action="store_true", help="Remove keys no stored value uses from the key file.")

    def handle(self, *args: Any, **options: Any) -> None:
        from django.conf import settings

        if options["generate"]:
            key_id, key = secrets.key_generate()
            self.stdout.write(f"{key_id}={key}")
            return
        if options["retire"]:
            self._retire(configured=bool(settings.SECRETS_KEYS))
            return
        if not options["reencrypt"]:
            if settings.SECRETS_KEYS:
                raise CommandError(
                    "The keys come from SECRETS_KEYS, which this command cannot change. Generate one with "
                    "--generate, add it to SECRETS_KEYS on every process (second, then first: see "
                    "docs/deployment.md), then run this command with --reencrypt."
                )
            key_id, key = secrets.key_generate()
            secrets.key_file_add(key_id, key)
            self.stdout.write(f"Added key {key_id} to {secrets.key_file_path()}; it encrypts from now on.")
        counts = reencrypt(stdout=self.stdout)
        self.stdout.write(f"Done: {sum(counts.values())} values re-encrypted under key {secrets.keyring().current_id}.")

    def _retire(self, *, configured: bool) -> None:
        used = keys_in_use() | {secrets.keyring().current_id}
        if configured:
            unused = [key_id for key_id, _ in secrets.keyring().keys if key_id not in used]
            self.stdout.write(
                "No stored value uses "
                + (", ".join(unused) if unused else "any key but those in use")
                + "; remove such keys from SECRETS_KEYS."
            )
            return
        removed = secrets.key_file_retire(used)
        self.stdout.write(
            f"Removed {len(removed)} unused keys from {secrets.key_file_path()}: {', '.join(removed) or '-'}."
        )
