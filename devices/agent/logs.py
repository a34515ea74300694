"""The agent's log: to stderr for the person running it, and into a ring buffer for `collect_logs`."""

from __future__ import annotations

import logging
import sys
from collections import deque

from devices.agent.progress import ProgressDisplay, TerminalLogHandler

RING_LINES = 1000
LINE_LIMIT = 1000
FORMAT = "%(asctime)s %(levelname)s %(message)s"

logger = logging.getLogger("devices.agent")


class RingBufferHandler(logging.Handler):
    """Keep the agent's last RING_LINES log lines in memory, so an admin can collect them remotely."""

    def __init__(self, capacity: int = RING_LINES) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[str] = deque(maxlen=capacity)
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record)[:LINE_LIMIT])
        except Exception:  # a log line that cannot be formatted must not stop the agent
            self.handleError(record)

    def recent(self, count: int) -> list[str]:
        """Return the last `count` lines, oldest first."""
        if count <= 0:
            return []
        return list(self.lines)[-count:]


def setup_logging(*, quiet: bool) -> tuple[RingBufferHandler, ProgressDisplay]:
    """Send the agent's log to stderr (warnings only with --quiet) and to a ring buffer."""
    ring = RingBufferHandler()
    display = ProgressDisplay(sys.stderr, bar=sys.stderr.isatty() and not quiet)
    terminal = TerminalLogHandler(sys.stderr, display)
    terminal.setLevel(logging.WARNING if quiet else logging.INFO)
    terminal.setFormatter(logging.Formatter(FORMAT))
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.addHandler(ring)
    logger.addHandler(terminal)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    # The websocket library's own warnings (a failed handshake, say) belong in the same log.
    library = logging.getLogger("websockets")
    library.setLevel(logging.WARNING)
    library.addHandler(ring)
    library.addHandler(terminal)
    library.propagate = False
    return ring, display
