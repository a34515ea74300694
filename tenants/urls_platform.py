from django.urls import path

from tenants import views_access, views_platform

urlpatterns = [
    path("", views_platform.dashboard, name="platform-dashboard"),
    path("tenants/new/", views_platform.tenant_new, name="platform-tenant-new"),
    path("tenants/<int:tenant_id>/suspend/", views_platform.tenant_suspend, name="platform-tenant-suspend"),
    path("tenants/<int:tenant_id>/reactivate/", views_platform.tenant_reactivate, name="platform-tenant-reactivate"),
    path("tenants/<int:tenant_id>/offboard/", views_platform.tenant_offboard, name="platform-tenant-offboard"),
    path("access/", views_access.platform_access, name="platform-access"),
    path("access/<int:request_id>/cancel/", views_access.platform_access_cancel, name="platform-access-cancel"),
    path("access/<int:request_id>/complete/", views_access.platform_access_complete, name="platform-access-complete"),
    path("break-glass/", views_access.platform_break_glass, name="platform-break-glass"),
    path(
        "break-glass/<int:request_id>/approve/",
        views_access.platform_break_glass_approve,
        name="platform-break-glass-approve",
    ),
]
