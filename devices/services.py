"""Writes for backup accounts, devices, commands and jobs.

Admin actions record an audit event per device. Pushes to devices and browsers go through the
channel layer after commit, and only ever say "look at the database": a dropped push delays work,
it never loses it (a device collects queued commands when it connects).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

from django.core.exceptions import ValidationError
from django.db import IntegrityError, OperationalError, connection, transaction
from django.db.models import Field, Q
from django.utils import timezone

from devices import keys, live
from devices.models import BackupAccount, Command, Device, Job, JobLogLine, ProtectedItem, StorageVault
from portal import rows
from tenants.audit import Actor, audit_event_build, audit_record, audit_record_many
from tenants.models import Tenant
from tenants.personal_data import BACKUP_ACCOUNT
from tenants.services_erasure import suppression_check

logger = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
COMMAND_TTL = timedelta(hours=24)
PROFILE_SECRETS_MAX_BYTES = 1024 * 1024
LOG_LINES_PER_JOB = 500


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token() -> str:
    return secrets.token_urlsafe(32)


# --- Backup accounts ------------------------------------------------------------------------


def _l_key_from(*, tenant: Tenant, username: str, password: str | None, l_key_hex: str | None) -> bytes:
    if l_key_hex:
        try:
            l_key = bytes.fromhex(l_key_hex)
        except ValueError:
            l_key = b""
        if len(l_key) != keys.KEY_BYTES:
            raise ValidationError({"l_key": f"Send L as {2 * keys.KEY_BYTES} hexadecimal characters."})
        return l_key
    if not password:
        raise ValidationError({"password": "Set a password (or send the L key)."})
    # The password lives only in this frame: L is derived from it and R is thrown away unused.
    l_key, _ = keys.derive_keys(tenant.slug, username, password)
    return l_key


@transaction.atomic
def account_create(
    *,
    actor: Actor,
    tenant: Tenant,
    username: str,
    password: str | None = None,
    l_key_hex: str | None = None,
    display_name: str = "",
    email: str = "",
    max_devices: int = 10,
    max_protected_bytes: int = 0,
    allow_admin_password_reset: bool = False,
) -> BackupAccount:
    username = keys.normalise_username(username)
    if not re.fullmatch(r"[a-z0-9][a-z0-9._@+-]{0,149}", username):
        raise ValidationError({"username": "Use letters, digits and . _ @ + - only."})
    if BackupAccount.objects.filter(tenant=tenant, username=username).exists():
        raise ValidationError({"username": "This tenant has an account with this username."})
    # A name erased at its owner's request may not come back during the suppression period.
    suppression_check(tenant=tenant, kind=BACKUP_ACCOUNT, value=username)
    l_key = _l_key_from(tenant=tenant, username=username, password=password, l_key_hex=l_key_hex)
    account = BackupAccount.objects.create(
        tenant=tenant,
        username=username,
        display_name=display_name,
        email=email,
        max_devices=max_devices,
        max_protected_bytes=max_protected_bytes,
        allow_admin_password_reset=allow_admin_password_reset,
        login_verifier=keys.login_verifier(l_key),
    )
    audit_record(
        actor=actor,
        tenant=tenant,
        action="account.created",
        target=account,
        after={"username": username, "max_devices": max_devices, "max_protected_bytes": max_protected_bytes},
    )
    return account


@transaction.atomic
def account_update(
    *,
    actor: Actor,
    account: BackupAccount,
    display_name: str,
    email: str,
    max_devices: int,
    max_protected_bytes: int,
) -> BackupAccount:
    fields = ["display_name", "email", "max_devices", "max_protected_bytes"]
    before = {field: getattr(account, field) for field in fields}
    account.display_name, account.email = display_name, email
    account.max_devices, account.max_protected_bytes = max_devices, max_protected_bytes
    account.save(update_fields=fields)
    after = {field: getattr(account, field) for field in fields}
    audit_record(
        actor=actor, tenant=account.tenant, action="account.updated", target=account, before=before, after=after
    )
    return account


@transaction.atomic
def account_set_suspended(*, actor: Actor, account: BackupAccount, suspended: bool) -> BackupAccount:
    if account.is_suspended != suspended:
        account.is_suspended = suspended
        account.save(update_fields=["is_suspended"])
        audit_record(
            actor=actor,
            tenant=account.tenant,
            action="account.suspended" if suspended else "account.reactivated",
            target=account,
            after={"username": account.username},
        )
        if suspended:
            for device in account.devices.filter(is_live=True):
                _close_connection_after_commit(device, reason="revoked")
    return account


@transaction.atomic
def account_reset_password(*, actor: Actor, account: BackupAccount, password: str) -> BackupAccount:
    """Set a new password chosen by an admin. Secrets wrapped by the old R become unreadable."""
    if not account.allow_admin_password_reset:
        raise ValidationError("This account does not allow administrators to reset its password.")
    l_key = _l_key_from(tenant=account.tenant, username=account.username, password=password, l_key_hex=None)
    account.login_verifier = keys.login_verifier(l_key)
    # The profile secrets were wrapped by the old R, which nobody can derive any more.
    account.profile_secrets, account.profile_secrets_version = b"", account.profile_secrets_version + 1
    account.save(update_fields=["login_verifier", "profile_secrets", "profile_secrets_version"])
    audit_record(
        actor=actor,
        tenant=account.tenant,
        action="account.password_reset",
        target=account,
        after={"username": account.username, "profile_secrets_cleared": True},
    )
    return account


def account_set_allow_password_reset(*, account: BackupAccount, allowed: bool) -> BackupAccount:
    """Record the account's own consent (sent by its device) to admin password resets."""
    account.allow_admin_password_reset = allowed
    account.save(update_fields=["allow_admin_password_reset"])
    return account


# --- Registration and device tokens ---------------------------------------------------------


class RegistrationError(Exception):
    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass(frozen=True)
class Registration:
    device: Device
    token: str


@functools.cache
def _dummy_verifier() -> str:
    """A verifier that matches nothing, checked when the account is unknown so that a missing
    account takes as long to refuse as a wrong key. Made on first use: a bcrypt hash at import
    cost every worker a quarter of a second of its start (in a restart, before it listens)."""
    return keys.login_verifier(b"\x00" * keys.KEY_BYTES)


def device_register(
    *,
    tenant_slug: str,
    username: str,
    l_key_hex: str,
    device_id: str,
    inventory: dict[str, str],
    ip_address: str | None,
) -> Registration:
    """Register a device for an account that proved it knows L; re-registering rotates the token."""
    if not DEVICE_ID_PATTERN.match(device_id):
        raise ValidationError({"device_id": "Use 8 to 64 characters of letters, digits, '.', '_' or '-'."})
    try:
        l_key = bytes.fromhex(l_key_hex)
    except ValueError:
        l_key = b""
    account = (
        BackupAccount.objects.select_related("tenant")
        .filter(tenant__slug=tenant_slug, username=keys.normalise_username(username))
        .first()
    )
    verifier = account.login_verifier if account is not None else _dummy_verifier()
    if not keys.login_verifier_matches(l_key, verifier) or account is None:
        raise RegistrationError("bad_credentials", "Unknown account or wrong key.", 401)
    if account.is_suspended or account.erasure_pending or account.tenant.is_suspended:
        raise RegistrationError("account_suspended", "This account is suspended.", 403)
    token = _new_token()
    with transaction.atomic():
        BackupAccount.objects.select_for_update().get(pk=account.pk)
        existing = Device.objects.filter(tenant=account.tenant, device_id=device_id).first()
        if existing is not None and existing.account_id != account.pk:
            raise RegistrationError("device_id_taken", "Another account registered this device id.", 409)
        if existing is not None and existing.revoked_at is not None:
            # An administrator revoked this device: knowing the password must not undo that.
            raise RegistrationError("device_revoked", "An administrator revoked this device.", 403)
        if existing is None and account.devices.filter(revoked_at__isnull=True).count() >= account.max_devices:
            raise RegistrationError("device_limit", "This account has reached its device limit.", 403)
        fields = {
            key: str(inventory.get(key, ""))[:200] for key in ("name", "os", "arch", "client_version", "timezone")
        }
        fields["name"] = fields["name"] or device_id
        if existing is None:
            try:
                device = Device.objects.create(
                    tenant=account.tenant,
                    account=account,
                    device_id=device_id,
                    token_hash=token_hash(token),
                    public_ip=ip_address,
                    **fields,
                )
            except IntegrityError:
                raise RegistrationError("device_id_taken", "This device id is already registered.", 409) from None
            action = "device.registered"
        else:
            device = existing
            _close_connection_after_commit(device, reason="revoked")
            for key, value in fields.items():
                setattr(device, key, value)
            device.token_hash, device.token_rotated_at = token_hash(token), timezone.now()
            device.public_ip = ip_address
            device.save()
            action = "device.reregistered"
        audit_record(
            actor=Actor(label=f"device:{device_id}", role="device", ip_address=ip_address),
            tenant=account.tenant,
            action=action,
            target=device,
            after={"account": account.username, "name": device.name},
        )
    return Registration(device=device, token=token)


def device_authenticate(*, token: str) -> Device | None:
    """Return the live (not revoked) device holding this token, or None.

    The websocket checks the same rules in device_connect's SQL: change them in both.
    """
    if not token:
        return None
    device = (
        Device.objects.select_related("tenant", "account")
        .filter(token_hash=token_hash(token), revoked_at__isnull=True)
        .first()
    )
    if device is None or device.account.is_suspended or device.tenant.is_suspended:
        return None
    return device


@transaction.atomic
def device_token_rotate(*, device: Device) -> str:
    token = _new_token()
    device.token_hash, device.token_rotated_at = token_hash(token), timezone.now()
    device.save(update_fields=["token_hash", "token_rotated_at"])
    _close_connection_after_commit(device, reason="revoked")
    audit_record(
        actor=Actor(label=f"device:{device.device_id}", role="device"),
        tenant=device.tenant,
        action="device.token_rotated",
        target=device,
    )
    return token


@transaction.atomic
def device_revoke(*, actor: Actor, device: Device) -> Device:
    """Invalidate the device's token and close its live connection at once."""
    if device.revoked_at is None:
        device.revoked_at = timezone.now()
        device.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor, tenant=device.tenant, action="device.revoked", target=device, before={"name": device.name}
        )
    _close_connection_after_commit(device, reason="revoked")
    return device


def _close_connection_after_commit(device: Device, *, reason: str) -> None:
    if device.connection_channel:
        channel = device.connection_channel
        transaction.on_commit(lambda: live.send_to_device_channel(channel, {"type": f"device.{reason}"}))


@transaction.atomic
def profile_secrets_put(*, device: Device, version: int, secrets_blob: bytes) -> int:
    """Store the account's opaque profile secrets if `version` is current; return the new version."""
    if len(secrets_blob) > PROFILE_SECRETS_MAX_BYTES:
        raise ValidationError({"secrets": "Profile secrets may be at most 1 MiB."})
    account = BackupAccount.objects.select_for_update().get(pk=device.account_id)
    if version != account.profile_secrets_version:
        raise RegistrationError("version_conflict", "The profile changed; fetch it and try again.", 409)
    account.profile_secrets, account.profile_secrets_version = secrets_blob, version + 1
    account.save(update_fields=["profile_secrets", "profile_secrets_version"])
    return account.profile_secrets_version


def account_password_change_by_device(
    *, device: Device, old_l_key_hex: str, new_l_key_hex: str, version: int, secrets_blob: bytes
) -> int:
    """Change an account's password from one of its devices; return the profile's new version.

    The device proves the old password (its L), and sends the new L with the profile secrets it
    sealed again under the new password's R: the server swaps both in one transaction and learns
    neither password nor R. Other devices keep their tokens; they need the new password to read
    the profile again.
    """
    if len(secrets_blob) > PROFILE_SECRETS_MAX_BYTES:
        raise ValidationError({"secrets": "Profile secrets may be at most 1 MiB."})
    try:
        old_l_key, new_l_key = bytes.fromhex(old_l_key_hex), bytes.fromhex(new_l_key_hex)
    except ValueError:
        raise ValidationError({"l_key": "Send L keys as hexadecimal."}) from None
    if len(new_l_key) != keys.KEY_BYTES:
        raise ValidationError({"new_l_key": f"Send L as {2 * keys.KEY_BYTES} hexadecimal characters."})
    with transaction.atomic():
        account = BackupAccount.objects.select_for_update().get(pk=device.account_id)
        if not keys.login_verifier_matches(old_l_key, account.login_verifier):
            raise RegistrationError("bad_credentials", "The current password's key is wrong.", 401)
        if version != account.profile_secrets_version:
            raise RegistrationError("version_conflict", "The profile changed; fetch it and try again.", 409)
        account.login_verifier = keys.login_verifier(new_l_key)
        account.profile_secrets, account.profile_secrets_version = secrets_blob, version + 1
        account.save(update_fields=["login_verifier", "profile_secrets", "profile_secrets_version"])
        audit_record(
            actor=Actor(label=f"device:{device.device_id}", role="device"),
            tenant=device.tenant,
            action="account.password_changed",
            target=account,
            after={"username": account.username, "by_device": device.name},
        )
    return account.profile_secrets_version


@transaction.atomic
def account_secrets_shred(*, account: BackupAccount, actor: Actor) -> None:
    """Delete the account's profile secrets: crypto-shredding of all of its vaults' data.

    The profile holds each vault's E, sealed under the account password's R; without E nobody can
    unwrap the vault's A, so every chunk and manifest in every vault becomes unreadable, for good,
    wherever copies of it are. The server holds no other key (vault records keep key ids, which
    unlock nothing), and devices never keep E between jobs, so none survives on a device either.
    """
    locked = BackupAccount.objects.select_for_update().get(pk=account.pk)
    shredded_bytes = len(locked.profile_secrets)
    locked.profile_secrets = b""
    locked.profile_secrets_version += 1  # a device holding the old version cannot write it back
    locked.save(update_fields=["profile_secrets", "profile_secrets_version"])
    vault_ids = sorted(StorageVault.objects.filter(account=locked).values_list("vault_id", flat=True))
    account.profile_secrets, account.profile_secrets_version = b"", locked.profile_secrets_version
    audit_record(
        actor=actor,
        tenant=locked.tenant,
        action="account.secrets_shredded",
        target=locked,
        after={"profile_secrets_bytes": shredded_bytes, "vaults": vault_ids},
    )


VAULT_CREDENTIAL_FIELDS_MAX = 20
VAULT_CREDENTIAL_VALUE_MAX = 4000


@transaction.atomic
def vault_credentials_set(*, actor: Actor, vault: StorageVault, credentials: dict[str, str]) -> StorageVault:
    """Store the credentials of a vault's storage (an S3 access key and secret, say), encrypted at rest.

    An empty mapping removes them. The audit event names the fields, never their values.
    """
    if len(credentials) > VAULT_CREDENTIAL_FIELDS_MAX or not all(
        isinstance(name, str) and re.fullmatch(r"[a-z0-9_]{1,64}", name) and isinstance(value, str)
        for name, value in credentials.items()
    ):
        raise ValidationError({"credentials": "Give at most 20 fields named in a-z, 0-9 and _, with text values."})
    if any(len(value) > VAULT_CREDENTIAL_VALUE_MAX for value in credentials.values()):
        raise ValidationError({"credentials": "A credential may be at most 4,000 characters."})
    vault.credentials = json.dumps(credentials, sort_keys=True) if credentials else ""
    vault.credentials_updated_at = timezone.now() if credentials else None
    vault.save(update_fields=["credentials", "credentials_updated_at", "updated_at"])
    audit_record(
        actor=actor,
        tenant=vault.tenant,
        action="vault.credentials_set" if credentials else "vault.credentials_removed",
        target=vault,
        after={"vault_id": vault.vault_id, "fields": sorted(credentials)},
    )
    return vault


# --- Connections ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    device_pk: int
    tenant_id: int
    device_id: str
    replaced_channel: str
    # A newer handshake of the same device already holds the connection: this one must close.
    superseded: bool = False


# The device of a token, if it may connect (not revoked, account and tenant not suspended), locked
# for its connection columns. Raw SQL: this runs once per handshake, and in a reconnect storm ten
# thousand times a minute; the ORM spent more CPU building the join than the database answering it.
_CONNECTABLE_DEVICE_SQL = """
    SELECT d.id, d.tenant_id, d.device_id, d.connection_channel, d.connection_attempt
    FROM devices_device d
    JOIN devices_backupaccount a ON a.id = d.account_id
    JOIN tenants_tenant t ON t.id = d.tenant_id
    WHERE d.token_hash = %s AND d.revoked_at IS NULL AND NOT a.is_suspended AND t.status <> %s
"""

_CONNECT_SQL = (
    "UPDATE devices_device SET connection_channel = %s, connection_attempt = %s, is_live = %s, "
    "last_seen_at = %s, public_ip = %s WHERE id = %s"
)


def device_connect(*, token: str, channel_name: str, ip_address: str | None, attempt: str = "") -> Connected | None:
    """Check a device's token and make `channel_name` its one live connection, in one transaction.

    None when the token is unknown or its device may not connect (as device_authenticate). The
    Connected names the connection this one replaces, if any; `attempt` is the connection's
    attempt id, `<run>.<n>` (docs/protocol.md): in a reconnect storm a device gives up on a
    handshake that waits too long and opens another; when the first is finally served, after the
    second, it must not replace it (the device would be told it was replaced, and stop). Attempts
    of one run compare by number; another run (the agent restarted, or a second agent with the same
    identity) always replaces, as does a connection without an id.
    """
    if not token:
        return None
    lock = " FOR UPDATE OF d" if connection.features.has_select_for_update_of else ""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_CONNECTABLE_DEVICE_SQL + lock, [token_hash(token), Tenant.Status.SUSPENDED])
        row = cursor.fetchone()
        if row is None:
            return None
        device_pk, tenant_id, device_id, live_channel, live_attempt = row
        if live_channel and _attempt_is_older(attempt, than=live_attempt):
            return Connected(device_pk, tenant_id, device_id, replaced_channel="", superseded=True)
        # Raw too: the ORM's update cost a handshake more CPU than the statement costs the database.
        cursor.execute(
            _CONNECT_SQL,
            [
                channel_name,
                attempt[:80],
                True,
                connection.ops.adapt_datetimefield_value(timezone.now()),
                connection.ops.adapt_ipaddressfield_value(ip_address),
                device_pk,
            ],
        )
    live.device_presence(tenant_id, device_pk, is_live=True, batched=True)
    replaced = live_channel if live_channel != channel_name else ""
    return Connected(device_pk, tenant_id, device_id, replaced_channel=replaced)


ATTEMPT_PATTERN = re.compile(r"^([A-Za-z0-9_-]{1,64})\.([0-9]{1,15})$")


def _attempt_is_older(attempt: str, *, than: str) -> bool:
    new, live_one = ATTEMPT_PATTERN.match(attempt), ATTEMPT_PATTERN.match(than)
    if new is None or live_one is None or new.group(1) != live_one.group(1):
        return False
    return int(new.group(2)) < int(live_one.group(2))


# SQLSTATEs of a transaction PostgreSQL rolled back so that another could go on: a deadlock (40P01),
# a serialization failure (40001). Nothing of it was written, so it can simply run again.
_ROLLED_BACK_FOR_ANOTHER = {"40P01", "40001"}
WRITE_ATTEMPTS = 3


def _retried_when_rolled_back_for_another(write: Callable[P, R]) -> Callable[P, R]:
    """Run a bulk write again when the database ended it to break a deadlock.

    Two bulk writes of one device's row can wait on each other: a process's goodbyes and its
    heartbeat flush, or two processes' upserts of an account's vaults when its devices report
    through both (seen in a reconnect storm). Each write locks its rows in id order, which makes
    that rare; when it still happens, one of them is rolled back and runs again here, rather than
    failing and dropping a batch of heartbeats, statuses or goodbyes. Not inside a transaction of
    the caller's: only the whole transaction could be run again.
    """

    @functools.wraps(write)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return write(*args, **kwargs)
            except OperationalError as error:
                sqlstate = getattr(error.__cause__, "sqlstate", None)
                if sqlstate not in _ROLLED_BACK_FOR_ANOTHER or attempt == WRITE_ATTEMPTS or connection.in_atomic_block:
                    raise
                logger.info("%s was rolled back (SQLSTATE %s); running it again.", write.__name__, sqlstate)
        raise AssertionError("unreachable")

    return run


@_retried_when_rolled_back_for_another
def devices_disconnected(*, connections: list[tuple[int, int, str]]) -> None:
    """Mark devices offline, each unless a newer connection has replaced the one that ended.

    `connections` holds (device pk, tenant id, connection name) of connections that ended; they are
    written in one statement, since a reconnect storm ends thousands at once (devices.consumers
    groups the goodbyes of a process).
    """
    if not connections:
        return
    now = timezone.now()
    connections = sorted(connections)  # rows locked in id order, as every bulk write of devices
    tenants = {device_pk: tenant_id for device_pk, tenant_id, _ in connections}
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE devices_device AS d SET is_live = false, connection_channel = '', last_seen_at = %s "
                "FROM unnest(%s::bigint[], %s::text[]) AS ended(id, channel) "
                "WHERE d.id = ended.id AND d.connection_channel = ended.channel RETURNING d.id",
                [now, [device_pk for device_pk, _, _ in connections], [name for _, _, name in connections]],
            )
            offline = [device_pk for (device_pk,) in cursor.fetchall()]
    else:
        offline = [
            device_pk
            for device_pk, _, name in connections
            if Device.objects.filter(pk=device_pk, connection_channel=name).update(
                is_live=False, connection_channel="", last_seen_at=now
            )
        ]
    for device_pk in offline:
        live.device_presence(tenants[device_pk], device_pk, is_live=False, batched=True)


HELLO_FIELDS = ("name", "os", "arch", "client_version", "timezone")


def device_hello(*, device_pk: int, hello: dict[str, Any]) -> bool:
    """Store what a device says of itself on connecting; return whether commands wait for it.

    On PostgreSQL both are one statement: most devices that connect have no command waiting, and
    the ORM's update, then a locked read of the device's commands in a transaction of its own, were
    a quarter of a handshake's cost (4 round trips, 2 compiled queries).
    """
    fields = {key: str(hello.get(key, ""))[:200] for key in HELLO_FIELDS}
    fields = {key: value for key, value in fields.items() if value}
    consents = hello.get("consents")
    consents = {"allow_browse": bool(consents.get("allow_browse")) if isinstance(consents, dict) else False}
    if connection.vendor != "postgresql":
        Device.objects.filter(pk=device_pk).update(consents=consents, **fields)
        return _commands_waiting(device_pk)
    assignments = "".join(f", {column} = %s" for column in fields)
    with connection.cursor() as cursor:
        cursor.execute(
            # The column names come from HELLO_FIELDS, never from the device; values are parameters.
            f"WITH hello AS (UPDATE devices_device SET consents = %s::jsonb{assignments} WHERE id = %s) "  # noqa: S608
            "SELECT EXISTS (SELECT 1 FROM devices_command WHERE device_id = %s "
            "AND status IN (%s, %s) AND expires_at > %s)",
            [
                json.dumps(consents),
                *fields.values(),
                device_pk,
                device_pk,
                Command.Status.QUEUED,
                Command.Status.DELIVERED,
                timezone.now(),
            ],
        )
        return bool(cursor.fetchone()[0])


def _commands_waiting(device_pk: int) -> bool:
    return Command.objects.filter(
        device_id=device_pk,
        status__in=[Command.Status.QUEUED, Command.Status.DELIVERED],
        expires_at__gt=timezone.now(),
    ).exists()


def devices_mark_stale_offline(*, older_than: timedelta) -> int:
    """Mark offline the devices whose connection died without a goodbye (a crashed web process)."""
    cutoff = timezone.now() - older_than
    stale = list(Device.objects.filter(is_live=True, last_seen_at__lt=cutoff).values_list("pk", "tenant_id"))
    Device.objects.filter(pk__in=[pk for pk, _ in stale]).update(is_live=False, connection_channel="")
    for pk, tenant_id in stale:
        live.device_presence(tenant_id, pk, is_live=False)
    return len(stale)


def inventory_apply(*, device_pk: int, tenant_id: int, status: dict[str, Any]) -> None:
    """Replace a device's protected items and update its account's vault usage from a `status`."""
    items = status.get("protected_items") or []
    vaults = status.get("vaults") or []
    device = Device.objects.only("account_id").get(pk=device_pk)
    with transaction.atomic():
        ProtectedItem.objects.filter(device_id=device_pk).exclude(
            item_id__in=[item["item_id"] for item in items]
        ).delete()
        ProtectedItem.objects.bulk_create(
            [
                ProtectedItem(
                    tenant_id=tenant_id,
                    device_id=device_pk,
                    item_id=item["item_id"],
                    name=item["name"],
                    engine=item["engine"],
                    size_bytes=item["size_bytes"],
                )
                for item in items
            ],
            update_conflicts=True,
            unique_fields=["device", "item_id"],
            update_fields=["name", "engine", "size_bytes"],
        )
        StorageVault.objects.bulk_create(
            [
                StorageVault(
                    tenant_id=tenant_id,
                    account_id=device.account_id,
                    vault_id=vault["vault_id"],
                    name=vault["name"],
                    kind=vault["kind"],
                    bytes_used=vault["bytes_used"],
                    encryption_format=vault.get("encryption_format", 0),
                    key_id=vault.get("key_id", ""),
                )
                for vault in vaults
            ],
            update_conflicts=True,
            unique_fields=["account", "vault_id"],
            update_fields=["name", "kind", "bytes_used", "encryption_format", "key_id", "updated_at"],
        )


@_retried_when_rolled_back_for_another
def inventory_apply_many(*, statuses: dict[int, tuple[int, dict[str, Any]]]) -> None:
    """Replace many devices' protected items and vault usage from their latest `status` reports.

    On PostgreSQL this is three statements whatever the number of devices (one DELETE of the items
    no longer reported, one upsert of every item, one upsert of every vault) instead of about six
    per device; elsewhere (the embedded SQLite) it applies each device in turn.
    """
    if not statuses:
        return
    if connection.vendor != "postgresql":
        for device_pk, (tenant_id, status) in statuses.items():
            inventory_apply(device_pk=device_pk, tenant_id=tenant_id, status=status)
        return
    accounts = dict(Device.objects.filter(pk__in=list(statuses)).values_list("pk", "account_id"))
    items: dict[tuple[int, str], tuple[int, str, str, int]] = {}
    vaults: dict[tuple[int, str], tuple[int, str, str, int, int, str]] = {}
    for device_pk, (tenant_id, status) in statuses.items():
        account_id = accounts.get(device_pk)
        if account_id is None:  # deleted since the report came in
            continue
        for item in status.get("protected_items") or []:
            items[(device_pk, item["item_id"])] = (tenant_id, item["name"], item["engine"], item["size_bytes"])
        for vault in status.get("vaults") or []:
            # Two devices of one account may report the same vault: the later report wins, and an
            # upsert must not name the same row twice.
            vaults[(account_id, vault["vault_id"])] = (
                tenant_id,
                vault["name"],
                vault["kind"],
                vault["bytes_used"],
                vault.get("encryption_format", 0),
                vault.get("key_id", ""),
            )
    # Upserted in key order: two processes upserting one account's vaults in different orders
    # wait on each other's rows (a deadlock).
    item_rows = [(*key, *values) for key, values in sorted(items.items())]
    vault_rows = [(*key, *values) for key, values in sorted(vaults.items())]
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM devices_protecteditem AS p WHERE p.device_id = ANY(%s::bigint[]) AND NOT EXISTS "
            "(SELECT 1 FROM unnest(%s::bigint[], %s::text[]) AS r(device_id, item_id) "
            "WHERE r.device_id = p.device_id AND r.item_id = p.item_id)",
            [list(accounts), [row[0] for row in item_rows], [row[1] for row in item_rows]],
        )
        if item_rows:
            cursor.execute(_ITEMS_UPSERT_SQL, _columns(item_rows))
        if vault_rows:
            cursor.execute(_VAULTS_UPSERT_SQL, [timezone.now(), *_columns(vault_rows)])


# The upserts of inventory_apply_many, each one statement over arrays (one a column): built by the
# ORM they cost more CPU than the rest of a device's handshake (a model instance and a quoted
# literal a field). A row that the report leaves as it is is not written again (no dead tuple).
_ITEMS_UPSERT_SQL = """
    INSERT INTO devices_protecteditem AS p (device_id, item_id, tenant_id, name, engine, size_bytes)
    SELECT * FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::bigint[])
    ON CONFLICT (device_id, item_id) DO UPDATE
    SET name = EXCLUDED.name, engine = EXCLUDED.engine, size_bytes = EXCLUDED.size_bytes
    WHERE (p.name, p.engine, p.size_bytes) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.engine, EXCLUDED.size_bytes)
"""
_VAULTS_UPSERT_SQL = """
    INSERT INTO devices_storagevault AS v (
        account_id, vault_id, tenant_id, name, kind, bytes_used, encryption_format, key_id,
        quota_bytes, credentials, updated_at
    )
    SELECT r.*, 0, '', now_ FROM (SELECT %s::timestamptz AS now_) AS n, unnest(
        %s::bigint[], %s::text[], %s::bigint[], %s::text[], %s::text[], %s::bigint[], %s::smallint[], %s::text[]
    ) AS r
    ON CONFLICT (account_id, vault_id) DO UPDATE
    SET name = EXCLUDED.name, kind = EXCLUDED.kind, bytes_used = EXCLUDED.bytes_used,
        encryption_format = EXCLUDED.encryption_format, key_id = EXCLUDED.key_id, updated_at = EXCLUDED.updated_at
    WHERE (v.name, v.kind, v.bytes_used, v.encryption_format, v.key_id) IS DISTINCT FROM
        (EXCLUDED.name, EXCLUDED.kind, EXCLUDED.bytes_used, EXCLUDED.encryption_format, EXCLUDED.key_id)
"""


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows (at least one) as one list per column, for unnest()."""
    return [list(column) for column in zip(*rows, strict=True)]


@_retried_when_rolled_back_for_another
def devices_touch(*, seen: dict[int, datetime]) -> None:
    """Write many devices' last-seen times in one statement (heartbeats are coalesced per process)."""
    if not seen:
        return
    seen = dict(sorted(seen.items()))  # rows locked in id order, as every bulk write of devices
    if connection.vendor == "postgresql":
        # One UPDATE joined to the arrays: QuerySet.bulk_update builds a CASE WHEN per row, which
        # cost about a millisecond of Python per device and held the process's database thread.
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE devices_device AS d SET last_seen_at = v.at "
                "FROM unnest(%s::bigint[], %s::timestamptz[]) AS v(id, at) WHERE d.id = v.id",
                [list(seen.keys()), list(seen.values())],
            )
        return
    Device.objects.bulk_update(
        [Device(pk=pk, last_seen_at=at) for pk, at in seen.items()], ["last_seen_at"], batch_size=1000
    )


# --- Commands -------------------------------------------------------------------------------


VAULT_COMMANDS = {
    Command.Kind.RESTORE,
    Command.Kind.APPLY_RETENTION,
    Command.Kind.ROTATE_VAULT_KEY,
    Command.Kind.LIST_SNAPSHOTS,
}


def _erasing(account_ids: set[int]) -> set[int]:
    """Return which of these accounts are held by an erasure request: they take no new commands."""
    return set(BackupAccount.objects.filter(pk__in=account_ids, erasure_pending=True).values_list("pk", flat=True))


def _account_erasing(account_id: int) -> bool:
    """_erasing for the one account of a command: a written-out statement, read on every command."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM devices_backupaccount WHERE id = %s AND erasure_pending", [account_id])
        return cursor.fetchone() is not None


def _validate_command(device: Device, kind: str, parameters: dict[str, Any], erasing: bool) -> dict[str, Any]:
    if kind not in Command.Kind.values:
        raise ValidationError({"kind": "Unknown command."})
    if device.revoked_at is not None:
        raise ValidationError("This device is revoked.")
    if erasing and kind != Command.Kind.UNINSTALL:
        raise ValidationError("This device's account is being erased.")
    if kind == Command.Kind.BROWSE_FILES and not device.allows_browse:
        raise ValidationError("The device does not allow administrators to browse its files.")
    if kind == Command.Kind.RUN_BACKUP and not (parameters.get("protected_item_id") and parameters.get("vault_id")):
        raise ValidationError({"parameters": "Name the protected item and the vault to back up to."})
    if kind == Command.Kind.CANCEL_JOB and not parameters.get("job_id"):
        raise ValidationError({"parameters": "Name the job to cancel."})
    if kind in VAULT_COMMANDS and not parameters.get("vault_id"):
        raise ValidationError({"parameters": "Name the vault."})
    if kind == Command.Kind.RESTORE and not (
        parameters.get("target") and (parameters.get("snapshot_id") or parameters.get("protected_item_id"))
    ):
        raise ValidationError(
            {"parameters": "Name the target folder, and the snapshot or the protected item to restore."}
        )
    if kind == Command.Kind.APPLY_RETENTION and not (
        parameters.get("protected_item_id") and parameters.get("keep_snapshots")
    ):
        raise ValidationError({"parameters": "Name the protected item and how many snapshots to keep."})
    return {key: value for key, value in parameters.items() if isinstance(key, str)}


@transaction.atomic
def command_issue(
    *, actor: Actor, device: Device, kind: str, parameters: dict[str, Any] | None = None, ttl: timedelta = COMMAND_TTL
) -> Command:
    """Persist a command for a device, audit it, and tell the device's connection after commit."""
    parameters = _validate_command(device, kind, parameters or {}, _account_erasing(device.account_id))
    command = Command(
        tenant_id=device.tenant_id,
        device=device,
        kind=kind,
        parameters=parameters,
        issued_by=actor.user,
        expires_at=timezone.now() + ttl,
    )
    rows.insert(command)  # every command issued is this row: no compiled insert
    audit_record(
        actor=actor,
        tenant=device.tenant,
        action="command.issued",
        target=command,
        after={"device": device.name, "device_pk": device.pk, "kind": kind, "parameters": parameters},
    )
    live.command_status_after_commit(command)
    if device.connection_channel:
        channel = device.connection_channel
        push = command_push(command)
        transaction.on_commit(lambda: live.send_to_device_channel(channel, push))
    return command


def command_push(command: Command) -> dict[str, Any]:
    """The push that tells a device's connection of a new command.

    It carries the command's frame: the device's worker sends it at once and marks it delivered
    afterwards (commands_mark_delivered), where reading it from the database first put a thread
    hop and a round trip before every frame. A push without frames (bulk commands) makes the
    worker take the device's waiting commands from the database instead.
    """
    return {
        "type": "device.commands",
        "device": command.device_id,
        "frames": [_command_frame(command)],
        "delivering": [command.pk],
    }


@transaction.atomic
def commands_issue_bulk(
    *, actor: Actor, tenant: Tenant, devices: list[Device], kind: str, parameters: dict[str, Any] | None = None
) -> list[Command]:
    """Issue one command per device, each with its own row and audit event, in one transaction."""
    parameters = parameters or {}
    expires_at = timezone.now() + COMMAND_TTL
    erasing = _erasing({device.account_id for device in devices})
    commands = Command.objects.bulk_create(
        [
            Command(
                tenant=tenant,
                device=device,
                kind=kind,
                parameters=_validate_command(device, kind, parameters, device.account_id in erasing),
                issued_by=actor.user,
                expires_at=expires_at,
            )
            for device in devices
        ],
        batch_size=1000,
    )
    audit_record_many(
        [
            audit_event_build(
                actor=actor,
                tenant=tenant,
                action="command.issued",
                target_type="command",
                target_id=str(command.pk),
                after={
                    "device": device.name,
                    "device_pk": device.pk,
                    "kind": kind,
                    "parameters": parameters,
                    "bulk": True,
                },
            )
            for device, command in zip(devices, commands, strict=True)
        ]
    )
    channels = [device.connection_channel for device in devices if device.connection_channel]
    if len(channels) <= BULK_PUSHES_MAX:
        transaction.on_commit(lambda: live.send_to_device_channels(channels, {"type": "device.commands"}))
    # Larger actions go without a push per device: each worker's sweep takes all of its devices'
    # commands in one transaction within two sweeps (4 s), where 10,000 pushes cost 10,000 takes.
    return commands


# A bulk action to more devices than this pushes to none of them (see commands_issue_bulk).
BULK_PUSHES_MAX = 100
# A command delivered but not acknowledged for this long is sent again with the next delivery.
REDELIVER_AFTER = timedelta(seconds=30)


def commands_take_for_delivery(*, device_pk: int, reconnected: bool = False) -> list[dict[str, Any]]:
    """Return the device's queued, unexpired commands as protocol frames and mark them delivered.

    Delivered-but-unacknowledged commands are sent again (the device deduplicates by id) when the
    device has just connected, or once REDELIVER_AFTER has passed: re-sending them with every push
    made a device that was sent many commands at once answer each of them many times over.
    """
    now = timezone.now()
    if connection.vendor == "postgresql":
        commands = list(
            Command.objects.raw(
                _TAKE_FOR_DELIVERY_SQL,
                {
                    "device": device_pk,
                    "now": now,
                    "queued": Command.Status.QUEUED,
                    "delivered": Command.Status.DELIVERED,
                    "reconnected": reconnected,
                    "redeliver_before": now - REDELIVER_AFTER,
                },
            )
        )
        for command in commands:
            if command.newly_delivered:  # type: ignore[attr-defined]
                command.status, command.delivered_at = Command.Status.DELIVERED, now
                live.command_status(command)
        return [_command_frame(command) for command in commands]
    waiting = Q(status=Command.Status.QUEUED) | Q(status=Command.Status.DELIVERED)
    if not reconnected:
        waiting = Q(status=Command.Status.QUEUED) | Q(
            status=Command.Status.DELIVERED, delivered_at__lt=now - REDELIVER_AFTER
        )
    with transaction.atomic():
        commands = list(
            Command.objects.select_for_update()
            .filter(waiting, device_id=device_pk, expires_at__gt=now)
            .order_by("created_at", "id")[:100]
        )
        Command.objects.filter(pk__in=[command.pk for command in commands], status=Command.Status.QUEUED).update(
            status=Command.Status.DELIVERED, delivered_at=now
        )
    for command in commands:
        if command.status == Command.Status.QUEUED:
            command.status = Command.Status.DELIVERED
            live.command_status(command)
    return [_command_frame(command) for command in commands]


@dataclass
class SentCommand:
    """A command whose frame went out with its push, and what its device said of it since."""

    pk: int
    delivered_at: datetime
    acknowledged_at: datetime | None = None


def commands_mark_delivered(*, sent: list[SentCommand]) -> list[Command]:
    """Store that these commands' frames went out (and were acknowledged, where they were); return
    the commands moved.

    A status moves only forward: a command further along (its result stored) stays where it is.
    """
    if not sent:
        return []
    if connection.vendor == "postgresql":
        sent = sorted(sent, key=lambda command: command.pk)  # rows locked in id order
        marked = list(
            Command.objects.raw(
                _MARK_DELIVERED_SQL,
                {
                    "ids": [command.pk for command in sent],
                    "delivered_at": [command.delivered_at for command in sent],
                    "acknowledged_at": [command.acknowledged_at for command in sent],
                    "queued": Command.Status.QUEUED,
                    "delivered": Command.Status.DELIVERED,
                    "acknowledged": Command.Status.ACKNOWLEDGED,
                },
            )
        )
    else:
        moved = []
        with transaction.atomic():
            for one in sent:
                status = Command.Status.ACKNOWLEDGED if one.acknowledged_at else Command.Status.DELIVERED
                moves_from = _NEXT_STATUS[status] if one.acknowledged_at else {Command.Status.QUEUED}
                fields = {"status": status, "delivered_at": one.delivered_at}
                if one.acknowledged_at:
                    fields["acknowledged_at"] = one.acknowledged_at
                if Command.objects.filter(pk=one.pk, status__in=moves_from).update(**fields):
                    moved.append(one.pk)
            marked = list(Command.objects.filter(pk__in=moved))
    for command in marked:
        live.command_status(command)
    return marked


# commands_mark_delivered on PostgreSQL: every command sent with its push passes here, so all of a
# batch in one statement. Acknowledged ones move from queued or delivered (a sweep may have sent
# one again meanwhile), the others from queued only.
_MARK_DELIVERED_SQL = """
    UPDATE devices_command AS c SET
        status = CASE WHEN sent.acknowledged_at IS NULL THEN %(delivered)s ELSE %(acknowledged)s END,
        delivered_at = sent.delivered_at,
        acknowledged_at = COALESCE(sent.acknowledged_at, c.acknowledged_at)
    FROM unnest(%(ids)s::bigint[], %(delivered_at)s::timestamptz[], %(acknowledged_at)s::timestamptz[])
        AS sent (id, delivered_at, acknowledged_at)
    WHERE c.id = sent.id AND (
        c.status = %(queued)s OR (sent.acknowledged_at IS NOT NULL AND c.status = %(delivered)s)
    )
    RETURNING c.*
"""


# commands_take_for_delivery on PostgreSQL: the locked read, the update and the rows in one
# statement, one round trip instead of four (BEGIN, SELECT … FOR UPDATE, UPDATE, COMMIT) on a
# command's way to its device. The final SELECT sees the rows as they were before the UPDATE, so
# `newly_delivered` tells which were still queued.
_TAKE_FOR_DELIVERY_SQL = """
    WITH taken AS (
        SELECT id FROM devices_command
        WHERE device_id = %(device)s AND expires_at > %(now)s AND (
            status = %(queued)s
            OR (status = %(delivered)s AND (%(reconnected)s OR delivered_at < %(redeliver_before)s))
        )
        ORDER BY created_at, id LIMIT 100
        FOR UPDATE
    ), marked AS (
        UPDATE devices_command AS c SET status = %(delivered)s, delivered_at = %(now)s
        FROM taken WHERE c.id = taken.id AND c.status = %(queued)s
        RETURNING c.id
    )
    SELECT c.*, c.id IN (SELECT id FROM marked) AS newly_delivered
    FROM devices_command AS c JOIN taken ON taken.id = c.id
    ORDER BY c.created_at, c.id
"""


def _command_frame(command: Command) -> dict[str, Any]:
    return {
        "v": 1,
        "type": "command",
        "command_id": str(command.command_id),
        "kind": command.kind,
        "parameters": command.parameters,
        "expires_at": command.expires_at.isoformat(),
    }


# Beyond this many commands in one delivery, browsers get no status push per command (they would
# get thousands at once); the device list shows the stored status.
LIVE_STATUS_PUSHES_MAX = 200
# A worker's sweep delivers at most this many commands a round; the rest go in the next one.
SWEEP_BATCH = 20_000


def commands_take_queued_of_worker(*, channel_prefix: str, queued_before: datetime) -> dict[str, list[dict[str, Any]]]:
    """Take the waiting commands of every device connected to one worker process (channels starting
    with `channel_prefix`): those queued before `queued_before`, and those delivered more than
    REDELIVER_AFTER ago and still not acknowledged. Mark them delivered (now) and return their
    frames by connection channel.

    Re-sending the overdue ones is what makes delivery at-least-once on a connection that stays up:
    a frame written to a socket that died unnoticed, or an acknowledgement lost with a worker that
    stopped, would otherwise wait for the device's next reconnect (the device runs a command once
    and answers a repeat with its acknowledgement and stored result).

    One transaction for all the worker's devices, so a bulk command to thousands of devices costs
    the worker one round trip instead of one per device; two partial indexes (queued, delivered)
    keep the queries proportional to the commands waiting.
    """
    now = timezone.now()
    live_here = Q(device__connection_channel__startswith=channel_prefix, expires_at__gt=now)
    waiting = (
        Q(status=Command.Status.QUEUED, created_at__lt=queued_before),
        Q(status=Command.Status.DELIVERED, delivered_at__lt=now - REDELIVER_AFTER),
    )
    with transaction.atomic():
        commands = [
            command
            for condition in waiting
            for command in Command.objects.select_for_update(of=("self",))
            .filter(condition, live_here)
            .select_related("device")
            .order_by("created_at", "id")[:SWEEP_BATCH]
        ]
        Command.objects.filter(
            pk__in=[command.pk for command in commands],
            status__in=[Command.Status.QUEUED, Command.Status.DELIVERED],
        ).update(status=Command.Status.DELIVERED, delivered_at=now)
    frames: dict[str, list[dict[str, Any]]] = {}
    newly_delivered = [command for command in commands if command.status == Command.Status.QUEUED]
    for command in commands:
        command.status, command.delivered_at = Command.Status.DELIVERED, now
        frames.setdefault(command.device.connection_channel, []).append(_command_frame(command))
    if len(newly_delivered) <= LIVE_STATUS_PUSHES_MAX:
        for command in newly_delivered:
            live.command_status(command)
    return frames


_NEXT_STATUS = {
    "acknowledged": {Command.Status.QUEUED, Command.Status.DELIVERED},
    "running": {Command.Status.QUEUED, Command.Status.DELIVERED, Command.Status.ACKNOWLEDGED},
    "succeeded": {Command.Status.QUEUED, Command.Status.DELIVERED, Command.Status.ACKNOWLEDGED, Command.Status.RUNNING},
}
_NEXT_STATUS["failed"] = _NEXT_STATUS["cancelled"] = _NEXT_STATUS["succeeded"]


def command_advance(
    *,
    device_pk: int,
    command_id: str,
    status: str,
    result: Any = None,
    error: str = "",
    sent: SentCommand | None = None,
) -> Command | None:
    """Move a command forward (never backward) as the device reports; None if it is not this device's.

    `sent`: the command's frame went out with its push, and its delivery (and acknowledgement) were
    not stored yet; they are stored with this status, in the same statement. Without it, a command
    with no delivery stored is dated delivered now: the device's report proves its frame arrived, and
    the write of a delivery whose hold ended may still be on its way (or lost with its worker).
    """
    try:
        command_uuid = uuid.UUID(str(command_id))
    except ValueError:
        return None
    now = timezone.now()
    updates: dict[str, Any] = {"status": status}
    if sent is not None:
        updates["delivered_at"] = sent.delivered_at
        if sent.acknowledged_at is not None:
            updates["acknowledged_at"] = sent.acknowledged_at
    if status == "acknowledged":
        updates["acknowledged_at"] = now
    if status in ("succeeded", "failed", "cancelled"):
        updates.update(finished_at=now, result=result, error=error[:500])
    delivered_at_latest = now if sent is None else None
    if connection.vendor == "postgresql":
        advanced = _command_advance_returning(
            device_pk, command_uuid, updates, _NEXT_STATUS[status], delivered_at_latest
        )
        if advanced is not None:
            live.command_status(advanced)
            return advanced
        # Not moved: not this device's command (None), or already past this status.
        return Command.objects.filter(device_id=device_pk, command_id=command_uuid).first()
    try:
        command = Command.objects.get(device_id=device_pk, command_id=command_uuid)
    except Command.DoesNotExist:
        return None
    if delivered_at_latest is not None:
        updates["delivered_at"] = command.delivered_at or delivered_at_latest
    changed = Command.objects.filter(pk=command.pk, status__in=_NEXT_STATUS[status]).update(**updates)
    if changed:
        for key, value in updates.items():
            setattr(command, key, value)
        live.command_status(command)
    return command


def _command_advance_returning(
    device_pk: int,
    command_uuid: uuid.UUID,
    updates: dict[str, Any],
    moves_from: set[Command.Status],
    delivered_at_latest: datetime | None,
) -> Command | None:
    """One UPDATE … RETURNING on PostgreSQL: every ack and result of every command passes here, and
    a read, then an update, was two round trips and two compiled queries on a command's way back."""
    fields = [field for name in updates if isinstance(field := Command._meta.get_field(name), Field)]
    assignments = ", ".join(f"{connection.ops.quote_name(str(field.column))} = %s" for field in fields)
    values = [field.get_db_prep_save(updates[field.name], connection) for field in fields]
    if delivered_at_latest is not None:
        assignments += ", delivered_at = COALESCE(delivered_at, %s)"
        values.append(Command._meta.get_field("delivered_at").get_db_prep_save(delivered_at_latest, connection))
    sql = (
        f"UPDATE devices_command SET {assignments} "  # noqa: S608 - columns from the model, values bound
        "WHERE device_id = %s AND command_id = %s AND status = ANY(%s) RETURNING *"
    )
    rows = list(Command.objects.raw(sql, [*values, device_pk, command_uuid, sorted(map(str, moves_from))]))
    return rows[0] if rows else None


RESULT_GRACE = timedelta(hours=24)


def commands_expire() -> int:
    """Close commands that can no longer finish; return how many changed.

    Never acknowledged before their expiry → expired. Acknowledged or running, yet without a
    result a day after their expiry (the result was lost with a connection) → failed.
    """
    now = timezone.now()
    expired = Command.objects.filter(
        status__in=[Command.Status.QUEUED, Command.Status.DELIVERED], expires_at__lte=now
    ).update(status=Command.Status.EXPIRED, finished_at=now)
    abandoned = Command.objects.filter(
        status__in=[Command.Status.ACKNOWLEDGED, Command.Status.RUNNING], expires_at__lte=now - RESULT_GRACE
    ).update(status=Command.Status.FAILED, finished_at=now, error="The device never reported a result.")
    return expired + abandoned


# --- Jobs -----------------------------------------------------------------------------------


def job_started(*, device_pk: int, tenant_id: int, message: dict[str, Any]) -> Job:
    command = None
    if message.get("command_id"):
        command = command_advance(device_pk=device_pk, command_id=message["command_id"], status="running")
    job, _ = Job.objects.get_or_create(
        device_id=device_pk,
        job_id=message["job_id"],
        defaults={
            "tenant_id": tenant_id,
            "command": command,
            "kind": message.get("kind", Job.Kind.BACKUP),
            "protected_item_id": message.get("protected_item_id", ""),
            "vault_id": message.get("vault_id", ""),
            "files_total": message.get("files_total", 0),
            "started_at": timezone.now(),
        },
    )
    live.job_update(tenant_id, job)
    return job


_COUNTERS = ("files_done", "files_total", "bytes_read", "bytes_uploaded", "chunks_total", "chunks_new", "bytes_new")


def _vault_usage_update(*, device_pk: int, job: Job, message: dict[str, Any]) -> None:
    """Move the job's vault's usage to what the device reports mid-job (`vault_bytes_used`)."""
    if "vault_bytes_used" in message and job.vault_id:
        StorageVault.objects.filter(account__devices__pk=device_pk, vault_id=job.vault_id).update(
            bytes_used=message["vault_bytes_used"], updated_at=timezone.now()
        )


def job_progress(*, device_pk: int, tenant_id: int, message: dict[str, Any]) -> Job | None:
    updates = {key: message[key] for key in _COUNTERS if key in message}
    updates["progress_percent"] = message.get("percent", 0)
    if not Job.objects.filter(device_id=device_pk, job_id=message["job_id"], status=Job.Status.RUNNING).update(
        **updates
    ):
        return None
    job = Job.objects.get(device_id=device_pk, job_id=message["job_id"])
    _vault_usage_update(device_pk=device_pk, job=job, message=message)
    live.job_update(tenant_id, job)
    return job


@transaction.atomic
def job_finished(*, device_pk: int, tenant_id: int, message: dict[str, Any]) -> Job | None:
    job = Job.objects.select_for_update().filter(device_id=device_pk, job_id=message["job_id"]).first()
    if job is None:
        return None
    for key in _COUNTERS:
        if key in message:
            setattr(job, key, message[key])
    job.status = message["status"]
    job.snapshot_id = str(message.get("snapshot_id") or job.snapshot_id)[:64]
    job.finished_at = timezone.now()
    if job.status == Job.Status.SUCCEEDED:
        job.progress_percent = 100
    job.save()
    JobLogLine.objects.bulk_create(
        [
            JobLogLine(
                job=job,
                logged_at=_parse_time(line.get("time")),
                level=str(line.get("level", "info"))[:8],
                message=str(line.get("message", ""))[:1000],
            )
            for line in message.get("log_lines", [])[:LOG_LINES_PER_JOB]
        ]
    )
    _vault_usage_update(device_pk=device_pk, job=job, message=message)
    Device.objects.filter(pk=device_pk).update(has_failing_jobs=job.status == Job.Status.FAILED)
    transaction.on_commit(lambda: live.job_update(tenant_id, job))
    return job


def _parse_time(value: Any) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else timezone.make_aware(parsed)
        except ValueError:
            pass
    return timezone.now()
