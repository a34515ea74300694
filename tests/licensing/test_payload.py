"""The payload writer: its JSON is json.dumps's, byte for byte, and its tenant spans are exact."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from licensing import payload as payload_format
from licensing.schema import Booster, allowed_values
from tests.licensing.test_allow_list import COMMANDS, JOBS

text = st.text(alphabet=st.characters(codec="utf-8"), max_size=30)
device = st.fixed_dictionaries(
    {"name": text, "account": text, "boosters": st.lists(st.sampled_from(allowed_values(Booster)), unique=True)}
)
tenant = st.fixed_dictionaries(
    {"admins": st.lists(text, max_size=3), "backup_accounts": st.lists(text, max_size=3), "devices": st.lists(device)}
)
PORTAL = {
    "serial": "portal-1",
    "period": "2026-11-30",
    "generated_at": "2026-12-01T00:05:00+00:00",
    "activity_from": "2026-11-30T00:00:00+00:00",
    "activity_to": "2026-12-01T00:00:00+00:00",
    "features": {
        **dict.fromkeys(
            [
                "tenants",
                "tenants_suspended",
                "tenants_requiring_two_factor",
                "admins",
                "backup_accounts",
                "devices",
                "devices_with_protected_items",
                "protected_items",
                "storage_vaults",
                "api_keys_active",
                "staff_access_requests",
            ],
            1,
        ),
        "commands": dict.fromkeys(COMMANDS, 0),
        "jobs": dict.fromkeys(JOBS, 2),
    },
}


@settings(max_examples=200, deadline=None)
@given(tenants=st.lists(tenant, max_size=4))
def test_it_writes_what_json_dumps_writes_and_knows_where_each_tenant_is(tenants):
    # In the schema's key order (a drawn dictionary's order is Hypothesis's own).
    tenants = [
        {
            "admins": part["admins"],
            "backup_accounts": part["backup_accounts"],
            "devices": [
                {"name": d["name"], "account": d["account"], "boosters": d["boosters"]} for d in part["devices"]
            ],
        }
        for part in tenants
    ]
    report = {"schema_version": 1, "tenants": tenants, "portal": PORTAL}

    written = payload_format.serialise(report)

    data = payload_format.decompress(written.body, limit=10**7)
    assert data == payload_format.dumps(report).encode()
    assert written.size == len(data) and written.sha256 == payload_format.hashlib.sha256(data).hexdigest()
    assert [json.loads(data[start:end]) for start, end in written.spans] == tenants
    for index, (_start, end) in enumerate(written.spans):
        assert payload_format.json_prefix(written.body, end)[written.spans[index][0] : end] == data[_start:end]
