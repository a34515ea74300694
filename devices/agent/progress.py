"""Show a running backup's progress: a one-line bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, TextIO

BAR_WIDTH = 24
LOG_EVERY_SECONDS = 10.0

logger = logging.getLogger("devices.agent")


def human_bytes(count: float) -> str:
    """Return a byte count the way people read it: 1023 B, 4.0 KiB, 12.3 MiB..."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def progress_line(label: str, snapshot: dict[str, Any], elapsed: float) -> str:
    """Return one line of text: label, percent, files, bytes and rate."""
    rate = snapshot["bytes_read"] / elapsed if elapsed > 0 else 0.0
    return (
        f"{label} {snapshot['percent']:5.1f}%  {snapshot['files_done']}/{snapshot['files_total']} files  "
        f"{human_bytes(snapshot['bytes_read'])}  {human_bytes(rate)}/s"
    )


class ProgressDisplay:
    """Draw progress on a terminal's last line, and get out of the way when a log line is written.

    With `bar=False` (stderr is not a terminal, or --quiet) progress goes to the log instead, at most
    every LOG_EVERY_SECONDS, so that a log file is not flooded.
    """

    def __init__(self, stream: TextIO | None, *, bar: bool) -> None:
        self.stream, self.bar = stream, bar
        self._line = ""
        self._lock = threading.Lock()
        self._last_logged: dict[str, float] = {}

    def update(self, key: str, label: str, snapshot: dict[str, Any], elapsed: float) -> None:
        line = progress_line(label, snapshot, elapsed)
        if not self.bar or self.stream is None:
            now = time.monotonic()
            if now - self._last_logged.get(key, 0.0) >= LOG_EVERY_SECONDS:
                self._last_logged[key] = now
                logger.info("%s", line)
            return
        filled = int(BAR_WIDTH * snapshot["percent"] / 100)
        with self._lock:
            self._line = f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {line}"
            self._draw()

    def finish(self, key: str) -> None:
        """Take the bar (or the log throttle) of a finished job away."""
        self._last_logged.pop(key, None)
        with self._lock:
            if self._line:
                self._erase()
                self._line = ""

    def clear(self) -> None:
        with self._lock:
            if self._line:
                self._erase()

    def redraw(self) -> None:
        with self._lock:
            if self._line:
                self._draw()

    def _draw(self) -> None:
        assert self.stream is not None
        self.stream.write("\r\x1b[2K" + self._line)
        self.stream.flush()

    def _erase(self) -> None:
        assert self.stream is not None
        self.stream.write("\r\x1b[2K")
        self.stream.flush()


class TerminalLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Write log lines to stderr without tearing the progress bar."""

    def __init__(self, stream: TextIO, display: ProgressDisplay) -> None:
        super().__init__(stream)
        self.display = display

    def emit(self, record: logging.LogRecord) -> None:
        self.display.clear()
        super().emit(record)
        self.display.redraw()
