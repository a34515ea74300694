"""Websocket routes of every app, in one list that the ASGI router and the isolation probe read."""

from django.urls import path

from devices.consumers import DeviceConsumer
from tenants.consumers import TenantLiveConsumer

websocket_urlpatterns = [
    path("ws/device/", DeviceConsumer.as_asgi(), name="ws-device"),
    path("ws/t/<slug:tenant_slug>/live/", TenantLiveConsumer.as_asgi(), name="ws-tenant-live"),
]
