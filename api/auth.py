"""API keys in ``X-API-Key``, compared in constant time against every configured key."""

from __future__ import annotations

import hashlib
import hmac

from litestar.exceptions import NotAuthorizedException
from litestar.middleware.rate_limit import get_remote_address
from litestar.types import ASGIApp, Receive, Scope, Send

from rtml_core.errors import RtmlError

HEADER = b"x-api-key"
PUBLIC_PATHS = ("/health", "/ready", "/metrics", "/schema")


def parse_keys(raw: str) -> tuple[bytes, ...]:
    return tuple(key.strip().encode() for key in raw.split(",") if key.strip())


def check_auth_config(keys: tuple[bytes, ...], disabled: bool) -> None:
    if not keys and not disabled:
        raise RtmlError(
            "RTML_API_KEYS is empty: set one or more comma-separated keys, or "
            "RTML_API_AUTH_DISABLED=true to serve without authentication (embedded demo only)"
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


class ApiKeyMiddleware:
    """401 unless the request carries a configured key; public paths pass (health, metrics, docs)."""

    def __init__(self, app: ASGIApp, keys: tuple[bytes, ...]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not is_public(scope["path"]):
            presented = _header(scope, HEADER)
            if presented is None:
                raise NotAuthorizedException(detail="missing X-API-Key header")
            if not key_matches(presented, self.keys):
                raise NotAuthorizedException(detail="invalid API key")
        await self.app(scope, receive, send)


def rate_limit_identity(request) -> str:
    """Rate limits apply per API key (hashed; the key itself is never stored), else per client IP."""
    presented = request.headers.get("x-api-key")
    if presented:
        return key_identity(presented)
    return "ip:" + get_remote_address(request)


def key_identity(presented: str) -> str:
    return "key:" + hashlib.blake2b(presented.encode(), digest_size=8).hexdigest()
