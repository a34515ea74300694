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


class TenantSocketConsumer(AsyncJsonWebsocketConsumer):
    """A browser socket inside one tenant: resolves the tenant on connect, then joins its groups.

    Subclasses name the permission they need and the groups to join; every tenant socket of every
    app is checked here, the same way.
    """

    permission = "tenant.view"

    def group_names(self, tenant_id: int) -> list[str]:
        raise NotImplementedError

    async def connect(self) -> None:
        user = self.scope.get("user")
        slug = self.scope["url_route"]["kwargs"]["tenant_slug"]
        authenticated = user is not None and user.is_authenticated
        access = await _resolve_access(user, self.scope.get("session"), slug) if authenticated else None
        if access is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        tenant_id, role, blocked = access
        if blocked or not role_allows(role, self.permission):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.tenant_id = tenant_id
        self.joined = self.group_names(tenant_id)
        for group in self.joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # Browsers only listen on these sockets; anything they send is ignored.
        return


class TenantLiveConsumer(TenantSocketConsumer):
    """Stream a tenant's new audit events to admins allowed to read the audit log."""

    permission = "audit.view"

    def group_names(self, tenant_id: int) -> list[str]:
        return [audit_group_name(tenant_id)]

    async def audit_event(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "audit_event", "event": message["event"]})
