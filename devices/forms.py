"""Forms of the backup account and device pages. They check input; the services decide."""

from __future__ import annotations

from decimal import ROUND_UP, Decimal
from typing import Any, cast

from django import forms

from devices.models import BackupAccount, Command, ProtectedItem, StorageVault

BYTES_PER_GB = 10**9
# Sizes are entered in decimal gigabytes, as storage is sold; 0 means no limit.
MAX_GB = Decimal(10**9)


def gigabytes_to_bytes(value: Decimal | None) -> int:
    return int((value or Decimal(0)) * BYTES_PER_GB)


def bytes_to_gigabytes(value: int) -> Decimal:
    # Rounded up, so that a small limit set through the API never shows (and saves back) as 0, "no
    # limit"; formatted with "f" so that 1000 GB shows as 1000, not 1E+3.
    gigabytes = (Decimal(value) / BYTES_PER_GB).quantize(Decimal("0.001"), rounding=ROUND_UP)
    return Decimal(format(gigabytes.normalize(), "f"))


class AccountSearchForm(forms.Form):
    search = forms.CharField(required=False, max_length=150, label="Search username or name")


class _AccountLimitsForm(forms.Form):
    display_name = forms.CharField(max_length=200, required=False)
    email = forms.EmailField(required=False, help_text="Where job reports go.")
    max_devices = forms.IntegerField(min_value=0, max_value=100_000, initial=10)
    max_protected_gb = forms.DecimalField(
        label="Max protected GB",
        min_value=Decimal(0),
        max_value=MAX_GB,
        decimal_places=3,
        initial=0,
        help_text="0 means no limit.",
    )

    def limits(self) -> dict[str, Any]:
        """Return the cleaned fields as the services' keyword arguments."""
        data = self.cleaned_data
        return {
            "display_name": data["display_name"],
            "email": data["email"],
            "max_devices": data["max_devices"],
            "max_protected_bytes": gigabytes_to_bytes(data["max_protected_gb"]),
        }


class AccountCreateForm(_AccountLimitsForm):
    username = forms.CharField(max_length=150)
    password = forms.CharField(
        min_length=8,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text="The device derives its keys from it; the portal never stores it.",
    )
    allow_admin_password_reset = forms.BooleanField(
        required=False,
        label="Allow administrators to reset the password",
        help_text="Resetting clears the secrets the account's devices stored with the old password.",
    )

    field_order = ["username", "password", "display_name", "email", "max_devices", "max_protected_gb"]


class AccountEditForm(_AccountLimitsForm):
    @classmethod
    def for_account(cls, account: BackupAccount, data: Any = None) -> AccountEditForm:
        initial = {
            "display_name": account.display_name,
            "email": account.email,
            "max_devices": account.max_devices,
            "max_protected_gb": bytes_to_gigabytes(account.max_protected_bytes),
        }
        return cls(data, initial=initial, prefix="edit")


class PasswordResetForm(forms.Form):
    password = forms.CharField(
        min_length=8, label="New password", widget=forms.PasswordInput(attrs={"autocomplete": "new-password"})
    )
    understood = forms.BooleanField(
        label="I understand that the account's stored secrets are cleared and its devices must log in again",
        error_messages={"required": "Confirm that you understand what resetting the password loses."},
    )


class SuspendForm(forms.Form):
    suspended = forms.BooleanField(required=False)


# The commands an admin may send to every device of an account at once: none needs a parameter
# that differs between devices, and none is destructive.
BULK_KINDS = [
    Command.Kind.PING,
    Command.Kind.REFRESH_PROFILE,
    Command.Kind.UPDATE_SOFTWARE,
    Command.Kind.COLLECT_LOGS,
    Command.Kind.DROP_CONNECTION,
]


# Commands about one of the account's vaults: each names it by vault_id.
VAULT_KINDS = [
    Command.Kind.RESTORE,
    Command.Kind.APPLY_RETENTION,
    Command.Kind.ROTATE_VAULT_KEY,
    Command.Kind.LIST_SNAPSHOTS,
]


class BulkCommandForm(forms.Form):
    kind = forms.ChoiceField(choices=[(kind.value, kind.label) for kind in BULK_KINDS], label="Command")


DEVICE_PAGE_SIZES = (25, 50, 100)


class DeviceFilterForm(forms.Form):
    search = forms.CharField(required=False, max_length=200, label="Search device or account")
    live = forms.ChoiceField(
        required=False, label="Connection", choices=[("", "Any"), ("online", "Online"), ("offline", "Offline")]
    )
    os = forms.ChoiceField(required=False, label="OS", choices=[("", "Any")])
    client_version = forms.ChoiceField(required=False, label="Client version", choices=[("", "Any")])
    failing = forms.ChoiceField(
        required=False, label="Jobs", choices=[("", "Any"), ("yes", "Failing"), ("no", "Not failing")]
    )
    sort = forms.ChoiceField(
        required=False,
        choices=[
            ("name", "Name"),
            ("-name", "Name, Z to A"),
            ("-last_seen", "Last seen, newest"),
            ("last_seen", "Last seen, oldest"),
            ("os", "OS"),
            ("version", "Client version"),
        ],
    )
    account = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def __init__(self, *args: Any, facets: dict[str, list[str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in ("os", "client_version"):
            values = [value for value in facets[name] if value]
            # The facets are capped; a link may still name a value beyond them.
            asked = self.data.get(name) if self.is_bound else ""
            if asked and asked not in values:
                values.append(asked)
            cast(forms.ChoiceField, self.fields[name]).choices = [("", "Any"), *((value, value) for value in values)]


class CommandForm(forms.Form):
    """One command for one device; the choices come from what the device reported."""

    kind = forms.ChoiceField(choices=Command.Kind.choices)
    protected_item_id = forms.ChoiceField(required=False, label="Protected item")
    vault_id = forms.ChoiceField(required=False, label="Storage vault")
    job_id = forms.UUIDField(required=False)
    version = forms.CharField(required=False, max_length=32, label="Version (optional)")
    lines = forms.IntegerField(required=False, min_value=1, max_value=1000, initial=200, label="Lines")
    path = forms.CharField(required=False, max_length=1000, initial="/", label="Folder")
    remove_config = forms.BooleanField(required=False, label="Also remove its configuration")
    keep_snapshots = forms.IntegerField(required=False, min_value=1, max_value=10_000, label="Keep snapshots")
    snapshot_id = forms.RegexField(
        regex=r"^\d{8}T\d{6}Z-[0-9a-f]{8}$", required=False, label="Snapshot (empty: the newest)"
    )
    target = forms.CharField(required=False, max_length=1000, label="Restore into (a new or empty folder)")

    def __init__(
        self,
        *args: Any,
        protected_items: list[ProtectedItem],
        vaults: list[StorageVault],
        running_job_ids: set[str],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.running_job_ids = running_job_ids
        cast(forms.ChoiceField, self.fields["protected_item_id"]).choices = [
            (item.item_id, f"{item.name} ({item.get_engine_display()})") for item in protected_items
        ]
        cast(forms.ChoiceField, self.fields["vault_id"]).choices = [
            (vault.vault_id, f"{vault.name} ({vault.kind})") for vault in vaults
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("kind")
        if kind == Command.Kind.RUN_BACKUP:
            for name in ("protected_item_id", "vault_id"):
                if not data.get(name):
                    self.add_error(name, "Choose one of the device's reported items and vaults.")
        if kind == Command.Kind.CANCEL_JOB and str(data.get("job_id")) not in self.running_job_ids:
            self.add_error("job_id", "Choose a running job of this device.")
        if kind == Command.Kind.BROWSE_FILES and not data.get("path"):
            self.add_error("path", "Name the folder to list.")
        if kind in VAULT_KINDS and not data.get("vault_id"):
            self.add_error("vault_id", "Choose one of the account's vaults.")
        if kind == Command.Kind.RESTORE:
            if not data.get("target"):
                self.add_error("target", "Name the folder to restore into.")
            if not (data.get("snapshot_id") or data.get("protected_item_id")):
                self.add_error("snapshot_id", "Name the snapshot, or choose the item whose newest snapshot to restore.")
        if kind == Command.Kind.APPLY_RETENTION:
            if not data.get("protected_item_id"):
                self.add_error("protected_item_id", "Choose one of the device's reported items.")
            if not data.get("keep_snapshots"):
                self.add_error("keep_snapshots", "Say how many snapshots to keep.")
        return data

    def parameters(self) -> dict[str, Any]:
        """Return the parameters docs/protocol.md defines for the chosen kind, and nothing else."""
        data = self.cleaned_data
        kind = data["kind"]
        if kind == Command.Kind.RUN_BACKUP:
            parameters = {"protected_item_id": data["protected_item_id"], "vault_id": data["vault_id"]}
            if data.get("keep_snapshots"):
                parameters["keep_snapshots"] = data["keep_snapshots"]
            return parameters
        if kind == Command.Kind.RESTORE:
            chosen = {name: data[name] for name in ("snapshot_id", "protected_item_id") if data.get(name)}
            if "snapshot_id" in chosen:
                chosen.pop("protected_item_id", None)
            return {"vault_id": data["vault_id"], "target": data["target"], **chosen}
        if kind == Command.Kind.APPLY_RETENTION:
            return {
                "vault_id": data["vault_id"],
                "protected_item_id": data["protected_item_id"],
                "keep_snapshots": data["keep_snapshots"],
            }
        if kind in (Command.Kind.ROTATE_VAULT_KEY, Command.Kind.LIST_SNAPSHOTS):
            return {"vault_id": data["vault_id"]}
        if kind == Command.Kind.CANCEL_JOB:
            return {"job_id": str(data["job_id"])}
        if kind == Command.Kind.UPDATE_SOFTWARE:
            return {"version": data["version"]} if data.get("version") else {}
        if kind == Command.Kind.UNINSTALL:
            return {"remove_config": bool(data.get("remove_config"))}
        if kind == Command.Kind.COLLECT_LOGS:
            return {"lines": data.get("lines") or 200}
        if kind == Command.Kind.BROWSE_FILES:
            return {"path": data["path"]}
        return {}
