"""REST backfill clients against a local HTTP server replaying the real Kraken trades.

The server speaks the recorded shapes: Kraken ``/0/public/Trades`` pages cut from the real
reply (``last`` = the page's last trade time in ns; the final page carries the file's real
``last``), Kraken's ``EAPI:Rate limit exceeded`` reply, HTTP 429 and Binance's 418 with
``Retry-After``, and Binance ``/api/v3/klines`` rows made from the same real trades.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from click.testing import CliRunner

from rtml_cli.main import cli
from rtml_core.errors import InputError
from rtml_core.ingest import read_trades
from rtml_core.ingest.backfill import (
    BackfillError,
    BinanceRestClient,
    KrakenRestClient,
    RateLimited,
)
from rtml_core.stores.offline import open_offline_store
from tests.ingest.realdata import KRAKEN_TRADES, kraken_rows, reference_candles, row_time_ns

REAL_LAST = json.loads(KRAKEN_TRADES.read_text())["result"]["last"]


@dataclass
class Script:
    """What the fake exchange answers; ``hiccups`` are served first, one per request."""

    kraken_hiccups: list[str] = field(default_factory=list)
    binance_hiccups: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


class ExchangeHandler(BaseHTTPRequestHandler):
    script: Script
    rows = kraken_rows()
    klines = [
        [
            c["start_ns"] // 1_000_000,
            str(c["open"]),
            str(c["high"]),
            str(c["low"]),
            str(c["close"]),
            str(c["volume"]),
            c["start_ns"] // 1_000_000 + 59_999,
            str(c["notional"]),
            c["count"],
            "0",
            "0",
            "0",
        ]
        for c in reference_candles(kraken_rows(), 60)
    ]

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.script.requests.append(self.path)
        if url.path == "/0/public/Trades":
            self._kraken_trades(query)
        elif url.path == "/api/v3/klines":
            self._binance_klines(query)
        else:
            self._send(404, {"error": ["EGeneral:Unknown method"]})

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
        page = [r for r in self.rows if row_time_ns(r) >= since][:count]  # inclusive, like a cursor
        if page and page[-1] is self.rows[-1]:
            last = REAL_LAST
        else:
            last = str(row_time_ns(page[-1])) if page else str(since)
        text = json.dumps({"error": [], "result": {"XBTUSDT": page, "last": last}}, default=_number)
        self._send(200, text.encode())

    def _binance_klines(self, query: dict[str, str]) -> None:
        if self.script.binance_hiccups:
            code = int(self.script.binance_hiccups.pop(0))
            return self._send(
                code, {"code": -1003, "msg": "Too many requests"}, {"Retry-After": "3"}
            )
        start, end = int(query["startTime"]), int(query["endTime"])
        limit = int(query["limit"])
        rows = [k for k in self.klines if start <= k[0] <= end][:limit]
        self._send(200, rows)


def _number(value: object) -> object:
    if isinstance(value, Decimal):
        return float(value)  # only the trade time is a JSON number; float keeps its digits
    raise TypeError(value)


@pytest.fixture
def exchange() -> Iterator[tuple[str, Script]]:
    script = Script()
    handler = type("Handler", (ExchangeHandler,), {"script": script})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", script
    server.shutdown()
    server.server_close()


def _kraken(url: str, sleeps: list[float], **options) -> KrakenRestClient:
    return KrakenRestClient(
        url,
        min_interval_s=options.pop("min_interval_s", 0),
        sleep=sleeps.append,
        backoff_s=0.5,
        **options,
    )


def test_kraken_pages_follow_the_last_cursor_through_rate_limits(exchange):
    url, script = exchange
    script.kraken_hiccups = ["rate-limit", "429", "500"]
    sleeps: list[float] = []
    with _kraken(url, sleeps) as client:
        trades = list(client.trades("XBTUSDT", 0, count=300))
    assert trades == list(read_trades(KRAKEN_TRADES, "kraken-rest"))  # every trade once, in order
    assert sleeps == [0.5, 1.0, 2.0]  # exponential backoff on the three hiccups
    assert client.rate_limited == 2
    cursors = [int(parse_qs(urlparse(r).query)["since"][0]) for r in script.requests]
    assert cursors[:4] == [0, 0, 0, 0]  # the retried first page
    assert cursors[4:] == [row_time_ns(kraken_rows()[i]) for i in (299, 598, 897)] + [
        int(REAL_LAST)
    ]


def test_kraken_client_paces_requests(exchange):
    url, _ = exchange
    sleeps: list[float] = []
    with _kraken(url, sleeps, min_interval_s=1.0, clock=lambda: 100.0) as client:
        list(client.trades("BTC-USDT", 0, count=400))
    assert client.requests == 4 and sleeps == [1.0, 1.0, 1.0]


def test_kraken_until_and_trade_id_gap_fill(exchange):
    url, _ = exchange
    rows = kraken_rows()
    with _kraken(url, []) as client:
        since, until = row_time_ns(rows[100]), row_time_ns(rows[200])
        upto = list(client.trades("XBTUSDT", since, until_ns=until))
        assert [t.trade_id for t in upto] == [r[6] for r in rows if since <= row_time_ns(r) < until]
        assert len(upto) >= 100
        gap = client.trades_between_ids(
            "BTC-USDT", 10218500, 10218700, since_ns=row_time_ns(rows[250])
        )
    assert [t.trade_id for t in gap] == list(range(10218500, 10218701))
    everything = {t.trade_id: t for t in read_trades(KRAKEN_TRADES, "kraken-rest")}
    assert gap == [everything[i] for i in range(10218500, 10218701)]
    with _kraken(url, []) as client, pytest.raises(BackfillError, match="missing"):
        client.trades_between_ids("BTC-USDT", 10219100, 10219300, since_ns=row_time_ns(rows[800]))


def test_kraken_gives_up_after_max_attempts_and_reports_errors(exchange):
    url, script = exchange
    script.kraken_hiccups = ["rate-limit"] * 5
    sleeps: list[float] = []
    with _kraken(url, sleeps, max_attempts=3) as client, pytest.raises(RateLimited):
        list(client.trades("XBTUSDT", 0))
    assert len(sleeps) == 2
    with _kraken(url, []) as client, pytest.raises(InputError, match="Unknown asset pair"):
        list(client.trades("DOGE-EUR", 0))


def test_binance_klines_paginate_and_honor_retry_after(exchange):
    url, script = exchange
    script.binance_hiccups = ["429", "418"]
    sleeps: list[float] = []
    client = BinanceRestClient(url, min_interval_s=0, sleep=sleeps.append)
    client.limit = 100
    reference = reference_candles(kraken_rows(), 60)
    start_ms = reference[0]["start_ns"] // 1_000_000
    end_ms = reference[-1]["start_ns"] // 1_000_000
    with client:
        candles = list(client.klines("BTC-USDT", "1m", start_ms, end_ms))
    assert sleeps == [3.0, 3.0]  # Retry-After, not the default backoff
    assert [c.start_ns for c in candles] == [r["start_ns"] for r in reference]
    assert [(c.open, c.high, c.low, c.close, c.volume, c.trade_count) for c in candles] == [
        (r["open"], r["high"], r["low"], r["close"], r["volume"], r["count"]) for r in reference
    ]
    assert {(c.exchange, c.symbol, c.timeframe) for c in candles} == {("binance", "BTC-USDT", "1m")}
    pages = -(-len(reference) // 100)
    assert client.requests == 2 + pages + (1 if len(reference) % 100 == 0 else 0)
    first = parse_qs(urlparse(script.requests[-pages]).query)
    assert first["symbol"] == ["BTCUSDT"] and first["limit"] == ["100"]


def test_backfill_commands_store_history(exchange, offline_url):
    url, _ = exchange
    runner = CliRunner()
    env = {"RTML_OFFLINE_URL": offline_url}
    result = runner.invoke(
        cli,
        [
            "backfill",
            "kraken",
            "--symbol",
            "XBTUSDT",
            "--since",
            "0",
            "--base-url",
            url,
            "--min-interval",
            "0",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output + result.stderr
    assert "stored 1000 Kraken trades" in result.output
    reference = reference_candles(kraken_rows(), 60)
    result = runner.invoke(
        cli,
        [
            "backfill",
            "binance",
            "--symbol",
            "BTC-USDT",
            "--timeframe",
            "1m",
            "--start",
            "2025-11-10T17:00:00Z",
            "--end",
            "2025-11-11T01:00:00Z",
            "--base-url",
            url,
            "--min-interval",
            "0",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output + result.stderr
    store = open_offline_store(offline_url)
    try:
        trades = store.read_trades("kraken", "BTC-USDT")
        candles = store.read_candles("binance", "BTC-USDT", "1m")
    finally:
        store.close()
    assert list(trades["trade_id"]) == list(range(10218208, 10219208))
    assert len(candles) == len(reference)
    result = runner.invoke(
        cli,
        ["backfill", "kraken", "--symbol", "XBTUSDT", "--since", "last week", "--base-url", url],
        env=env,
    )
    assert result.exit_code == 2 and "--since 'last week'" in result.stderr
