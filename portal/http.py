"""HTTP in the ASGI server: Django's WSGI handler on a fixed pool of threads.

Pages and the API are synchronous Django (middleware, views, the ORM). Django's ASGI handler
started a thread for every request (and another to join it), and moved the request between the
event loop and a thread again at every middleware that is not async-only: a view behind our
middleware cost 1.2-1.8 ms of CPU there, against 0.2-0.8 ms here (bench/README.md). Here a
request goes to a thread once, with its body, and comes back once with its whole answer; the
thread stays in the pool for the next request.

a2wsgi builds the WSGI environ, and reads the bodies too large to read ahead. Its responder is
not used: its thread waits for the event loop to take the status line, then each part of the
answer, and in a worker that serves 10,000 device sockets each of those waits is a turn of a
busy loop. Only streaming answers (CSV exports, files) are sent part by part from their thread,
which must stay the same one: their parts may come from a database cursor of that thread.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from a2wsgi.wsgi import Body, build_environ
from django.core.wsgi import get_wsgi_application

from portal.outbox import outbox

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Coroutine[Any, Any, None]]
Headers = list[tuple[bytes, bytes]]

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
        self.django = get_wsgi_application()
        self.threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Layer sends made while a request commits go through the process's outbox, on this loop.
        outbox.ensure_running()
        loop = asyncio.get_running_loop()
        length = _content_length(scope)
        body: Any
        if length is None or length <= READ_AHEAD_BYTES:
            try:
                read = await _read_body(receive, limit=MAX_UNSIZED_BODY_BYTES if length is None else length)
            except BodyTooLarge:
                await _answer(send, 413, [(b"content-type", b"text/plain; charset=utf-8")], b"Send a Content-Length.")
                return
            if read is None:  # the client went away
                return
            scope = {**scope, "headers": [*_without_length(scope), (b"content-length", b"%d" % len(read))]}
            body = io.BytesIO(read)
        else:
            body = Body(loop, receive)  # type: ignore[arg-type]
        environ: Any = build_environ(scope, body)  # type: ignore[arg-type]
        whole = await loop.run_in_executor(self.threads, self._respond, environ, loop, send)
        if whole is not None:
            await _answer(send, *whole)

    def _respond(
        self, environ: dict[str, Any], loop: asyncio.AbstractEventLoop, send: Send
    ) -> tuple[int, Headers, bytes] | None:
        """In a thread of the pool: run Django; return its whole answer, or send it part by part
        from here if it streams (and return None)."""
        started: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., None]:
            started["status"] = int(status.split(" ", 1)[0])
            started["headers"] = [(name.lower().encode("latin1"), value.encode("latin1")) for name, value in headers]
            return _no_write

        response: Any = self.django(environ, start_response)  # type: ignore[arg-type]
        try:
            if not getattr(response, "streaming", False):
                return started["status"], started["headers"], b"".join(response)

            def send_from_here(message: Message) -> None:
                asyncio.run_coroutine_threadsafe(send(message), loop).result()

            send_from_here({"type": "http.response.start", "status": started["status"], "headers": started["headers"]})
            for part in response:
                if part:
                    send_from_here({"type": "http.response.body", "body": part, "more_body": True})
            send_from_here({"type": "http.response.body", "body": b""})
            return None
        finally:
            response.close()  # Django's request_finished: this thread's database connection goes back


def _no_write(data: bytes) -> None:
    raise NotImplementedError("WSGI write() is not supported: return the body instead")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _without_length(scope: Scope) -> Headers:
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


async def _answer(send: Send, status: int, headers: Headers, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
