"""Backup account and device pages. TenantMiddleware has resolved the tenant and checked the route's
declared permissions; each view validates its form, calls one service or selector and renders.

Live state (presence dots, command status, job progress) arrives over the fleet websocket; the
partial routes here let a page fetch a fresh table when the socket tells it about a new row.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from devices import selectors, services
from devices.forms import (
    DEVICE_PAGE_SIZES,
    AccountCreateForm,
    AccountEditForm,
    AccountSearchForm,
    BulkCommandForm,
    CommandForm,
    DeviceFilterForm,
    PasswordResetForm,
    SuspendForm,
)
from devices.models import BackupAccount, Command, Device, Job
from portal import keyset
from tenants.access import TenantHttpRequest, tenant_route
from tenants.audit import actor_from_request

ACCOUNT_PAGE_SIZE = 50
DEVICE_PAGE_SIZE = 50
ACCOUNT_DEVICES_SHOWN = 50
ACCOUNT_JOBS_SHOWN = 15
DEVICE_JOBS_SHOWN = 20
DEVICE_COMMANDS_SHOWN = 30
# Commands without parameters, shown as plain buttons on the device page.
SIMPLE_COMMANDS = [Command.Kind.PING, Command.Kind.REFRESH_PROFILE, Command.Kind.DROP_CONNECTION]


def _error_text(error: ValidationError) -> str:
    return " ".join(error.messages)


def _add_service_error(form: forms.Form, error: ValidationError) -> None:
    """Show a service's ValidationError on the form: on its field when the form has one."""
    if hasattr(error, "error_dict"):
        for field, field_errors in error.error_dict.items():
            form.add_error(field if field in form.fields else None, field_errors)
    else:
        form.add_error(None, error)


MAX_PAGE = 1_000_000


def _page_number(request: TenantHttpRequest) -> int:
    try:
        return min(MAX_PAGE, max(1, int(request.GET.get("page", "1"))))
    except ValueError:
        return 1


def _page_of(request: TenantHttpRequest, queryset: QuerySet[Any], size: int) -> selectors.Page:
    """One page of a list; a cursor that cannot be read falls back to the page number (a bare
    ?page=N, typed or bookmarked, works too, by offset)."""
    number = _page_number(request)
    try:
        return selectors.page_at(
            queryset, number=number, size=size, after=request.GET.get("after", ""), before=request.GET.get("before", "")
        )
    except keyset.InvalidCursor:
        return selectors.page_at(queryset, number=number, size=size)


def _query_without(request: TenantHttpRequest, *names: str) -> str:
    query = request.GET.copy()
    for name in names:
        query.pop(name, None)
    return query.urlencode()


# An account's profile secrets may weigh a megabyte each and no list shows them.
def _is_htmx(request: TenantHttpRequest) -> bool:
    return request.headers.get("HX-Request") == "true"


# --- Backup accounts ------------------------------------------------------------------------


@tenant_route(read="accounts.view", write="accounts.manage")
@require_http_methods(["GET", "POST"])
def account_list(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    create_form = AccountCreateForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and create_form.is_valid():
        data = create_form.cleaned_data
        try:
            account = services.account_create(
                actor=actor_from_request(request),
                tenant=request.tenant,
                username=data["username"],
                password=data["password"],
                allow_admin_password_reset=data["allow_admin_password_reset"],
                **create_form.limits(),
            )
        except ValidationError as error:
            _add_service_error(create_form, error)
        else:
            messages.success(request, f"Backup account {account.username} created.")
            return redirect("tenant-account", tenant_slug=tenant_slug, account_id=account.pk)
    search_form = AccountSearchForm(request.GET or None)
    search = search_form.cleaned_data["search"] if search_form.is_valid() else ""
    page = _page_of(request, selectors.account_list(tenant=request.tenant, search=search), ACCOUNT_PAGE_SIZE)
    context = {
        "search_form": search_form,
        "create_form": create_form,
        "accounts": page.rows,
        "page": page,
        "query": _query_without(request, "page", "after", "before"),
    }
    if request.method == "GET" and _is_htmx(request):
        return render(request, "devices/_account_table.html", context)
    return render(request, "devices/accounts.html", context, status=400 if create_form.errors else 200)


def _render_account(
    request: TenantHttpRequest,
    account: BackupAccount,
    *,
    edit_form: AccountEditForm | None = None,
    reset_form: PasswordResetForm | None = None,
    status: int = 200,
) -> HttpResponse:
    account_devices = selectors.device_list(
        tenant=request.tenant, filters=selectors.DeviceFilters(account_id=account.pk)
    )
    devices = list(account_devices[: ACCOUNT_DEVICES_SHOWN + 1])
    more_devices = len(devices) > ACCOUNT_DEVICES_SHOWN
    vaults = list(selectors.vaults_of(account=account))
    context = {
        "account": account,
        "devices": devices[:ACCOUNT_DEVICES_SHOWN],
        "more_devices": more_devices,
        "device_count": account_devices.count() if more_devices else len(devices),
        "vaults": vaults,
        "bytes_used": sum(vault.bytes_used for vault in vaults),
        "jobs": list(selectors.jobs_of_account(account=account)[:ACCOUNT_JOBS_SHOWN]),
        "edit_form": edit_form or AccountEditForm.for_account(account),
        "reset_form": reset_form or PasswordResetForm(),
        "bulk_form": BulkCommandForm(),
    }
    return render(request, "devices/account.html", context, status=status)


@tenant_route(read="accounts.view", write="accounts.manage")
@require_http_methods(["GET", "POST"])
def account_detail(request: TenantHttpRequest, tenant_slug: str, account_id: int) -> HttpResponse:
    account = selectors.account_get(tenant=request.tenant, account_id=account_id)
    if request.method == "GET":
        return _render_account(request, account)
    edit_form = AccountEditForm.for_account(account, request.POST)
    if edit_form.is_valid():
        services.account_update(actor=actor_from_request(request), account=account, **edit_form.limits())
        messages.success(request, f"Backup account {account.username} saved.")
        return redirect("tenant-account", tenant_slug=tenant_slug, account_id=account.pk)
    return _render_account(request, account, edit_form=edit_form, status=400)


@tenant_route(write="accounts.manage")
@require_POST
def account_suspend(request: TenantHttpRequest, tenant_slug: str, account_id: int) -> HttpResponse:
    account = selectors.account_get(tenant=request.tenant, account_id=account_id)
    form = SuspendForm(request.POST)
    suspended = form.is_valid() and form.cleaned_data["suspended"]
    services.account_set_suspended(actor=actor_from_request(request), account=account, suspended=suspended)
    if suspended:
        messages.success(request, f"{account.username} is suspended: its devices are disconnected and refused.")
    else:
        messages.success(request, f"{account.username} is active again.")
    return redirect("tenant-account", tenant_slug=tenant_slug, account_id=account.pk)


@tenant_route(write="accounts.manage")
@require_POST
def account_reset_password(request: TenantHttpRequest, tenant_slug: str, account_id: int) -> HttpResponse:
    account = selectors.account_get(tenant=request.tenant, account_id=account_id)
    form = PasswordResetForm(request.POST)
    if not form.is_valid():
        return _render_account(request, account, reset_form=form, status=400)
    try:
        services.account_reset_password(
            actor=actor_from_request(request), account=account, password=form.cleaned_data["password"]
        )
    except ValidationError as error:
        messages.error(request, _error_text(error))
    else:
        messages.success(
            request, f"The password of {account.username} was reset. Its devices must log in with the new one."
        )
    return redirect("tenant-account", tenant_slug=tenant_slug, account_id=account.pk)


@tenant_route(write="devices.command")
@require_POST
def account_commands(request: TenantHttpRequest, tenant_slug: str, account_id: int) -> HttpResponse:
    account = selectors.account_get(tenant=request.tenant, account_id=account_id)
    form = BulkCommandForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a command to send.")
        return redirect("tenant-account", tenant_slug=tenant_slug, account_id=account.pk)
    kind = Command.Kind(form.cleaned_data["kind"])
    devices = list(selectors.devices_for_bulk(tenant=request.tenant, account_id=account.pk))
    if not devices:
        messages.error(request, f"{account.username} has no active devices to send “{kind.label}” to.")
        return redirect("tenant-account", tenant_slug=tenant_slug, account_id=account.pk)
    try:
        commands = services.commands_issue_bulk(
            actor=actor_from_request(request), tenant=request.tenant, devices=devices, kind=kind
        )
    except ValidationError as error:
        messages.error(request, _error_text(error))
    else:
        count = len(commands)
        messages.success(request, f"“{kind.label}” was sent to {count} device{'s' if count != 1 else ''}.")
    return redirect("tenant-account", tenant_slug=tenant_slug, account_id=account.pk)


# --- Devices --------------------------------------------------------------------------------


def _device_filters(form: DeviceFilterForm) -> selectors.DeviceFilters:
    # A field that does not validate is ignored; the others still filter.
    form.is_valid()
    data = form.cleaned_data
    live = {"online": True, "offline": False}.get(data.get("live") or "")
    failing = {"yes": True, "no": False}.get(data.get("failing") or "")
    return selectors.DeviceFilters(
        search=data.get("search") or "",
        account_id=data.get("account"),
        live=live,
        os=data.get("os") or "",
        client_version=data.get("client_version") or "",
        failing=failing,
        sort=data.get("sort") or "name",
    )


@tenant_route(read="devices.view")
@require_http_methods(["GET"])
def device_list(request: TenantHttpRequest, tenant_slug: str) -> HttpResponse:
    form = DeviceFilterForm(request.GET, facets=selectors.device_facets(tenant=request.tenant))
    filters = _device_filters(form)
    try:
        page_size = int(request.GET.get("size", DEVICE_PAGE_SIZE))
    except ValueError:
        page_size = DEVICE_PAGE_SIZE
    page_size = page_size if page_size in DEVICE_PAGE_SIZES else DEVICE_PAGE_SIZE
    page = _page_of(request, selectors.device_list(tenant=request.tenant, filters=filters), page_size)
    context = {
        "form": form,
        "filters": filters,
        "devices": page.rows,
        "page": page,
        "query": _query_without(request, "page", "after", "before"),
        "sort_query": _query_without(request, "page", "after", "before", "sort"),
        "filtered": any(form.data.get(name) for name in form.fields if name != "sort"),
        # Row links are these plus the row's id: a {% url %} per row was a third of the page's time.
        "devices_url": reverse("tenant-devices", kwargs={"tenant_slug": request.tenant.slug}),
        "accounts_url": reverse("tenant-accounts", kwargs={"tenant_slug": request.tenant.slug}),
    }
    template = "devices/_device_table.html" if _is_htmx(request) else "devices/devices.html"
    return render(request, template, context)


def _jobs_context(device: Device, protected_items: list[Any], vaults: list[Any]) -> dict[str, Any]:
    jobs = list(selectors.jobs_of(device=device)[:DEVICE_JOBS_SHOWN])
    items_by_id = {item.item_id: item for item in protected_items}
    vaults_by_id = {vault.vault_id: vault for vault in vaults}
    for job in jobs:
        job.item = items_by_id.get(job.protected_item_id)  # type: ignore[attr-defined]
        job.vault = vaults_by_id.get(job.vault_id)  # type: ignore[attr-defined]
    return {"device": device, "jobs": jobs, "running_jobs": [job for job in jobs if job.status == Job.Status.RUNNING]}


def _device_context(device: Device) -> dict[str, Any]:
    protected_items = list(selectors.protected_items_of(device=device))
    vaults = list(selectors.vaults_of(account=device.account))
    context = _jobs_context(device, protected_items, vaults)
    context.update(
        protected_items=protected_items,
        vaults=vaults,
        commands=list(selectors.commands_of(device=device)[:DEVICE_COMMANDS_SHOWN]),
        simple_commands=[(kind.value, kind.label) for kind in SIMPLE_COMMANDS],
        vault_commands=[
            (kind.value, kind.label) for kind in (Command.Kind.LIST_SNAPSHOTS, Command.Kind.ROTATE_VAULT_KEY)
        ],
        command_form=CommandForm(
            protected_items=protected_items,
            vaults=vaults,
            running_job_ids={str(job.job_id) for job in context["running_jobs"]},
        ),
    )
    return context


@tenant_route(read="devices.view")
@require_http_methods(["GET"])
def device_detail(request: TenantHttpRequest, tenant_slug: str, device_pk: int) -> HttpResponse:
    device = selectors.device_get(tenant=request.tenant, device_pk=device_pk)
    return render(request, "devices/device.html", _device_context(device))


@tenant_route(read="devices.view")
@require_http_methods(["GET"])
def device_jobs(request: TenantHttpRequest, tenant_slug: str, device_pk: int) -> HttpResponse:
    device = selectors.device_get(tenant=request.tenant, device_pk=device_pk)
    protected_items = list(selectors.protected_items_of(device=device))
    vaults = list(selectors.vaults_of(account=device.account))
    return render(request, "devices/_device_jobs.html", _jobs_context(device, protected_items, vaults))


@tenant_route(read="devices.view")
@require_http_methods(["GET"])
def job_log(request: TenantHttpRequest, tenant_slug: str, device_pk: int, job_pk: int) -> HttpResponse:
    job = selectors.job_get(tenant=request.tenant, job_pk=job_pk)
    if job.device_id != device_pk:
        raise Http404
    return render(request, "devices/_job_log.html", {"job": job, "log_lines": list(job.log_lines.all())})


def _issue_command(request: TenantHttpRequest, device: Device) -> None:
    """Validate the posted command and issue it; say what happened in a message."""
    protected_items = list(selectors.protected_items_of(device=device))
    vaults = list(selectors.vaults_of(account=device.account))
    running = selectors.jobs_of(device=device).filter(status=Job.Status.RUNNING).values_list("job_id", flat=True)
    form = CommandForm(
        request.POST,
        protected_items=protected_items,
        vaults=vaults,
        running_job_ids={str(job_id) for job_id in running},
    )
    if not form.is_valid():
        problems = [str(message) for field_errors in form.errors.values() for message in field_errors]
        messages.error(request, " ".join(problems))
        return
    kind = Command.Kind(form.cleaned_data["kind"])
    try:
        services.command_issue(
            actor=actor_from_request(request), device=device, kind=kind, parameters=form.parameters()
        )
    except ValidationError as error:
        messages.error(request, _error_text(error))
        return
    when = "now" if device.is_live else "when it next connects"
    messages.success(request, f"“{kind.label}” was sent to {device.name}; it runs {when}.")


@tenant_route(read="devices.view", write="devices.command")
@require_http_methods(["GET", "POST"])
def device_commands(request: TenantHttpRequest, tenant_slug: str, device_pk: int) -> HttpResponse:
    device = selectors.device_get(tenant=request.tenant, device_pk=device_pk)
    if request.method == "POST":
        _issue_command(request, device)
        if not _is_htmx(request):
            return redirect("tenant-device", tenant_slug=tenant_slug, device_pk=device.pk)
    context = {
        "device": device,
        "commands": list(selectors.commands_of(device=device)[:DEVICE_COMMANDS_SHOWN]),
        "show_messages": request.method == "POST",
    }
    return render(request, "devices/_device_commands.html", context)


def _result_context(command: Command) -> dict[str, Any]:
    """Return the command's result shaped for display; the device wrote it, so trust no shape."""
    result = command.result
    lines = entries = None
    if isinstance(result, dict):
        if isinstance(result.get("lines"), list):
            lines = [str(line) for line in result["lines"]]
        if isinstance(result.get("entries"), list):
            entries = [entry for entry in result["entries"] if isinstance(entry, dict)]
    return {
        "command": command,
        "finished": Command.FINISHED,
        "lines": lines,
        "entries": entries,
        "result_text": json.dumps(result, indent=2, sort_keys=True, ensure_ascii=False),
    }


@tenant_route(read="devices.view")
@require_http_methods(["GET"])
def command_result(request: TenantHttpRequest, tenant_slug: str, device_pk: int, command_pk: int) -> HttpResponse:
    command = selectors.command_get(tenant=request.tenant, command_pk=command_pk)
    if command.device_id != device_pk:
        raise Http404
    return render(request, "devices/_command_result.html", _result_context(command))


@tenant_route(write="devices.manage")
@require_POST
def device_revoke(request: TenantHttpRequest, tenant_slug: str, device_pk: int) -> HttpResponse:
    device = selectors.device_get(tenant=request.tenant, device_pk=device_pk)
    services.device_revoke(actor=actor_from_request(request), device=device)
    messages.success(request, f"{device.name} is revoked: its token no longer works and it was disconnected.")
    return redirect("tenant-device", tenant_slug=tenant_slug, device_pk=device.pk)
