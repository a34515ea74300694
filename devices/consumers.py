"""The device websocket (docs/protocol.md). Thin: authenticate, validate each frame against a small
schema, call one service (off the event loop), reply. Heartbeats and status reports are coalesced
in devices.ingest instead of written one by one."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import connection
from django.utils import timezone

from devices import live, protocol, services
from devices.ingest import buffer
from tenants.net import client_ip

logger = logging.getLogger(__name__)


def _database(function: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Run a service off the event loop.

    On PostgreSQL in the thread pool, each call on a pooled connection: the single thread that
    thread-sensitive calls share was the bottleneck of a worker (every command costs the device's
    worker three database calls). SQLite (the embedded default) keeps the one thread, where its
    writers queue anyway.
    """
    return database_sync_to_async(function, thread_sensitive=connection.vendor != "postgresql")


# Live consumers of this process, for the heartbeat watchdog (one task per process, not per device).
_LIVE: dict[str, DeviceConsumer] = {}
_process_tasks: dict[asyncio.AbstractEventLoop, list[asyncio.Task[None]]] = {}


def _heartbeat_interval() -> float:
    return float(getattr(settings, "DEVICE_HEARTBEAT_INTERVAL", 30))


async def _watch_heartbeats() -> None:
    while True:
        interval = _heartbeat_interval()
        await asyncio.sleep(interval / 2)
        deadline = time.monotonic() - protocol.MISSED_HEARTBEATS * interval
        for consumer in [consumer for consumer in _LIVE.values() if consumer.last_message_at < deadline]:
            await consumer.close(code=protocol.CLOSE_HEARTBEAT_TIMEOUT)


# How often each process sends its devices' batched presence changes to browsers.
PRESENCE_FLUSH_SECONDS = 0.5


async def _flush_presence() -> None:
    live.presence_batch.loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(PRESENCE_FLUSH_SECONDS)
        await live.presence_flush()


# How often each process looks for queued commands of its own live devices that no push reached.
UNDELIVERED_SWEEP_SECONDS = 2.0


async def _sweep_undelivered() -> None:
    """Deliver commands whose push was lost.

    A push through the channel layer is only a hint: Redis may be down, or the process's channel
    may be full (channels-redis keeps one capacity for all the consumers of a process). The
    command row is what counts, so each process checks, with one indexed query for all its live
    devices, whether any of them has a queued command that has waited more than a sweep.
    """
    while True:
        await asyncio.sleep(UNDELIVERED_SWEEP_SECONDS)
        consumer = next(iter(_LIVE.values()), None)
        if consumer is None:
            continue
        # Every channel of this process starts with the same prefix (channels-redis: one per process).
        prefix = consumer.channel_name.split("!", 1)[0] + "!"
        try:
            frames_by_channel = await _database(services.commands_take_queued_of_worker)(
                channel_prefix=prefix, queued_before=timezone.now() - timedelta(seconds=UNDELIVERED_SWEEP_SECONDS)
            )
        except Exception:  # the database is away: the next sweep tries again
            logger.exception("Taking undelivered commands failed")
            continue
        for channel, frames in frames_by_channel.items():
            consumer = _LIVE.get(channel)
            # Gone since: its commands are marked delivered, and go again when the device reconnects.
            if consumer is not None and consumer.authenticated:
                await consumer.send_frames(frames)


def _header(scope: dict[str, Any], name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _token_from(scope: dict[str, Any]) -> str:
    authorization = _header(scope, b"authorization")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() in ("device", "bearer") and token.strip():
        return token.strip()
    for subprotocol in scope.get("subprotocols", []):
        if subprotocol.startswith(protocol.TOKEN_SUBPROTOCOL_PREFIX):
            return subprotocol[len(protocol.TOKEN_SUBPROTOCOL_PREFIX) :]
    return ""


# Handshakes of this process waiting for the database; past the limit new ones are turned away.
MAX_HANDSHAKES_IN_PROGRESS = 64
_handshakes_in_progress = 0


def _hello_and_take_commands(*, device_pk: int, hello: dict[str, Any]) -> list[dict[str, Any]]:
    """Store the hello and take the commands that waited for the device: one trip to the thread pool."""
    services.device_hello(device_pk=device_pk, hello=hello)
    return services.commands_take_for_delivery(device_pk=device_pk, reconnected=True)


class DeviceConsumer(AsyncWebsocketConsumer):
    # Set once the token is checked; False again when a newer connection replaces this one.
    authenticated = False
    device_pk = 0
    tenant_id = 0

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels calls aclose_old_connections() before every handler: a hop into the database
        # thread for every frame, heartbeats included, which capped a process at a few thousand
        # frames a second. This consumer needs none of it: every database call here goes through
        # _database (database_sync_to_async), which closes stale connections around the call itself.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        global _handshakes_in_progress
        subprotocol = protocol.SUBPROTOCOL if protocol.SUBPROTOCOL in self.scope.get("subprotocols", []) else None
        if _handshakes_in_progress >= MAX_HANDSHAKES_IN_PROGRESS:
            # A reconnect storm: turn the device away at once, so that it backs off and comes back,
            # rather than queueing its handshake behind thousands whose devices time out meanwhile
            # (measured: without this limit 10,000 reconnecting devices never got back).
            await self.accept(subprotocol)
            await self.close(code=protocol.CLOSE_TRY_AGAIN_LATER)
            return
        client = self.scope.get("client") or (None, None)
        ip_address = client_ip(client[0], _header(self.scope, b"x-forwarded-for") or None)
        _handshakes_in_progress += 1
        try:
            connected = await _database(services.device_connect)(
                token=_token_from(self.scope),
                channel_name=self.channel_name,
                ip_address=ip_address,
                attempt=_header(self.scope, b"device-connection"),
            )
        finally:
            _handshakes_in_progress -= 1
        if connected is None:
            # Accept first: a close code can only be sent on an open websocket.
            await self.accept(subprotocol)
            await self.close(code=protocol.CLOSE_UNAUTHENTICATED)
            return
        if connected.superseded:
            # A later attempt of this device is live: this earlier one, served late, is the one replaced.
            await self.accept(subprotocol)
            await self.close(code=protocol.CLOSE_REPLACED)
            return
        self.device_pk, self.tenant_id, self.device_id = connected.device_pk, connected.tenant_id, connected.device_id
        self.authenticated = True
        buffer.forget(self.device_pk)  # the first status of a new connection is always written
        if connected.replaced_channel:
            await self.channel_layer.send(connected.replaced_channel, {"type": "device.replaced"})
        self.limiter = protocol.RateLimiter()
        self.bad_messages = 0
        self.last_message_at = time.monotonic()
        await self.accept(subprotocol)
        _LIVE[self.channel_name] = self
        loop = asyncio.get_running_loop()
        tasks = _process_tasks.get(loop)
        if not tasks or any(task.done() for task in tasks):
            for task in tasks or []:
                task.cancel()
            _process_tasks[loop] = [
                loop.create_task(_watch_heartbeats()),
                loop.create_task(_sweep_undelivered()),
                loop.create_task(_flush_presence()),
            ]

    async def disconnect(self, code: int) -> None:
        _LIVE.pop(self.channel_name, None)
        if self.authenticated:
            await _database(services.device_disconnected)(
                device_pk=self.device_pk, tenant_id=self.tenant_id, channel_name=self.channel_name
            )

    # --- Frames from the device -------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.authenticated:
            return
        size = len(text_data.encode()) if text_data is not None else len(bytes_data or b"")
        if size > protocol.MAX_FRAME_BYTES:
            await self.close(code=protocol.CLOSE_FRAME_TOO_LARGE)
            return
        self.last_message_at = time.monotonic()
        if not self.limiter.allow():
            if self.limiter.exhausted:
                await self.close(code=protocol.CLOSE_RATE_LIMITED)
            else:
                await self._error("rate_limited", "Too many messages; this one was dropped.")
            return
        try:
            message = protocol.parse(text_data)
            handler = self._handlers[message["type"]]
            await handler(self, message)
        except protocol.ProtocolError as error:
            self.bad_messages += 1
            if self.bad_messages > protocol.MAX_BAD_MESSAGES:
                await self.close(code=protocol.CLOSE_PROTOCOL_ERROR)
                return
            await self._error(error.code, error.message, error.in_reply_to)
        buffer.mark_seen(self.device_pk, timezone.now())

    async def _on_hello(self, message: dict[str, Any]) -> None:
        frames = await _database(_hello_and_take_commands)(device_pk=self.device_pk, hello=message)
        await self._send(
            {
                "type": "welcome",
                "device_id": self.device_id,
                "heartbeat_interval": _heartbeat_interval(),
                "server_time": timezone.now().isoformat(),
            }
        )
        await self.send_frames(frames)

    async def _on_status(self, message: dict[str, Any]) -> None:
        buffer.set_status(self.device_pk, self.tenant_id, message)

    async def _on_heartbeat(self, message: dict[str, Any]) -> None:
        return

    async def _on_command_ack(self, message: dict[str, Any]) -> None:
        await self._advance(message, "acknowledged")

    async def _on_command_result(self, message: dict[str, Any]) -> None:
        await self._advance(message, message["status"], result=message.get("result"), error=message.get("error", ""))

    async def _advance(self, message: dict[str, Any], status: str, **extra: Any) -> None:
        command = await _database(services.command_advance)(
            device_pk=self.device_pk, command_id=message["command_id"], status=status, **extra
        )
        if command is None:
            raise protocol.ProtocolError("unknown_command", "No such command for this device.", message["type"])

    async def _on_job_started(self, message: dict[str, Any]) -> None:
        await _database(services.job_started)(device_pk=self.device_pk, tenant_id=self.tenant_id, message=message)

    async def _on_job_progress(self, message: dict[str, Any]) -> None:
        job = await _database(services.job_progress)(
            device_pk=self.device_pk, tenant_id=self.tenant_id, message=message
        )
        if job is None:
            raise protocol.ProtocolError("unknown_job", "No running job with this id.", message["type"])

    async def _on_job_finished(self, message: dict[str, Any]) -> None:
        job = await _database(services.job_finished)(
            device_pk=self.device_pk, tenant_id=self.tenant_id, message=message
        )
        if job is None:
            raise protocol.ProtocolError("unknown_job", "No job with this id.", message["type"])

    _handlers: dict[str, Callable[[DeviceConsumer, dict[str, Any]], Awaitable[None]]] = {
        "hello": _on_hello,
        "status": _on_status,
        "heartbeat": _on_heartbeat,
        "command_ack": _on_command_ack,
        "command_result": _on_command_result,
        "job_started": _on_job_started,
        "job_progress": _on_job_progress,
        "job_finished": _on_job_finished,
    }

    # --- Messages from the channel layer ----------------------------------------------------

    async def device_commands(self, event: dict[str, Any]) -> None:
        await self.deliver_commands()

    async def device_replaced(self, event: dict[str, Any]) -> None:
        self.authenticated = False  # the newer connection owns the device's state now
        await self.close(code=protocol.CLOSE_REPLACED)

    async def device_revoked(self, event: dict[str, Any]) -> None:
        await self.close(code=protocol.CLOSE_REVOKED)

    # --- Helpers ----------------------------------------------------------------------------

    async def deliver_commands(self) -> None:
        await self.send_frames(await _database(services.commands_take_for_delivery)(device_pk=self.device_pk))

    async def send_frames(self, frames: list[dict[str, Any]]) -> None:
        for frame in frames:
            await self.send(text_data=json.dumps(frame))

    async def _send(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps({"v": protocol.VERSION, **frame}))

    async def _error(self, code: str, message: str, in_reply_to: str | None = None) -> None:
        frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if in_reply_to:
            frame["in_reply_to"] = in_reply_to
        await self._send(frame)
