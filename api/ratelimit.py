"""Litestar's RateLimitConfig with a constant-time counter per client and window.

The stock ``RateLimitMiddleware`` JSON-decodes and re-encodes a list of every request time in
the window, in the store, on every request: O(limit) work that halved saturated throughput
here. This subclass keeps the same config, headers and 429 answer, holding each client's
window in process memory (per worker, like Litestar's default MemoryStore).
"""

from __future__ import annotations

from time import time

from litestar.middleware.rate_limit import (
    DURATION_VALUES, CacheObject, RateLimitConfig, RateLimitMiddleware,
)
from litestar.stores.base import Store

from api.auth import rate_limit_identity

MAX_TRACKED_CLIENTS = 10_000


class WindowCounterRateLimitMiddleware(RateLimitMiddleware):
    def __init__(self, app, config: RateLimitConfig) -> None:
        super().__init__(app, config)
        self._windows: dict[str, CacheObject] = {}
        self._duration = DURATION_VALUES[self.unit]

    async def retrieve_cached_history(self, key: str, store: Store) -> CacheObject:
        now = int(time())
        window = self._windows.get(key)
        if window is None or window.reset <= now:
            if len(self._windows) >= MAX_TRACKED_CLIENTS:
                self._windows = {k: w for k, w in self._windows.items() if w.reset > now}
            window = CacheObject(history=[], reset=now + self._duration)
        return window

    async def set_cached_history(self, key: str, cache_object: CacheObject, store: Store) -> None:
        cache_object.history.append(cache_object.reset)  # only its length counts
        self._windows[key] = cache_object


def rate_limit_config(per_second: int, exclude: list[str]) -> RateLimitConfig:
    return RateLimitConfig(
        rate_limit=("second", per_second), exclude=exclude, identifier_for_request=rate_limit_identity,
        middleware_class=WindowCounterRateLimitMiddleware,
    )
