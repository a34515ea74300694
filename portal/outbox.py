"""The channel-layer sends of one server process, made by one task on its event loop (Outbox.run).

put() may be called from any thread (services run in the thread pool): it hands the send to the
loop and returns at once, instead of holding the thread until Redis has answered. What piles up
while a send is in flight goes out together next, each kind by the sender its app registered
(devices.live merges a tenant's browser events into one message and pushes to devices into one
message per process), kinds in the order of their `rank`. With one sender, a process needs one
Redis connection for all it sends: a send from each thread of the pool had opened a connection
each, and redis-py's pools keep their peak.

put() returns False where no outbox runs (Celery, a management command, a test without a device
socket or an HTTP request served by the ASGI application): the caller sends at once, as before.
The outbox runs in every server process: the first device socket or HTTP request starts it
(ensure_running).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

Batch = list[tuple[Any, dict[str, Any]]]
GROUPS = "groups"


@dataclass(frozen=True)
class _Sender:
    rank: int
    send: Callable[[Batch], Awaitable[None]]


class Outbox:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[str, Any, dict[str, Any]]] = []
        self._senders: dict[str, _Sender] = {}
        self._periodic: list[tuple[float, Callable[[], Awaitable[None]]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.on_bind: list[Callable[[asyncio.AbstractEventLoop], None]] = []

    def register(self, kind: str, send: Callable[[Batch], Awaitable[None]], *, rank: int) -> None:
        """Send what was put of `kind` with `send(batch)`, a batch being [(target, message), …] in
        the order they were put; lower ranks go first."""
        self._senders[kind] = _Sender(rank, send)

    def every(self, seconds: float, send: Callable[[], Awaitable[None]]) -> None:
        """Also run `send` about every `seconds` (batched presence changes)."""
        self._periodic.append((seconds, send))

    def put(self, kind: str, target: Any, message: dict[str, Any]) -> bool:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or loop.is_closed() or not loop.is_running():
            return False
        with self._lock:
            self._pending.append((kind, target, message))
        loop.call_soon_threadsafe(wake.set)
        return True

    def ensure_running(self) -> None:
        """Run the outbox on the running loop, unless it already runs there."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            return
        self.bind(loop)
        self._task = loop.create_task(self.run())

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Take sends for `loop` from now on, before run() has started on it: a handshake served in
        the same turn of the loop may already have something to send."""
        if self._loop is loop and self._wake is not None:
            return
        with self._lock:
            self._pending = []  # left by a loop that closed (tests run a loop each)
        self._loop, self._wake = loop, asyncio.Event()
        for hook in self.on_bind:
            hook(loop)

    async def run(self) -> None:
        self.bind(asyncio.get_running_loop())
        loop, wake = self._loop, self._wake
        assert loop is not None and wake is not None
        due = [loop.time() + seconds for seconds, _ in self._periodic]
        try:
            while True:
                timeout = max(0.0, min(due) - loop.time()) if due else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=timeout)
                wake.clear()
                with self._lock:
                    pending, self._pending = self._pending, []
                await self.send_together(pending)
                for number, (seconds, send) in enumerate(self._periodic):
                    if loop.time() >= due[number]:
                        due[number] = loop.time() + seconds
                        await send()
        finally:
            if self._wake is wake:
                self._loop = self._wake = None

    async def send_together(self, pending: list[tuple[str, Any, dict[str, Any]]]) -> None:
        """Send `pending` now, each kind as one batch, kinds by rank."""
        batches: dict[str, Batch] = {}
        for kind, target, message in pending:
            batches.setdefault(kind, []).append((target, message))
        for kind in sorted(batches, key=lambda kind: self._senders[kind].rank):
            try:
                await self._senders[kind].send(batches[kind])
            except Exception as error:  # what a push tells is stored; only its display is late
                logger.warning("%d layer sends (%s) were dropped: %s", len(batches[kind]), kind, error)


outbox = Outbox()


async def _send_to_groups(batch: Batch) -> None:
    layer = get_channel_layer()
    for group, message in batch:
        if layer is None:
            return
        try:
            await layer.group_send(group, message)
        except Exception as error:
            logger.warning("A layer message to %s was dropped: %s", group, error)


# After the apps' own kinds: a command's push to its device goes before the audit event about it.
outbox.register(GROUPS, _send_to_groups, rank=100)


def group_send_soon(group: str, message: dict[str, Any]) -> None:
    """Send `message` to a layer group without waiting for it: through the outbox where one runs,
    otherwise at once. A layer that is down costs the message, which only showed a stored change."""
    if outbox.put(GROUPS, group, message):
        return
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception as error:
        logger.warning("A layer message to %s was dropped: %s", group, error)
