"""413 for an oversized body, decided from Content-Length before the body is read.

The answer is always readable: the body the client is still sending is read and dropped
(up to ``DRAIN_MAX_BYTES`` and ``DRAIN_MAX_S``) before the 413 goes out with
``Connection: close``, because a server that closes a socket with unread data makes the
kernel reset the connection, and the client then sees a reset instead of the 413. A client
that sent ``Expect: 100-continue`` never sends the body: nothing to drain. Bodies without a
Content-Length (chunked) are limited by Litestar while it reads them.
"""

from __future__ import annotations

import asyncio
from time import monotonic

import msgspec
from litestar.types import ASGIApp, Receive, Scope, Send

from api.schemas import ErrorBody

DRAIN_MAX_BYTES = 64 * 2**20
DRAIN_MAX_S = 5.0


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = None
            expects_continue = False
            for name, value in scope["headers"]:
                if name == b"content-length":
                    declared = value
                elif name == b"expect":
                    expects_continue = value.lower() == b"100-continue"
            if declared is not None:
                length = int(declared) if declared.isdigit() else -1
                if length < 0 or length > self.max_bytes:
                    await self._refuse(scope, receive, send, length, expects_continue)
                    return
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, length: int, expects_continue: bool) -> None:
        if length < 0:
            status, kind, detail = 400, "invalid_request", "Content-Length is not a number of bytes"
        else:
            status, kind = 413, "payload_too_large"
            detail = f"request body of {length} bytes is larger than the limit of {self.max_bytes} bytes"
        if 0 <= length <= DRAIN_MAX_BYTES and not expects_continue:
            deadline = monotonic() + DRAIN_MAX_S
            try:
                while True:
                    message = await asyncio.wait_for(receive(), max(deadline - monotonic(), 0.001))
                    if message["type"] != "http.request" or not message.get("more_body", False):
                        break
            except TimeoutError:
                pass
        metrics = getattr(scope["litestar_app"].state, "metrics", None) if "litestar_app" in scope else None
        if metrics is not None:
            metrics.errors.labels(kind).inc()
        body = msgspec.json.encode(ErrorBody(status, kind, detail))
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
