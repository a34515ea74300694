"""ASGI entry point: HTTP goes to Django (portal/http.py), websockets to the Channels routes of each app."""

import gc
import os
import sys
from typing import Any

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
# Django must be set up before the consumers (and the models they import) are loaded.
django.setup(set_prefix=False)

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import get_resolver  # noqa: E402

from portal.http import HttpApplication  # noqa: E402
from portal.websocket_urls import (  # noqa: E402
    DEVICE_PREFIX,
    browser_websocket_urlpatterns,
    device_websocket_urlpatterns,
)

device_websockets = URLRouter(device_websocket_urlpatterns)
browser_websockets = AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(browser_websocket_urlpatterns)))


async def websocket_application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"].startswith(DEVICE_PREFIX):
        return await device_websockets(scope, receive, send)
    return await browser_websockets(scope, receive, send)


application = ProtocolTypeRouter(
    {"http": HttpApplication(threads=settings.HTTP_THREADS), "websocket": websocket_application}
)

# The URL configuration imports every view module (DRF, the schema generator, the admin): loaded
# now, instead of by each worker's first request (which took over 100 ms longer than the next).
get_resolver().url_patterns  # noqa: B018

# The event loop (every socket of the process) and the thread pool (every database call) share
# the GIL: a thread running Python keeps the loop waiting up to this long. CPython's 5 ms made a
# command's push wait behind the rendering of its own API answer; at 1 ms a command's round trip
# is about 1 ms shorter at every rate, for the same CPU (bench/README.md).
sys.setswitchinterval(0.001)

# Everything loaded so far (Django, the apps, their modules) lives as long as the process: moved
# out of the collector's generations, full collections no longer walk it. Near 20,000 connections
# full collections had paused the server for about 2 s every 20-30 s. The device hub freezes its
# settled connections the same way (devices.consumers.DeviceHub._keep_full_collections_short); with
# most long-lived objects frozen, CPython's guard against frequent full collections (a quarter more
# survivors than the last one left) lets one run every few gen-1 collections, each walking every
# connection's current read and ping timer (0.3-0.4 s at 10,000 devices a worker). Ten times fewer
# gen-1 collections between them (100, not 10) keeps them as rare as before the freezing.
gc.collect()
gc.freeze()
gc.set_threshold(700, 10, 100)
