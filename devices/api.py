"""The REST API, version 1: backup accounts, devices, commands and jobs.

Tenant routes carry `tenant_slug`: tenants.middleware.TenantMiddleware resolves the tenant, refuses
non-members with 404 and checks the permission each view declares in `read_permission` and
`write_permission` before the view runs. Views validate with a serializer, call one service or
selector, and answer; errors take the one shape of tenants.api_errors.

Commands are answered 202 as soon as they are stored: the device collects them when it is next
connected, and the caller follows a command's status at commands/{id}/.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param

from devices import selectors, services
from devices.models import BackupAccount, Command, Device
from devices.serializers import (
    AccountCommandSerializer,
    AccountCreateSerializer,
    AccountQuerySerializer,
    AccountSerializer,
    AccountUpdateSerializer,
    BulkCommandSerializer,
    BulkIssuedSerializer,
    CommandDetailSerializer,
    CommandIssueSerializer,
    CommandSerializer,
    DeviceDetailSerializer,
    DeviceQuerySerializer,
    DeviceSerializer,
    JobDetailSerializer,
    JobSerializer,
    PasswordResetSerializer,
    VaultCredentialsSerializer,
    VaultSerializer,
)
from portal import keyset
from tenants.api import ApiListView, ApiView, id_parameter
from tenants.audit import Actor, actor_from_request
from tenants.models import Tenant

ACCOUNT_ID = id_parameter("account_id", "A backup account of this tenant.")
DEVICE_PK = id_parameter("device_pk", "A device of this tenant: its `id`, not the `device_id` it chose.")
COMMAND_PK = id_parameter("command_pk", "A command of this tenant.")
JOB_PK = id_parameter("job_pk", "A job of this tenant.")


def _actor(request: Request) -> Actor:
    return actor_from_request(request._request)


def _tenant(request: Request) -> Tenant:
    """Return the tenant that TenantMiddleware resolved from the URL and checked the caller against."""
    tenant: Tenant = request._request.tenant  # type: ignore[attr-defined]
    return tenant


class PageWithoutCount(BasePagination):
    """Pages of a list that may hold many thousands of rows: never counted, one row more is read instead
    to know whether another page follows."""

    page_size = 50
    max_page_size = 100
    # Beyond this the offset alone would cost more than any caller should ask of the database.
    max_page = 1_000_000

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> list[Any]:
        """`next` and `previous` carry a cursor (`after` / `before`) where the list's order allows
        keyset paging (portal/keyset.py), so following them costs the same at any depth; `page`
        alone still works, by offset."""
        self.request = request
        number, size = self._page(request), self._page_size(request)
        after, before = request.query_params.get("after", ""), request.query_params.get("before", "")
        try:
            self.page = selectors.page_at(queryset, number=number, size=size, after=after, before=before)
        except keyset.InvalidCursor as error:
            raise NotFound(str(error)) from None
        by_cursor = bool(after or before) and keyset.orderable(queryset)
        if not self.page.rows and number > 1 and not by_cursor:
            raise NotFound("Invalid page.")
        return self.page.rows

    def _page(self, request: Request) -> int:
        try:
            page = int(request.query_params.get("page", 1))
        except ValueError:
            raise NotFound("Invalid page.") from None
        if not 1 <= page <= self.max_page:
            raise NotFound("Invalid page.")
        return page

    def _page_size(self, request: Request) -> int:
        """Return the size asked for, up to the largest; the default when the size asked for is no number."""
        try:
            size = int(request.query_params.get("page_size", self.page_size))
        except ValueError:
            return self.page_size
        return min(size, self.max_page_size) if size >= 1 else self.page_size

    def _link(self, page: int | None, *, cursor: tuple[str, str] | None = None) -> str | None:
        if page is None:
            return None
        url = remove_query_param(remove_query_param(self.request.build_absolute_uri(), "after"), "before")
        if page == 1:
            return remove_query_param(url, "page")
        url = replace_query_param(url, "page", page)
        return replace_query_param(url, cursor[0], cursor[1]) if cursor and cursor[1] else url

    def get_paginated_response(self, data: Any) -> Response:
        page = self.page
        return Response(
            {
                "next": self._link(page.number + 1 if page.has_next else None, cursor=("after", page.next_cursor)),
                "previous": self._link(
                    page.number - 1 if page.has_previous else None, cursor=("before", page.previous_cursor)
                ),
                "results": data,
            }
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        link = {"type": "string", "nullable": True, "format": "uri"}
        return {
            "type": "object",
            "description": "One page; there is no total count. `next` is null on the last page.",
            "required": ["next", "previous", "results"],
            "properties": {
                "next": {**link, "example": "https://portal.example/api/v1/t/acme/devices/?page=3"},
                "previous": {**link, "example": "https://portal.example/api/v1/t/acme/devices/?page=1"},
                "results": schema,
            },
        }

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": "page",
                "required": False,
                "in": "query",
                "description": "The page, from 1; follow `next` rather than counting.",
                "schema": {"type": "integer", "minimum": 1, "maximum": self.max_page},
            },
            {
                "name": "after",
                "required": False,
                "in": "query",
                "description": "A cursor from a `next` link: the page after that row, at the cost of the first page.",
                "schema": {"type": "string"},
            },
            {
                "name": "before",
                "required": False,
                "in": "query",
                "description": "A cursor from a `previous` link: the page before that row.",
                "schema": {"type": "string"},
            },
            {
                "name": "page_size",
                "required": False,
                "in": "query",
                "description": f"Rows a page, {self.page_size} if left out.",
                "schema": {"type": "integer", "minimum": 1, "maximum": self.max_page_size},
            },
        ]


# --- Backup accounts ------------------------------------------------------------------------


def _account_data(account: BackupAccount) -> Any:
    account.device_count = account.devices.count()  # type: ignore[attr-defined]
    return AccountSerializer(account).data


@extend_schema(tags=["accounts"], parameters=[AccountQuerySerializer])
class AccountList(ApiListView):
    read_permission = "accounts.view"
    write_permission = "accounts.manage"
    serializer_class = AccountSerializer
    query_serializer_class = AccountQuerySerializer

    def get_queryset(self) -> QuerySet[Any]:
        query = self.query_serializer_class(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        return selectors.account_list(tenant=_tenant(self.request), **query.validated_data)

    @extend_schema(
        request=AccountCreateSerializer,
        responses={201: AccountSerializer},
        description="Make a backup account. Send its password, or L derived from it by the client so that the "
        "password never reaches the portal; the portal keeps only a verifier of L.",
    )
    def post(self, request: Request, tenant_slug: str) -> Response:
        form = AccountCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        account = services.account_create(actor=_actor(request), tenant=_tenant(request), **form.service_arguments())
        return Response(_account_data(account), status=status.HTTP_201_CREATED)


@extend_schema(tags=["accounts"], parameters=[ACCOUNT_ID])
class AccountDetail(ApiView):
    read_permission = "accounts.view"
    write_permission = "accounts.manage"

    @extend_schema(responses=AccountSerializer)
    def get(self, request: Request, tenant_slug: str, account_id: int) -> Response:
        return Response(_account_data(selectors.account_get(tenant=_tenant(request), account_id=account_id)))

    @extend_schema(
        request=AccountUpdateSerializer,
        responses=AccountSerializer,
        description="Change an account's name, address and limits, or suspend or reactivate it.",
    )
    def patch(self, request: Request, tenant_slug: str, account_id: int) -> Response:
        account = selectors.account_get(tenant=_tenant(request), account_id=account_id)
        form = AccountUpdateSerializer(data=request.data, partial=True)
        form.is_valid(raise_exception=True)
        changes = dict(form.validated_data)
        suspended = changes.pop("is_suspended", None)
        actor = _actor(request)
        with transaction.atomic():
            if changes:
                account = services.account_update(
                    actor=actor,
                    account=account,
                    display_name=changes.get("display_name", account.display_name),
                    email=changes.get("email", account.email),
                    max_devices=changes.get("max_devices", account.max_devices),
                    max_protected_bytes=changes.get("max_protected_bytes", account.max_protected_bytes),
                )
            if suspended is not None:
                account = services.account_set_suspended(actor=actor, account=account, suspended=suspended)
        return Response(_account_data(account))


@extend_schema(tags=["accounts"], parameters=[ACCOUNT_ID])
class AccountPasswordReset(ApiView):
    write_permission = "accounts.manage"

    @extend_schema(
        request=PasswordResetSerializer,
        responses={204: None},
        description="Set a new password, if the account allows administrators to (else 400). The secrets its "
        "devices stored with the old password are cleared, and its devices must log in again.",
    )
    def post(self, request: Request, tenant_slug: str, account_id: int) -> Response:
        account = selectors.account_get(tenant=_tenant(request), account_id=account_id)
        form = PasswordResetSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        services.account_reset_password(
            actor=_actor(request), account=account, password=form.validated_data["password"]
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["accounts"], parameters=[ACCOUNT_ID])
class AccountVaultList(ApiListView):
    read_permission = "accounts.view"
    serializer_class = VaultSerializer

    def get_queryset(self) -> QuerySet[Any]:
        account = selectors.account_get(tenant=_tenant(self.request), account_id=self.kwargs["account_id"])
        return selectors.vaults_of(account=account)


@extend_schema(tags=["accounts"], parameters=[ACCOUNT_ID])
class AccountVaultCredentials(ApiView):
    write_permission = "accounts.manage"

    @extend_schema(
        request=VaultCredentialsSerializer,
        responses={204: None},
        description="Store the credentials of a vault's storage (say, an S3-compatible access key and secret). "
        "They are encrypted at rest with the portal's secrets key and never shown again; an empty object "
        "removes them.",
    )
    def put(self, request: Request, tenant_slug: str, account_id: int, vault_id: str) -> Response:
        account = selectors.account_get(tenant=_tenant(request), account_id=account_id)
        vault = selectors.vault_get(account=account, vault_id=vault_id)
        form = VaultCredentialsSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        services.vault_credentials_set(
            actor=_actor(request), vault=vault, credentials=form.validated_data["credentials"]
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


def _issued(commands: list[Command], skipped: int = 0) -> Response:
    body = {
        "count": len(commands),
        "skipped": skipped,
        "commands": [{"id": command.pk, "device": command.device_id} for command in commands],
    }
    return Response(BulkIssuedSerializer(body).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(tags=["commands"], parameters=[ACCOUNT_ID])
class AccountCommands(ApiView):
    write_permission = "devices.command"

    @extend_schema(
        request=AccountCommandSerializer,
        responses={202: BulkIssuedSerializer},
        description="Issue a command to every active device of the account, one command each. The answer "
        "comes at once; each device collects its command when it is next connected.",
    )
    def post(self, request: Request, tenant_slug: str, account_id: int) -> Response:
        tenant = _tenant(request)
        account = selectors.account_get(tenant=tenant, account_id=account_id)
        form = AccountCommandSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        devices = list(selectors.devices_for_bulk(tenant=tenant, account_id=account.pk))
        commands = services.commands_issue_bulk(
            actor=_actor(request), tenant=tenant, devices=devices, **form.validated_data
        )
        return _issued(commands)


# --- Devices --------------------------------------------------------------------------------


@extend_schema(
    tags=["devices"],
    parameters=[DeviceQuerySerializer],
    description="The tenant's devices, filtered and sorted as on the devices page, a page at a time.",
)
class DeviceList(ApiListView):
    read_permission = "devices.view"
    serializer_class = DeviceSerializer
    query_serializer_class = DeviceQuerySerializer
    pagination_class = PageWithoutCount

    def get_queryset(self) -> QuerySet[Any]:
        query = self.query_serializer_class(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        return selectors.device_list(tenant=_tenant(self.request), filters=query.filters())


def _device_data(device: Device) -> Any:
    device.listed_protected_items = list(selectors.protected_items_of(device=device))  # type: ignore[attr-defined]
    return DeviceDetailSerializer(device).data


@extend_schema(tags=["devices"], parameters=[DEVICE_PK])
class DeviceDetail(ApiView):
    read_permission = "devices.view"
    write_permission = "devices.manage"

    @extend_schema(responses=DeviceDetailSerializer)
    def get(self, request: Request, tenant_slug: str, device_pk: int) -> Response:
        return Response(_device_data(selectors.device_get(tenant=_tenant(request), device_pk=device_pk)))

    @extend_schema(
        responses={204: None},
        description="Revoke the device: its token stops working and its connection is closed at once. It stays "
        "listed, with `revoked_at`, and cannot register again under the same device id.",
    )
    def delete(self, request: Request, tenant_slug: str, device_pk: int) -> Response:
        device = selectors.device_get(tenant=_tenant(request), device_pk=device_pk)
        services.device_revoke(actor=_actor(request), device=device)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Commands -------------------------------------------------------------------------------


@extend_schema(tags=["commands"], parameters=[DEVICE_PK])
class DeviceCommandList(ApiListView):
    read_permission = "devices.view"
    write_permission = "devices.command"
    serializer_class = CommandSerializer

    def get_queryset(self) -> QuerySet[Any]:
        device = selectors.device_get(tenant=_tenant(self.request), device_pk=self.kwargs["device_pk"])
        return selectors.commands_of(device=device)

    @extend_schema(
        request=CommandIssueSerializer,
        responses={202: CommandSerializer},
        description="Issue a command to the device. The answer comes at once, with the command `queued`; the "
        "device collects it when it is next connected, and its status and result are at commands/{id}/. "
        "A revoked device, or browsing a device that does not allow it, is refused with 400.",
    )
    def post(self, request: Request, tenant_slug: str, device_pk: int) -> Response:
        device = selectors.device_get(tenant=_tenant(request), device_pk=device_pk)
        form = CommandIssueSerializer(data=request.data, context={"device": device})
        form.is_valid(raise_exception=True)
        data = form.validated_data
        ttl = timedelta(seconds=data["ttl_seconds"]) if "ttl_seconds" in data else services.COMMAND_TTL
        command = services.command_issue(
            actor=_actor(request), device=device, kind=data["kind"], parameters=data["parameters"], ttl=ttl
        )
        return Response(CommandSerializer(command).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(tags=["commands"])
class BulkCommands(ApiView):
    write_permission = "devices.command"

    @extend_schema(
        request=BulkCommandSerializer,
        responses={202: BulkIssuedSerializer},
        description="Issue a command to many devices, named by id or by account, one command each. The answer "
        "comes at once; each device collects its command when it is next connected.",
    )
    def post(self, request: Request, tenant_slug: str) -> Response:
        tenant = _tenant(request)
        form = BulkCommandSerializer(data=request.data, context={"tenant": tenant})
        form.is_valid(raise_exception=True)
        data = form.validated_data
        device_pks = sorted(set(data["device_ids"])) if "device_ids" in data else None
        devices = list(
            selectors.devices_for_bulk(tenant=tenant, device_pks=device_pks, account_id=data.get("account_id"))
        )
        commands = services.commands_issue_bulk(
            actor=_actor(request), tenant=tenant, devices=devices, kind=data["kind"], parameters=data["parameters"]
        )
        return _issued(commands, skipped=len(device_pks) - len(devices) if device_pks is not None else 0)


@extend_schema(tags=["commands"], parameters=[COMMAND_PK])
class CommandDetail(ApiView):
    read_permission = "devices.view"

    @extend_schema(responses=CommandDetailSerializer, description="A command's status, the device's answer, and when.")
    def get(self, request: Request, tenant_slug: str, command_pk: int) -> Response:
        command = selectors.command_get(tenant=_tenant(request), command_pk=command_pk)
        return Response(CommandDetailSerializer(command).data)


# --- Jobs -----------------------------------------------------------------------------------


@extend_schema(tags=["jobs"], parameters=[DEVICE_PK])
class DeviceJobList(ApiListView):
    read_permission = "devices.view"
    serializer_class = JobSerializer

    def get_queryset(self) -> QuerySet[Any]:
        device = selectors.device_get(tenant=_tenant(self.request), device_pk=self.kwargs["device_pk"])
        return selectors.jobs_of(device=device)


@extend_schema(tags=["jobs"], parameters=[JOB_PK])
class JobDetail(ApiView):
    read_permission = "devices.view"

    @extend_schema(responses=JobDetailSerializer, description="A job's counters and the log lines its device sent.")
    def get(self, request: Request, tenant_slug: str, job_pk: int) -> Response:
        return Response(JobDetailSerializer(selectors.job_get(tenant=_tenant(request), job_pk=job_pk)).data)
