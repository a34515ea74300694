"""HTTP in the ASGI server: Django's WSGI handler on a fixed pool of threads.

Pages and the API are synchronous Django (middleware, views, the ORM). Django's ASGI handler
started a thread for every request (and another to join it), and moved the request between the
event loop and a thread again at every middleware that is not async-only: a view behind our
middleware cost 1.4-1.8 ms of CPU there, against 0.4-0.7 ms here (bench/README.md). Here a
request goes to a thread once, with its body, and its answer comes back once; the thread keeps
its place in the pool for the next request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from a2wsgi import WSGIMiddleware
from django.core.wsgi import get_wsgi_application

from portal.outbox import outbox

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Bodies up to this size are read on the loop before the request goes to its thread: a thread
# that reads its body asks the loop for each part, a hand-over each way. So is a body sent
# without a Content-Length (chunked), which Django's WSGI handler would take for an empty one;
# past MAX_UNSIZED_BODY_BYTES such a request is refused with 413.
READ_AHEAD_BYTES = 64 * 1024
MAX_UNSIZED_BODY_BYTES = 16 * 1024 * 1024


class BodyTooLarge(Exception):
    pass


class HttpApplication:
    def __init__(self, threads: int) -> None:
        # Any: a2wsgi types WSGI apps and ASGI messages more narrowly than Django's stubs and we do.
        self.wsgi: Any = WSGIMiddleware(cast(Any, get_wsgi_application()), workers=threads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Layer sends made while a request commits go through the process's outbox, on this loop.
        outbox.ensure_running()
        length = _content_length(scope)
        if length is None or length <= READ_AHEAD_BYTES:
            try:
                body = await _read_body(receive, limit=MAX_UNSIZED_BODY_BYTES if length is None else length)
            except BodyTooLarge:
                await _answer(send, 413, b"Request body too large: send a Content-Length.")
                return
            if body is None:  # the client went away
                return
            scope = {**scope, "headers": [*_without_length(scope), (b"content-length", b"%d" % len(body))]}
            receive = _replay(body, receive)
        await self.wsgi(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _without_length(scope: Scope) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in scope["headers"] if name != b"content-length"]


async def _read_body(receive: Receive, *, limit: int) -> bytes | None:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise BodyTooLarge
        parts.append(part)
        if not message.get("more_body"):
            return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body read ahead, then what the client sends next (a disconnect)."""
    given = False

    async def replayed() -> Message:
        nonlocal given
        if given:
            return await receive()
        given = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _answer(send: Send, status: int, text: bytes) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"%d" % len(text))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})
