"""The device websocket (docs/protocol.md), as a plain ASGI application.

Thin: authenticate, validate each frame against a small schema, call one service (off the event
loop), reply. Heartbeats and status reports are coalesced in devices.ingest instead of written one
by one.

Not a Channels consumer. A consumer gives every connection a channel of its own and a task that
waits on it, and every frame a new task and an `asyncio.wait` over both; with thousands of mostly
idle devices a process paid for those per connection and per heartbeat. Here each process has one
channel (`DeviceHub`) read by one task, which hands each message to the connections it names; a
connection is one loop over the frames of its socket. A device's connection name, stored as
`Device.connection_channel`, is the process channel, `#`, and a number (devices.live routes by it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection as db_connection
from django.utils import timezone

from devices import live, protocol, services
from devices.ingest import buffer
from tenants.net import client_ip

logger = logging.getLogger(__name__)

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _database(function: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """Run a service off the event loop.

    On PostgreSQL in the thread pool, each call on a pooled connection: the single thread that
    thread-sensitive calls share was the bottleneck of a worker (every command costs the device's
    worker three database calls). SQLite (the embedded default) keeps the one thread, where its
    writers queue anyway.
    """
    return database_sync_to_async(function, thread_sensitive=db_connection.vendor != "postgresql")


def _heartbeat_interval() -> float:
    return float(getattr(settings, "DEVICE_HEARTBEAT_INTERVAL", 30))


# How often each process looks for queued commands of its own live devices that no push reached.
UNDELIVERED_SWEEP_SECONDS = 2.0
# After how many new connections (or ended frozen ones), looked for this often, a process freezes
# its long-lived objects again (DeviceHub._keep_full_collections_short).
FREEZE_AFTER_CONNECTIONS = 256
FREEZE_CHECK_SECONDS = 2.0
# Goodbyes, or deliveries, written in one statement at most.
WRITES_PER_STATEMENT = 2000
# How long a command sent with its push waits for its result before its delivery (and its
# acknowledgement, if one came) is stored on its own. Most commands (a ping) end within
# milliseconds: their delivery, acknowledgement and result are then one write instead of three.
SENT_HOLD_SECONDS = 0.1
# Seconds the hub waits before reading its channel again after the layer failed (Redis away).
LAYER_RETRY_SECONDS = 1.0


class CoalescedWrites:
    """Items written by one service in batches: the first at once, those that come while a write
    runs in the next one. A reconnect storm ends thousands of connections at once, and one write
    each queued the handshakes of the devices coming back behind them in the thread pool."""

    def __init__(self, write: Callable[[list[Any]], Any], *, per_write: int, what: str) -> None:
        self._write, self._per_write, self._what = write, per_write, what
        self._pending: list[tuple[Any, asyncio.Future[None] | None]] = []
        self._writer: asyncio.Task[None] | None = None

    async def write(self, item: Any) -> None:
        """Write `item` with the next batch; return once it is written."""
        written = asyncio.get_running_loop().create_future()
        self._add(item, written)
        await written

    def write_soon(self, item: Any) -> None:
        """Write `item` with the next batch without waiting; a failure is logged."""
        self._add(item, None)

    def _add(self, item: Any, written: asyncio.Future[None] | None) -> None:
        self._pending.append((item, written))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_pending())

    async def _write_pending(self) -> None:
        while self._pending:
            batch = self._pending[: self._per_write]
            del self._pending[: self._per_write]
            try:
                await _database(self._write)([item for item, _ in batch])
            except asyncio.CancelledError:  # the server stops
                for _, written in batch + self._pending:
                    if written is not None:
                        written.cancel()
                raise
            except Exception as error:  # the database is away: this batch fails
                logger.warning("Writing %d %s failed: %s", len(batch), self._what, error)
                for _, written in batch:
                    if written is not None and not written.done():
                        written.set_exception(error)
            else:
                for _, written in batch:
                    if written is not None and not written.done():
                        written.set_result(None)


class DeviceHub:
    """One process's device connections, its channel, and the tasks that serve them all."""

    def __init__(self, layer: Any, channel: str) -> None:
        self.layer, self.channel = layer, channel
        self.connections: dict[str, DeviceConnection] = {}
        self.opened = 0  # connections this process has opened (each one's number in its name)
        # Connections numbered up to frozen_through were frozen out of the cycle collector's reach;
        # frozen_ended counts those that have ended since (see _keep_full_collections_short).
        self.frozen_through = 0
        self.frozen_ended = 0
        self._tasks: list[asyncio.Task[None]] = []
        # Handlers of layer messages in flight; kept so that they are not collected while they run.
        self._handling: set[asyncio.Task[None]] = set()
        # Connections that ended: (device pk, tenant id, connection name), marked offline together.
        self.goodbyes = CoalescedWrites(
            lambda connections: services.devices_disconnected(connections=connections),
            per_write=WRITES_PER_STATEMENT,
            what="goodbyes",
        )
        # Commands sent with their push whose result did not come within SENT_HOLD_SECONDS.
        self.deliveries = CoalescedWrites(
            lambda sent: services.commands_mark_delivered(sent=sent),
            per_write=WRITES_PER_STATEMENT,
            what="deliveries",
        )

    def connection_name(self) -> str:
        self.opened += 1
        return f"{self.channel}{live.CONNECTION_SEPARATOR}{self.opened}"

    def connection_ended(self, name: str) -> None:
        self.connections.pop(name, None)
        if int(name.rsplit(live.CONNECTION_SEPARATOR, 1)[1]) <= self.frozen_through:
            self.frozen_ended += 1

    def ensure_running(self) -> None:
        """Start the process's tasks, or start again the ones that ended."""
        live.outbox.ensure_running()
        if self._tasks and not any(task.done() for task in self._tasks):
            return
        for task in self._tasks:
            task.cancel()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(coroutine)
            for coroutine in (
                self._read(),
                self._wake_reader_when_cancelled(),
                self._watch_heartbeats(),
                self._sweep_undelivered(),
                self._keep_full_collections_short(),
            )
        ]

    async def _read(self) -> None:
        while True:
            try:
                message = await self.layer.receive(self.channel)
            except Exception:  # Redis away: pushes are hints, the sweep delivers what they miss
                _end_if_cancelled()
                logger.warning("Reading the device channel %s failed; trying again", self.channel, exc_info=True)
                await asyncio.sleep(LAYER_RETRY_SECONDS)
                continue
            _end_if_cancelled()
            for name in message.get("connections", ()):
                connection = self.connections.get(name)
                if connection is not None:
                    task = asyncio.get_running_loop().create_task(connection.handle_event(message))
                    self._handling.add(task)
                    task.add_done_callback(self._handling.discard)

    async def _wake_reader_when_cancelled(self) -> None:
        """When the process stops, send the reader a message, so that its read returns and it sees
        that it was cancelled (see _end_if_cancelled)."""
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.layer.send(self.channel, {"type": "device.hub.stop"}), timeout=2)
            raise

    async def _watch_heartbeats(self) -> None:
        while True:
            interval = _heartbeat_interval()
            await asyncio.sleep(interval / 2)
            deadline = time.monotonic() - protocol.MISSED_HEARTBEATS * interval
            for connection in [c for c in self.connections.values() if c.last_message_at < deadline]:
                await connection.close(protocol.CLOSE_HEARTBEAT_TIMEOUT)

    async def _sweep_undelivered(self) -> None:
        """Deliver commands whose push was lost.

        A push through the channel layer is only a hint: Redis may be down, or the process's
        channel may be full. The command row is what counts, so each process checks, with one
        indexed query for all its live devices, whether any of them has a queued command that has
        waited more than a sweep.
        """
        while True:
            await asyncio.sleep(UNDELIVERED_SWEEP_SECONDS)
            if not self.connections:
                continue
            try:
                frames_by_name = await _database(services.commands_take_queued_of_worker)(
                    channel_prefix=self.channel + live.CONNECTION_SEPARATOR,
                    queued_before=timezone.now() - timedelta(seconds=UNDELIVERED_SWEEP_SECONDS),
                )
            except Exception:  # the database is away: the next sweep tries again
                logger.exception("Taking undelivered commands failed")
                continue
            for name, frames in frames_by_name.items():
                connection = self.connections.get(name)
                # Gone since: its commands are marked delivered, and go again when the device reconnects.
                if connection is not None and connection.authenticated:
                    await connection.send_frames(frames)

    async def _keep_full_collections_short(self) -> None:
        """Keep the cycle collector's full collections short however many devices the process holds.

        CPython 3.11 runs a full collection each time the objects that outlived two younger ones
        have grown by a quarter, and it walks every tracked object of the process, about 100 a
        connection: with 10,000 devices a worker stopped for 1.3-2.1 s each time, and a dozen
        such collections ran while its fleet connected (bench/README.md). So after every few
        hundred new connections the hub freezes what the process holds, as the start-up does
        (portal/asgi.py), after a young collection: later full collections walk only what came
        after. A connection that closes cleanly is freed by reference counting alone
        (tests/devices/test_device_socket.py), but a dropped one leaves reference cycles (its
        error and frames: about 110,000 objects a worker after 5,000 devices dropped at once),
        and frozen, they would never be collected. Once a few hundred frozen connections have
        ended, the hub unfreezes everything and runs one full collection, the one pause a mass
        disconnect costs anyway, before it freezes again.
        """
        while True:
            await asyncio.sleep(FREEZE_CHECK_SECONDS)
            if self.frozen_ended >= FREEZE_AFTER_CONNECTIONS:
                gc.unfreeze()
                gc.collect()
            elif self.opened - self.frozen_through >= FREEZE_AFTER_CONNECTIONS:
                gc.collect(1)
            else:
                continue
            gc.freeze()
            self.frozen_through, self.frozen_ended = self.opened, 0


def _end_if_cancelled() -> None:
    """Raise CancelledError if this task was cancelled.

    Seen with channels-redis 4.3 and redis-py 8.1: a reader cancelled while the layer waits in
    BZPOPMIN does not end; the cancellation is lost inside the client, which reads again (and the
    layer reads until a message comes), so the event loop of a stopping server or test never
    closed. The reader checks after every read, and a sibling task sends it a message when it is
    cancelled too (DeviceHub._wake_reader_when_cancelled)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


_hubs: dict[asyncio.AbstractEventLoop, DeviceHub] = {}


async def _hub() -> DeviceHub:
    """This event loop's hub (a server process has one loop; tests start a loop per test)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        for old_loop in [old for old in _hubs if old.is_closed()]:
            del _hubs[old_loop]
        hub = _hubs.setdefault(loop, DeviceHub(layer, channel))
    hub.ensure_running()
    return hub


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


class AdmissionPacer:
    """When a device turned away in a reconnect storm should come back (the reason of its 4013).

    Each device turned away gets the next slot of a virtual queue that drains at the rate this
    process completes handshakes, so the storm's devices come back spread over the time the
    process needs for them. Left to their own backoff they guessed: the workers sat idle for
    40-50 % of a storm while devices waited out delays that had grown with each refusal.
    The rate is never taken below ASSUMED_RATE (a process that has just started has measured
    nothing): too short a delay costs one more refusal, too long an idle worker.
    """

    WINDOW_SECONDS = 2.0
    ASSUMED_RATE = 100.0  # handshakes a second
    MIN_DELAY_SECONDS = 1.0

    def __init__(self) -> None:
        self._completed: collections.deque[float] = collections.deque()
        self._next_slot = 0.0

    def handshake_done(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._completed.append(now)
        self._forget_before(now - self.WINDOW_SECONDS)  # bounded, refusals or none

    def rate(self, now: float) -> float:
        self._forget_before(now - self.WINDOW_SECONDS)
        return max(self.ASSUMED_RATE, len(self._completed) / self.WINDOW_SECONDS)

    def _forget_before(self, moment: float) -> None:
        while self._completed and self._completed[0] < moment:
            self._completed.popleft()

    def retry_after(self, now: float | None = None) -> float:
        """Seconds until the next free slot, which this call takes."""
        now = time.monotonic() if now is None else now
        self._next_slot = max(self._next_slot, now + self.MIN_DELAY_SECONDS) + 1.0 / self.rate(now)
        return self._next_slot - now


admission = AdmissionPacer()


def _hello_and_take_commands(*, device_pk: int, hello: dict[str, Any]) -> list[dict[str, Any]]:
    """Store the hello and take the commands that waited for the device: one trip to the thread pool."""
    if not services.device_hello(device_pk=device_pk, hello=hello):
        return []
    return services.commands_take_for_delivery(device_pk=device_pk, reconnected=True)


class DeviceConnection:
    """One device's websocket. Frames are handled one at a time, in order, and so are the layer's
    messages for it (the lock): a device's answers come in the order of its frames."""

    # Set once the token is checked; False again when a newer connection replaces this one.
    authenticated = False
    closed = False
    device_pk = 0
    tenant_id = 0
    device_id = ""
    name = ""
    # Set once past the handshake limit: the hub that knows this connection.
    hub: DeviceHub | None = None

    def __init__(self, scope: dict[str, Any], send: Send) -> None:
        self.scope, self._send_message = scope, send
        self.lock = asyncio.Lock()
        self.last_message_at = time.monotonic()
        # Commands sent with their push whose delivery is not stored yet, by command id.
        self.sent: dict[str, services.SentCommand] = {}

    async def run(self, receive: Receive) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        try:
            async with self.lock:  # a message for this connection waits until it is connected
                await self._connect()
            while True:
                message = await receive()
                if message["type"] == "websocket.receive":
                    async with self.lock:
                        await self._receive(message.get("text"), message.get("bytes"))
                elif message["type"] == "websocket.disconnect":
                    return
        finally:
            await self._disconnected()

    async def _connect(self) -> None:
        global _handshakes_in_progress
        offered = self.scope.get("subprotocols", [])
        self.subprotocol = protocol.SUBPROTOCOL if protocol.SUBPROTOCOL in offered else None
        if _handshakes_in_progress >= MAX_HANDSHAKES_IN_PROGRESS:
            # A reconnect storm: turn the device away at once, so that it backs off and comes back,
            # rather than queueing its handshake behind thousands whose devices time out meanwhile
            # (measured: without this limit 10,000 reconnecting devices never got back).
            await self._refuse(protocol.CLOSE_TRY_AGAIN_LATER, protocol.busy_reason(admission.retry_after()))
            return
        self.hub = hub = await _hub()
        self.name = hub.connection_name()
        # Known to the hub before the database names it: a message for it is never missed.
        hub.connections[self.name] = self
        client = self.scope.get("client") or (None, None)
        ip_address = client_ip(client[0], _header(self.scope, b"x-forwarded-for") or None)
        _handshakes_in_progress += 1
        try:
            connected = await _database(services.device_connect)(
                token=_token_from(self.scope),
                channel_name=self.name,
                ip_address=ip_address,
                attempt=_header(self.scope, b"device-connection"),
            )
        finally:
            _handshakes_in_progress -= 1
            admission.handshake_done()
        if connected is None:
            await self._refuse(protocol.CLOSE_UNAUTHENTICATED)
            return
        if connected.superseded:
            # A later attempt of this device is live: this earlier one, served late, is the one replaced.
            await self._refuse(protocol.CLOSE_REPLACED)
            return
        self.device_pk, self.tenant_id, self.device_id = connected.device_pk, connected.tenant_id, connected.device_id
        self.authenticated = True
        buffer.forget(self.device_pk)  # the first status of a new connection is always written
        if connected.replaced_channel:
            live.send_to_device_channel(connected.replaced_channel, {"type": "device.replaced"})
        self.limiter = protocol.RateLimiter()
        self.bad_messages = 0
        self.last_message_at = time.monotonic()
        await self._send_message({"type": "websocket.accept", "subprotocol": self.subprotocol})

    async def _refuse(self, code: int, reason: str = "") -> None:
        # Accept first: a close code can only be sent on an open websocket.
        await self._send_message({"type": "websocket.accept", "subprotocol": self.subprotocol})
        await self.close(code, reason)

    async def close(self, code: int, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            await self._send_message({"type": "websocket.close", "code": code, "reason": reason})

    async def _disconnected(self) -> None:
        hub = self.hub
        if hub is None:
            return
        hub.connection_ended(self.name)
        for command_id in list(self.sent):
            self._store_sent(command_id)
        if self.authenticated:
            self.authenticated = False
            await hub.goodbyes.write((self.device_pk, self.tenant_id, self.name))

    # --- Frames from the device -------------------------------------------------------------

    async def _receive(self, text: str | None, data: bytes | None) -> None:
        if not self.authenticated or self.closed:
            return
        # Four bytes a character at most: only a long frame needs encoding to be measured.
        if text is not None and len(text) * 4 > protocol.MAX_FRAME_BYTES:
            size = len(text.encode())
        else:
            size = len(text) if text is not None else len(data or b"")
        if size > protocol.MAX_FRAME_BYTES:
            await self.close(protocol.CLOSE_FRAME_TOO_LARGE)
            return
        self.last_message_at = time.monotonic()
        if not self.limiter.allow():
            if self.limiter.exhausted:
                await self.close(protocol.CLOSE_RATE_LIMITED)
            else:
                await self._error("rate_limited", "Too many messages; this one was dropped.")
            return
        try:
            message = protocol.parse(text)
            await self._handlers[message["type"]](self, message)
        except protocol.ProtocolError as error:
            self.bad_messages += 1
            if self.bad_messages > protocol.MAX_BAD_MESSAGES:
                await self.close(protocol.CLOSE_PROTOCOL_ERROR)
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
        sent = self.sent.get(message["command_id"])
        if sent is not None:  # stored with its result, or when its hold ends
            sent.acknowledged_at = sent.acknowledged_at or timezone.now()
            return
        await self._advance(message, "acknowledged")

    async def _on_command_result(self, message: dict[str, Any]) -> None:
        await self._advance(
            message,
            message["status"],
            result=message.get("result"),
            error=message.get("error", ""),
            sent=self.sent.pop(message["command_id"], None),
        )

    async def _advance(self, message: dict[str, Any], status: str, **extra: Any) -> None:
        command = await _database(services.command_advance)(
            device_pk=self.device_pk, command_id=message["command_id"], status=status, **extra
        )
        if command is None:
            raise protocol.ProtocolError("unknown_command", "No such command for this device.", message["type"])

    def _hold_sent(self, frames: list[dict[str, Any]], command_pks: list[int]) -> None:
        now = timezone.now()
        loop = asyncio.get_running_loop()
        for frame, command_pk in zip(frames, command_pks, strict=True):
            self.sent[frame["command_id"]] = services.SentCommand(pk=command_pk, delivered_at=now)
            loop.call_later(SENT_HOLD_SECONDS, self._store_sent, frame["command_id"])

    def _store_sent(self, command_id: str) -> None:
        """Store a sent command's delivery (and acknowledgement) unless its result stored them."""
        sent = self.sent.pop(command_id, None)
        if sent is not None and self.hub is not None:
            self.hub.deliveries.write_soon(sent)

    async def _on_job_started(self, message: dict[str, Any]) -> None:
        sent = self.sent.pop(message.get("command_id") or "", None)
        if sent is not None:  # its delivery first, or the job's start would move the command past it
            await _database(services.commands_mark_delivered)(sent=[sent])
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

    _handlers: dict[str, Callable[[DeviceConnection, dict[str, Any]], Awaitable[None]]] = {
        "hello": _on_hello,
        "status": _on_status,
        "heartbeat": _on_heartbeat,
        "command_ack": _on_command_ack,
        "command_result": _on_command_result,
        "job_started": _on_job_started,
        "job_progress": _on_job_progress,
        "job_finished": _on_job_finished,
    }

    # --- Messages from the channel layer (DeviceHub) ----------------------------------------

    async def handle_event(self, event: dict[str, Any]) -> None:
        async with self.lock:
            if self.closed:
                return
            if event["type"] == "device.commands":
                if not self.authenticated:
                    return
                if "frames" in event:  # a command's own push (command_issue): no database before the frame
                    if event["device"] == self.device_pk:
                        await self.send_frames(event["frames"])
                        self._hold_sent(event["frames"], event["delivering"])
                else:
                    take = _database(services.commands_take_for_delivery)
                    await self.send_frames(await take(device_pk=self.device_pk))
            elif event["type"] == "device.replaced":
                self.authenticated = False  # the newer connection owns the device's state now
                await self.close(protocol.CLOSE_REPLACED)
            elif event["type"] == "device.revoked":
                await self.close(protocol.CLOSE_REVOKED)

    # --- Helpers ----------------------------------------------------------------------------

    async def send_frames(self, frames: list[dict[str, Any]]) -> None:
        for frame in frames:
            await self._send_message({"type": "websocket.send", "text": json.dumps(frame)})

    async def _send(self, frame: dict[str, Any]) -> None:
        await self._send_message({"type": "websocket.send", "text": json.dumps({"v": protocol.VERSION, **frame})})

    async def _error(self, code: str, message: str, in_reply_to: str | None = None) -> None:
        frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if in_reply_to:
            frame["in_reply_to"] = in_reply_to
        await self._send(frame)


async def device_socket(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The ASGI application of `/ws/device/`."""
    await DeviceConnection(scope, send).run(receive)
