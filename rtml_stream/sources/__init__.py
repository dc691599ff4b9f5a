"""Market-data sources: every one yields the shared Trade and BookUpdate types.

source = make_source("kraken", ["BTC-USD"], metrics=metrics)
async for event in source.events():   # Trade | BookUpdate
    ...
await source.close()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rtml_stream.metrics import StreamMetrics
from rtml_stream.sources.base import (
    Event,
    Malformed,
    ReconnectPolicy,
    Source,
    SubscriptionError,
    WebSocketSource,
    parse_rfc3339_ns,
)

EXCHANGES = ("kraken", "binance", "coinbase")

__all__ = [
    "EXCHANGES",
    "Event",
    "Malformed",
    "ReconnectPolicy",
    "Source",
    "SubscriptionError",
    "WebSocketSource",
    "make_source",
    "parse_rfc3339_ns",
]


def make_source(
    exchange: str,
    symbols: Sequence[str],
    *,
    url: str | None = None,
    metrics: StreamMetrics | None = None,
    **options: Any,
) -> WebSocketSource:
    """A live source for ``exchange`` (kraken | binance | coinbase); ``url`` overrides the
    exchange's WebSocket URL (``rtml stream --ws-url``); other options go to the constructor."""
    if url is not None:
        options["url"] = url
    if exchange == "kraken":
        from rtml_stream.sources.kraken import KrakenSource

        return KrakenSource(symbols, metrics=metrics, **options)
    if exchange == "binance":
        from rtml_stream.sources.binance import BinanceSource

        return BinanceSource(symbols, metrics=metrics, **options)
    if exchange == "coinbase":
        from rtml_stream.sources.coinbase import CoinbaseSource

        return CoinbaseSource(symbols, metrics=metrics, **options)
    raise ValueError(
        f"unknown exchange {exchange!r} (known: {', '.join(EXCHANGES)}; files: ReplaySource)"
    )
