"""How often the agent may try and send: reconnection backoff, and a pace below the portal's rate limit."""

from __future__ import annotations

import asyncio
import random
import time

from devices import protocol

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
BACKOFF_RESET_AFTER_SECONDS = 60.0
# Half the portal's sustained rate and burst: heartbeats, progress and results together stay far
# below the limit even when several jobs report at once.
SEND_RATE = protocol.MESSAGES_PER_SECOND / 2
SEND_BURST = protocol.BURST / 2


class Backoff:
    """Full-jitter exponential backoff: a delay drawn from [0, min(cap, base * 2**attempt)].

    The attempt count starts again after a connection that lasted `reset_after` seconds, so a fleet
    that was connected for a while spreads its reconnections over the first seconds, not a minute.
    """

    def __init__(
        self,
        *,
        base: float = BACKOFF_BASE_SECONDS,
        cap: float = BACKOFF_CAP_SECONDS,
        reset_after: float = BACKOFF_RESET_AFTER_SECONDS,
        rng: random.Random | None = None,
    ) -> None:
        self.base, self.cap, self.reset_after = base, cap, reset_after
        self.attempt = 0
        self._rng = rng or random.SystemRandom()

    def ceiling(self) -> float:
        """Return the largest delay the next attempt may wait."""
        return min(self.cap, self.base * 2 ** min(self.attempt, 32))

    def next_delay(self) -> float:
        delay = self._rng.uniform(0, self.ceiling())
        self.attempt += 1
        return delay

    def after(self, seconds: float) -> float:
        """The delay the portal asked for, with half a second of jitter; the attempt count stays."""
        return seconds + self._rng.uniform(0, 0.5)

    def connection_ended(self, lasted_seconds: float) -> None:
        if lasted_seconds >= self.reset_after:
            self.attempt = 0


class SendPacer:
    """A token bucket that makes the sender wait instead of dropping the message."""

    def __init__(self, rate: float = SEND_RATE, burst: float = SEND_BURST) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.updated = time.monotonic()

    async def wait(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)
