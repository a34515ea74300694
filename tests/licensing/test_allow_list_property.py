"""Property: whatever the inventory, a report holds only allowed values and none of the others.

Allowed values (usernames, device names) are drawn from lower-case letters a-h, digits and '-';
every value the report must not carry contains "zqx" or "ZQX", so it can never hide inside an
allowed one, and any trace of it in the report is a leak.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.models import BackupAccount, Device, ProtectedItem, StorageVault
from licensing import payload as payload_format
from licensing import schema, selectors
from tenants.models import Membership, Tenant

pytestmark = pytest.mark.django_db

allowed_name = st.from_regex(r"[a-h][a-h0-9-]{0,14}", fullmatch=True)
secret = st.builds(
    lambda marker, text: marker + text,
    st.sampled_from(["zqx", "ZQX", "Zqx-"]),
    st.text(
        alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Co", "Cn")), min_size=0, max_size=25
    ),
)
secret_ip = st.ip_addresses().map(str)
engine = st.sampled_from(list(ProtectedItem.Engine.values))

item = st.fixed_dictionaries({"name": secret, "engine": engine, "size": st.integers(0, 2**40)})
device = st.fixed_dictionaries(
    {
        "name": allowed_name,
        "timezone": secret,
        "os": secret,
        "client_version": secret.map(lambda value: value[:32]),
        "ip": secret_ip,
        "items": st.lists(item, max_size=4),
        "revoked": st.booleans(),
    }
)
account = st.fixed_dictionaries(
    {
        "display_name": secret,
        "email_local": st.from_regex(r"zqx[a-z]{1,8}", fullmatch=True),
        "devices": st.lists(device, max_size=3),
        "vaults": st.lists(secret, max_size=2),
    }
)
tenant = st.fixed_dictionaries(
    {
        "slug": st.from_regex(r"zqx[a-z0-9]{1,10}", fullmatch=True),
        "name": secret,
        "admins": st.lists(allowed_name, max_size=3, unique=True),
        "accounts": st.dictionaries(allowed_name, account, max_size=3),
    }
)
inventory = st.lists(tenant, min_size=1, max_size=3, unique_by=lambda value: value["slug"])


class _RolledBack(Exception):
    pass


def _load(tenants: list[dict]) -> tuple[set[str], set[str], int]:
    """Create the inventory; return (values allowed in the report, values forbidden, devices in use)."""
    allowed: set[str] = set()
    forbidden: set[str] = set()
    in_use = 0
    users = get_user_model()
    for number, spec in enumerate(tenants):
        row = Tenant.objects.create(slug=spec["slug"], name=spec["name"][:200], display_name=spec["name"][:200])
        forbidden |= {spec["slug"], spec["name"][:200]}
        for username in spec["admins"]:
            user, _ = users.objects.get_or_create(username=username, defaults={"email": f"zqx{number}@example.com"})
            Membership.objects.create(tenant=row, user=user, role="admin")
            allowed.add(username)
        for username, account_spec in spec["accounts"].items():
            account = BackupAccount.objects.create(
                tenant=row,
                username=username,
                display_name=account_spec["display_name"][:200],
                email=f"{account_spec['email_local']}@example.com",
                login_verifier="$2b$zqx" + uuid.uuid4().hex,
                profile_secrets=b"zqx-wrapped-secret",
            )
            allowed.add(username)
            forbidden |= {account_spec["display_name"][:200], f"{account_spec['email_local']}@example.com"}
            for vault_name in account_spec["vaults"]:
                StorageVault.objects.create(
                    tenant=row, account=account, vault_id=uuid.uuid4().hex, name=vault_name[:200], bytes_used=7
                )
                forbidden.add(vault_name[:200])
            for device_spec in account_spec["devices"]:
                device_row = Device.objects.create(
                    tenant=row,
                    account=account,
                    device_id=uuid.uuid4().hex,
                    name=device_spec["name"],
                    os=device_spec["os"][:64],
                    client_version=device_spec["client_version"],
                    timezone=device_spec["timezone"][:64],
                    public_ip=device_spec["ip"],
                    token_hash=uuid.uuid4().hex * 2,
                    revoked_at=timezone.now() if device_spec["revoked"] else None,
                )
                forbidden |= {device_spec["os"][:64], device_spec["client_version"], device_spec["timezone"][:64]}
                forbidden.add(device_spec["ip"])
                if not device_spec["revoked"]:
                    allowed.add(device_spec["name"])
                    in_use += 1
                for index, item_spec in enumerate(device_spec["items"]):
                    ProtectedItem.objects.create(
                        tenant=row,
                        device=device_row,
                        item_id=f"item-{index}",
                        name=item_spec["name"][:200],
                        engine=item_spec["engine"],
                        size_bytes=item_spec["size"],
                    )
                    forbidden.add(item_spec["name"][:200])
    return allowed, forbidden, in_use


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tenants=inventory)
def test_it_never_lets_a_value_outside_the_allow_list_into_a_report(tenants):
    try:
        with transaction.atomic():
            allowed, forbidden, in_use = _load(tenants)
            built = selectors.usage_report_build(serial="portal-property", period=timezone.now().date())
            raise _RolledBack(built)
    except _RolledBack as rolled_back:
        built = rolled_back.args[0]
    data = payload_format.decompress(built.serialised.body, limit=10**8)
    report = json.loads(data)

    schema.check(report, schema.UsageReportPayload)
    for value in forbidden:
        if "zqx" in value.lower() or re.fullmatch(r"[\d.:a-f]+", value):
            for form in (value.encode(), payload_format.dumps(value)[1:-1].encode()):
                assert form not in data, f"the report contains {value!r}"
    strings = {
        name
        for part in report["tenants"]
        for name in part["admins"]
        + part["backup_accounts"]
        + [d["name"] for d in part["devices"]]
        + [d["account"] for d in part["devices"]]
    }
    assert strings <= allowed
    assert report["portal"]["features"]["devices"] == in_use == sum(len(part["devices"]) for part in report["tenants"])
