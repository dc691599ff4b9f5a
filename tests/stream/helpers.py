"""Small async helpers shared by the source tests."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Callable
from itertools import islice
from pathlib import Path

import httpx

from rtml_core.schemas import BookUpdate, Trade
from rtml_stream.sources.base import Event, ReconnectPolicy

FAST_RECONNECT = ReconnectPolicy(initial=0.02, maximum=0.2, factor=2.0)


async def take(
    events: AsyncIterator[Event],
    count: int,
    *,
    kind: type = Trade,
    timeout: float = 5.0,
    until: Callable[[Event], bool] | None = None,
) -> list[Event]:
    """The next ``count`` events of ``kind`` (others are skipped), failing after ``timeout``."""
    found: list[Event] = []
    async with asyncio.timeout(timeout):
        while len(found) < count:
            event = await anext(events)
            if isinstance(event, kind):
                found.append(event)
                if until is not None and until(event):
                    break
    return found


def trade_key(trade: Trade) -> tuple:
    """What must match exactly between a live and a backfilled copy of a trade."""
    return trade.exchange, trade.symbol, trade.trade_id, trade.price, trade.size, trade.side


def book_updates(events: list[Event]) -> list[BookUpdate]:
    return [e for e in events if isinstance(e, BookUpdate)]


async def wait_for_value(condition: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Poll ``condition`` (e.g. a metric reaching a value) until true, failing after ``timeout``."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def health(port: int) -> dict | None:
    """The sidecar's /health document, None while it does not answer."""
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"http://127.0.0.1:{port}/health", timeout=1)).json()
    except httpx.HTTPError:
        return None


def first_lines(source: Path, target: Path, n: int) -> Path:
    """The header and first ``n`` rows of a gzipped CSV as a plain CSV (unchanged)."""
    with gzip.open(source, "rt") as reader, target.open("w") as writer:
        writer.writelines(islice(reader, n + 1))
    return target
