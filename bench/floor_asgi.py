"""Bench only, not the product: the portal's ASGI application with the floor views of
bench/floor_urls.py, and `/bench/floor/bare` answered by plain ASGI before Django sees it.

    python bench/api_floor.py      # starts uvicorn with floor_asgi:application
"""

from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

from django.conf import settings  # noqa: E402

settings.ROOT_URLCONF = "floor_urls"

from portal.asgi import application as portal_application  # noqa: E402  (sets Django up)

BARE_BODY = b'{"ok": true}'


async def application(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "http" and scope["path"] == "/bench/floor/bare":
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BARE_BODY))],
            }
        )
        await send({"type": "http.response.body", "body": BARE_BODY})
        return
    await portal_application(scope, receive, send)
