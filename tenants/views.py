"""Tenant admin pages. The tenant, membership and permission checks ran in TenantMiddleware already;
each view validates its form, calls one service or selector and renders."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import datetime, time, timedelta

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from tenants import selectors, services
from tenants.access import TenantHttpRequest, tenant_route
from tenants.audit import actor_from_request
from tenants.audit_chain import chains_verify
from tenants.forms import ApiKeyForm, AuditFilterForm, InviteForm, LogoForm, RoleForm, SecurityForm, TenantSettingsForm
from tenants.models import AuditEvent
from tenants.roles import Role, role_allows

AUDIT_PAGE_SIZE = 50


def _error_text(error: ValidationError) -> str:
    return " ".join(error.messages)


@tenant_route(read="tenant.view")
@require_http_methods(["GET"])
def dashboard(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    tenant = request.tenant
    context = {
        "summary": selectors.tenant_summary(tenant=tenant),
        "recent_events": (
            selectors.audit_events(tenant=tenant)[:8] if role_allows(request.membership.role, "audit.view") else []
        ),
    }
    return render(request, "tenants/dashboard.html", context)


@tenant_route(read="tenant.view", allowed_when_suspended=True)
@require_http_methods(["GET"])
def suspended(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    if not request.tenant.is_suspended:
        return redirect("tenant-dashboard", tenant_slug=tenant_slug)
    return render(request, "tenants/suspended.html")


@tenant_route(read="tenant.view", allowed_when_suspended=True, allowed_before_two_factor=True)
@require_http_methods(["GET"])
def logo(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    tenant = request.tenant
    if not tenant.logo_content_type:
        return HttpResponse(status=404)
    response = HttpResponse(bytes(tenant.logo), content_type=tenant.logo_content_type)
    # An uploaded SVG may carry script: never let it run in the portal's origin.
    response["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
    response["Cache-Control"] = "private, max-age=300"
    return response


# --- Team -----------------------------------------------------------------------------------


@tenant_route(read="team.view")
@require_http_methods(["GET"])
def team(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    tenant = request.tenant
    return render(
        request,
        "tenants/team.html",
        {
            "members": selectors.team_list(tenant=tenant),
            "invitations": selectors.invitations_pending(tenant=tenant),
            "invite_form": InviteForm(),
            "role_choices": Role.choices,
        },
    )


@tenant_route(write="team.manage")
@require_POST
def team_invite(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    form = InviteForm(request.POST)
    if form.is_valid():
        issued = services.invitation_create(
            actor=actor_from_request(request),
            tenant=request.tenant,
            email=form.cleaned_data["email"],
            role=form.cleaned_data["role"],
        )
        messages.success(request, f"Invitation sent to {issued.invitation.email}.")
    else:
        messages.error(request, "Enter a valid e-mail address and role.")
    return redirect("tenant-team", tenant_slug=tenant_slug)


@tenant_route(write="team.manage")
@require_POST
def team_change_role(request: TenantHttpRequest, tenant_slug: str, membership_id: int) -> HttpResponse:
    membership = selectors.membership_get(tenant=request.tenant, membership_id=membership_id)
    form = RoleForm(request.POST)
    if form.is_valid():
        try:
            services.membership_change_role(
                actor=actor_from_request(request), membership=membership, role=form.cleaned_data["role"]
            )
            messages.success(request, f"{membership.user.get_username()} is now {membership.get_role_display()}.")
        except ValidationError as error:
            messages.error(request, _error_text(error))
    return redirect("tenant-team", tenant_slug=tenant_slug)


@tenant_route(write="team.manage")
@require_POST
def team_remove(request: TenantHttpRequest, tenant_slug: str, membership_id: int) -> HttpResponse:
    membership = selectors.membership_get(tenant=request.tenant, membership_id=membership_id)
    try:
        services.membership_remove(actor=actor_from_request(request), membership=membership)
        messages.success(request, f"{membership.user.get_username()} was removed from the team.")
    except ValidationError as error:
        messages.error(request, _error_text(error))
    return redirect("tenant-team", tenant_slug=tenant_slug)


@tenant_route(write="team.manage")
@require_POST
def invitation_revoke(request: TenantHttpRequest, tenant_slug: str, invitation_id: int) -> HttpResponse:
    invitation = selectors.invitation_get(tenant=request.tenant, invitation_id=invitation_id)
    services.invitation_revoke(actor=actor_from_request(request), invitation=invitation)
    messages.success(request, f"The invitation to {invitation.email} was revoked.")
    return redirect("tenant-team", tenant_slug=tenant_slug)


# --- Settings -------------------------------------------------------------------------------


@tenant_route(read="settings.view", write="settings.change")
@require_http_methods(["GET", "POST"])
def settings_page(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    tenant = request.tenant
    initial = {"name": tenant.name, "display_name": tenant.display_name, "accent_colour": tenant.accent_colour}
    form = TenantSettingsForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            services.tenant_update_settings(actor=actor_from_request(request), tenant=tenant, **form.cleaned_data)
            messages.success(request, "Settings saved.")
            return redirect("tenant-settings", tenant_slug=tenant_slug)
        except ValidationError as error:
            form.add_error(None, error)
    return render(
        request,
        "tenants/settings.html",
        {
            "form": form,
            "logo_form": LogoForm(),
            "security_form": SecurityForm(initial={"require_two_factor": tenant.require_two_factor}),
        },
    )


@tenant_route(write="settings.change")
@require_POST
def settings_logo(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    form = LogoForm(request.POST, request.FILES)
    if form.is_valid():
        upload = form.cleaned_data["logo"]
        try:
            services.tenant_set_logo(
                actor=actor_from_request(request),
                tenant=request.tenant,
                content=upload.read(services.LOGO_MAX_BYTES + 1),
                content_type=upload.content_type or "",
            )
            messages.success(request, "Logo saved.")
        except ValidationError as error:
            messages.error(request, _error_text(error))
    else:
        messages.error(request, "Choose an image file.")
    return redirect("tenant-settings", tenant_slug=tenant_slug)


@tenant_route(write="security.change")
@require_POST
def settings_security(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    form = SecurityForm(request.POST)
    form.is_valid()
    required = bool(form.cleaned_data.get("require_two_factor"))
    services.tenant_set_two_factor_policy(actor=actor_from_request(request), tenant=request.tenant, required=required)
    messages.success(request, "Two-factor authentication is now " + ("required." if required else "optional."))
    return redirect("tenant-settings", tenant_slug=tenant_slug)


# --- Audit log ------------------------------------------------------------------------------


def _filtered_audit_events(request: TenantHttpRequest, form: AuditFilterForm):
    filters = form.cleaned_data if form.is_valid() else {}
    since, until = filters.get("since"), filters.get("until")
    return selectors.audit_events(
        tenant=request.tenant,
        action=filters.get("action", ""),
        actor=filters.get("actor", ""),
        since=timezone.make_aware(datetime.combine(since, time.min)) if since else None,
        until=timezone.make_aware(datetime.combine(until + timedelta(days=1), time.min)) if until else None,
    )


@tenant_route(read="audit.view")
@require_http_methods(["GET"])
def audit_log(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    form = AuditFilterForm(request.GET or None)
    try:
        page = max(1, int(request.GET.get("page", "1")))
    except ValueError:
        page = 1
    offset = (page - 1) * AUDIT_PAGE_SIZE
    # One row past the page tells whether there is a next page without counting the whole log.
    rows = list(_filtered_audit_events(request, form)[offset : offset + AUDIT_PAGE_SIZE + 1])
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "form": form,
        "events": rows[:AUDIT_PAGE_SIZE],
        "page": page,
        "has_next": len(rows) > AUDIT_PAGE_SIZE,
        "query": query.urlencode(),
        "live": page == 1 and not any(form.data.get(name) for name in form.fields),
    }
    template = "tenants/_audit_table.html" if request.headers.get("HX-Request") else "tenants/audit.html"
    return render(request, template, context)


def _csv_safe(value: object) -> str:
    """Return a cell that a spreadsheet will not run as a formula (CSV injection)."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class _Echo:
    def write(self, value: str) -> str:
        return value


def _audit_csv_rows(events) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(
        [
            "id",
            "time",
            "actor",
            "role",
            "action",
            "target_type",
            "target_id",
            "ip_address",
            "user_agent",
            "before",
            "after",
        ]
    )
    event: AuditEvent
    for event in events.iterator(chunk_size=2000):
        yield writer.writerow(
            _csv_safe(cell)
            for cell in [
                event.pk,
                event.created_at.isoformat(),
                event.actor_label,
                event.actor_role,
                event.action,
                event.target_type,
                event.target_id,
                event.ip_address,
                event.user_agent,
                event.before,
                event.after,
            ]
        )


@tenant_route(read="audit.view")
@require_http_methods(["GET"])
def audit_export(request: TenantHttpRequest, tenant_slug: str) -> StreamingHttpResponse:
    events = _filtered_audit_events(request, AuditFilterForm(request.GET or None))
    response = StreamingHttpResponse(_audit_csv_rows(events), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="{tenant_slug}-audit.csv"'
    return response


@tenant_route(read="audit.view")
@require_http_methods(["GET"])
def audit_verify(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    (report,) = chains_verify(tenant_id=request.tenant.pk)
    return render(request, "tenants/_audit_verification.html", {"report": report})


# --- API keys -------------------------------------------------------------------------------


@tenant_route(read="apikeys.manage_own", write="apikeys.manage_own")
@require_http_methods(["GET", "POST"])
def api_keys(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    tenant = request.tenant
    form = ApiKeyForm(request.POST or None)
    issued = None
    if request.method == "POST" and form.is_valid():
        expires_on = form.cleaned_data["expires_on"]
        try:
            issued = services.api_key_create(
                actor=actor_from_request(request),
                tenant=tenant,
                user=request.user,
                name=form.cleaned_data["name"],
                expires_at=timezone.make_aware(datetime.combine(expires_on, time.min)) if expires_on else None,
            )
            form = ApiKeyForm()
        except ValidationError as error:
            form.add_error("expires_on", error.messages)
    return render(
        request,
        "tenants/api_keys.html",
        {"form": form, "issued": issued, "keys": selectors.api_keys_of(tenant=tenant, user=request.user)},
    )


@tenant_route(write="apikeys.manage_own")
@require_POST
def api_key_revoke(request: TenantHttpRequest, tenant_slug: str, key_id: int) -> HttpResponse:
    api_key = selectors.api_key_get(tenant=request.tenant, user=request.user, key_id=key_id)
    services.api_key_revoke(actor=actor_from_request(request), api_key=api_key)
    messages.success(request, f"The key “{api_key.name}” was revoked.")
    return redirect("tenant-api-keys", tenant_slug=tenant_slug)
