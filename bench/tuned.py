"""An experiment, not the product: settings the product does not use, applied by patching at
start-up so that they can be measured against it. Used by bench/tuned_asgi.py.

The patches measured here before (the single-statement last-seen write, batched inventory writes,
the consumer's dispatch without a database hop per frame, gc.freeze(), loose-index-scan facets,
trigram search, the accounts list's correlated count, the connection pool) are in the product
now; bench/README.md has their figures. What is left, by name in BENCH_TUNE (comma-separated; all
by default):

- `persistent`: keep each thread's database connection (CONN_MAX_AGE 600, no health check, no
  pool) instead of Django's psycopg pool. Measured 1.0 ms per database call on a kept connection
  against a few ms through the pool; the product does not do it because under ASGI every HTTP
  request runs in a thread of its own, so a kept connection per thread leaks.
- `gclog` (measurement only): log to stderr every garbage collection of generation 2 that took
  more than 20 ms, with the objects it still walks and the frozen ones, to tell GC pauses from
  other stalls; and every 10 s the frozen count, to see whether frozen objects outlive their
  connections.
- `nofreeze` (only when named): the hub never freezes its settled connections, to measure
  DeviceHub._keep_full_collections_short against it (the collector's thresholds stay as
  portal/asgi.py sets them).
"""

from __future__ import annotations

import gc
import os
from typing import Any

ALL = ("persistent", "gclog")  # "nofreeze" only when named


def configure_database(tunes: set[str]) -> None:
    """Change the database settings before Django is set up."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"] != "django.db.backends.postgresql":
        return
    if "persistent" in tunes:
        database["CONN_MAX_AGE"] = 600
        database["CONN_HEALTH_CHECKS"] = False
        database.get("OPTIONS", {}).pop("pool", None)


def selected() -> set[str]:
    value = os.environ.get("BENCH_TUNE")
    if value is None:
        return set(ALL)
    return {name.strip() for name in value.split(",") if name.strip()}


def apply(tunes: set[str] | None = None) -> set[str]:
    """Patch the loaded project (Django must be set up); return the patches applied."""
    tunes = selected() if tunes is None else tunes
    if "nofreeze" in tunes:
        from devices import consumers

        consumers.FREEZE_AFTER_CONNECTIONS = 10**9
    if "gclog" in tunes:
        import sys
        import time

        started: list[float] = []
        reported = [time.monotonic()]

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if info.get("generation") != 2:
                if phase == "stop" and time.monotonic() - reported[0] > 10:
                    reported[0] = time.monotonic()
                    collections = [generation["collections"] for generation in gc.get_stats()]
                    sys.stderr.write(
                        f"{time.strftime('%H:%M:%S')} frozen {gc.get_freeze_count()}, collections {collections}\n"
                    )
                    sys.stderr.flush()
                return
            if phase == "start":
                started[:] = [time.perf_counter()]
            elif started:
                took = time.perf_counter() - started[0]
                if took > 0.02:
                    sys.stderr.write(
                        f"{time.strftime('%H:%M:%S')} gen2 collection {took * 1000:.0f} ms, collected "
                        f"{info.get('collected')}, tracked {len(gc.get_objects())}, frozen {gc.get_freeze_count()}\n"
                    )
                    sys.stderr.flush()

        gc.callbacks.append(on_gc)
    return tunes
