"""Client-side rate limits: Binance request weight (sliding window) and Coinbase requests/s (token bucket).

Both take the clock and the sleep function from the caller, so tests can assert on the waits without
sleeping. Both serialize waiters with a lock, so concurrent callers queue instead of stampeding.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


class WeightBudget:
    """At most ``limit`` request weight in any ``window_s`` seconds (Binance REQUEST_WEIGHT, 6000/min).

    A sliding-window log, deliberately stricter than the exchange's per-minute counter: if every
    ``window_s`` interval stays within the limit, so does every calendar minute the server counts in,
    whatever the offset between our clock and the server's.

    The server's own count (``X-MBX-USED-WEIGHT-1M``) is folded in by :meth:`observe`: when it is
    higher than ours (another process on the same IP, or a restart), the difference is booked now,
    so we slow down instead of running into 429s.
    """

    def __init__(self, limit: int = 6000, window_s: float = 60.0, *, monotonic: Clock, sleep: Sleep) -> None:
        if limit <= 0 or window_s <= 0:
            raise ValueError("weight limit and window must be positive")
        self.limit = limit
        self.window_s = window_s
        self._monotonic = monotonic
        self._sleep = sleep
        self._log: deque[tuple[float, int]] = deque()
        self._sum = 0
        self._lock = asyncio.Lock()
        self.server_used: int | None = None  # the last X-MBX-USED-WEIGHT-1M seen

    def used(self) -> int:
        """Weight booked in the current window (ours plus what the server reported beyond it)."""
        self._expire(self._monotonic())
        return self._sum

    def _expire(self, now: float) -> None:
        while self._log and self._log[0][0] + self.window_s <= now:
            self._sum -= self._log.popleft()[1]

    def _wait_for(self, weight: int, now: float) -> float:
        """Seconds until ``weight`` more fits (0: it fits now)."""
        excess = self._sum + weight - self.limit
        if excess <= 0 or not self._log:
            return 0.0  # a single request heavier than the whole limit still goes, alone
        freed = 0
        for stamp, w in self._log:
            freed += w
            if freed >= excess:
                return stamp + self.window_s - now
        return self._log[-1][0] + self.window_s - now

    async def acquire(self, weight: int) -> None:
        async with self._lock:
            while True:
                now = self._monotonic()
                self._expire(now)
                wait = self._wait_for(weight, now)
                if wait <= 0:
                    self._log.append((now, weight))
                    self._sum += weight
                    return
                await self._sleep(wait)

    def observe(self, server_used: int) -> None:
        """Fold in the server's count of the current minute (it already includes the request just made)."""
        self.server_used = server_used
        now = self._monotonic()
        self._expire(now)
        if server_used > self._sum:
            self._log.append((now, server_used - self._sum))
            self._sum = server_used

    def set_limit(self, limit: int, window_s: float | None = None) -> None:
        if limit <= 0:
            raise ValueError("weight limit must be positive")
        self.limit = limit
        if window_s is not None:
            self.window_s = window_s


class TokenBucket:
    """``rate`` requests per second with bursts up to ``burst`` (Coinbase public REST: 10/s per IP)."""

    def __init__(self, rate: float = 10.0, burst: int | None = None, *, monotonic: Clock, sleep: Sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(1, int(rate))
        self._monotonic = monotonic
        self._sleep = sleep
        self._tokens = float(self.burst)
        self._stamp = monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._monotonic()
                self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await self._sleep((1.0 - self._tokens) / self.rate)
