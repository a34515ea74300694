"""The bare baseline: the device websocket with the `websockets` library alone, no Django, no Channels.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/portal_bench python bench/baseline_server.py --port 8200

It does the same I/O as the portal's device socket, and nothing else: it loads every device's
token hash from the database once at start (into a dict), authenticates `Authorization: Device
<token>` against it (unknown tokens are closed with 4001, as the portal does), parses and
validates each frame with devices.protocol.parse (which needs no Django), answers `hello` with
`welcome`, and keeps the latest heartbeat time and status per device in memory (no database
writes). Same settings as the portal's uvicorn: no per-message deflate, a keepalive ping every 20 s.
This is the floor any server on this machine pays for holding the connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import hashlib
import json
import os
import signal
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

import common
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from devices import protocol  # standard library only: no Django is imported

TOKENS: dict[str, tuple[int, int]] = {}
SEEN: dict[int, float] = {}
STATUSES: dict[int, dict[str, Any]] = {}
HEARTBEAT_INTERVAL = 30.0


def load_tokens(database_url: str | None) -> dict[str, tuple[int, int]]:
    query = "SELECT token_hash, id, tenant_id FROM devices_device WHERE revoked_at IS NULL"
    if database_url and database_url.startswith(("postgres://", "postgresql://")):
        import psycopg

        tokens: dict[str, tuple[int, int]] = {}
        with psycopg.connect(database_url) as connection, connection.cursor(name="tokens") as cursor:
            cursor.itersize = 2000  # stream the rows: no transient list of every row
            cursor.execute(query)
            for token_hash, pk, tenant_id in cursor:
                tokens[token_hash] = (pk, tenant_id)
        return tokens
    else:
        data_dir = os.environ.get("PORTAL_DATA_DIR", str(common.ROOT / "var"))
        connection = sqlite3.connect(os.path.join(data_dir, "portal.sqlite3"))
        try:
            rows = connection.execute(query).fetchall()
        finally:
            connection.close()
    return {token_hash: (pk, tenant_id) for token_hash, pk, tenant_id in rows}


def _release_free_memory() -> None:
    """Give memory freed while loading back to the system, so that RSS growth is the connections'."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _token(connection: ServerConnection) -> str:
    authorization = connection.request.headers.get("Authorization", "") if connection.request else ""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "device" else ""


async def handler(connection: ServerConnection) -> None:
    device = TOKENS.get(hashlib.sha256(_token(connection).encode()).hexdigest())
    if device is None:
        await connection.close(protocol.CLOSE_UNAUTHENTICATED)
        return
    device_pk = device[0]
    try:
        async for frame in connection:
            try:
                message = protocol.parse(frame if isinstance(frame, str) else None)
            except protocol.ProtocolError as error:
                await connection.send(
                    json.dumps({"v": 1, "type": "error", "code": error.code, "message": error.message})
                )
                continue
            SEEN[device_pk] = time.time()
            kind = message["type"]
            if kind == "hello":
                await connection.send(
                    json.dumps(
                        {
                            "v": 1,
                            "type": "welcome",
                            "device_id": message.get("device_id", ""),
                            "heartbeat_interval": HEARTBEAT_INTERVAL,
                            "server_time": datetime.now(UTC).isoformat(),
                        }
                    )
                )
            elif kind == "status":
                STATUSES[device_pk] = message
    except ConnectionClosed:
        pass


async def main_async(args: argparse.Namespace) -> None:
    global TOKENS, HEARTBEAT_INTERVAL
    HEARTBEAT_INTERVAL = float(os.environ.get("DEVICE_HEARTBEAT_INTERVAL", "30"))
    TOKENS = load_tokens(os.environ.get("DATABASE_URL"))
    gc.collect()
    _release_free_memory()
    common.raise_open_files_limit()
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
    async with serve(
        handler,
        args.host,
        args.port,
        compression=None,
        ping_interval=20,
        ping_timeout=20,
        max_size=protocol.MAX_FRAME_BYTES,
        backlog=2048,
    ):
        print(json.dumps({"event": "listening", "port": args.port, "tokens": len(TOKENS)}), flush=True)
        if args.duration:
            await asyncio.wait([stop], timeout=args.duration)
        else:
            await stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--duration", type=float, default=3600.0, help="stop by itself after N seconds")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(main_async(args))
            return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
