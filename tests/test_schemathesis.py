"""Property-based run of the REST API v1 against its own OpenAPI schema.

The schema is loaded from the app (/api/schema/) and every operation under /api/v1/ is called
in-process with generated requests against seeded data: as acme's owner through an API key, and
the platform's operations again as platform staff through a session. No answer may be a server
error, and every answer must be one the schema documents (status, content type, headers, body).

The requests go through Django's WSGI handler as in production: work deferred to commit (invitation
e-mails, live audit pushes) runs, and stale connections are closed after each request, which would
break a test transaction on PostgreSQL. So these tests commit their data (`transaction=True`).
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

import pytest
import schemathesis
from django.core.cache import cache
from django.core.wsgi import get_wsgi_application
from django.utils import timezone
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from rest_framework.throttling import SimpleRateThrottle
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devices import services as device_services
from devices.models import Job, ProtectedItem, StorageVault
from tenants import services
from tenants.audit import SYSTEM
from tenants.models import Membership
from tests.conftest import client_for

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Enough to reach every branch of these small operations; the whole run stays well under a minute.
MAX_EXAMPLES = 50


@dataclass
class Seeded:
    headers: dict[str, str]
    # Ids that exist, per path parameter: generated ids alone would almost always miss and 404.
    acme_ids: dict[str, list[int]]
    globex_ids: dict[str, list[int]]


@pytest.fixture
def seeded(acme, globex) -> Seeded:
    owner_key = services.api_key_create(actor=SYSTEM, tenant=acme.tenant, user=acme.owner, name="schemathesis")
    spare_key = services.api_key_create(actor=SYSTEM, tenant=acme.tenant, user=acme.owner, name="spare")

    def ids(cast) -> dict[str, list[int]]:
        invitations = [
            services.invitation_create(actor=SYSTEM, tenant=cast.tenant, email=f"{role}@example.com", role=role)
            for role in ("admin", "auditor")
        ]
        # Leave out acme's owner: removing or demoting the caller would end the run's access early.
        members = Membership.objects.filter(tenant=cast.tenant).exclude(user=acme.owner)
        # A backup account with one device that has a protected item, a vault, a command and a job.
        slug = cast.tenant.slug
        l_key_hex = "ab" * 24
        account = device_services.account_create(
            actor=SYSTEM, tenant=cast.tenant, username=f"{slug}-customer", l_key_hex=l_key_hex,
            allow_admin_password_reset=True,
        )  # fmt: skip
        device = device_services.device_register(
            tenant_slug=slug, username=account.username, l_key_hex=l_key_hex, device_id=f"{slug}-device-0001",
            inventory={"name": f"{slug}-laptop"}, ip_address="192.0.2.1",
        ).device  # fmt: skip
        ProtectedItem.objects.create(
            tenant=cast.tenant, device=device, item_id="documents", name="Docs", engine="files"
        )
        StorageVault.objects.create(tenant=cast.tenant, account=account, vault_id="vault-1", name="Office NAS")
        command = device_services.command_issue(actor=SYSTEM, device=device, kind="ping")
        job = Job.objects.create(
            tenant=cast.tenant, device=device, job_id=uuid.uuid4(), command=command, started_at=timezone.now()
        )
        return {
            "membership_id": list(members.values_list("pk", flat=True)),
            "invitation_id": [issued.invitation.pk for issued in invitations],
            "tenant_id": [cast.tenant.pk],
            "account_id": [account.pk],
            "device_pk": [device.pk],
            "command_pk": [command.pk],
            "job_pk": [job.pk],
        }

    return Seeded(
        headers={"Authorization": f"Bearer {owner_key.raw_key}"},
        acme_ids={**ids(acme), "key_id": [spare_key.api_key.pk]},
        globex_ids=ids(globex),
    )


@pytest.fixture
def unthrottled(monkeypatch):
    """Keep the throttles running but out of reach, and leave no request counts for later tests."""
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"anon": "100000/min", "user": "100000/min"})
    cache.clear()
    yield
    cache.clear()


CONFIG = schemathesis.Config.from_dict(
    {
        # Every tenant route runs against acme, where the caller's key belongs and the data is.
        "parameters": {"path.tenant_slug": "acme"},
        # Credentials are the test's to give; generated ones would only stand in their way.
        "generation": {"max-examples": MAX_EXAMPLES, "database": "none", "with-security-parameters": False},
    }
)
schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application(), config=CONFIG)
# The tenant administration API, v1. Other APIs in the same schema (the devices' API) authenticate
# differently, with device credentials, and need runs of their own.
ADMIN_API = schema.include(path_regex="^/api/v1/")
PLATFORM_API = schema.include(path_regex="^/api/v1/platform/")


def call_and_check(case, data, seeded: Seeded, **credentials) -> None:
    """Send one generated request with real ids mixed in, and check the answer against the schema."""
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.PATH):
        # A path that breaks its own schema (an id of -1, of "abc") matches no route: Django's URL
        # resolver answers it with its plain 404 page before the API is reached.
        response = case.call(**credentials)
        case.validate_response(response, checks=[not_a_server_error])
        assert 400 <= response.status_code < 500
        return

    # Use a seeded id of acme or globex about as often as the generated one, which almost always misses.
    for name, value in (case.path_parameters or {}).items():
        known = seeded.acme_ids.get(name, []) + seeded.globex_ids.get(name, [])
        if known:
            case.path_parameters[name] = data.draw(st.sampled_from([value, *known]), label=name)

    response = case.call_and_validate(checks=CHECKS, **credentials)

    # Another tenant's rows stay out of reach whatever the request: not found, never shown or changed.
    if case.operation.path.startswith("/api/v1/t/"):
        for name, value in case.path_parameters.items():
            if value in seeded.globex_ids.get(name, []):
                assert response.status_code == 404, f"{case.method} {case.formatted_path}: {response.status_code}"


# The examples of one operation share one seeded world, which their writes change: on purpose.
SHARED_WORLD = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.django_db(transaction=True)
@ADMIN_API.parametrize()
@ADMIN_API.given(data=st.data())
@SHARED_WORLD
def test_it_answers_every_operation_as_its_schema_says(case, data, seeded, unthrottled):
    """As acme's owner, through an API key: the platform's operations must refuse it, in the schema's words."""
    call_and_check(case, data, seeded, headers=seeded.headers)


@pytest.fixture
def staff_session(staff) -> dict[str, dict[str, str]]:
    """Return the cookies and headers of platform staff signed in to the portal, CSRF token included."""
    csrf_token = secrets.token_hex(16)
    return {
        "headers": {"X-CSRFToken": csrf_token},
        "cookies": {"sessionid": client_for(staff).cookies["sessionid"].value, "csrftoken": csrf_token},
    }


@pytest.mark.django_db(transaction=True)
@PLATFORM_API.parametrize()
@PLATFORM_API.given(data=st.data())
@SHARED_WORLD
def test_it_answers_platform_staff_as_the_schema_says(case, data, seeded, staff_session, unthrottled):
    call_and_check(case, data, seeded, **staff_session)
