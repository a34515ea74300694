"""Live fleet updates for admins' browsers: presence dots, command status and job progress."""

from __future__ import annotations

from typing import Any

from devices.live import devices_group_name
from tenants.consumers import TenantSocketConsumer


class FleetLiveConsumer(TenantSocketConsumer):
    permission = "devices.view"

    def group_names(self, tenant_id: int) -> list[str]:
        return [devices_group_name(tenant_id)]

    async def live_update(self, message: dict[str, Any]) -> None:
        await self.send_json(message["event"])

    async def live_updates(self, message: dict[str, Any]) -> None:
        # Batched presence changes: the browser gets each as a frame of its own, as if sent alone.
        for event in message["events"]:
            await self.send_json(event)
