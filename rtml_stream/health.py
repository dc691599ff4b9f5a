"""A small HTTP server in the sidecar's event loop: ``/metrics`` (Prometheus) and ``/health``.

``/health`` answers 200 ``{"status": "ok", ...}`` when the check passes and 503
``{"status": "unhealthy", "reasons": [...], ...}`` when it does not. No threads: it runs on
``asyncio.start_server`` beside the stream, so it answers during a store outage too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

HealthCheck = Callable[[], tuple[list[str], dict]]
"""Returns (reasons the process is unhealthy, details); no reasons means healthy."""

_MAX_REQUEST = 8192


class HealthServer:
    def __init__(self, registry: CollectorRegistry, check: HealthCheck, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.registry = registry
        self.check = check
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> HealthServer:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def health(self) -> tuple[int, dict]:
        reasons, details = self.check()
        body = {"status": "unhealthy" if reasons else "ok", "reasons": reasons, **details}
        return (503 if reasons else 200), body

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5.0)
            request_line = head[: min(len(head), _MAX_REQUEST)].split(b"\r\n", 1)[0].decode("latin-1")
            parts = request_line.split(" ")
            method, path = (parts[0], parts[1].split("?", 1)[0]) if len(parts) >= 2 else ("", "")
            if method not in ("GET", "HEAD"):
                status, ctype, body = 405, "text/plain", b"method not allowed\n"
            elif path == "/metrics":
                status, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
            elif path in ("/health", "/healthz"):
                status, document = self.health()
                ctype, body = "application/json", json.dumps(document, default=str).encode()
            else:
                status, ctype, body = 404, "text/plain", b"not found: try /health or /metrics\n"
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}[status]
            writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
