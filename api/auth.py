"""API keys in ``X-API-Key``, compared in constant time against every configured key.

Failed attempts are throttled per client address: after ``failed_limit`` requests with a
missing or wrong key in a minute, that address gets 429 (WebSockets: close 4429) without its
key being checked, so guessing costs a minute per ``failed_limit`` tries. A WebSocket without
a valid key is closed with 4401 (4000 + the HTTP status), never a server-error code.
"""

from __future__ import annotations

import hashlib
import hmac
from time import monotonic, time

from litestar.exceptions import NotAuthorizedException, TooManyRequestsException
from litestar.middleware.rate_limit import get_remote_address
from litestar.types import ASGIApp, Receive, Scope, Send

from api.shared import count_shared, shared_store
from rtml_core.errors import RtmlError

HEADER = b"x-api-key"
PUBLIC_PATHS = ("/health", "/ready", "/metrics", "/schema")
MIN_KEY_LENGTH = 16
FAILED_KEY_WINDOW_S = 60.0
MAX_TRACKED_ADDRESSES = 10_000


def parse_keys(raw: str) -> tuple[bytes, ...]:
    return tuple(key.strip().encode() for key in raw.split(",") if key.strip())


def check_auth_config(keys: tuple[bytes, ...], disabled: bool) -> None:
    """Refuse to start without keys, or with a key shorter than ``MIN_KEY_LENGTH`` (unless auth is off)."""
    if disabled:
        return
    if not keys:
        raise RtmlError(
            "RTML_API_KEYS is empty: set one or more comma-separated keys, or "
            "RTML_API_AUTH_DISABLED=true to serve without authentication (embedded demo only)"
        )
    short = [index for index, key in enumerate(keys, 1) if len(key) < MIN_KEY_LENGTH]
    if short:
        raise RtmlError(
            f"RTML_API_KEYS: key(s) number {', '.join(map(str, short))} of {len(keys)} are shorter than "
            f"{MIN_KEY_LENGTH} characters; use long random keys, e.g. "
            "python -c 'import secrets; print(secrets.token_urlsafe(24))'"
        )


def key_matches(presented: bytes, keys: tuple[bytes, ...]) -> bool:
    """Constant time in the presented key; every configured key is compared (no early exit)."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, key)
    return matched


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith("/schema/")


class FailedKeyThrottle:
    """Failed key attempts per client address in fixed one-minute windows (bounded memory)."""

    def __init__(self, limit: int, window_s: float = FAILED_KEY_WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._windows: dict[str, list[float]] = {}  # address -> [window end, failures]

    def blocked(self, address: str) -> float:
        """Seconds until ``address`` may try again (0: not blocked)."""
        window = self._windows.get(address)
        if window is None or self.limit <= 0:
            return 0.0
        left = window[0] - monotonic()
        if left <= 0:
            del self._windows[address]
            return 0.0
        return left if window[1] >= self.limit else 0.0

    def block(self, address: str) -> None:
        """Other workers counted this address's failures past the limit: block it here too."""
        self.failed(address)
        self._windows[address][1] = max(self._windows[address][1], self.limit)

    def failed(self, address: str) -> None:
        now = monotonic()
        window = self._windows.get(address)
        if window is None or window[0] <= now:
            if len(self._windows) >= MAX_TRACKED_ADDRESSES:
                self._windows = {a: w for a, w in self._windows.items() if w[0] > now}
                if len(self._windows) >= MAX_TRACKED_ADDRESSES:
                    self._windows.clear()
            window = self._windows[address] = [now + self.window_s, 0]
        window[1] += 1


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


async def close_websocket(receive: Receive, send: Send, code: int, reason: str) -> None:
    """Accept and close at once: the client sees ``code`` (a rejected handshake would hide it)."""
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": code, "reason": reason})


class ApiKeyMiddleware:
    """401 unless the request carries a configured key; public paths pass (health, metrics, docs).

    Addresses with too many failed attempts get 429 before their key is looked at.
    """

    def __init__(self, app: ASGIApp, keys: tuple[bytes, ...], failed_limit: int = 10) -> None:
        self.app = app
        self.keys = keys
        self.throttle = FailedKeyThrottle(failed_limit)
        self._shared = None  # the online store, when workers count failures together
        self._shared_checked = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not is_public(scope["path"]):
            address = client_address(scope)
            wait_s = self.throttle.blocked(address)
            if wait_s:
                if scope["type"] == "websocket":
                    await close_websocket(receive, send, 4429, "too many failed API key attempts")
                    return
                raise TooManyRequestsException(
                    detail=f"too many requests with a missing or wrong X-API-Key from this address; "
                    f"retry in {wait_s:.0f} s", headers={"Retry-After": str(int(wait_s) + 1)})
            presented = _header(scope, HEADER)
            problem = ("missing X-API-Key header" if presented is None
                       else None if key_matches(presented, self.keys) else "invalid API key")
            if problem is not None:
                self.throttle.failed(address)
                await self._count_shared(scope, address)
                if scope["type"] == "websocket":
                    await close_websocket(receive, send, 4401, problem)
                    return
                raise NotAuthorizedException(detail=problem)
        await self.app(scope, receive, send)


    async def _count_shared(self, scope: Scope, address: str) -> None:
        """With several workers: count the failure where all of them see it (only failures cost a
        store round trip), and block the address here once the shared count is over the limit."""
        if not self._shared_checked:
            self._shared_checked = True
            self._shared = shared_store(scope)
        if self._shared is None or self.throttle.limit <= 0:
            return
        minute = int(time() // FAILED_KEY_WINDOW_S)
        count = await count_shared(self._shared, f"failedkey:{address}:{minute}", int(FAILED_KEY_WINDOW_S) + 1)
        if count is not None and count >= self.throttle.limit:
            self.throttle.block(address)


def rate_limit_identity(request) -> str:
    """Rate limits apply per API key (hashed; the key itself is never stored), else per client IP."""
    presented = request.headers.get("x-api-key")
    if presented:
        return key_identity(presented)
    return "ip:" + get_remote_address(request)


def key_identity(presented: str) -> str:
    return "key:" + hashlib.blake2b(presented.encode(), digest_size=8).hexdigest()
