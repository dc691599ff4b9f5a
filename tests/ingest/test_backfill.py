"""REST backfill clients against a local HTTP server replaying the real Kraken trades.

The server speaks the recorded shapes: Kraken ``/0/public/Trades`` pages cut from the real
reply (``last`` = the page's last trade time in ns; the final page carries the file's real
``last``), Kraken's ``EAPI:Rate limit exceeded`` reply, HTTP 429 and Binance's 418 with
``Retry-After``, and Binance ``/api/v3/klines`` rows made from the same real trades.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
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
from rtml_core.ingest.coinbase import CoinbaseRestClient
from rtml_core.stores.offline import open_offline_store
from tests.ingest.exchanges import REAL_LAST, Script, serve_exchange
from tests.ingest.realdata import KRAKEN_TRADES, kraken_rows, reference_candles, row_time_ns


@pytest.fixture
def exchange() -> Iterator[tuple[str, Script]]:
    with serve_exchange() as served:
        yield served


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
    assert script.paths("/0/public/AssetPairs") == ["/0/public/AssetPairs"]  # the pair list, once
    cursors = [int(parse_qs(urlparse(r).query)["since"][0]) for r in script.paths("/0/public/Trades")]
    assert cursors[:4] == [0, 0, 0, 0]  # the retried first page
    assert cursors[4:] == [row_time_ns(kraken_rows()[i]) for i in (299, 598, 897)] + [
        int(REAL_LAST)
    ]


def test_kraken_client_paces_requests(exchange):
    url, _ = exchange
    sleeps: list[float] = []
    with _kraken(url, sleeps, min_interval_s=1.0, clock=lambda: 100.0) as client:
        list(client.trades("BTC-USDT", 0, count=400))
    assert client.requests == 5 and sleeps == [1.0] * 4  # the pair list, then four pages


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
    assert client.requests == 1 + 2 + pages + (1 if len(reference) % 100 == 0 else 0)  # + exchangeInfo
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


@pytest.mark.parametrize("serve_pairs", [True, False], ids=["exchange-list", "bundled-list"])
def test_pair_spellings_map_through_the_exchange_pair_list(exchange, serve_pairs):
    url, script = exchange
    script.serve_pairs = serve_pairs
    with _kraken(url, []) as kraken, BinanceRestClient(url, min_interval_s=0) as binance:
        assert kraken.canonical("XBTUSD") == "BTC-USD"  # not XB-TUSD (TUSD is a quote too)
        assert kraken.canonical("XXBTZUSD") == "BTC-USD" and kraken.canonical("TUSDUSD") == "TUSD-USD"
        assert kraken.rest_name("BTC-USDT") == "XBTUSDT" and kraken.rest_name("XBT/USDT") == "XBTUSDT"
        assert binance.canonical("BTCTUSD") == "BTC-TUSD" and binance.rest_name("BTC-USDT") == "BTCUSDT"
        trades = list(kraken.trades("XBTUSDT", 0))
        assert kraken.pairs_source == binance.pairs_source == ("exchange" if serve_pairs else "bundled")
    assert {t.symbol for t in trades} == {"BTC-USDT"} and len(trades) == 1000
    assert len(script.paths("/0/public/AssetPairs")) == 1  # fetched once per client


def test_binance_agg_trades_page_by_from_id_within_the_window(exchange):
    url, script = exchange
    rows = kraken_rows()
    start_ms, end_ms = row_time_ns(rows[100]) // 1_000_000, row_time_ns(rows[900]) // 1_000_000
    client = BinanceRestClient(url, min_interval_s=0)
    client.limit = 100
    with client:
        trades = list(client.agg_trades("BTC-USDT", start_ms, end_ms))
    expected = [r for r in rows if start_ms <= row_time_ns(r) // 1_000_000 < end_ms]
    assert [t.trade_id for t in trades] == [r[6] for r in expected]
    assert [(t.price, t.size, t.side) for t in trades] == [
        (Decimal(r[0]), Decimal(r[1]), "buy" if r[3] == "b" else "sell") for r in expected]
    assert {(t.exchange, t.symbol) for t in trades} == {("binance", "BTC-USDT")}
    pages = script.paths("/api/v3/aggTrades")
    assert "startTime" in pages[0] and all("fromId" in p for p in pages[1:]) and len(pages) >= 8


def test_coinbase_trades_of_a_day_by_id_bisection_and_after_pages(exchange):
    url, script = exchange
    rows = kraken_rows()
    start, end = row_time_ns(rows[100]) // 1000 * 1000, row_time_ns(rows[900]) // 1000 * 1000
    client = CoinbaseRestClient(url, min_interval_s=0)
    client.limit = 200
    with client:
        trades = list(client.trades("BTC-USDT", start, end))
    expected = [r for r in rows if start <= row_time_ns(r) // 1000 * 1000 < end]
    assert [t.trade_id for t in trades] == [r[6] for r in expected]
    assert [(t.price, t.size, t.side) for t in trades] == [
        (Decimal(r[0]), Decimal(r[1]), "buy" if r[3] == "b" else "sell") for r in expected]  # taker side
    assert [t.time_ns for t in trades] == [row_time_ns(r) // 1000 * 1000 for r in expected]
    assert {(t.exchange, t.symbol) for t in trades} == {("coinbase", "BTC-USDT")}
    pages = script.paths("/products/BTC-USDT/trades")
    assert sum("limit=1&" in p or p.endswith("limit=1") for p in pages) <= 26  # log2 of the newest id
    with CoinbaseRestClient(url, min_interval_s=0) as client:
        assert list(client.trades("BTC-USDT", 0, row_time_ns(rows[0]) // 1000 * 1000)) == []
