"""Posts per user per second: a token bucket per user, shared by all of a user's connections."""

from __future__ import annotations

import time
from collections import OrderedDict


class TokenBucket:
    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.tokens = self.burst = max(rate, 1.0) if burst is None else burst
        self.updated = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class RateLimiter:
    """A bucket per user, the least recently used dropped past ``max_users`` (bounded memory)."""

    def __init__(
        self, rate: float, max_users: int = 200_000, *, burst: float | None = None
    ) -> None:
        """``rate`` tokens a second; a new (or rested) user may take ``burst`` at once (default:
        one second's worth, at least 1)."""
        self.rate = rate
        self.burst = burst
        self._buckets: OrderedDict[int, TokenBucket] = OrderedDict()
        self._max_users = max_users

    def allow(self, user_id: int) -> bool:
        bucket = self._buckets.get(user_id)
        if bucket is None:
            bucket = self._buckets[user_id] = TokenBucket(self.rate, self.burst)
            if len(self._buckets) > self._max_users:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(user_id)
        return bucket.take()
