"""Live updates for tenant admins' browsers.

The tenant is resolved once, on connect, through the same selector and permission table as HTTP
requests; a person who is not a member (or lacks the permission) is refused with close code 4404
or 4403, which says nothing about whether the tenant exists.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.http import Http404
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.models import Device

from tenants.audit import audit_group_name
from tenants.roles import role_allows
from tenants.selectors import tenant_access_get

CLOSE_NOT_FOUND = 4404
CLOSE_FORBIDDEN = 4403


def _session_verified(session: Any, user: Any) -> bool:
    """Return whether the browser session passed a second factor (what OTPMiddleware does for HTTP)."""
    persistent_id = session.get(DEVICE_ID_SESSION_KEY) if session is not None else None
    device = Device.from_persistent_id(persistent_id) if persistent_id else None
    return device is not None and device.user_id == user.pk


@database_sync_to_async
def _resolve_access(user: Any, session: Any, slug: str) -> tuple[int, str, bool] | None:
    try:
        access = tenant_access_get(user=user, slug=slug)
    except Http404:
        return None
    verified = not access.tenant.require_two_factor or _session_verified(session, user)
    return access.tenant.pk, access.membership.role, access.tenant.is_suspended or not verified


class TenantLiveConsumer(AsyncJsonWebsocketConsumer):
    """Stream a tenant's new audit events to admins allowed to read the audit log."""

    groups: list[str] = []

    async def connect(self) -> None:
        user = self.scope.get("user")
        slug = self.scope["url_route"]["kwargs"]["tenant_slug"]
        access = (
            await _resolve_access(user, self.scope.get("session"), slug)
            if user is not None and user.is_authenticated
            else None
        )
        if access is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        tenant_id, role, blocked = access
        if blocked or not role_allows(role, "audit.view"):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.audit_group = audit_group_name(tenant_id)
        await self.channel_layer.group_add(self.audit_group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        if hasattr(self, "audit_group"):
            await self.channel_layer.group_discard(self.audit_group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # The browser only listens; anything it sends is ignored.
        return

    async def audit_event(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "audit_event", "event": message["event"]})
