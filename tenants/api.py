"""The REST API, version 1.

Tenant routes carry `tenant_slug`: tenants.middleware.TenantMiddleware resolves the tenant, refuses
non-members with 404 and checks the permission each view declares in `read_permission` and
`write_permission` before the view runs. Views validate with a serializer, call one service or
selector, and answer; errors take the one shape of tenants.api_errors.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Count, QuerySet
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import generics, serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.mixins import ListModelMixin
from rest_framework.parsers import JSONParser
from rest_framework.permissions import BasePermission
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants import selectors, services
from tenants.audit import Actor, actor_from_request
from tenants.models import ApiKey, Tenant
from tenants.serializers import (
    ApiKeyCreatedSerializer,
    ApiKeyCreateSerializer,
    ApiKeySerializer,
    AuditEventQuerySerializer,
    AuditEventSerializer,
    InvitationCreateSerializer,
    InvitationSerializer,
    MembershipRoleSerializer,
    MembershipSerializer,
    MeSerializer,
    PlatformTenantCreateSerializer,
    PlatformTenantSerializer,
    TenantSettingsSerializer,
    TenantSettingsUpdateSerializer,
    TwoFactorPolicySerializer,
)

# --- The schema: bearer keys and the error shape --------------------------------------------


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "tenants.api_auth.ApiKeyAuthentication"
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key made on the API keys page: `Authorization: Bearer <key>`.",
        }


ERROR_RESPONSE = inline_serializer(
    "Error",
    fields={
        "error": inline_serializer(
            "ErrorDetail",
            fields={
                "code": serializers.CharField(help_text="A stable, machine-readable code, e.g. `not_found`."),
                "message": serializers.CharField(help_text="A sentence for people."),
                "fields": serializers.DictField(
                    required=False, help_text="On `invalid` only: the messages for each field that failed."
                ),
            },
        )
    },
)

ERROR_DESCRIPTIONS = {
    400: "The request is not valid; `error.fields` says why, field by field.",
    401: "No credentials, or an API key that is invalid, expired or revoked.",
    403: "Not allowed: your role lacks the permission, the tenant is suspended or requires two-factor "
    "authentication, or the route is for platform staff only.",
    404: "Not found, or it belongs to a tenant you are not a member of.",
    429: "Too many requests; retry after the number of seconds in `Retry-After`.",
}


class ApiSchema(AutoSchema):
    """Document the error responses every operation can give, in the one error shape."""

    def get_operation(self, path: str, path_regex: str, path_prefix: str, method: str, registry: Any) -> Any:
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        error = self.resolve_serializer(ERROR_RESPONSE, "response").ref
        for code in self._error_codes(path, method):
            operation["responses"].setdefault(
                str(code),
                {"description": ERROR_DESCRIPTIONS[code], "content": {"application/json": {"schema": error}}},
            )
        return operation

    def _error_codes(self, path: str, method: str) -> list[int]:
        codes = [401, 403, 429]
        if method not in ("GET", "HEAD", "OPTIONS") or getattr(self.view, "query_serializer_class", None):
            codes.append(400)
        # A path parameter names something that may not be there; a list has pages that may not be.
        if "{" in path or isinstance(self.view, ListModelMixin):
            codes.append(404)
        return sorted(codes)


def id_parameter(name: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(name, {"type": "integer", "minimum": 1}, OpenApiParameter.PATH, description=description)


# Base classes carry no docstring: the schema would show it as every subclass's description.
class ApiView(APIView):
    # JSON only, so that the schema offers clients (and schemathesis) one media type to send.
    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]
    schema = ApiSchema()


class ApiListView(ApiView, generics.ListAPIView):
    # A paginated list; each subclass calls its selector in get_queryset().
    filter_backends: list[Any] = []


def _actor(request: Request) -> Actor:
    return actor_from_request(request._request)


def _tenant(request: Request) -> Tenant:
    """Return the tenant that TenantMiddleware resolved from the URL and checked the caller against."""
    tenant: Tenant = request._request.tenant  # type: ignore[attr-defined]
    return tenant


# --- Team -----------------------------------------------------------------------------------


@extend_schema(tags=["team"])
class TeamList(ApiListView):
    read_permission = "team.view"
    serializer_class = MembershipSerializer

    def get_queryset(self) -> QuerySet[Any]:
        return selectors.team_list(tenant=_tenant(self.request))


@extend_schema(tags=["team"], parameters=[id_parameter("membership_id", "A membership in this tenant.")])
class TeamMember(ApiView):
    read_permission = "team.view"
    write_permission = "team.manage"

    @extend_schema(responses=MembershipSerializer)
    def get(self, request: Request, tenant_slug: str, membership_id: int) -> Response:
        membership = selectors.membership_get(tenant=_tenant(request), membership_id=membership_id)
        return Response(MembershipSerializer(membership).data)

    @extend_schema(request=MembershipRoleSerializer, responses=MembershipSerializer)
    def patch(self, request: Request, tenant_slug: str, membership_id: int) -> Response:
        membership = selectors.membership_get(tenant=_tenant(request), membership_id=membership_id)
        form = MembershipRoleSerializer(data=request.data, partial=True)
        form.is_valid(raise_exception=True)
        if "role" in form.validated_data:
            membership = services.membership_change_role(
                actor=_actor(request), membership=membership, role=form.validated_data["role"]
            )
        return Response(MembershipSerializer(membership).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, tenant_slug: str, membership_id: int) -> Response:
        membership = selectors.membership_get(tenant=_tenant(request), membership_id=membership_id)
        services.membership_remove(actor=_actor(request), membership=membership)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(tags=["team"])
class InvitationList(ApiListView):
    read_permission = "team.view"
    write_permission = "team.manage"
    serializer_class = InvitationSerializer

    def get_queryset(self) -> QuerySet[Any]:
        return selectors.invitations_pending(tenant=_tenant(self.request))

    @extend_schema(
        request=InvitationCreateSerializer,
        responses={201: InvitationSerializer},
        description="Invite a person by e-mail; the one-time link goes to them and is not shown here.",
    )
    def post(self, request: Request, tenant_slug: str) -> Response:
        form = InvitationCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        issued = services.invitation_create(actor=_actor(request), tenant=_tenant(request), **form.validated_data)
        return Response(InvitationSerializer(issued.invitation).data, status=status.HTTP_201_CREATED)


@extend_schema(tags=["team"], parameters=[id_parameter("invitation_id", "A pending invitation of this tenant.")])
class InvitationDetail(ApiView):
    write_permission = "team.manage"

    @extend_schema(responses={204: None}, description="Revoke a pending invitation: its link stops working.")
    def delete(self, request: Request, tenant_slug: str, invitation_id: int) -> Response:
        invitation = selectors.invitation_get(tenant=_tenant(request), invitation_id=invitation_id)
        if invitation.accepted_at is not None or invitation.revoked_at is not None:
            # Only pending invitations are listed, so only they can be revoked.
            raise NotFound
        services.invitation_revoke(actor=_actor(request), invitation=invitation)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Settings -------------------------------------------------------------------------------


@extend_schema(tags=["settings"])
class TenantSettings(ApiView):
    read_permission = "settings.view"
    write_permission = "settings.change"

    @extend_schema(responses=TenantSettingsSerializer)
    def get(self, request: Request, tenant_slug: str) -> Response:
        return Response(TenantSettingsSerializer(_tenant(request)).data)

    @extend_schema(request=TenantSettingsUpdateSerializer, responses=TenantSettingsSerializer)
    def patch(self, request: Request, tenant_slug: str) -> Response:
        tenant = _tenant(request)
        form = TenantSettingsUpdateSerializer(data=request.data, partial=True)
        form.is_valid(raise_exception=True)
        changes = form.validated_data
        if changes:
            tenant = services.tenant_update_settings(
                actor=_actor(request),
                tenant=tenant,
                name=changes.get("name", tenant.name),
                display_name=changes.get("display_name", tenant.display_name),
                accent_colour=changes.get("accent_colour", tenant.accent_colour),
            )
        return Response(TenantSettingsSerializer(tenant).data)


@extend_schema(tags=["settings"])
class TenantSecuritySettings(ApiView):
    write_permission = "security.change"

    @extend_schema(request=TwoFactorPolicySerializer, responses=TenantSettingsSerializer)
    def patch(self, request: Request, tenant_slug: str) -> Response:
        form = TwoFactorPolicySerializer(data=request.data, partial=True)
        form.is_valid(raise_exception=True)
        tenant = _tenant(request)
        if "require_two_factor" in form.validated_data:
            tenant = services.tenant_set_two_factor_policy(
                actor=_actor(request), tenant=tenant, required=form.validated_data["require_two_factor"]
            )
        return Response(TenantSettingsSerializer(tenant).data)


# --- Audit log ------------------------------------------------------------------------------


@extend_schema(tags=["audit"], parameters=[AuditEventQuerySerializer])
class AuditEventList(ApiListView):
    read_permission = "audit.view"
    serializer_class = AuditEventSerializer
    query_serializer_class = AuditEventQuerySerializer

    def get_queryset(self) -> QuerySet[Any]:
        query = self.query_serializer_class(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        return selectors.audit_events(tenant=_tenant(self.request), **query.validated_data)


# --- API keys -------------------------------------------------------------------------------


@extend_schema(tags=["api keys"])
class ApiKeyList(ApiListView):
    """The caller's own keys in this tenant; nobody sees or makes another person's keys."""

    read_permission = "apikeys.manage_own"
    write_permission = "apikeys.manage_own"
    serializer_class = ApiKeySerializer

    def get_queryset(self) -> QuerySet[Any]:
        return selectors.api_keys_of(tenant=_tenant(self.request), user=self.request.user)

    @extend_schema(
        request=ApiKeyCreateSerializer,
        responses={201: ApiKeyCreatedSerializer},
        description="Make a key that acts as you, with your role, in this tenant only. `key` is shown once.",
    )
    def post(self, request: Request, tenant_slug: str) -> Response:
        form = ApiKeyCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        issued = services.api_key_create(
            actor=_actor(request),
            tenant=_tenant(request),
            user=request.user,
            name=form.validated_data["name"],
            expires_at=form.validated_data.get("expires_at"),
        )
        body = {**ApiKeySerializer(issued.api_key).data, "key": issued.raw_key}
        return Response(body, status=status.HTTP_201_CREATED)


@extend_schema(tags=["api keys"], parameters=[id_parameter("key_id", "One of your API keys in this tenant.")])
class ApiKeyDetail(ApiView):
    write_permission = "apikeys.manage_own"

    @extend_schema(responses={204: None}, description="Revoke one of your keys; it stops working at once.")
    def delete(self, request: Request, tenant_slug: str, key_id: int) -> Response:
        api_key = selectors.api_key_get(tenant=_tenant(request), user=request.user, key_id=key_id)
        services.api_key_revoke(actor=_actor(request), api_key=api_key)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- The caller -----------------------------------------------------------------------------


@extend_schema(tags=["me"])
class Me(ApiView):
    @extend_schema(
        responses=MeSerializer,
        description="Who you are and your role in each tenant. With an API key: its tenant only.",
    )
    def get(self, request: Request) -> Response:
        memberships = selectors.memberships_for_user(user=request.user)
        if isinstance(request.auth, ApiKey):
            memberships = memberships.filter(tenant_id=request.auth.tenant_id)
        return Response(MeSerializer({"username": request.user.get_username(), "memberships": memberships}).data)


# --- Platform -------------------------------------------------------------------------------


class IsPlatformStaff(BasePermission):
    """Platform staff signed in to the portal. An API key never qualifies: keys belong to one tenant."""

    message = "Only platform staff may do this."

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        return bool(user and user.is_authenticated and user.is_active and user.is_staff and request.auth is None)


def _with_member_count(tenants: QuerySet[Tenant]) -> QuerySet[Tenant]:
    return tenants.annotate(member_count=Count("memberships"))


def _platform_tenant_data(tenant: Tenant) -> Any:
    tenant.member_count = tenant.memberships.count()  # type: ignore[attr-defined]
    return PlatformTenantSerializer(tenant).data


@extend_schema(tags=["platform"])
class PlatformTenantList(ApiListView):
    permission_classes = [IsPlatformStaff]
    serializer_class = PlatformTenantSerializer

    def get_queryset(self) -> QuerySet[Any]:
        return _with_member_count(selectors.tenants_for_platform())

    @extend_schema(request=PlatformTenantCreateSerializer, responses={201: PlatformTenantSerializer})
    def post(self, request: Request) -> Response:
        form = PlatformTenantCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        tenant = services.tenant_create(actor=_actor(request), **form.validated_data)
        return Response(_platform_tenant_data(tenant), status=status.HTTP_201_CREATED)


PLATFORM_TENANT_ID = id_parameter("tenant_id", "A tenant's id.")


@extend_schema(tags=["platform"], parameters=[PLATFORM_TENANT_ID])
class PlatformTenantDetail(ApiView):
    permission_classes = [IsPlatformStaff]

    @extend_schema(responses=PlatformTenantSerializer)
    def get(self, request: Request, tenant_id: int) -> Response:
        return Response(_platform_tenant_data(selectors.tenant_get_for_platform(tenant_id=tenant_id)))


@extend_schema(tags=["platform"], parameters=[PLATFORM_TENANT_ID])
class PlatformTenantSuspend(ApiView):
    permission_classes = [IsPlatformStaff]

    @extend_schema(
        request=None, responses=PlatformTenantSerializer, description="Suspend a tenant: its admins lose access."
    )
    def post(self, request: Request, tenant_id: int) -> Response:
        tenant = selectors.tenant_get_for_platform(tenant_id=tenant_id)
        return Response(_platform_tenant_data(services.tenant_suspend(actor=_actor(request), tenant=tenant)))


@extend_schema(tags=["platform"], parameters=[PLATFORM_TENANT_ID])
class PlatformTenantReactivate(ApiView):
    permission_classes = [IsPlatformStaff]

    @extend_schema(request=None, responses=PlatformTenantSerializer, description="Lift a tenant's suspension.")
    def post(self, request: Request, tenant_id: int) -> Response:
        tenant = selectors.tenant_get_for_platform(tenant_id=tenant_id)
        return Response(_platform_tenant_data(services.tenant_reactivate(actor=_actor(request), tenant=tenant)))
