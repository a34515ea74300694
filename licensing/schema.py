"""The allow-list: every field a usage report may carry, one typed dictionary per level.

A report is built from these types only (licensing.selectors builds each part through the
constructors below, and `check` refuses a part with a key the type does not declare), and the
licensing service validates every report it receives against the same types before storing
anything. So a field reaches the service only after someone adds it here, where the allow-list
test (tests/licensing/test_allow_list.py) and docs/licensing.md name every path.

What the seed's "Usage Data" section allows, and where it lives here:

- per portal: feature usage (`PortalPart.features`, counts only), the usernames of admins and
  backup accounts (`TenantPart.admins`, `TenantPart.backup_accounts`, grouped by tenant without
  naming the tenant), and the portal's IP address, which the service reads from the connection and
  which is therefore *not* a field;
- per device: the boosters in use (`DevicePart.boosters`, engine codes only), the account's
  username (`DevicePart.account`) and the device name (`DevicePart.name`).

Nothing else: no tenant names or slugs, no client IPs, timezones, OS, file or item names, vault
names or sizes, keys or tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any, Literal, TypedDict, get_args, get_origin, get_type_hints

SCHEMA_VERSION = 1
# The longest text the service accepts in any string field (device names are at most 200).
MAX_TEXT = 200

# Engine codes of protected items (devices.models.ProtectedItem.Engine); a test keeps them equal.
Booster = Literal[
    "files", "disk_image", "mssql", "mysql", "exchange", "hyperv", "vmware", "office365", "program_output"
]


class CommandUsage(TypedDict):
    """Commands issued in the activity window, by kind (devices.models.Command.Kind)."""

    ping: int
    run_backup: int
    cancel_job: int
    refresh_profile: int
    update_software: int
    uninstall: int
    drop_connection: int
    collect_logs: int
    browse_files: int
    restore: int
    apply_retention: int
    rotate_vault_key: int
    list_snapshots: int


class JobUsage(TypedDict):
    """Jobs started in the activity window, by kind (devices.models.Job.Kind)."""

    backup: int
    restore: int
    retention: int
    verify: int


class FeatureUsage(TypedDict):
    """Which portal features are in use, as counts. Inventory counts are taken when the report is built."""

    tenants: int
    tenants_suspended: int
    tenants_requiring_two_factor: int
    admins: int
    backup_accounts: int
    devices: int
    devices_with_protected_items: int
    protected_items: int
    storage_vaults: int
    api_keys_active: int
    staff_access_requests: int
    commands: CommandUsage
    jobs: JobUsage


class PortalPart(TypedDict):
    serial: str
    # The UTC day the report is for, "2026-12-01".
    period: str
    # ISO 8601 instants: when the report was built, and the window the activity counts cover.
    generated_at: str
    activity_from: str
    activity_to: str
    features: FeatureUsage


class DevicePart(TypedDict):
    name: str
    account: str
    boosters: list[Booster]


class TenantPart(TypedDict):
    admins: list[str]
    backup_accounts: list[str]
    devices: list[DevicePart]


class UsageReportPayload(TypedDict):
    schema_version: int
    tenants: list[TenantPart]
    portal: PortalPart


class SchemaError(ValueError):
    """A value that the allow-list does not allow; the message names the path."""


# --- Constructors: the builder makes every part through these --------------------------------


def device_part(*, name: str, account: str, boosters: list[Booster]) -> DevicePart:
    return DevicePart(name=name, account=account, boosters=boosters)


def tenant_part(*, admins: list[str], backup_accounts: list[str], devices: list[DevicePart]) -> TenantPart:
    return TenantPart(admins=admins, backup_accounts=backup_accounts, devices=devices)


# --- Validation -----------------------------------------------------------------------------

Validator = Callable[[Any, str], None]


@cache
def _hints(typed_dict: type) -> dict[str, Any]:
    return get_type_hints(typed_dict)


def _is_typed_dict(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, dict) and hasattr(annotation, "__total__")


@cache
def _validator(annotation: Any) -> Validator:
    """Return a function that checks a value against `annotation`, made once per type (a report
    checks each of its 100,000 devices)."""
    origin = get_origin(annotation)
    if _is_typed_dict(annotation):
        fields = {key: _validator(field_type) for key, field_type in _hints(annotation).items()}
        keys = frozenset(fields)

        def check_object(value: Any, path: str) -> None:
            if not isinstance(value, dict):
                raise SchemaError(f"{path}: expected an object")
            if value.keys() != keys:
                extra = set(value) - keys
                if extra:
                    raise SchemaError(f"{path}: not in the allow-list: {', '.join(sorted(map(str, extra)))}")
                raise SchemaError(f"{path}: missing {', '.join(sorted(keys - set(value)))}")
            for key, check_field in fields.items():
                check_field(value[key], f"{path}.{key}")

        return check_object
    if origin is list:
        (item_type,) = get_args(annotation)
        check_item = _validator(item_type)

        def check_list(value: Any, path: str) -> None:
            if not isinstance(value, list):
                raise SchemaError(f"{path}: expected a list")
            for index, item in enumerate(value):
                check_item(item, f"{path}[{index}]")

        return check_list
    if origin is Literal:
        allowed = frozenset(get_args(annotation))

        def check_choice(value: Any, path: str) -> None:
            if not isinstance(value, str) or value not in allowed:
                raise SchemaError(f"{path}: {value!r} is not one of the allowed values")

        return check_choice
    if annotation is int:

        def check_count(value: Any, path: str) -> None:
            if type(value) is not int or value < 0:
                raise SchemaError(f"{path}: expected a count")

        return check_count
    if annotation is str:

        def check_text(value: Any, path: str) -> None:
            if type(value) is not str or len(value) > MAX_TEXT:
                raise SchemaError(f"{path}: expected text of at most {MAX_TEXT} characters")

        return check_text
    raise TypeError(f"the schema uses an unsupported type {annotation!r}")  # pragma: no cover


def check(value: Any, annotation: Any, path: str = "$") -> None:
    """Raise SchemaError unless `value` is exactly of `annotation`: no extra keys, none missing."""
    _validator(annotation)(value, path)


def allowed_paths(annotation: Any = UsageReportPayload, prefix: str = "") -> list[str]:
    """Return every leaf path the allow-list permits, e.g. "tenants[].devices[].boosters[]"."""
    origin = get_origin(annotation)
    if _is_typed_dict(annotation):
        paths: list[str] = []
        for key, field_type in _hints(annotation).items():
            paths += allowed_paths(field_type, f"{prefix}.{key}" if prefix else key)
        return paths
    if origin is list:
        return allowed_paths(get_args(annotation)[0], prefix + "[]")
    return [prefix]


def allowed_values(annotation: Any) -> tuple[Any, ...]:
    """Return the values a Literal type allows (the boosters)."""
    return get_args(annotation)


def fields_of(typed_dict: type) -> tuple[str, ...]:
    """Return a part's keys in declaration order."""
    return tuple(_hints(typed_dict))
