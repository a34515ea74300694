from django.contrib.admin import AdminSite
from django.http import HttpRequest


def restrict_admin_to_superusers(site: AdminSite) -> None:
    """Let only platform superusers into the Django admin (Django's default admits any staff)."""

    def has_permission(request: HttpRequest) -> bool:
        return bool(request.user.is_active and request.user.is_superuser)

    site.has_permission = has_permission  # type: ignore[method-assign]
    site.site_header = "Portal platform administration"
