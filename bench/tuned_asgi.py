"""An experiment, not the product: the portal's ASGI application with the patches of bench/tuned.py
(settings the product does not use), to measure them against it.

    python bench/capacity.py --app tuned_asgi:application --kinds portal --name capacity-tuned

BENCH_TUNE=persistent,gclog (comma-separated) picks the patches; all by default.
"""

from __future__ import annotations

import os

import tuned

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
TUNES = tuned.selected()
tuned.configure_database(TUNES)

from portal.asgi import application  # noqa: E402  (sets Django up)

tuned.apply(TUNES)

__all__ = ["application"]
