"""Coinbase Exchange public trades: ``GET /products/{product_id}/trades`` -> Trade.

A reply is a JSON list, newest first: ``[{"time": "2025-11-10T17:23:53.971745Z", "trade_id": 123,
"price": "105829.8", "size": "0.0183", "side": "sell"}, ...]``; ``side`` is the *maker's* side, so
the taker's is the opposite. Pages go back in time with ``after=<trade_id>`` (trades with a
smaller id; the ``CB-AFTER`` header names the cursor), ``limit`` at most 1,000. Ids are
sequential per product, so the last trade before a time is found by bisecting ids
(``limit=1`` probes) and a day is read backwards from there.
"""

from __future__ import annotations

from collections.abc import Iterator

from rtml_core.errors import InputError
from rtml_core.ingest.backfill import RestClient, reply_json
from rtml_core.ingest.formats import TimeParser, parse_decimal
from rtml_core.schemas import Trade
from rtml_core.symbols import PairTable, normalize_symbol

EXCHANGE = "coinbase"
_TAKER = {"buy": "sell", "sell": "buy"}  # from the maker's side


def parse_trade(item: object, symbol: str, source: str, times: TimeParser | None = None) -> Trade:
    """One trade object of a ``/products/{id}/trades`` reply (``times``: a parser to reuse)."""
    if not isinstance(item, dict) or not {"time", "trade_id", "price", "size", "side"} <= item.keys():
        raise InputError(f"trade {str(item)[:120]} lacks time, trade_id, price, size or side", source=source)
    trade_id, side = item["trade_id"], _TAKER.get(item["side"])
    if not isinstance(trade_id, int) or isinstance(trade_id, bool):
        raise InputError(f"trade_id {trade_id!r} is not an integer", source=source)
    if side is None:
        raise InputError(f"side {item['side']!r} is not buy or sell", source=source)
    try:
        time_ns = (times or TimeParser())(item["time"])
    except (TypeError, ValueError):
        raise InputError(f"time {item['time']!r} is not an ISO 8601 UTC time", source=source) from None
    return Trade(EXCHANGE, symbol, trade_id, time_ns,
                 parse_decimal(str(item["price"]), "price", source, None, positive=True),
                 parse_decimal(str(item["size"]), "size", source, None), side)


class CoinbaseRestClient(RestClient):
    """Coinbase Exchange ``/products/{id}/trades``, paged backwards by ``after``."""

    exchange = "coinbase"
    default_url = "https://api.exchange.coinbase.com"
    default_min_interval_s = 0.35  # public endpoints: 3 requests per second sustained
    default_max_backoff_s = 60.0
    limit = 1000

    def _fetch_pairs(self) -> PairTable:
        return PairTable(EXCHANGE)  # product ids are BASE-QUOTE already

    def page(self, symbol: str, after: int | None = None, limit: int | None = None) -> list[Trade]:
        """Trades newest first: the latest, or those with ``trade_id < after``."""
        canonical = normalize_symbol(symbol)
        params = {"limit": str(limit or self.limit)}
        if after is not None:
            params["after"] = str(after)
        path = f"/products/{canonical}/trades"
        response = self._get(path, params)
        items = reply_json(response)
        if not isinstance(items, list):
            raise InputError(f"expected a list of trades, got {str(items)[:200]}", source=str(response.url))
        times = TimeParser()
        return [parse_trade(item, canonical, str(response.url), times) for item in items]

    def last_id_before(self, symbol: str, time_ns: int) -> int | None:
        """The id of the newest trade before ``time_ns`` (None when there is none), by bisecting
        ids: ``probe(k)``, the newest trade with an id <= k, is before ``time_ns`` for every k up
        to the answer and not after it."""
        newest = self.page(symbol, limit=1)
        if not newest:
            return None
        if newest[0].time_ns < time_ns:
            return newest[0].trade_id

        def before(k: int) -> Trade | None | bool:
            probe = self.page(symbol, after=k + 1, limit=1)
            return probe[0] if probe and probe[0].time_ns < time_ns else (None if not probe else False)

        low, high, found = 0, newest[0].trade_id, None  # before(low) holds, before(high) does not
        while high - low > 1:
            middle = (low + high) // 2
            result = before(middle)
            if result is False:
                high = middle
            else:
                low, found = middle, result
        return found.trade_id if found else None

    def trades(self, symbol: str, start_ns: int, end_ns: int) -> Iterator[Trade]:
        """Trades with ``start_ns <= time < end_ns``, oldest first, each once."""
        last = self.last_id_before(symbol, end_ns)
        if last is None:
            return
        found: list[Trade] = []
        cursor = last + 1
        while True:
            page = self.page(symbol, after=cursor)
            found.extend(t for t in page if start_ns <= t.time_ns < end_ns)
            if not page or page[-1].time_ns < start_ns:
                break
            cursor = page[-1].trade_id
        found.sort(key=lambda t: (t.time_ns, t.trade_id))
        yield from found
