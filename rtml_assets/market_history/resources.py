"""The exchanges' public REST history as a Dagster resource over rtml's backfill clients.

The clients pace requests, retry rate limits (with the exchange's ``Retry-After``), 5xx replies
and dropped connections, and page through the history; the assets write what they return with
idempotent upserts or window replacements, so a retried or repeated day changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
from pydantic import Field, PrivateAttr

from rtml_assets.market_history.markets import MarketSource
from rtml_core.schemas import Candle, Trade

NS_PER_MS = 1_000_000


def client_class(source: str) -> type:
    """The backfill client class of a REST source name."""
    from rtml_core.ingest import backfill

    if source == "coinbase-rest":
        from rtml_core.ingest.coinbase import CoinbaseRestClient

        return CoinbaseRestClient
    return {"kraken-rest": backfill.KrakenRestClient, "binance-rest": backfill.BinanceRestClient}[source]


class ExchangeHistoryResource(dg.ConfigurableResource):
    """One REST client per (source, URL) within a step; the market's ``rest_url`` overrides the
    exchange's public URL."""

    min_interval_s: float | None = Field(default=None, ge=0, description="Seconds between requests "
                                         "(None: the exchange's own pacing: Kraken 1, Binance 0.2, Coinbase 0.35).")
    max_attempts: int = Field(default=8, ge=1, description="Tries per request on rate limits and transient errors.")
    backoff_s: float = Field(default=2.0, ge=0, description="First back-off; doubles up to the exchange's cap.")
    timeout_s: float = Field(default=30.0, gt=0, description="HTTP timeout per request.")

    _clients: dict = PrivateAttr(default_factory=dict)

    def client(self, market: MarketSource):
        """The backfill client of ``market``'s REST source (made once per step)."""
        key = (str(market.source), market.rest_url)
        if key not in self._clients:
            if not market.is_rest:
                raise dg.DagsterInvariantViolationError(f"market {market.key} reads a file, not a REST API")
            self._clients[key] = client_class(str(market.source))(
                market.rest_url, min_interval_s=self.min_interval_s, max_attempts=self.max_attempts,
                backoff_s=self.backoff_s, timeout_s=self.timeout_s)
        return self._clients[key]

    def trades(self, market: MarketSource, start_ns: int, end_ns: int) -> Iterator[Trade]:
        """The market's trades with ``start_ns <= time < end_ns``, oldest first."""
        client = self.client(market)
        source = str(market.source)
        if source == "kraken-rest":  # ``since`` is exclusive on Kraken's side: start one ns early
            trades = client.trades(market.symbol, start_ns - 1, until_ns=end_ns)
        elif source == "binance-rest":
            trades = client.agg_trades(market.symbol, start_ns // NS_PER_MS, end_ns // NS_PER_MS)
        else:
            trades = client.trades(market.symbol, start_ns, end_ns)
        return (t for t in trades if start_ns <= t.time_ns < end_ns)

    def candles(self, market: MarketSource, start_ns: int, end_ns: int) -> Iterator[Candle]:
        """The exchange's own candles opening in ``[start_ns, end_ns)`` (Binance klines)."""
        if str(market.source) != "binance-rest":
            raise dg.DagsterInvariantViolationError(f"{market.source} serves trades, not candles")
        klines = self.client(market).klines(market.symbol, market.timeframe, start_ns // NS_PER_MS,
                                            end_ns // NS_PER_MS - 1)
        return (c for c in klines if start_ns <= c.start_ns < end_ns)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
