"""Routes of the REST API, version 1, mounted at /api/v1/."""

from django.urls import include, path

from tenants import api

tenant_patterns = [
    path("team/", api.TeamList.as_view(), name="api-team"),
    path("team/<int:membership_id>/", api.TeamMember.as_view(), name="api-team-member"),
    path("invitations/", api.InvitationList.as_view(), name="api-invitations"),
    path("invitations/<int:invitation_id>/", api.InvitationDetail.as_view(), name="api-invitation"),
    path("settings/", api.TenantSettings.as_view(), name="api-settings"),
    path("settings/security/", api.TenantSecuritySettings.as_view(), name="api-settings-security"),
    path("audit-events/", api.AuditEventList.as_view(), name="api-audit-events"),
    path("api-keys/", api.ApiKeyList.as_view(), name="api-api-keys"),
    path("api-keys/<int:key_id>/", api.ApiKeyDetail.as_view(), name="api-api-key"),
]

platform_patterns = [
    path("tenants/", api.PlatformTenantList.as_view(), name="api-platform-tenants"),
    path("tenants/<int:tenant_id>/", api.PlatformTenantDetail.as_view(), name="api-platform-tenant"),
    path(
        "tenants/<int:tenant_id>/suspend/",
        api.PlatformTenantSuspend.as_view(),
        name="api-platform-tenant-suspend",
    ),
    path(
        "tenants/<int:tenant_id>/reactivate/",
        api.PlatformTenantReactivate.as_view(),
        name="api-platform-tenant-reactivate",
    ),
]

urlpatterns = [
    path("t/<slug:tenant_slug>/", include(tenant_patterns)),
    path("me/", api.Me.as_view(), name="api-me"),
    path("platform/", include(platform_patterns)),
]
