"""REST backfill clients: Kraken public Trades (``last`` cursor), Binance aggTrades and klines.

Both take an ``httpx.Client`` (or make one), pace their requests, and retry with tenacity
on rate limits (Kraken's ``EAPI:Rate limit exceeded`` / ``EGeneral:Too many requests``,
HTTP 429, Binance's 418 with ``Retry-After``), 5xx replies and transport errors. Pair names
map through the exchange's own pair list (Kraken ``AssetPairs``, Binance ``exchangeInfo``),
fetched once per client; when it cannot be fetched the bundled real list stands in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from rtml_core.errors import InputError, RtmlError
from rtml_core.ingest.binance import parse_agg_trade, parse_kline
from rtml_core.ingest.kraken import (
    KrakenTradesPage,
    decode_reply,
    parse_asset_pairs,
    parse_trades_reply,
)
from rtml_core.schemas import Candle, Trade
from rtml_core.symbols import PairTable, bundled_pairs, normalize_symbol, to_exchange_symbol
from rtml_core.timeframes import timeframe_ns

_KRAKEN_RATE_ERRORS = ("EAPI:Rate limit exceeded", "EGeneral:Too many requests")


class BackfillError(RtmlError):
    """The exchange refused or the history could not be completed."""


class RateLimited(BackfillError):
    """The exchange asked us to slow down; ``retry_after`` seconds when it said."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class TransientError(BackfillError):
    """A reply worth retrying (5xx, a dropped connection)."""


class RestClient:
    """Pacing, retries, the HTTP client and the pair list shared by the exchanges."""

    exchange = ""
    default_url = ""
    default_min_interval_s = 1.0
    default_max_backoff_s = 60.0

    def __init__(
        self,
        base_url: str | None = None,
        client: httpx.Client | None = None,
        *,
        min_interval_s: float | None = None,
        max_attempts: int = 8,
        backoff_s: float = 2.0,
        max_backoff_s: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        timeout_s: float = 30.0,
        pairs: PairTable | None = None,
    ):
        """Defaults (URL, pacing, longest back-off) are the exchange's, from the subclass.

        ``pairs``: the exchange's pair list; None fetches it on first use (bundled if that fails).
        """
        base_url = base_url or self.default_url
        min_interval_s = self.default_min_interval_s if min_interval_s is None else min_interval_s
        max_backoff_s = self.default_max_backoff_s if max_backoff_s is None else max_backoff_s
        self.base_url = base_url.rstrip("/")
        self._owns_client = client is None
        self._client = client or httpx.Client(timeout=timeout_s, headers={"User-Agent": "rtml"})
        self.min_interval_s = min_interval_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self._clock = clock
        self._last_request: float | None = None
        self.requests = 0
        self.rate_limited = 0
        self._pairs = pairs
        self.pairs_source = "given" if pairs is not None else None
        self._retrying = Retrying(
            retry=retry_if_exception_type((RateLimited, TransientError)),
            wait=self._wait,
            stop=stop_after_attempt(max_attempts),
            sleep=sleep,
            reraise=True,
        )

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RateLimited) and error.retry_after is not None:
            return error.retry_after
        return min(self.max_backoff_s, self.backoff_s * 2 ** (state.attempt_number - 1))

    def _get(self, path: str, params: dict) -> httpx.Response:
        return self._retrying(self._get_once, path, params)

    def _get_once(self, path: str, params: dict) -> httpx.Response:
        if self._last_request is not None and self.min_interval_s > 0:
            remaining = self.min_interval_s - (self._clock() - self._last_request)
            if remaining > 0:
                self._sleep(remaining)
        self._last_request = self._clock()
        self.requests += 1
        try:
            response = self._client.get(self.base_url + path, params=params)
        except httpx.TransportError as error:
            raise TransientError(f"{self.base_url}{path}: {error}") from error
        if response.status_code in (418, 429):
            self.rate_limited += 1
            raise RateLimited(
                f"{response.url}: HTTP {response.status_code}", _retry_after(response)
            )
        if response.status_code >= 500:
            raise TransientError(f"{response.url}: HTTP {response.status_code}")
        if response.status_code >= 400:
            raise BackfillError(
                f"{response.url}: HTTP {response.status_code}: {response.text[:200]}"
            )
        return response

    @property
    def pairs(self) -> PairTable:
        """The exchange's pair list: fetched once (one attempt), else the bundled real list."""
        if self._pairs is None:
            try:
                self._pairs = self._fetch_pairs()
                self.pairs_source = "exchange"
            except (BackfillError, InputError):
                self._pairs = bundled_pairs(self.exchange)
                self.pairs_source = "bundled"
        return self._pairs

    def _fetch_pairs(self) -> PairTable:
        raise NotImplementedError

    def canonical(self, symbol: str) -> str:
        """``BASE-QUOTE`` of a canonical symbol or an exchange spelling, by the pair list."""
        return normalize_symbol(symbol) if "-" in symbol else normalize_symbol(symbol, self.pairs)

    def rest_name(self, symbol: str) -> str:
        """The pair name the exchange's REST API takes for a symbol in any spelling."""
        canonical = self.canonical(symbol)
        return self.pairs.rest_name(canonical) or to_exchange_symbol(self.exchange, canonical)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class KrakenRestClient(RestClient):
    """Kraken ``/0/public/Trades``: pages of up to 1,000 trades following the ``last`` cursor."""

    exchange = "kraken"
    default_url = "https://api.kraken.com"
    default_min_interval_s = 1.0
    default_max_backoff_s = 60.0

    def trades_page(self, pair: str, since: int, *, count: int = 1000) -> KrakenTradesPage:
        """One page (retried on rate limits): trades and the next ``last`` cursor.

        ``since`` is Kraken's nanosecond cursor (0 = the oldest trades).
        """
        return self._retrying(self._fetch_page, pair, since, count)

    def _fetch_pairs(self) -> PairTable:
        response = self._get_once("/0/public/AssetPairs", {})
        return parse_asset_pairs(response.content, str(response.url))

    def _fetch_page(self, pair: str, since: int, count: int) -> KrakenTradesPage:
        params = {"pair": self.rest_name(pair), "since": str(since), "count": str(count)}
        response = self._get_once("/0/public/Trades", params)
        source = str(response.url)
        reply = decode_reply(response.content, source)
        errors = [str(e) for e in reply.get("error") or []]
        if any(e.startswith(_KRAKEN_RATE_ERRORS) for e in errors):
            self.rate_limited += 1
            raise RateLimited(f"{source}: {', '.join(errors)}")
        symbol = self.canonical(pair)
        return parse_trades_reply(response.content, source, symbol=symbol, reply=reply)

    def trades(
        self, pair: str, since: int = 0, *, until_ns: int | None = None, count: int = 1000
    ) -> Iterator[Trade]:
        """Every trade from ``since`` (ns cursor) to now or ``until_ns``, each once, in order."""
        last_id: int | None = None
        cursor = since
        while True:
            page = self.trades_page(pair, cursor, count=count)
            fresh = [t for t in page.trades if last_id is None or t.trade_id > last_id]
            for trade in fresh:
                if until_ns is not None and trade.time_ns >= until_ns:
                    return
                yield trade
            if fresh:
                last_id = fresh[-1].trade_id
            if not fresh or page.last is None or page.last <= cursor:
                return  # caught up with the present
            cursor = page.last

    def trades_between_ids(
        self, symbol: str, first_id: int, last_id: int | None, *, since_ns: int
    ) -> list[Trade]:
        """Trades with ``first_id <= trade_id <= last_id`` (a gap the stream saw); ``last_id``
        None: every trade from ``first_id`` up to now (catching up after a reconnect).

        ``since_ns`` is a time before the gap (the last trade the stream had). Kraken's
        trade ids are sequential per pair, so a missing id after paging to the present is
        an error, never a silent hole.
        """
        found: list[Trade] = []
        if last_id is None:  # up to the present: a page short of a full one reached it
            cursor = since_ns
            while True:
                page = self.trades_page(symbol, cursor, count=1000)
                top = found[-1].trade_id if found else first_id - 1
                fresh = [t for t in page.trades if t.trade_id > top]
                found.extend(fresh)
                if len(page.trades) < 1000 or not fresh or page.last is None or page.last <= cursor:
                    return found
                cursor = page.last
        for trade in self.trades(symbol, since_ns):
            if trade.trade_id > last_id:
                break
            if trade.trade_id >= first_id:
                found.append(trade)
        missing = (last_id - first_id + 1) - len(found)
        if missing:
            raise BackfillError(
                f"Kraken returned {len(found)} of trades {first_id}..{last_id} "
                f"for {symbol}; {missing} missing"
            )
        return found


class BinanceRestClient(RestClient):
    """Binance ``/api/v3/klines`` (by ``startTime``) and ``/api/v3/aggTrades`` (by ``fromId``),
    ``limit=1000`` per request."""

    exchange = "binance"
    limit = 1000
    agg_window_ms = 3_600_000
    """aggTrades takes startTime and endTime at most an hour apart."""

    default_url = "https://api.binance.com"
    default_min_interval_s = 0.2
    default_max_backoff_s = 120.0

    def _fetch_pairs(self) -> PairTable:
        response = self._get_once("/api/v3/exchangeInfo", {})
        info = reply_json(response)
        symbols = info.get("symbols") if isinstance(info, dict) else None
        if not isinstance(symbols, list):
            raise InputError("exchangeInfo has no 'symbols' list", source=str(response.url))
        return PairTable.binance((s["symbol"], s["baseAsset"], s["quoteAsset"]) for s in symbols
                                 if isinstance(s, dict) and {"symbol", "baseAsset", "quoteAsset"} <= s.keys())

    def agg_trades(self, symbol: str, start_ms: int, end_ms: int) -> Iterator[Trade]:
        """Aggregate trades with ``start_ms <= T < end_ms``, oldest first, each once.

        The first request finds the first aggregate at or after ``start_ms`` (an hour's window,
        moved forward while empty); the rest page by ``fromId``. ``trade_id`` is the aggregate id.
        """
        canonical = self.canonical(symbol)
        params = {"symbol": self.rest_name(canonical), "limit": str(self.limit)}
        rows: list = []
        window = start_ms
        while not rows and window < end_ms:
            window_end = min(end_ms, window + self.agg_window_ms) - 1
            rows = self._agg_page({**params, "startTime": str(window), "endTime": str(window_end)})
            window = window_end + 1
        by_id = False
        while rows:
            for row in rows:
                trade = parse_agg_trade(row, canonical, self.base_url + "/api/v3/aggTrades")
                if trade.time_ns >= end_ms * 1_000_000:
                    return
                if trade.time_ns >= start_ms * 1_000_000:
                    yield trade
            if by_id and len(rows) < self.limit:
                return  # caught up with the present (a window's page ends with its window instead)
            rows = self._agg_page({**params, "fromId": str(int(rows[-1]["a"]) + 1)})
            by_id = True

    def _agg_page(self, params: dict) -> list:
        response = self._get("/api/v3/aggTrades", params)
        rows = reply_json(response)
        if not isinstance(rows, list):
            raise InputError(f"expected a list of aggregate trades, got {str(rows)[:200]}", source=str(response.url))
        return rows

    def klines(self, symbol: str, interval: str, start_ms: int, end_ms: int) -> Iterator[Candle]:
        """Candles opening in ``[start_ms, end_ms]``, oldest first, one request per 1,000."""
        canonical = self.canonical(symbol)
        tf_ns = timeframe_ns(interval)
        step_ms = tf_ns // 1_000_000
        params = {
            "symbol": self.rest_name(canonical),
            "interval": interval,
            "limit": str(self.limit),
        }
        start = start_ms
        while start <= end_ms:
            response = self._get(
                "/api/v3/klines", {**params, "startTime": str(start), "endTime": str(end_ms)}
            )
            source = str(response.url)
            rows = reply_json(response)
            if not isinstance(rows, list):
                raise InputError(f"expected a list of klines, got {str(rows)[:200]}", source=source)
            for index, row in enumerate(rows):
                if not isinstance(row, list) or len(row) < 11:
                    raise InputError(f"kline {index + 1} is not a 12-field array", source=source)
                yield parse_kline(row, canonical, interval, tf_ns, source, None)
            if len(rows) < self.limit:
                return
            start = int(rows[-1][0]) + step_ms


def reply_json(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        raise InputError("not valid JSON", source=str(response.url)) from None
