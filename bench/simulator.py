"""Fleet simulator: many bench devices speaking the real device protocol from one asyncio process.

    python bench/simulator.py --ports 8000 --devices 1000 --duration 120

Each device connects to `ws://127.0.0.1:<port>/ws/device/` with `Authorization: Device <token>`
(tokens recomputed from the device index, see bench/seed.py), no per-message deflate, sends
`hello`, then `status` once welcomed, then a heartbeat every --heartbeat seconds (devices are
spread evenly over the interval). It answers commands as the reference agent does: `command_ack`,
then `command_result` succeeded; `run_backup` first sends `job_started`, `job_progress` and
`job_finished`. Failed connections are retried with the agent's full-jitter exponential backoff;
new connections are started at most --connect-rate per second.

Low memory per device: no task per device. Each connection is an asyncio.Protocol driving the
`websockets` library's sans-I/O client (websockets.client.ClientProtocol); one task sends every
heartbeat, one starts connections, one samples ping round trips.

More than ~19,900 sockets need more than one process: run shards with --shard i/n (device indices
i, i+n, i+2n, ...), each with its own open-file limit.

With --control, commands are read from stdin, one per line, and events are written to stdout as
JSON lines (this is how bench/capacity.py and the other scenarios drive it):

    target N            connect (or close) devices until N of this shard's devices are ready
    stats [reset]       print counters; `reset` starts new ping/latency samples
    storm               drop every connection at once; devices reconnect with their backoff
    watch [S]           the same figures when something else cuts the connections (a server
                        restart); with S, watch S seconds, in which any number may be cut (a Redis
                        restart): a device never cut counts as back at once
    ingest R S          every ready device sends R messages/s (status and heartbeat in turn) for S
                        seconds, then an unknown message whose `error` answer proves the server
                        consumed the rest
    stop                close everything and exit

Everything stops by itself after --duration seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import struct
import sys
import time
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import common  # puts the repository on sys.path
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from devices import protocol  # the portal's own close codes and reasons

HEARTBEAT = b'{"v":1,"type":"heartbeat"}'
# An unknown type: the portal answers it with an `error` frame at once, without touching the
# database, after every earlier message of the connection (a consumer handles them in order).
DRAIN = b'{"v":1,"type":"bench_drain"}'
COMMAND_TTL = timedelta(hours=24)  # the portal's devices.services.COMMAND_TTL: expires_at - TTL = issued
BACKOFF_BASE, BACKOFF_CAP, BACKOFF_RESET_AFTER = 1.0, 60.0, 60.0  # as devices/agent/pacing.py
STOP_CODES = {4001, 4002, 4003}  # the agent does not reconnect after these

# Device states
IDLE, CONNECTING, OPEN, READY, CLOSING = range(5)


def _hello(index: int) -> bytes:
    from seed import OSES, VERSIONS, device_name

    return json.dumps(
        {
            "v": 1,
            "type": "hello",
            "name": device_name(index),
            "os": OSES[index % len(OSES)],
            "arch": "x86_64",
            "client_version": VERSIONS[(index // 3) % len(VERSIONS)],
            "timezone": "UTC",
            "consents": {"allow_browse": False},
        },
        separators=(",", ":"),
    ).encode()


class Device(asyncio.Protocol):
    """One simulated device; also the asyncio protocol of its current connection."""

    __slots__ = (
        "fleet",
        "index",
        "token",
        "port",
        "slot",
        "state",
        "wanted",
        "stopped",
        "proto",
        "transport",
        "attempt",
        "attempt_started",
        "opened_at",
        "timer",
        "paused",
        "executed",
        "seq",
        "ping_sent",
        "drain_pending",
        "counted",
        "in_pending",
        "attempts",
    )

    def __init__(self, fleet: Fleet, index: int, port: int, slot: int) -> None:
        self.fleet, self.index, self.port, self.slot = fleet, index, port, slot
        self.token = common.device_token(index, fleet.secret)
        self.state = IDLE
        self.wanted = self.stopped = self.paused = self.drain_pending = False
        self.counted = self.in_pending = False
        self.proto: ClientProtocol | None = None
        self.transport: asyncio.Transport | None = None
        self.attempt = 0
        self.attempts = 0  # connection attempts ever, for the Device-Connection header
        self.attempt_started = self.opened_at = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.executed: set[str] | None = None
        self.seq = 0
        self.ping_sent = 0.0

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        proto = ClientProtocol(self.fleet.uris[self.port])
        request = proto.connect()
        request.headers["Authorization"] = f"Device {self.token}"
        self.attempts += 1
        request.headers["Device-Connection"] = f"{self.fleet.run_id}.{self.attempts}"
        proto.send_request(request)
        self.proto = proto
        self.flush()

    def data_received(self, data: bytes) -> None:
        proto = self.proto
        if proto is None:
            return
        proto.receive_data(data)
        for event in proto.events_received():
            if isinstance(event, Response):
                self.on_handshake(event)
            elif event.opcode is Opcode.TEXT:
                self.on_text(event.data)
            elif event.opcode is Opcode.PONG:
                self.on_pong(event.data)
        self.flush()

    def eof_received(self) -> bool:
        if self.proto is not None:
            self.proto.receive_eof()
            self.flush()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.fleet.on_lost(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    # --- Protocol events -------------------------------------------------------------------

    def flush(self) -> None:
        transport, proto = self.transport, self.proto
        if transport is None or proto is None:
            return
        for chunk in proto.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()

    def send(self, payload: bytes, kind: str) -> None:
        # The protocol may be closing already while our state says open: the server's close frame
        # (4013, busy) can arrive in the same read as its handshake response.
        if self.proto is None or self.state not in (OPEN, READY) or self.proto.state is not State.OPEN:
            return
        self.proto.send_text(payload)
        self.flush()
        self.fleet.sent[kind] += 1

    def send_json(self, message: dict[str, Any]) -> None:
        self.send(json.dumps(message, separators=(",", ":")).encode(), message["type"])

    def on_handshake(self, response: Response) -> None:
        fleet = self.fleet
        if self.proto is None or self.proto.handshake_exc is not None:
            fleet.stats["handshake_refused"] += 1
            fleet.stats[f"http_{response.status_code}"] += 1
            if self.transport is not None:
                self.transport.abort()
            return
        self.state = OPEN
        self.opened_at = time.monotonic()
        fleet.handshake_times.append(self.opened_at - self.attempt_started)
        self.send(fleet.hellos.get(self.index) or _hello(self.index), "hello")

    def on_text(self, data: bytes) -> None:
        fleet = self.fleet
        try:
            message = json.loads(data)
            kind = message["type"]
        except (ValueError, KeyError, TypeError):
            fleet.stats["bad_frames"] += 1
            return
        fleet.received[kind] += 1
        if kind == "welcome":
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if self.drain_pending:
                self.drain_pending = False
                fleet.on_drained(self)
            if self.state == OPEN:
                self.state = READY
                fleet.on_ready(self)
                self.send_status()
        elif kind == "command":
            self.on_command(message)
        elif kind == "error":
            if self.drain_pending and message.get("code") == "unknown_type":
                self.drain_pending = False
                fleet.on_drained(self)
                return
            fleet.errors[message.get("code", "?")] += 1

    def on_pong(self, data: bytes) -> None:
        if len(data) == 8 and self.ping_sent:
            sent = struct.unpack("!d", data)[0]
            self.fleet.ping_rtts.append(time.monotonic() - sent)
            self.ping_sent = 0.0

    def send_status(self) -> None:
        from seed import status_message

        self.send_json(status_message(self.index, self.seq))

    # --- Commands, as the reference agent answers them -----------------------------------------

    def on_command(self, message: dict[str, Any]) -> None:
        fleet = self.fleet
        command_id, kind = message.get("command_id", ""), message.get("kind", "")
        fleet.commands[kind] += 1
        try:
            issued = datetime.fromisoformat(message["expires_at"]) - COMMAND_TTL
            fleet.command_latencies.append(time.time() - issued.timestamp())
        except (KeyError, ValueError, TypeError):
            pass
        if self.executed is None:
            self.executed = set()
        if command_id in self.executed:  # delivered again: acknowledge again, never run twice
            fleet.stats["redelivered"] += 1
            self.send_json({"v": 1, "type": "command_ack", "command_id": command_id})
            result = fleet.results.get(command_id)
            if result is not None:  # the first result may have been lost with its connection
                self.send_json(result)
            return
        self.executed.add(command_id)
        fleet.stats["executed"] += 1
        if fleet.command_delay:
            asyncio.get_running_loop().call_later(fleet.command_delay, self.execute, command_id, kind, message)
        else:
            self.execute(command_id, kind, message)

    def execute(self, command_id: str, kind: str, message: dict[str, Any]) -> None:
        self.send_json({"v": 1, "type": "command_ack", "command_id": command_id})
        parameters = message.get("parameters") or {}
        result: dict[str, Any] = {}
        if kind == "ping":
            result = {"pong": datetime.now().astimezone().isoformat()}
        elif kind == "run_backup":
            job_id = str(uuid.uuid4())
            item, vault = parameters.get("protected_item_id", "item-0"), parameters.get("vault_id", "vault-1")
            counters = {"files_done": 100, "files_total": 100, "bytes_read": 10**7, "bytes_uploaded": 10**6}
            self.send_json(
                {
                    "v": 1,
                    "type": "job_started",
                    "job_id": job_id,
                    "kind": "backup",
                    "command_id": command_id,
                    "protected_item_id": item,
                    "vault_id": vault,
                    "files_total": 100,
                }
            )
            self.send_json({"v": 1, "type": "job_progress", "job_id": job_id, "percent": 50, **counters})
            self.send_json(
                {
                    "v": 1,
                    "type": "job_finished",
                    "job_id": job_id,
                    "status": "succeeded",
                    **counters,
                    "log_lines": [{"time": datetime.now().astimezone().isoformat(), "level": "info", "message": "ok"}],
                }
            )
            result = {"job_id": job_id}
        elif kind == "update_software":
            result = {"current_version": "26.11.0", "update_available": False}
        elif kind == "collect_logs":
            result = {"lines": ["bench device log line"]}
        elif kind == "browse_files":
            result = {"entries": []}
        elif kind == "refresh_profile":
            self.send_status()
        frame = {"v": 1, "type": "command_result", "command_id": command_id, "status": "succeeded", "result": result}
        if len(self.fleet.results) < 100_000:
            self.fleet.results[command_id] = frame
        self.send_json(frame)
        if kind in ("drop_connection", "uninstall"):
            self.close(1000)
            if kind == "uninstall":
                self.stopped = True

    # --- Closing ----------------------------------------------------------------------------

    def close(self, code: int = 1000) -> None:
        if self.proto is not None and self.state in (OPEN, READY):
            self.state = CLOSING
            self.proto.send_close(code)
            self.flush()
            self.arm_timer(5.0)
        elif self.transport is not None:
            self.transport.abort()

    def arm_timer(self, seconds: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(seconds, self.on_timeout)

    def on_timeout(self) -> None:
        self.timer = None
        if self.state in (CONNECTING, OPEN):
            self.fleet.stats["open_timeout"] += 1
        if self.transport is not None:
            self.transport.abort()


class Fleet:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = os.urandom(8).hex()
        self.secret = args.secret
        self.heartbeat = float(args.heartbeat)
        self.command_delay = args.command_delay
        self.open_timeout = args.open_timeout
        self.ports = [int(port) for port in str(args.ports).split(",")]
        self.uris = {port: parse_uri(f"ws://{args.host}:{port}{args.path}") for port in self.ports}
        shard, shards = (int(part) for part in args.shard.split("/"))
        indices = list(common.devices_of_shard(args.devices, shard, shards, args.first))
        self.tick = 0.1
        self.slots: list[list[Device]] = [[] for _ in range(max(1, round(self.heartbeat / self.tick)))]
        self.devices: list[Device] = []
        for position, index in enumerate(indices):
            port = self.ports[(index // shards) % len(self.ports)]
            # Golden-ratio spacing: the first k devices, for any k, are spread evenly over the interval.
            slot = int((position * 0.6180339887498949) % 1.0 * len(self.slots))
            device = Device(self, index, port, slot)
            self.devices.append(device)
            self.slots[device.slot].append(device)
        # hello frames are built lazily (cheap) but cached for the steady state
        self.hellos: dict[int, bytes] = {}
        self.rng = random.Random(args.seed + shard)
        self.stats: Counter[str] = Counter()
        # The result frame of each command run, to send again if the command is delivered again.
        self.results: dict[str, dict[str, Any]] = {}
        self.sent: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.commands: Counter[str] = Counter()
        self.closes: Counter[str] = Counter()
        self.ping_rtts: list[float] = []
        self.handshake_times: list[float] = []
        self.ready_times: list[float] = []
        self.command_latencies: list[float] = []
        self.ready = 0
        self.pending = 0
        self.target = 0
        self.queue: list[tuple[float, int, Device]] = []
        self.queue_seq = 0
        self.wake = asyncio.Event()
        self.done = asyncio.Event()
        self.started = time.monotonic()
        self.reached_reported = True
        self.storm: dict[str, Any] | None = None
        self.drain: dict[str, Any] | None = None
        self.window_task: asyncio.Task[None] | None = None
        self.stopping = False

    # --- Output -----------------------------------------------------------------------------

    def emit(self, event: str, **fields: Any) -> None:
        line = {"event": event, "t": round(time.monotonic() - self.started, 3), "shard": self.args.shard, **fields}
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()

    def snapshot(self, reset: bool = False) -> dict[str, Any]:
        figures = {
            "devices": len(self.devices),
            "target": self.target,
            "ready": self.ready,
            "pending": self.pending,
            "open_files": common.proc_open_files(os.getpid()),
            "rss_kib": common.proc_rss_kib(os.getpid()),
            "sent": dict(self.sent),
            "received": dict(self.received),
            "errors": dict(self.errors),
            "commands": dict(self.commands),
            "closes": dict(self.closes),
            "stats": dict(self.stats),
            "ping_rtt": common.summary_ms(self.ping_rtts),
            "handshake": common.summary_ms(self.handshake_times),
            "connect_to_welcome": common.summary_ms(self.ready_times),
            "command_push_latency": common.summary_ms(self.command_latencies),
        }
        if reset:
            self.ping_rtts, self.handshake_times, self.ready_times, self.command_latencies = [], [], [], []
        return figures

    # --- Connecting -------------------------------------------------------------------------

    def schedule(self, device: Device, delay: float) -> None:
        import heapq

        self.queue_seq += 1
        heapq.heappush(self.queue, (time.monotonic() + delay, self.queue_seq, device))
        self.wake.set()

    def backoff_delay(self, device: Device) -> float:
        delay = self.rng.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(device.attempt, 32)))
        device.attempt += 1
        return delay

    async def connector(self) -> None:
        import heapq

        loop = asyncio.get_running_loop()
        tokens, updated = 1.0, time.monotonic()
        while not self.stopping:
            rate = float(self.args.connect_rate)
            if not self.queue:
                self.wake.clear()
                await self.wake.wait()
                continue
            now = time.monotonic()
            when = self.queue[0][0]
            if when > now:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), when - now)
                continue
            tokens = min(max(1.0, rate / 20), tokens + (now - updated) * rate)
            updated = now
            if tokens < 1 or self.pending >= self.args.max_pending:
                await asyncio.sleep(max(0.001, (1 - tokens) / rate) if tokens < 1 else 0.01)
                continue
            tokens -= 1
            _, _, device = heapq.heappop(self.queue)
            if not device.wanted or device.stopped or device.state != IDLE or self.stopping:
                continue
            device.state = CONNECTING
            device.attempt_started = time.monotonic()
            device.in_pending = True
            self.pending += 1
            loop.create_task(self.open(device))

    async def open(self, device: Device) -> None:
        loop = asyncio.get_running_loop()
        self.stats["connect_started"] += 1
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: device, self.args.host, device.port), self.open_timeout
            )
        except (OSError, TimeoutError) as error:
            if device.in_pending:
                device.in_pending = False
                self.pending -= 1
            self.stats["connect_error"] += 1
            self.stats[f"connect_error_{type(error).__name__}"] += 1
            device.state = IDLE
            device.transport = device.proto = None
            if device.wanted and not self.stopping:
                self.schedule(device, self.backoff_delay(device))
            return
        # The rest of the open timeout covers the HTTP upgrade and the welcome.
        device.arm_timer(max(0.1, self.open_timeout - (time.monotonic() - device.attempt_started)))

    def on_ready(self, device: Device) -> None:
        if device.in_pending:
            device.in_pending = False
            self.pending -= 1
        device.counted = True
        self.ready += 1
        storm = self.storm
        if storm is not None and device.index in storm["members"]:
            storm["reconnected"] += 1
            storm["up"] += 1
            storm["back_at"][device.index] = time.monotonic() - storm["started"]
        self.ready_times.append(time.monotonic() - device.attempt_started)
        self.check_progress()

    def on_lost(self, device: Device) -> None:
        proto = device.proto
        code = proto.close_code if proto is not None else None
        if device.in_pending:
            device.in_pending = False
            self.pending -= 1
            self.stats["failed_before_welcome"] += 1
        if device.counted:
            device.counted = False
            self.ready -= 1
            storm = self.storm
            if storm is not None and device.index in storm["members"]:
                storm["up"] -= 1
                storm["dropped"].add(device.index)
        self.closes[str(code if code is not None else 1006)] += 1
        if device.timer is not None:
            device.timer.cancel()
            device.timer = None
        lasted = time.monotonic() - device.opened_at if device.opened_at else 0.0
        device.state, device.proto, device.transport, device.paused = IDLE, None, None, False
        device.opened_at = 0.0
        if device.drain_pending:
            device.drain_pending = False
            if self.drain is not None:
                self.drain["lost"] += 1
            self.on_drained(device)
        if lasted >= BACKOFF_RESET_AFTER:
            device.attempt = 0
        if code in STOP_CODES:
            device.stopped = True
            self.stats[f"stopped_{code}"] += 1
        if device.wanted and not device.stopped and not self.stopping:
            # As the agent: a busy portal's 4013 says when to come back, and that is no failure.
            retry_after = None
            if code == protocol.CLOSE_TRY_AGAIN_LATER and proto is not None:
                retry_after = protocol.retry_after_of(proto.close_reason or "")
            if retry_after is not None:
                self.stats["told_retry_after"] += 1
                self.schedule(device, retry_after + self.rng.uniform(0, 0.5))
            else:
                self.schedule(device, self.backoff_delay(device))
        self.check_progress()

    def set_target(self, target: int) -> None:
        target = max(0, min(target, len(self.devices)))
        self.target = target
        for position, device in enumerate(self.devices):
            if position < target and not device.wanted:
                device.wanted = True
                device.attempt = 0
                if device.state == IDLE:
                    self.schedule(device, 0.0)
            elif position >= target and device.wanted:
                device.wanted = False
                device.close(1000)
        self.reached_reported = False
        self.reached_started = time.monotonic()
        self.check_progress()

    def check_progress(self) -> None:
        wanted = sum(1 for device in self.devices[: self.target] if not device.stopped)
        if not self.reached_reported and self.ready >= wanted:
            self.reached_reported = True
            self.emit(
                "reached",
                target=self.target,
                ready=self.ready,
                stopped=sum(1 for device in self.devices if device.stopped),
                seconds=round(time.monotonic() - self.reached_started, 2),
            )
        storm = self.storm
        if storm is not None:
            members = len(storm["members"])
            elapsed = time.monotonic() - storm["started"]
            if storm["window"]:
                # Something else may cut the devices, or not: done once the window is over and
                # every device is up, whether it was cut or not.
                finished = elapsed >= storm["window"] and storm["up"] >= members
            else:
                finished = len(storm["dropped"]) >= members and storm["up"] >= members
            if finished:
                self.storm = None
                # A device that was never cut counts as back at once.
                back_at, dropped = storm["back_at"], storm["dropped"]
                back = sorted(back_at[index] if index in dropped else 0.0 for index in storm["members"])
                figures: dict[str, Any] = {
                    "devices": members,
                    "dropped": len(storm["dropped"]),
                    "reconnected": storm["reconnected"],
                    "mode": storm["mode"],
                    "stats": dict(self.stats - storm["stats_before"]),
                }
                for mark in (0.5, 0.9, 0.99, 1.0):
                    at = back[max(0, math.ceil(mark * members) - 1)] if back else 0.0
                    figures[f"t{int(mark * 100)}_s"] = round(at, 2)
                self.emit("storm_done", **figures)

    # --- Storm ------------------------------------------------------------------------------

    def start_storm(self, drop: bool = True, window: float = 0.0) -> None:
        """Track how fast the ready devices come back; with `drop`, cut every connection first.

        Without `drop` (`watch`), something else cuts them: a server restart, say, which cuts every
        one. With a `window` (seconds), something may cut only some, or none (a Redis restart):
        the storm is over once the window has passed and every device is up.
        """
        live = [device for device in self.devices if device.state == READY]
        self.storm = {
            "members": {device.index for device in live},
            "up": len(live),
            "dropped": set(),
            "back_at": {},
            "reconnected": 0,
            "window": window,
            "started": time.monotonic(),
            "stats_before": Counter(self.stats),
            "mode": "drop" if drop else "watch",
        }
        if window:
            # Checked again every half second from the end of the window: a fleet nobody cut sends
            # no event that would check it, and uvloop's timers (milliseconds) may fire a hair
            # before the window is over (a CI smoke run waited for ever).
            self.window_task = asyncio.get_running_loop().create_task(self._end_window(self.storm, window))
        if drop:
            for device in live:
                if device.transport is not None:
                    device.transport.abort()  # connection_lost follows on the next loop iteration
        self.emit("storm_started", devices=len(live), mode=self.storm["mode"])

    async def _end_window(self, storm: dict[str, Any], window: float) -> None:
        await asyncio.sleep(window)
        while self.storm is storm:
            self.check_progress()
            await asyncio.sleep(0.5)

    # --- Heartbeats, pings, ingest ------------------------------------------------------------

    async def heartbeats(self) -> None:
        slot = 0
        next_tick = time.monotonic()
        while not self.stopping:
            for device in self.slots[slot]:
                if device.state == READY and not device.paused:
                    device.send(HEARTBEAT, "heartbeat")
            slot = (slot + 1) % len(self.slots)
            next_tick += self.tick
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))

    async def pings(self) -> None:
        while not self.stopping:
            await asyncio.sleep(1.0 / max(1, self.args.ping_samples))
            ready = [device for device in self.rng.sample(self.devices, min(20, len(self.devices)))]
            for device in ready:
                if device.state == READY and device.proto is not None and not device.ping_sent:
                    device.ping_sent = time.monotonic()
                    device.proto.send_ping(struct.pack("!d", device.ping_sent))
                    device.flush()
                    break

    async def ingest(self, rate: float, seconds: float) -> None:
        devices = [device for device in self.devices if device.state == READY]
        sent_before = Counter(self.sent)
        errors_before = Counter(self.errors)
        closes_before = Counter(self.closes)
        blocked = 0
        started = time.monotonic()
        credit = 0.0
        last = started
        tick = 0.05
        while time.monotonic() - started < seconds and not self.stopping:
            await asyncio.sleep(tick)
            now = time.monotonic()
            credit += (now - last) * rate
            last = now
            count, credit = int(credit), credit - int(credit)
            for _ in range(count):
                for device in devices:
                    if device.state != READY:
                        continue
                    if device.paused:
                        blocked += 1
                        continue
                    device.seq += 1
                    if device.seq % 2:
                        device.send_status()
                    else:
                        device.send(HEARTBEAT, "heartbeat")
        send_seconds = time.monotonic() - started
        # Messages of one connection are handled in order: the answer to a last, unknown message
        # proves the consumer has taken every message before it.
        self.drain = {"waiting": 0, "lost": 0, "started": started, "event": asyncio.Event()}
        for device in devices:
            if device.state == READY:
                device.drain_pending = True
                self.drain["waiting"] += 1
                device.send(DRAIN, "drain")
        if self.drain["waiting"]:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drain["event"].wait(), 120)
        drained_seconds = time.monotonic() - started
        sent = self.sent - sent_before
        rejected = self.errors - errors_before
        self.emit(
            "ingest_done",
            devices=len(devices),
            rate_per_device=rate,
            send_seconds=round(send_seconds, 3),
            drained_seconds=round(drained_seconds, 3),
            not_drained=self.drain["waiting"],
            lost_while_draining=self.drain["lost"],
            closes=dict(self.closes - closes_before),
            still_ready=sum(1 for device in devices if device.state == READY),
            sent=dict(sent),
            errors=dict(rejected),
            blocked=blocked,
            last_seq={str(device.index): device.seq for device in devices},
        )
        self.drain = None

    def on_drained(self, device: Device) -> None:
        if self.drain is not None:
            self.drain["waiting"] -= 1
            if self.drain["waiting"] <= 0:
                self.drain["event"].set()

    # --- Control ----------------------------------------------------------------------------

    async def control(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while not self.stopping:
            line = await reader.readline()
            if not line:
                break
            words = line.decode().split()
            if not words:
                continue
            command = words[0]
            if command == "target":
                self.set_target(int(words[1]))
            elif command == "stats":
                self.emit("stats", **self.snapshot(reset="reset" in words))
            elif command == "storm":
                self.start_storm()
            elif command == "watch":
                self.start_storm(drop=False, window=float(words[1]) if len(words) > 1 else 0.0)
            elif command == "storm_report":
                storm = self.storm or {}
                self.emit(
                    "storm_progress",
                    devices=len(storm.get("members", ())),
                    dropped=len(storm.get("dropped", ())),
                    reconnected=storm.get("reconnected"),
                    ready=self.ready,
                    pending=self.pending,
                    stats=dict(self.stats),
                )
            elif command == "pending":
                self.args.max_pending = int(words[1])
            elif command == "rate":
                self.args.connect_rate = float(words[1])
            elif command == "ingest":
                loop.create_task(self.ingest(float(words[1]), float(words[2])))
            elif command == "stop":
                break
            else:
                self.emit("unknown_command", line=line.decode().strip())
        self.done.set()

    async def standalone(self) -> None:
        self.set_target(len(self.devices))
        while not self.reached_reported:
            await asyncio.sleep(0.2)
        if self.args.storm_after is not None:
            await asyncio.sleep(self.args.storm_after)
            self.start_storm()
        if self.args.ingest_rate:
            await self.ingest(self.args.ingest_rate, self.args.ingest_seconds)
        if self.args.hold:
            await asyncio.sleep(self.args.hold)
        self.done.set()

    async def reporter(self) -> None:
        while not self.stopping:
            await asyncio.sleep(self.args.report_every)
            common.log(
                f"shard {self.args.shard}: ready {self.ready}/{self.target} pending {self.pending} "
                f"sent {sum(self.sent.values())} errors {dict(self.errors)} closes {dict(self.closes)}"
            )

    async def shutdown(self) -> None:
        self.stopping = True
        for device in self.devices:
            device.wanted = False
            if device.state in (OPEN, READY):
                device.close(1000)
        deadline = time.monotonic() + 5
        while any(device.transport is not None for device in self.devices) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for device in self.devices:
            if device.transport is not None:
                device.transport.abort()
        await asyncio.sleep(0.1)


def device_hello(device: Device) -> bytes:
    hello = device.fleet.hellos.get(device.index)
    if hello is None:
        hello = device.fleet.hellos[device.index] = _hello(device.index)
    return hello


_collection_started = [0.0]


def _freeze_survivors_and_log_pauses(phase: str, info: dict[str, Any]) -> None:
    """The devices connected after start-up live as long as the fleet: each full collection would
    walk them all again (about a second at 10,000 devices), and the fleet's answers would wait,
    which the benches would count against the portal. What a full collection leaves is frozen."""
    if info.get("generation") != 2:
        return
    if phase == "start":
        _collection_started[0] = time.perf_counter()
        return
    gc.freeze()
    took = time.perf_counter() - _collection_started[0]
    if took > 0.02:
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} simulator: full collection {took * 1000:.0f} ms\n")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    fleet = Fleet(args)
    gc.collect()
    gc.freeze()  # the fleet's long-lived objects are never scanned again
    gc.set_threshold(50_000, 50, 100)
    gc.callbacks.append(_freeze_survivors_and_log_pauses)
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(coroutine) for coroutine in (fleet.connector(), fleet.heartbeats(), fleet.pings())]
    if args.report_every:
        tasks.append(loop.create_task(fleet.reporter()))
    driver = loop.create_task(fleet.control() if args.control else fleet.standalone())
    fleet.emit(
        "started", devices=len(fleet.devices), ports=fleet.ports, open_files_limit=common.raise_open_files_limit()
    )
    try:
        await asyncio.wait_for(fleet.done.wait(), args.duration)
    except TimeoutError:
        fleet.emit("duration_reached", seconds=args.duration)
    summary = fleet.snapshot()
    await fleet.shutdown()
    for task in [*tasks, driver]:
        task.cancel()
    await asyncio.gather(*tasks, driver, return_exceptions=True)
    fleet.emit("summary", **summary)
    return summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ports", default="8000", help="comma-separated; devices are spread over them")
    parser.add_argument("--path", default="/ws/device/")
    parser.add_argument("--devices", type=int, default=100, help="devices of all shards together")
    parser.add_argument("--first", type=int, default=0, help="index of the first device")
    parser.add_argument("--shard", default="0/1", help="i/n: this process simulates indices i, i+n, ...")
    parser.add_argument("--connect-rate", type=float, default=400, help="new connections per second (this process)")
    parser.add_argument("--max-pending", type=int, default=1000, help="handshakes in flight at most")
    parser.add_argument("--open-timeout", type=float, default=20.0, help="seconds from TCP connect to welcome")
    parser.add_argument("--heartbeat", type=float, default=30.0)
    parser.add_argument("--ping-samples", type=int, default=10, help="websocket pings per second, for the RTT")
    parser.add_argument("--command-delay", type=float, default=0.0, help="seconds before executing a command")
    parser.add_argument("--duration", type=float, default=120.0, help="hard stop after this many seconds")
    parser.add_argument("--hold", type=float, default=0.0, help="standalone: seconds to stay connected")
    parser.add_argument("--storm-after", type=float, default=None, help="standalone: drop all after N s, reconnect")
    parser.add_argument("--ingest-rate", type=float, default=0.0, help="standalone: messages/s per device")
    parser.add_argument("--ingest-seconds", type=float, default=10.0)
    parser.add_argument("--control", action="store_true", help="read commands from stdin")
    parser.add_argument("--report-every", type=float, default=0.0, help="progress line on stderr every N s")
    parser.add_argument("--secret", default=common.DEFAULT_SECRET)
    parser.add_argument("--secret-env", default=None, help="read the secret from this environment variable")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args(argv)
    if args.secret_env:
        args.secret = os.environ[args.secret_env]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(run(args))
            return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
