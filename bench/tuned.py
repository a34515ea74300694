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
- `gclog` (measurement only): log every garbage collection of generation 2 that took more than
  100 ms to stderr, with the number of objects tracked, to tell GC pauses from other stalls.
"""

from __future__ import annotations

import gc
import os
from typing import Any

ALL = ("persistent", "gclog")


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
    if "gclog" in tunes:
        import sys
        import time

        started: list[float] = []

        def on_gc(phase: str, info: dict[str, Any]) -> None:
            if info.get("generation") != 2:
                return
            if phase == "start":
                started[:] = [time.perf_counter()]
            elif started:
                took = time.perf_counter() - started[0]
                if took > 0.1:
                    sys.stderr.write(
                        f"gen2 collection {took * 1000:.0f} ms, collected {info.get('collected')}, "
                        f"tracked {len(gc.get_objects())}\n"
                    )
                    sys.stderr.flush()

        gc.callbacks.append(on_gc)
    return tunes
