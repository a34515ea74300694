"""URL routing for the whole portal: the composition root that includes each app's routes."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from portal.admin_site import restrict_admin_to_superusers

restrict_admin_to_superusers(admin.site)

urlpatterns = [
    path("", include("tenants.urls_account")),
    path("platform/", include("tenants.urls_platform")),
    path("platform/", include("licensing.urls_platform")),
    path("t/<slug:tenant_slug>/", include("tenants.urls")),
    path("t/<slug:tenant_slug>/", include("devices.urls")),
    path("t/<slug:tenant_slug>/", include("licensing.urls_tenant")),
    path("api/v1/", include("tenants.api_urls")),
    path("api/v1/", include("devices.api_urls")),
    path("api/device/v1/", include("devices.api_device_urls")),
    path("licensing/", include("licensing.urls_service")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("admin/", admin.site.urls),
]

handler404 = "portal.errors.not_found"
