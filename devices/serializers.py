"""Shapes of the REST API's requests and responses for backup accounts, devices, commands and jobs.

Serializers validate and present; they never write: writes go through devices.services. No shape
here has a field for an account's login verifier or its profile secrets, so no response can carry them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import Http404
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from devices import selectors
from devices.forms import BULK_KINDS
from devices.models import BackupAccount, Command, Device, Job, JobLogLine, ProtectedItem, StorageVault
from tenants.models import Tenant
from tenants.serializers import single_line

# Bounds that keep every number inside the database's 64-bit integers.
LARGEST_ID = 2**63 - 1
MAX_DEVICES = 100_000
MAX_PROTECTED_BYTES = 10**18
MAX_BULK_DEVICES = 10_000
COMMAND_TTL_SECONDS = (60, 7 * 24 * 3600)

# The parameters each command kind takes (docs/protocol.md), and which of them it must have.
COMMAND_PARAMETERS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    Command.Kind.PING: (frozenset(), frozenset()),
    Command.Kind.RUN_BACKUP: (
        frozenset({"protected_item_id", "vault_id", "keep_snapshots"}),
        frozenset({"protected_item_id", "vault_id"}),
    ),
    Command.Kind.RESTORE: (
        frozenset({"vault_id", "target", "snapshot_id", "protected_item_id"}),
        frozenset({"vault_id", "target"}),
    ),
    Command.Kind.APPLY_RETENTION: (
        frozenset({"vault_id", "protected_item_id", "keep_snapshots"}),
        frozenset({"vault_id", "protected_item_id", "keep_snapshots"}),
    ),
    Command.Kind.ROTATE_VAULT_KEY: (frozenset({"vault_id"}), frozenset({"vault_id"})),
    Command.Kind.LIST_SNAPSHOTS: (frozenset({"vault_id"}), frozenset({"vault_id"})),
    Command.Kind.CANCEL_JOB: (frozenset({"job_id"}), frozenset({"job_id"})),
    Command.Kind.REFRESH_PROFILE: (frozenset(), frozenset()),
    Command.Kind.UPDATE_SOFTWARE: (frozenset({"version"}), frozenset()),
    Command.Kind.UNINSTALL: (frozenset({"remove_config"}), frozenset()),
    Command.Kind.DROP_CONNECTION: (frozenset(), frozenset()),
    Command.Kind.COLLECT_LOGS: (frozenset({"lines"}), frozenset()),
    Command.Kind.BROWSE_FILES: (frozenset({"path"}), frozenset({"path"})),
}


def _enum_field_class(component_name: str, choices: list[tuple[str, str]]) -> Callable[..., serializers.ChoiceField]:
    """Return a choice field class that the schema documents as one named enum, however many shapes use it.

    Left to itself the schema generator names a choice set after the shapes that use it, and warns when
    several shapes share it (a command's kind is in the command, its detail and the request).
    """
    schema = {
        "type": "string",
        "enum": [value for value, _ in choices],
        "description": "\n".join(f"* `{value}` - {label}" for value, label in choices),
    }

    class EnumField(serializers.ChoiceField):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(choices=choices, **kwargs)

    return extend_schema_field(schema, component_name=component_name)(EnumField)


CommandKindField = _enum_field_class("CommandKindEnum", Command.Kind.choices)
CommandStatusField = _enum_field_class("CommandStatusEnum", Command.Status.choices)
BulkCommandKindField = _enum_field_class("BulkCommandKindEnum", [(kind.value, kind.label) for kind in BULK_KINDS])
JobKindField = _enum_field_class("JobKindEnum", Job.Kind.choices)
JobStatusField = _enum_field_class("JobStatusEnum", Job.Status.choices)


# --- Backup accounts ------------------------------------------------------------------------


class AccountSerializer(serializers.ModelSerializer):
    # Not an EmailField: an account made without an address has an empty one.
    email = serializers.CharField(read_only=True)
    device_count = serializers.IntegerField(read_only=True, help_text="Devices registered, revoked ones included.")

    class Meta:
        model = BackupAccount
        fields = [
            "id",
            "username",
            "display_name",
            "email",
            "max_devices",
            "max_protected_bytes",
            "allow_admin_password_reset",
            "is_suspended",
            "device_count",
            "created_at",
        ]
        read_only_fields = fields


class AccountQuerySerializer(serializers.Serializer):
    search = serializers.CharField(
        required=False, allow_blank=True, max_length=150, help_text="Accounts whose username or name contains this."
    )


class _AccountLimitsSerializer(serializers.Serializer):
    display_name = serializers.CharField(max_length=200, required=False, allow_blank=True, validators=[single_line])
    email = serializers.EmailField(max_length=254, required=False, allow_blank=True, help_text="Where job reports go.")
    max_devices = serializers.IntegerField(min_value=0, max_value=MAX_DEVICES, required=False)
    max_protected_bytes = serializers.IntegerField(
        min_value=0, max_value=MAX_PROTECTED_BYTES, required=False, help_text="0 means no limit."
    )


class AccountCreateSerializer(_AccountLimitsSerializer):
    # The service has the last word (it normalises, then checks); the pattern tells clients up front.
    username = serializers.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9._@+-]*$",
        max_length=150,
        help_text="Letters, digits and . _ @ + -, from a letter or digit on; kept in lower case.",
    )
    password = serializers.CharField(
        min_length=8,
        max_length=1024,
        required=False,
        write_only=True,
        help_text="The account's password; the portal derives L from it and stores neither. Or send `l_key`.",
    )
    l_key = serializers.RegexField(
        r"^[0-9a-fA-F]{48}$",
        max_length=48,
        required=False,
        write_only=True,
        help_text="The account's login key L as 48 hexadecimal characters (docs/crypto.md), derived by the "
        "client, so that the password never reaches the portal. Or send `password`.",
    )
    allow_admin_password_reset = serializers.BooleanField(
        required=False,
        help_text="May administrators reset the password later? Resetting clears the secrets its devices stored.",
    )

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if ("password" in data) == ("l_key" in data):
            raise serializers.ValidationError({"password": "Send the password or the L key: one of them."})
        return data

    def service_arguments(self) -> dict[str, Any]:
        """Return the validated fields as devices.services.account_create's keyword arguments."""
        data = dict(self.validated_data)
        if "l_key" in data:
            data["l_key_hex"] = data.pop("l_key")
        return data


class AccountUpdateSerializer(_AccountLimitsSerializer):
    """A partial update: fields left out keep their current values."""

    is_suspended = serializers.BooleanField(
        required=False, help_text="A suspended account's devices are disconnected and refused until it is reactivated."
    )


class PasswordResetSerializer(serializers.Serializer):
    password = serializers.CharField(min_length=8, max_length=1024, write_only=True)


class VaultSerializer(serializers.ModelSerializer):
    has_credentials = serializers.SerializerMethodField(
        help_text="Whether an administrator stored storage credentials for it (never shown)."
    )

    class Meta:
        model = StorageVault
        fields = [
            "vault_id",
            "name",
            "kind",
            "bytes_used",
            "quota_bytes",
            "encryption_format",
            "key_id",
            "has_credentials",
            "credentials_updated_at",
            "updated_at",
        ]
        read_only_fields = fields

    def get_has_credentials(self, vault: StorageVault) -> bool:
        return vault.credentials_updated_at is not None


class VaultCredentialsSerializer(serializers.Serializer):
    credentials = serializers.DictField(
        child=serializers.CharField(max_length=4000, allow_blank=True, trim_whitespace=False),
        allow_empty=True,
        help_text='Field names to values, e.g. {"access_key_id": ..., "secret_access_key": ...}; empty removes '
        "them. Stored encrypted at rest and never shown again.",
    )


# --- Devices --------------------------------------------------------------------------------


class DeviceSerializer(serializers.ModelSerializer):
    account_username = serializers.CharField(source="account.username", read_only=True)
    # Not an IPAddressField: its documented format would be IPv4 only.
    public_ip = serializers.CharField(read_only=True, allow_null=True)

    class Meta:
        model = Device
        fields = [
            "id",
            "device_id",
            "name",
            "account",
            "account_username",
            "os",
            "arch",
            "client_version",
            "timezone",
            "public_ip",
            "is_live",
            "last_seen_at",
            "has_failing_jobs",
            "registered_at",
            "revoked_at",
        ]
        read_only_fields = fields


class ProtectedItemSerializer(serializers.ModelSerializer):
    class Meta:
        model = ProtectedItem
        fields = ["item_id", "name", "engine", "size_bytes"]
        read_only_fields = fields


class DeviceDetailSerializer(DeviceSerializer):
    consents = serializers.JSONField(read_only=True, help_text='What the device allows, e.g. {"allow_browse": true}.')
    # The view attaches the items it read through the selector.
    protected_items = ProtectedItemSerializer(source="listed_protected_items", many=True, read_only=True)

    class Meta(DeviceSerializer.Meta):
        fields = [*DeviceSerializer.Meta.fields, "consents", "protected_items"]
        read_only_fields = fields


DEVICE_SORT_CHOICES = [
    ("name", "Name"),
    ("-name", "Name, Z to A"),
    ("last_seen", "Last seen, oldest first"),
    ("-last_seen", "Last seen, newest first"),
    ("os", "OS, then name"),
    ("version", "Client version, then name"),
]


class DeviceQuerySerializer(serializers.Serializer):
    """The device list's filters, read from the query string; the same as the devices page's."""

    search = serializers.CharField(
        required=False, allow_blank=True, max_length=200, help_text="Devices whose name or account contains this."
    )
    account = serializers.IntegerField(
        source="account_id", required=False, min_value=1, max_value=LARGEST_ID, help_text="One account's devices."
    )
    # allow_null: a query string that leaves a boolean out means "either", not false.
    live = serializers.BooleanField(required=False, allow_null=True, default=None, help_text="Connected now, or not.")
    os = serializers.CharField(required=False, allow_blank=True, max_length=64)
    client_version = serializers.CharField(required=False, allow_blank=True, max_length=32)
    failing = serializers.BooleanField(
        required=False, allow_null=True, default=None, help_text="Whose last job failed, or not."
    )
    sort = serializers.ChoiceField(choices=DEVICE_SORT_CHOICES, required=False, default="name")

    def filters(self) -> selectors.DeviceFilters:
        return selectors.DeviceFilters(**self.validated_data)


# --- Commands -------------------------------------------------------------------------------


class CommandParametersSerializer(serializers.Serializer):
    """Every parameter a command may take; each kind takes only its own (docs/protocol.md)."""

    protected_item_id = serializers.CharField(
        max_length=64,
        required=False,
        help_text="run_backup, apply_retention: one of the device's protected items; restore: restore its newest "
        "snapshot.",
    )
    vault_id = serializers.CharField(
        max_length=64, required=False, help_text="run_backup and the vault commands: one of the account's vaults."
    )
    keep_snapshots = serializers.IntegerField(
        min_value=1,
        max_value=10_000,
        required=False,
        help_text="run_backup (optional), apply_retention: keep this many newest snapshots of the item, delete the "
        "rest and the chunks nothing uses any more.",
    )
    snapshot_id = serializers.RegexField(
        r"^\d{8}T\d{6}Z-[0-9a-f]{8}$", required=False, help_text="restore: the snapshot (list_snapshots names them)."
    )
    target = serializers.CharField(
        max_length=1000, required=False, help_text="restore: an absolute path on the device, a new or empty folder."
    )
    job_id = serializers.UUIDField(required=False, help_text="cancel_job: a running job of the device.")
    version = serializers.CharField(max_length=32, required=False, help_text="update_software, optional.")
    remove_config = serializers.BooleanField(required=False, help_text="uninstall: also remove its configuration.")
    lines = serializers.IntegerField(
        min_value=1, max_value=1000, required=False, help_text="collect_logs: how many (the device's default: 200)."
    )
    path = serializers.CharField(max_length=1000, required=False, help_text="browse_files: the folder to list.")

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(str(name) for name in data if name not in self.fields)
            if unknown:
                raise serializers.ValidationError({name: "No command takes this parameter." for name in unknown})
        return super().to_internal_value(data)


def _checked_parameters(kind: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Return the parameters in the form devices receive them, if they are the ones `kind` takes."""
    allowed, required = COMMAND_PARAMETERS[kind]
    errors = {name: f"{kind} takes no such parameter." for name in parameters if name not in allowed}
    errors.update({name: f"{kind} needs this parameter." for name in required if name not in parameters})
    if errors:
        raise serializers.ValidationError({"parameters": errors})
    return {name: str(value) if name == "job_id" else value for name, value in parameters.items()}


class CommandIssueSerializer(serializers.Serializer):
    # The context names the device (`device`): run_backup and cancel_job must name its own ids.
    kind = CommandKindField()
    parameters = CommandParametersSerializer(required=False)
    ttl_seconds = serializers.IntegerField(
        min_value=COMMAND_TTL_SECONDS[0],
        max_value=COMMAND_TTL_SECONDS[1],
        required=False,
        help_text="How long the command waits for the device to collect it; 24 hours if left out.",
    )

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        data["parameters"] = _checked_parameters(data["kind"], data.get("parameters") or {})
        device: Device = self.context["device"]
        parameters = data["parameters"]
        # The device page offers only the device's own items, vaults and running jobs; so does the API.
        if data["kind"] in (Command.Kind.RUN_BACKUP, Command.Kind.APPLY_RETENTION):
            items = selectors.protected_items_of(device=device).filter(item_id=parameters["protected_item_id"])
            vaults = selectors.vaults_of(account=device.account).filter(vault_id=parameters["vault_id"])
            if not items.exists() or not vaults.exists():
                raise serializers.ValidationError({"parameters": "Name one of the device's items and vaults."})
        elif (
            "vault_id" in parameters
            and not selectors.vaults_of(account=device.account).filter(vault_id=parameters["vault_id"]).exists()
        ):
            raise serializers.ValidationError({"parameters": {"vault_id": "Name one of the account's vaults."}})
        if data["kind"] == Command.Kind.RESTORE and not (
            parameters.get("snapshot_id") or parameters.get("protected_item_id")
        ):
            raise serializers.ValidationError(
                {"parameters": "Name the snapshot, or the protected item whose newest snapshot to restore."}
            )
        if data["kind"] == Command.Kind.CANCEL_JOB:
            running = selectors.jobs_of(device=device).filter(status=Job.Status.RUNNING, job_id=parameters["job_id"])
            if not running.exists():
                raise serializers.ValidationError({"parameters": {"job_id": "Name a running job of this device."}})
        return data


_BULK_HELP = "The commands that suit many devices at once: none needs ids of one device, none is destructive."


class AccountCommandSerializer(serializers.Serializer):
    kind = BulkCommandKindField(help_text=_BULK_HELP)
    parameters = CommandParametersSerializer(required=False)

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        data["parameters"] = _checked_parameters(data["kind"], data.get("parameters") or {})
        return data


class BulkCommandSerializer(AccountCommandSerializer):
    # The context names the tenant (`tenant`), to look the account up in.
    device_ids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=LARGEST_ID),
        min_length=1,
        max_length=MAX_BULK_DEVICES,
        required=False,
        help_text="The devices (their `id`); ids that name no active device of this tenant are skipped.",
    )
    account_id = serializers.IntegerField(
        min_value=1, max_value=LARGEST_ID, required=False, help_text="Or: every active device of this account."
    )

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        if ("device_ids" in data) == ("account_id" in data):
            raise serializers.ValidationError({"device_ids": "Send either device_ids or account_id."})
        if "account_id" in data:
            tenant: Tenant = self.context["tenant"]
            try:
                selectors.account_get(tenant=tenant, account_id=data["account_id"])
            except Http404:
                raise serializers.ValidationError({"account_id": "This tenant has no such account."}) from None
        return super().validate(data)


class CommandSerializer(serializers.ModelSerializer):
    kind = CommandKindField(read_only=True)
    status = CommandStatusField(read_only=True)
    issued_by = serializers.CharField(
        source="issued_by.username", read_only=True, allow_null=True, help_text="Null when the portal issued it."
    )
    parameters = serializers.JSONField(read_only=True)

    class Meta:
        model = Command
        fields = [
            "id",
            "command_id",
            "device",
            "kind",
            "parameters",
            "status",
            "issued_by",
            "created_at",
            "expires_at",
            "delivered_at",
            "acknowledged_at",
            "finished_at",
            "error",
        ]
        read_only_fields = fields


class CommandDetailSerializer(CommandSerializer):
    result = serializers.JSONField(read_only=True, allow_null=True, help_text="What the device answered, if it has.")

    class Meta(CommandSerializer.Meta):
        fields = [*CommandSerializer.Meta.fields, "result"]
        read_only_fields = fields


class IssuedCommandSerializer(serializers.Serializer):
    id = serializers.IntegerField(read_only=True, help_text="The command; follow it at commands/{id}/.")
    device = serializers.IntegerField(read_only=True)


class BulkIssuedSerializer(serializers.Serializer):
    count = serializers.IntegerField(read_only=True, help_text="Commands issued: one per device.")
    skipped = serializers.IntegerField(
        read_only=True,
        help_text="Device ids sent that name no active device of this tenant (unknown, revoked or another "
        "tenant's: they are not told apart), so got no command.",
    )
    commands = IssuedCommandSerializer(many=True, read_only=True)


# --- Jobs -----------------------------------------------------------------------------------


class JobSerializer(serializers.ModelSerializer):
    kind = JobKindField(read_only=True)
    status = JobStatusField(read_only=True)

    class Meta:
        model = Job
        fields = [
            "id",
            "job_id",
            "device",
            "command",
            "kind",
            "status",
            "protected_item_id",
            "vault_id",
            "progress_percent",
            "files_done",
            "files_total",
            "bytes_read",
            "bytes_uploaded",
            "chunks_total",
            "chunks_new",
            "bytes_new",
            "dedup_ratio",
            "snapshot_id",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    dedup_ratio = serializers.FloatField(
        read_only=True,
        allow_null=True,
        help_text="Bytes read per byte newly stored in the vault (encrypted backups); null before any is known.",
    )


class JobLogLineSerializer(serializers.ModelSerializer):
    class Meta:
        model = JobLogLine
        fields = ["logged_at", "level", "message"]
        read_only_fields = fields


class JobDetailSerializer(JobSerializer):
    log_lines = JobLogLineSerializer(many=True, read_only=True, help_text="The device's log of the job, oldest first.")

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "log_lines"]
        read_only_fields = fields
