"""The isolation probe: every URL pattern, API route and websocket route, read from the resolvers, tried
with every method as people who must be refused. A new route is probed with no extra work; a route
whose parameters the probe cannot fill, or that must be reachable without the usual checks, fails
the probe until it is given a value or listed in EXEMPT with a reason.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.utils import timezone

from devices import keys
from devices import services as device_services
from devices.models import Job, StorageVault
from portal.asgi import application
from portal.websocket_urls import websocket_urlpatterns
from tenants import services, services_access, services_erasure, services_export
from tenants.access import SAFE_METHODS, required_permission
from tenants.audit import SYSTEM, Actor, audit_record
from tenants.models import AuditEvent, Membership
from tenants.models_access import AREAS, AccessRequest
from tenants.selectors_access import grant_allows
from tests.conftest import client_for

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
DENIED = {401, 403, 404, 405}
# A string that appears in acme's data and nowhere else: no denial may contain it.
ACME_SECRET = "AcmeSecretBrand"
ACME_MARKERS = (ACME_SECRET, "Acme Corporation", "acme-owner", "acme-admin", "acme-technician", "acme-auditor")

# Routes reachable without the checks below, and why. Keyed by URL name (or route for unnamed ones).
EXEMPT_PUBLIC = {
    "home": "Sends anonymous people to log in; shows only the person's own tenants.",
    "login": "The login page must be reachable anonymously.",
    "login-verify": "Second login step; works only with a pending login in the session.",
    "logout": "Logging out needs no permission.",
    "invitation-accept": "Reached with a one-time token; an unknown, used or expired token is a 404.",
    "api-schema": "The OpenAPI schema describes routes, not tenant data.",
    "api-docs": "The API docs page shows the schema only.",
    "device-register": "Devices register with the account's L key in the body; a wrong key is a 401.",
}
# Websocket routes outside a tenant, authenticated by a device token instead of a session.
DEVICE_TOKEN_WEBSOCKETS = {"ws-device": "Devices authenticate with their token; a session opens nothing."}
# Routes where an auditor may write, and why.
EXEMPT_AUDITOR_WRITE = {
    "tenant-api-keys": "Every admin, auditors too, creates their own keys; a key carries its owner's role.",
    "tenant-api-key-revoke": "Every admin revokes their own keys.",
    "api-api-keys": "Every admin, auditors too, creates their own keys; a key carries its owner's role.",
    "api-api-key": "Every admin revokes their own keys.",
}
# Routes a suspended tenant's admin may still read.
ALLOWED_WHEN_SUSPENDED = {"tenant-suspended", "tenant-logo"}
ADMIN_PREFIX = "admin/"


@dataclass(frozen=True)
class Route:
    name: str
    template: str  # e.g. "t/<slug:tenant_slug>/team/<int:membership_id>/role/"

    @property
    def parameters(self) -> list[str]:
        return re.findall(r"<(?:\w+:)?(\w+)>", self.template)

    @property
    def is_tenant_route(self) -> bool:
        return "tenant_slug" in self.parameters

    @property
    def is_platform_route(self) -> bool:
        return self.template.startswith(("platform/", "api/v1/platform/"))

    def url(self, values: dict[str, str]) -> str:
        return "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda match: values[match.group(1)], self.template)


def _walk(patterns: list, prefix: str = "") -> Iterator[tuple[str, str, object]]:
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            yield from _walk(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            yield route, pattern.name or route, pattern


def http_routes() -> list[Route]:
    """Return every URL pattern of the project, except the Django admin (probed on its own below)."""
    routes = []
    for template, name, _pattern in _walk(get_resolver().url_patterns):
        if template.startswith(ADMIN_PREFIX) or template.startswith("^admin"):
            continue
        if template.startswith("^"):
            raise AssertionError(f"Regex route {template!r}: give it a path() route so the probe can fill it.")
        routes.append(Route(name=name, template=template))
    return routes


@pytest.fixture
def world(acme, globex, initech, staff, outsider):
    """Acme is the victim: it has data in every table the routes reach."""
    acme.tenant.display_name = ACME_SECRET
    acme.tenant.logo, acme.tenant.logo_content_type = b"<svg/>", "image/svg+xml"
    acme.tenant.save(update_fields=["display_name", "logo", "logo_content_type"])
    audit_record(actor=SYSTEM, tenant=acme.tenant, action="probe.seeded", target_id=ACME_SECRET)
    invitation = services.invitation_create(actor=SYSTEM, tenant=acme.tenant, email="new@acme.example", role="admin")
    owner_key = services.api_key_create(actor=SYSTEM, tenant=acme.tenant, user=acme.owner, name="probe")
    auditor_key = services.api_key_create(actor=SYSTEM, tenant=acme.tenant, user=acme.auditor, name="probe")
    acme_values = {
        "tenant_slug": "acme",
        "tenant_id": str(acme.tenant.pk),
        "membership_id": str(Membership.objects.get(tenant=acme.tenant, user=acme.admin).pk),
        "invitation_id": str(invitation.invitation.pk),
        "key_id": str(owner_key.api_key.pk),
        "token": invitation.link.rstrip("/").rsplit("/", 1)[-1],
    }
    account = device_services.account_create(
        actor=SYSTEM, tenant=acme.tenant, username="acme-customer", password="pw-12345678"
    )
    device = device_services.device_register(
        tenant_slug="acme",
        username="acme-customer",
        l_key_hex=keys.derive_keys("acme", "acme-customer", "pw-12345678")[0].hex(),
        device_id="acme-device-0001",
        inventory={"name": ACME_SECRET + "-laptop"},
        ip_address="192.0.2.1",
    ).device
    command = device_services.command_issue(actor=SYSTEM, device=device, kind="ping")
    job = Job.objects.create(
        tenant=acme.tenant, device=device, job_id=uuid.uuid4(), command=command, started_at=timezone.now()
    )
    vault = StorageVault.objects.create(tenant=acme.tenant, account=account, vault_id="acme-vault", name=ACME_SECRET)
    acme_values.update(
        account_id=str(account.pk),
        device_pk=str(device.pk),
        command_pk=str(command.pk),
        job_pk=str(job.pk),
        vault_id=vault.vault_id,
    )
    globex_key = services.api_key_create(actor=SYSTEM, tenant=globex.tenant, user=globex.owner, name="probe")
    pending = services_access.access_request_create(
        actor=Actor(user=staff, role="platform_staff"),
        tenant=acme.tenant,
        reason_code="customer_support",
        ticket_reference="T-probe",
        justification="The probe's pending request.",
        areas=list(AREAS),
    )
    acme_values["request_id"] = str(pending.pk)
    # A GDPR erasure request (for an account of its own, so the one above stays visible) and an export.
    leaver = device_services.account_create(
        actor=SYSTEM, tenant=acme.tenant, username="acme-leaver", password="pw-12345678"
    )
    erasure = services_erasure.erasure_request_create(
        actor=Actor(user=acme.owner, role="owner"),
        tenant=acme.tenant,
        subject_kind="backup_account",
        subject_id=leaver.pk,
        asked_by="The account holder",
        verification="Probe",
    )
    export = services_export.export_request(
        actor=Actor(user=acme.owner, role="owner"),
        tenant=acme.tenant,
        subject_kind="backup_account",
        subject_id=account.pk,
    )
    services_export.export_build(export_id=export.pk)
    acme_values.update(erasure_id=str(erasure.pk), export_id=str(export.pk))
    return {
        "acme": acme,
        "globex": globex,
        "initech": initech,
        "staff": staff,
        "outsider": outsider,
        "acme_values": acme_values,
        "owner_key": owner_key.raw_key,
        "auditor_key": auditor_key.raw_key,
        "auditor_key_id": str(auditor_key.api_key.pk),
        "globex_key": globex_key.raw_key,
    }


def _values_for(route: Route, values: dict[str, str]) -> dict[str, str]:
    missing = [name for name in route.parameters if name not in values]
    assert not missing, f"The probe has no value for {missing} in route {route.template!r}: add one to `world`."
    return values


def _send(client: Client, method: str, url: str, **headers: str):
    if method in UNSAFE_METHODS:
        return client.generic(method, url, data="{}", content_type="application/json", headers=headers)
    return client.generic(method, url, headers=headers)


def _body(response) -> str:
    if getattr(response, "streaming", False):
        return b"".join(response.streaming_content).decode(errors="replace")
    return response.content.decode(errors="replace")


def _assert_denied(response, who: str, method: str, url: str, allow_redirect_to: tuple[str, ...] = ("/login/",)):
    status = response.status_code
    if status == 302:
        location = response["Location"]
        assert location.startswith(allow_redirect_to), f"{who} {method} {url}: redirected to {location}"
    else:
        assert status in DENIED, f"{who} {method} {url}: got {status}, expected a denial"
    body = _body(response)
    for marker in ACME_MARKERS:
        assert marker not in body, f"{who} {method} {url}: the denial shows acme's data ({marker!r})"


@pytest.mark.django_db
def test_it_knows_the_routes_it_probes():
    names = {route.name for route in http_routes()}
    # The probe must see the routes of every kind, or it probes nothing.
    assert {"tenant-team", "tenant-audit", "platform-dashboard"} <= names
    stale = (set(EXEMPT_PUBLIC) | set(EXEMPT_AUDITOR_WRITE) | ALLOWED_WHEN_SUSPENDED) - names
    assert not stale, f"Exemptions name routes that no longer exist: {stale}"


def test_it_reaches_every_tenant_route_as_the_owner(world):
    """The URLs the probe builds are real: acme's owner reaches each one (else denials prove nothing)."""
    owner = client_for(world["acme"].owner)
    for route in http_routes():
        if not route.is_tenant_route:
            continue
        url = route.url(_values_for(route, world["acme_values"]))
        statuses = {method: _send(owner, method, url).status_code for method in ("GET", "POST")}
        assert any(status not in (403, 404) for status in statuses.values()), f"owner cannot reach {url}: {statuses}"


def test_it_denies_anonymous_people_everywhere_but_public_routes(world):
    anonymous = Client()
    for route in http_routes():
        if route.name in EXEMPT_PUBLIC:
            continue
        url = route.url(_values_for(route, world["acme_values"]))
        for method in METHODS:
            _assert_denied(_send(anonymous, method, url), "anonymous", method, url)


def test_it_hides_one_tenant_from_another_tenants_owner(world):
    session = client_for(world["globex"].owner)
    bearer = Client()
    for route in http_routes():
        if not route.is_tenant_route:
            continue
        url = route.url(_values_for(route, world["acme_values"]))
        for method in METHODS:
            _assert_denied(_send(session, method, url), "globex owner", method, url)
            response = _send(bearer, method, url, authorization=f"Bearer {world['globex_key']}")
            _assert_denied(response, "globex owner's key", method, url)
            if route.name not in EXEMPT_PUBLIC:
                assert response.status_code != 302, f"globex key {method} {url}"


def test_it_refuses_every_write_by_an_auditor(world):
    values = dict(world["acme_values"], key_id=world["auditor_key_id"])
    session = client_for(world["acme"].auditor)
    bearer = Client()
    for route in http_routes():
        if not route.is_tenant_route or route.name in EXEMPT_AUDITOR_WRITE:
            continue
        url = route.url(_values_for(route, values))
        for method in UNSAFE_METHODS:
            for who, client, headers in (
                ("auditor", session, {}),
                ("auditor's key", bearer, {"authorization": f"Bearer {world['auditor_key']}"}),
            ):
                response = _send(client, method, url, **headers)
                assert response.status_code in {403, 405}, f"{who} {method} {url}: got {response.status_code}"


def test_it_shows_platform_staff_no_tenant_data(world):
    staff = client_for(world["staff"])
    for route in http_routes():
        if not route.is_tenant_route:
            continue
        url = route.url(_values_for(route, world["acme_values"]))
        for method in METHODS:
            _assert_denied(_send(staff, method, url), "platform staff", method, url)


def test_it_keeps_platform_routes_for_platform_staff(world):
    for who in ("acme", "outsider"):
        user = world[who].owner if who == "acme" else world[who]
        client = client_for(user)
        for route in http_routes():
            if not route.is_platform_route:
                continue
            url = route.url(_values_for(route, world["acme_values"]))
            for method in METHODS:
                _assert_denied(_send(client, method, url), who, method, url)
    bearer = Client()
    for route in http_routes():
        if route.is_platform_route:
            url = route.url(_values_for(route, world["acme_values"]))
            response = _send(bearer, "GET", url, authorization=f"Bearer {world['owner_key']}")
            assert response.status_code in DENIED, f"an API key reached platform route {url}"


def test_it_lets_a_suspended_tenants_admin_only_read_the_notice(world):
    initech = world["initech"]
    values = dict(world["acme_values"], tenant_slug="initech", tenant_id=str(initech.tenant.pk))
    values["membership_id"] = str(Membership.objects.get(tenant=initech.tenant, user=initech.admin).pk)
    client = client_for(initech.owner)
    suspended_page = "/t/initech/suspended/"
    for route in http_routes():
        if not route.is_tenant_route or route.name in ALLOWED_WHEN_SUSPENDED:
            continue
        url = route.url(_values_for(route, values))
        for method in METHODS:
            response = _send(client, method, url)
            _assert_denied(response, "suspended owner", method, url, allow_redirect_to=(suspended_page,))
    assert client.get(suspended_page).status_code == 200


@pytest.mark.django_db
def test_it_keeps_the_django_admin_for_superusers(staff, acme, superuser):
    for user in (None, staff, acme.owner):
        response = client_for(user).get("/admin/")
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert client_for(superuser).get("/admin/").status_code == 200


# --- Websockets -----------------------------------------------------------------------------


def websocket_routes() -> list[Route]:
    return [
        Route(name=pattern.name or str(pattern.pattern), template=str(pattern.pattern))
        for pattern in websocket_urlpatterns
    ]


def _session_cookie(user) -> list[tuple[bytes, bytes]]:
    headers = [(b"origin", b"http://testserver")]
    if user is not None:
        client = client_for(user)
        headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
    return headers


async def _connects(url: str, user) -> bool:
    headers = await sync_to_async(_session_cookie)(user)
    communicator = WebsocketCommunicator(application, url, headers=headers)
    connected, _code = await communicator.connect()
    await communicator.disconnect()
    return connected


async def _closes_at_once_with(url: str, user) -> int | None:
    headers = await sync_to_async(_session_cookie)(user)
    communicator = WebsocketCommunicator(application, url, headers=headers)
    connected, code = await communicator.connect()
    if not connected:
        return code
    output = await communicator.receive_output(timeout=2)
    await communicator.disconnect()
    return output.get("code") if output["type"] == "websocket.close" else None


@pytest.mark.django_db(transaction=True)
async def test_it_refuses_device_websockets_to_people(world):
    for route in websocket_routes():
        if route.is_tenant_route:
            continue
        assert route.name in DEVICE_TOKEN_WEBSOCKETS, f"websocket {route.template}: probe it or list it with a reason"
        for who in (None, world["acme"].owner, world["staff"]):
            assert await _closes_at_once_with(route.url({}), who) == 4001, f"{who} kept {route.template} open"


@pytest.mark.django_db(transaction=True)
async def test_it_refuses_websockets_to_people_outside_the_tenant(world):
    for route in websocket_routes():
        if not route.is_tenant_route:
            continue
        url = route.url(world["acme_values"])
        for who in (None, world["globex"].owner, world["staff"], world["outsider"]):
            assert not await _connects(url, who), f"{who} connected to {url}"
        suspended_url = route.url(dict(world["acme_values"], tenant_slug="initech"))
        assert not await _connects(suspended_url, world["initech"].owner)
        assert await _connects(url, world["acme"].owner), f"acme's owner cannot connect to {url}"


# --- Platform staff and access grants -------------------------------------------------------


def _staff_grant(world, *, cast_name: str = "acme", write: bool = True) -> AccessRequest:
    """Return a live grant to platform staff in a tenant, covering every area, approved by its owner."""
    cast = world[cast_name]
    requested = services_access.access_request_create(
        actor=Actor(user=world["staff"], role="platform_staff"),
        tenant=cast.tenant,
        reason_code="customer_support",
        ticket_reference="T-1",
        justification="Probe.",
        areas=list(AREAS),
        scope_write=write,
    )
    return services_access.access_request_approve(actor=Actor(user=cast.owner, role="owner"), access_request=requested)


def _consent_events(tenant, action: str):
    return AuditEvent.objects.filter(tenant=tenant, action=action).order_by("-sequence")


def _assert_staff_denied_and_logged(world, methods, who: str, grant_id: int | None = None) -> int:
    """Send every method to every acme route as staff; each must be denied and logged. Return the count."""
    acme = world["acme"].tenant
    staff = client_for(world["staff"])
    probed = 0
    for route in http_routes():
        if not route.is_tenant_route:
            continue
        url = route.url(_values_for(route, world["acme_values"]))
        for method in methods:
            before = _consent_events(acme, "staff_access.denied").count()
            response = _send(staff, method, url)
            _assert_denied(response, who, method, url)
            assert response.status_code in (403, 404), f"{who} {method} {url}: {response.status_code}"
            denied = _consent_events(acme, "staff_access.denied")
            assert denied.count() == before + 1, f"{who} {method} {url}: the denial was not logged"
            event = denied.first()
            assert event.after["path"] == url and event.after["method"] == method
            assert event.after["grant_id"] == grant_id, f"{who} {method} {url}: logged {event.after}"
            probed += 1
    assert not _consent_events(acme, "staff_access.used").exists(), f"{who}: a use was logged"
    return probed


def test_it_denies_and_logs_staff_without_a_grant(world):
    assert _assert_staff_denied_and_logged(world, METHODS, "staff without a grant") > 50


def test_it_denies_and_logs_staff_whose_grant_is_for_another_tenant(world):
    _staff_grant(world, cast_name="globex")
    _assert_staff_denied_and_logged(world, METHODS, "staff with globex's grant")


def test_it_denies_and_logs_every_write_through_a_read_only_grant(world):
    grant = _staff_grant(world, write=False)
    _assert_staff_denied_and_logged(world, UNSAFE_METHODS, "staff with a read-only grant", grant_id=grant.pk)


def test_it_denies_and_logs_staff_whose_grant_has_expired(world, time_machine):
    grant = _staff_grant(world)
    time_machine.move_to(grant.expires_at)
    # The periodic task has not run yet: the grant is still "approved" in the table, and refused.
    assert AccessRequest.objects.get(pk=grant.pk).state == AccessRequest.State.APPROVED
    _assert_staff_denied_and_logged(world, METHODS, "staff with an expired grant")


def test_it_denies_and_logs_staff_whose_grant_was_revoked(world):
    grant = _staff_grant(world)
    services_access.access_grant_revoke(actor=Actor(user=world["acme"].admin, role="admin"), grant=grant)
    _assert_staff_denied_and_logged(world, METHODS, "staff with a revoked grant")


def test_it_lets_a_read_write_grant_reach_only_what_it_covers_and_logs_each_use(world):
    acme = world["acme"].tenant
    grant = _staff_grant(world)
    staff = client_for(world["staff"])
    allowed_somewhere = set()
    for route in http_routes():
        if not route.is_tenant_route:
            continue
        url = route.url(_values_for(route, world["acme_values"]))
        view = resolve(url).func
        for method in METHODS:
            covered = grant_allows(
                grant=grant, permission=required_permission(view, method), safe_method=method in SAFE_METHODS
            )
            used_before = _consent_events(acme, "staff_access.used").count()
            denied_before = _consent_events(acme, "staff_access.denied").count()
            response = _send(staff, method, url)
            used = _consent_events(acme, "staff_access.used")
            denied = _consent_events(acme, "staff_access.denied")
            if covered:
                assert response.status_code != 403, f"grant {method} {url}: refused though covered"
                assert used.count() == used_before + 1, f"grant {method} {url}: the use was not logged"
                assert denied.count() == denied_before
                event = used.first()
                assert event.target_id == str(grant.pk) and event.after["grant_id"] == grant.pk
                assert event.after["path"] == url and event.after["method"] == method
                assert event.ip_address == "127.0.0.1" and event.actor_role == "platform_staff"
                allowed_somewhere.add(route.name)
            else:
                _assert_denied(response, "grant", method, url)
                assert response.status_code == 403, f"grant {method} {url}: {response.status_code}"
                assert denied.count() == denied_before + 1, f"grant {method} {url}: the denial was not logged"
                assert denied.first().after["grant_id"] == grant.pk
                assert used.count() == used_before
    # The grant reaches the areas it names, and never the tenant's own controls over staff access.
    assert {"tenant-dashboard", "tenant-devices", "tenant-accounts", "tenant-audit", "tenant-team"} <= allowed_somewhere
    assert not {"tenant-staff-access", "tenant-consent-log", "tenant-staff-access-revoke"} & allowed_somewhere
    assert not {"tenant-api-keys", "tenant-team-invite", "tenant-settings-security"} & allowed_somewhere


@pytest.mark.django_db(transaction=True)
async def test_it_opens_tenant_websockets_to_staff_only_through_a_grant(world):
    urls = [route.url(world["acme_values"]) for route in websocket_routes() if route.is_tenant_route]
    for url in urls:
        assert not await _connects(url, world["staff"]), f"staff without a grant connected to {url}"
    await sync_to_async(_staff_grant)(world)
    for url in urls:
        assert await _connects(url, world["staff"]), f"staff with a grant cannot connect to {url}"
