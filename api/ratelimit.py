"""Litestar's RateLimitConfig with a constant-time counter per client and window.

The stock ``RateLimitMiddleware`` JSON-decodes and re-encodes a list of every request time in
the window, in the store, on every request: O(limit) work that halved saturated throughput
here. This subclass keeps the same config, headers and 429 answer, holding each client's
window in process memory. With several workers (``RTML_API_WORKERS`` > 1, set by ``rtml serve
--workers``) and an online store that keeps shared counters (Redis), each request also counts
in one window shared by every worker, so the limit holds for the whole server, not per worker;
while that store is down the per-worker window still applies.

Exclusions are anchored: only ``/health``, ``/ready``, ``/metrics`` and ``/schema/...`` escape.
"""

from __future__ import annotations

from time import time

from litestar.exceptions import TooManyRequestsException
from litestar.middleware.rate_limit import (
    DURATION_VALUES, CacheObject, RateLimitConfig, RateLimitMiddleware,
)
from litestar.enums import ScopeType
from litestar.stores.base import Store
from litestar.types import Receive, Scope, Send

from api.auth import HEADER as API_KEY_HEADER
from api.auth import key_identity, rate_limit_identity
from api.shared import count_shared, shared_store

MAX_TRACKED_CLIENTS = 10_000
PUBLIC_PATTERNS = ["^/health$", "^/ready$", "^/metrics$", "^/schema(?:/.*)?$"]
"""Paths never limited (anchored: ``/v1/features/healthy-usd`` is limited)."""


class WindowCounterRateLimitMiddleware(RateLimitMiddleware):
    scopes = {ScopeType.HTTP}  # WebSocket connects have their own limit (api/sockets.py)

    def __init__(self, app, config: RateLimitConfig) -> None:
        super().__init__(app, config)
        self._shared = None  # the online store, when workers share one window through it
        self._shared_checked = False
        self._windows: dict[str, CacheObject] = {}
        self._duration = DURATION_VALUES[self.unit]
        self._key_identities: dict[bytes, str] = {}  # X-API-Key value -> its hashed identity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The stock middleware's check without its per-request ``Request``, store and lock.

        The window is read and written with no ``await`` in between, so no lock is needed on
        the event loop; the identity is the same as ``rate_limit_identity`` (hashed key, cached).
        """
        if self.check_throttle_handler is not None or self.get_identifier_for_request is not rate_limit_identity:
            await super().__call__(scope, receive, send)
            return
        identity = self._identity(scope)
        key = f"{type(self).__name__}::{identity}"
        route_handler = scope.get("route_handler")
        if getattr(route_handler, "is_mount", False):
            key += "::mount"
        if getattr(route_handler, "is_static", False):
            key += "::static"
        window = self._window(key)
        if len(window.history) >= self.max_requests or (
                self._shared_store(scope) is not None and await self._shared_over(identity, window)):
            raise TooManyRequestsException(
                headers=self.create_response_headers(cache_object=window)
                if self.config.set_rate_limit_headers else None
            )
        window.history.append(window.reset)  # only its length counts
        self._windows[key] = window
        if self.config.set_rate_limit_headers:
            send = self.create_send_wrapper(send=send, cache_object=window)
        await self.app(scope, receive, send)

    def _shared_store(self, scope: Scope):
        if not self._shared_checked:
            self._shared_checked = True
            self._shared = shared_store(scope)
        return self._shared

    async def _shared_over(self, identity: str, window: CacheObject) -> bool:
        """Count the request in the window every worker shares; True when that one is full (while
        it cannot be counted, the per-worker window still applies)."""
        count = await count_shared(self._shared, f"ratelimit:{identity}:{window.reset}", self._duration + 1)
        return count is not None and count > self.max_requests

    def _identity(self, scope: Scope) -> str:
        presented = next((value for name, value in scope["headers"] if name == API_KEY_HEADER), None)
        if not presented:
            return rate_limit_identity(scope["litestar_app"].request_class(scope))
        identity = self._key_identities.get(presented)
        if identity is None:
            if len(self._key_identities) >= MAX_TRACKED_CLIENTS:
                self._key_identities.clear()
            identity = self._key_identities[presented] = key_identity(presented.decode("latin-1"))
        return identity

    def _window(self, key: str) -> CacheObject:
        now = int(time())
        window = self._windows.get(key)
        if window is None or window.reset <= now:
            if len(self._windows) >= MAX_TRACKED_CLIENTS:
                self._windows = {k: w for k, w in self._windows.items() if w.reset > now}
            window = CacheObject(history=[], reset=now + self._duration)
        return window

    async def retrieve_cached_history(self, key: str, store: Store) -> CacheObject:
        return self._window(key)

    async def set_cached_history(self, key: str, cache_object: CacheObject, store: Store) -> None:
        cache_object.history.append(cache_object.reset)  # only its length counts
        self._windows[key] = cache_object


def rate_limit_config(per_second: int, exclude: list[str] = PUBLIC_PATTERNS) -> RateLimitConfig:
    """``exclude``: anchored regular expressions of paths that are never limited."""
    return RateLimitConfig(
        rate_limit=("second", per_second), exclude=exclude, identifier_for_request=rate_limit_identity,
        middleware_class=WindowCounterRateLimitMiddleware,
    )
