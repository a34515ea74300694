"""/api/v1/t/<slug>/audit-events/: the tenant's audit log, paginated and filtered."""

from __future__ import annotations

from datetime import UTC, datetime

from tenants.audit import Actor, audit_record
from tenants.models import AuditEvent
from tests.tenants.test_api import VIA, api_client, error_of

URL = "/api/v1/t/acme/audit-events/"


def _record(cast, action: str, when: datetime, actor_label: str = "alice") -> AuditEvent:
    event = audit_record(
        actor=Actor(label=actor_label, role="owner", ip_address="192.0.2.7", user_agent="curl/8"),
        tenant=cast.tenant,
        action=action,
        target_type="device",
        target_id="42",
        before={"state": "old"},
        after={"state": "new"},
    )
    AuditEvent.objects.filter(pk=event.pk).update(created_at=when)
    event.refresh_from_db()
    return event


@VIA
def test_it_lists_the_tenants_events_newest_first(acme, globex, via):
    older = _record(acme, "team.invited", datetime(2026, 1, 1, tzinfo=UTC))
    newer = _record(acme, "team.role_changed", datetime(2026, 1, 2, tzinfo=UTC))
    _record(globex, "team.invited", datetime(2026, 1, 3, tzinfo=UTC))

    response = api_client(acme.auditor, acme.tenant, via).get(URL, {"action": "team."})

    assert response.status_code == 200
    body = response.json()
    assert [event["id"] for event in body["results"]] == [newer.pk, older.pk]
    assert body["results"][0] == {
        "id": newer.pk,
        "created_at": "2026-01-02T00:00:00Z",
        "actor": "alice",
        "actor_role": "owner",
        "action": "team.role_changed",
        "target_type": "device",
        "target_id": "42",
        "ip_address": "192.0.2.7",
        "user_agent": "curl/8",
        "before": {"state": "old"},
        "after": {"state": "new"},
    }


def test_it_filters_by_action_actor_and_time(acme):
    _record(acme, "team.invited", datetime(2026, 1, 1, tzinfo=UTC), actor_label="alice")
    match = _record(acme, "team.role_changed", datetime(2026, 1, 2, tzinfo=UTC), actor_label="Bob Builder")
    _record(acme, "team.role_changed", datetime(2026, 1, 4, tzinfo=UTC), actor_label="bob")
    _record(acme, "apikey.created", datetime(2026, 1, 2, tzinfo=UTC), actor_label="bob")
    client = api_client(acme.owner, acme.tenant, "session")

    response = client.get(
        URL,
        {"action": "team.", "actor": "BOB", "since": "2026-01-02T00:00:00Z", "until": "2026-01-03T00:00:00+00:00"},
    )

    assert [event["id"] for event in response.json()["results"]] == [match.pk]


def test_it_pages_the_log(acme):
    for day in range(1, 29):
        _record(acme, "team.invited", datetime(2026, 2, day, tzinfo=UTC))
    for day in range(1, 29):
        _record(acme, "team.invited", datetime(2026, 3, day, tzinfo=UTC))
    client = api_client(acme.owner, acme.tenant, "session")

    first = client.get(URL).json()
    second = client.get(first["next"]).json()

    assert first["count"] == 56
    assert len(first["results"]) == 50 and len(second["results"]) == 6
    assert second["next"] is None
    assert error_of(client.get(URL, {"page": 3}), 404)["code"] == "not_found"


def test_it_lists_events_in_a_constant_number_of_queries(acme, django_assert_max_num_queries):
    client = api_client(acme.owner, acme.tenant, "api_key")
    with django_assert_max_num_queries(8) as few:
        client.get(URL)
    for day in range(1, 29):
        _record(acme, "team.invited", datetime(2026, 2, day, tzinfo=UTC))

    with django_assert_max_num_queries(len(few.captured_queries)):
        assert client.get(URL).json()["count"] == 29


def test_it_refuses_a_bad_filter(acme):
    response = api_client(acme.owner, acme.tenant, "api_key").get(URL, {"since": "last tuesday"})

    assert set(error_of(response, 400)["fields"]) == {"since"}


@VIA
def test_it_refuses_a_technician(acme, via):
    assert error_of(api_client(acme.technician, acme.tenant, via).get(URL), 403)["code"] == "permission_denied"
