from django.urls import path

from tenants import views_platform

urlpatterns = [
    path("", views_platform.dashboard, name="platform-dashboard"),
    path("tenants/new/", views_platform.tenant_new, name="platform-tenant-new"),
    path("tenants/<int:tenant_id>/suspend/", views_platform.tenant_suspend, name="platform-tenant-suspend"),
    path("tenants/<int:tenant_id>/reactivate/", views_platform.tenant_reactivate, name="platform-tenant-reactivate"),
]
