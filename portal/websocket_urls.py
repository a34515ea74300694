"""Websocket routes of every app. The isolation probe reads `websocket_urlpatterns`, all of them.

Device sockets authenticate with a device token and carry no cookies, so they are served without
the session middleware and the Origin check; browser sockets get both.
"""

from django.urls import path

from devices.consumers import device_socket
from devices.consumers_browser import FleetLiveConsumer
from tenants.consumers import TenantLiveConsumer

DEVICE_PREFIX = "/ws/device/"

device_websocket_urlpatterns = [
    # Channels' URLRouter takes any ASGI application; django-stubs types path() for views only.
    path("ws/device/", device_socket, name="ws-device"),  # type: ignore[arg-type]
]
browser_websocket_urlpatterns = [
    path("ws/t/<slug:tenant_slug>/live/", TenantLiveConsumer.as_asgi(), name="ws-tenant-live"),
    path("ws/t/<slug:tenant_slug>/fleet/", FleetLiveConsumer.as_asgi(), name="ws-tenant-fleet"),
]
websocket_urlpatterns = device_websocket_urlpatterns + browser_websocket_urlpatterns
