"""A local HTTP server answering the exchanges' public REST shapes from the real Kraken trades.

- Kraken ``/0/public/Trades``: pages cut from the real reply (``last`` = the page's last trade
  time in ns; the final page carries the file's real ``last``), the ``EAPI:Rate limit exceeded``
  reply, HTTP 429 and 500 on request; ``/0/public/AssetPairs``: the entries of Kraken's pairs
  as rtml bundles them (key, altname, wsname, base, quote).
- Binance ``/api/v3/klines`` rows and ``/api/v3/aggTrades`` objects made from the same real
  trades (one aggregate per trade, times cut to milliseconds), ``/api/v3/exchangeInfo``, and
  418/429 with ``Retry-After`` on request.
- Coinbase Exchange ``/products/BTC-USDT/trades``: the same trades newest first, paged back by
  ``after`` (ids below it) with ``CB-BEFORE``/``CB-AFTER`` headers, ``side`` the maker's.

``ExchangeServer.only_ids`` narrows the trades served (a day whose trades the exchange lacks).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

from tests.ingest.realdata import KRAKEN_TRADES, kraken_rows, reference_candles, row_time_ns

REAL_LAST = json.loads(KRAKEN_TRADES.read_text())["result"]["last"]
KRAKEN_ASSET_PAIRS = {  # real AssetPairs keys and names of the pairs the tests use
    "XXBTZUSD": {"altname": "XBTUSD", "wsname": "XBT/USD", "base": "XXBT", "quote": "ZUSD"},
    "XBTUSDT": {"altname": "XBTUSDT", "wsname": "XBT/USDT", "base": "XXBT", "quote": "USDT"},
    "TUSDUSD": {"altname": "TUSDUSD", "wsname": "TUSD/USD", "base": "TUSD", "quote": "ZUSD"},
}
BINANCE_SYMBOLS = [
    {"symbol": "BTCUSDT", "baseAsset": "BTC", "quoteAsset": "USDT", "status": "TRADING"},
    {"symbol": "BTCTUSD", "baseAsset": "BTC", "quoteAsset": "TUSD", "status": "TRADING"},
]


@dataclass
class Script:
    """What the local exchange answers; ``hiccups`` are served first, one per request."""

    kraken_hiccups: list[str] = field(default_factory=list)
    binance_hiccups: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    serve_pairs: bool = True
    drop_ids: set[int] = field(default_factory=set)

    def paths(self, path: str) -> list[str]:
        """The requests to one endpoint, in order."""
        return [r for r in self.requests if urlparse(r).path == path]


def _number(value: object) -> object:
    if isinstance(value, Decimal):
        return float(value)  # only the trade time is a JSON number; float keeps its digits
    raise TypeError(value)


class ExchangeHandler(BaseHTTPRequestHandler):
    script: Script
    all_rows: ClassVar[list[list]] = kraken_rows()
    klines: ClassVar[list[list]] = [
        [c["start_ns"] // 1_000_000, str(c["open"]), str(c["high"]), str(c["low"]), str(c["close"]),
         str(c["volume"]), c["start_ns"] // 1_000_000 + 59_999, str(c["notional"]), c["count"], "0", "0", "0"]
        for c in reference_candles(kraken_rows(), 60)
    ]

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    @property
    def rows(self) -> list[list]:
        drop = self.script.drop_ids
        return [r for r in self.all_rows if r[6] not in drop] if drop else self.all_rows

    def _send(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.script.requests.append(self.path)
        routes = {
            "/0/public/Trades": self._kraken_trades,
            "/0/public/AssetPairs": self._kraken_pairs,
            "/api/v3/klines": self._binance_klines,
            "/api/v3/aggTrades": self._binance_agg_trades,
            "/api/v3/exchangeInfo": self._binance_info,
        }
        if url.path == "/products/BTC-USDT/trades":
            return self._coinbase_trades(query)
        route = routes.get(url.path)
        if route is None or (not self.script.serve_pairs and url.path in ("/0/public/AssetPairs",
                                                                          "/api/v3/exchangeInfo")):
            return self._send(404, {"error": ["EGeneral:Unknown method"]})
        route(query)

    def _kraken_pairs(self, query: dict[str, str]) -> None:
        self._send(200, {"error": [], "result": KRAKEN_ASSET_PAIRS})

    def _kraken_trades(self, query: dict[str, str]) -> None:
        if self.script.kraken_hiccups:
            hiccup = self.script.kraken_hiccups.pop(0)
            if hiccup == "rate-limit":
                return self._send(200, {"error": ["EAPI:Rate limit exceeded"]})
            if hiccup == "429":
                return self._send(429, b"Too Many Requests")
            if hiccup == "500":
                return self._send(500, b"oops")
        if query.get("pair") not in ("XBTUSDT", "BTC/USDT"):
            return self._send(200, {"error": ["EQuery:Unknown asset pair"]})
        since, count = int(query.get("since", "0")), int(query.get("count", "1000"))
        rows = self.rows
        page = [r for r in rows if row_time_ns(r) >= since][:count]  # inclusive, like a cursor
        if page and page[-1] is rows[-1]:
            last = REAL_LAST
        else:
            last = str(row_time_ns(page[-1])) if page else str(since)
        text = json.dumps({"error": [], "result": {"XBTUSDT": page, "last": last}}, default=_number)
        self._send(200, text.encode())

    def _binance_hiccup(self) -> bool:
        if self.script.binance_hiccups:
            code = int(self.script.binance_hiccups.pop(0))
            self._send(code, {"code": -1003, "msg": "Too many requests"}, {"Retry-After": "3"})
            return True
        return False

    def _binance_klines(self, query: dict[str, str]) -> None:
        if self._binance_hiccup():
            return
        start, end = int(query["startTime"]), int(query["endTime"])
        limit = int(query["limit"])
        rows = [k for k in self.klines if start <= k[0] <= end][:limit]
        self._send(200, rows)

    def _binance_info(self, query: dict[str, str]) -> None:
        self._send(200, {"timezone": "UTC", "symbols": BINANCE_SYMBOLS})

    def _binance_agg_trades(self, query: dict[str, str]) -> None:
        if self._binance_hiccup():
            return
        if query.get("symbol") != "BTCUSDT":
            return self._send(400, {"code": -1121, "msg": "Invalid symbol."})
        aggregates = [
            {"a": r[6], "p": str(r[0]), "q": str(r[1]), "f": r[6], "l": r[6], "T": row_time_ns(r) // 1_000_000,
             "m": r[3] == "s", "M": True}
            for r in self.rows
        ]
        limit = int(query.get("limit", "500"))
        if "fromId" in query:
            picked = [a for a in aggregates if a["a"] >= int(query["fromId"])]
        else:
            start, end = int(query["startTime"]), int(query["endTime"])
            if end - start > 3_600_000:
                return self._send(400, {"code": -1127, "msg": "More than 1 hours between startTime and endTime."})
            picked = [a for a in aggregates if start <= a["T"] <= end]
        self._send(200, picked[:limit])


    def _coinbase_trades(self, query: dict[str, str]) -> None:
        newest_first = sorted(self.rows, key=lambda r: r[6], reverse=True)
        if "after" in query:
            newest_first = [r for r in newest_first if r[6] < int(query["after"])]
        page = newest_first[:min(1000, int(query.get("limit", "1000")))]
        items = [{"time": coinbase_time(row_time_ns(r)), "trade_id": r[6], "price": str(r[0]), "size": str(r[1]),
                  "side": "sell" if r[3] == "b" else "buy"} for r in page]  # the maker's side
        headers = {"CB-BEFORE": str(page[0][6]), "CB-AFTER": str(page[-1][6])} if page else {}
        self._send(200, items, headers)


def coinbase_time(time_ns: int) -> str:
    """ISO 8601 UTC with microseconds, as Coinbase writes trade times."""
    seconds, rest = divmod(time_ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rest // 1000:06d}Z"


@contextmanager
def serve_exchange(script: Script | None = None) -> Iterator[tuple[str, Script]]:
    """The local exchange on a free port: (base URL, script)."""
    script = script or Script()
    handler = type("Handler", (ExchangeHandler,), {"script": script})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script
    finally:
        server.shutdown()
        server.server_close()
