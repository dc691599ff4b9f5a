"""Coinbase Advanced Trade source against a local server speaking its protocol (acks as
``subscriptions`` messages, per-connection ``sequence_num``, heartbeats), with the real
level2 capture."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

from rtml_core.book import OrderBook
from rtml_core.schemas import BookLevel, BookUpdate, Trade
from rtml_stream.metrics import StreamMetrics
from rtml_stream.sources.coinbase import CoinbaseSource
from tests.conftest import FIXTURES
from tests.stream.helpers import FAST_RECONNECT, take, wait_for_value
from tests.stream.wsservers import (
    CoinbaseServer,
    LocalHttpServer,
    Session,
    SkipSequence,
    Verbatim,
    WaitSubscribe,
)

CAPTURE = (FIXTURES / "coinbase_l2_data_capture.jsonl").read_text().splitlines()
L2_SNAPSHOT, L2_REST = CAPTURE[0], CAPTURE[1:]
NON_EMPTY_UPDATES = [line for line in L2_REST if '"l2_data"' in line and '"updates":[]' not in line]


def expected_book(lines: list[str]) -> OrderBook:
    """The capture applied the plain way: snapshot replaces, updates set sizes, 0 deletes."""
    book = OrderBook()
    for line in lines:
        message = json.loads(line)
        if message["channel"] != "l2_data":
            continue
        for event in message["events"]:
            bids = [
                BookLevel(Decimal(u["price_level"]), Decimal(u["new_quantity"]))
                for u in event["updates"]
                if u["side"] == "bid"
            ]
            asks = [
                BookLevel(Decimal(u["price_level"]), Decimal(u["new_quantity"]))
                for u in event["updates"]
                if u["side"] == "offer"
            ]
            (book.apply_snapshot if event["type"] == "snapshot" else book.apply_update)(bids, asks)
    return book


def market_trades(trades: list[tuple[int, str, str, str]], kind: str = "update") -> str:
    """A ``market_trades`` message in Coinbase's documented shape (newest first, as Coinbase sends)."""
    items = [
        {
            "trade_id": str(trade_id),
            "product_id": "BTC-USD",
            "price": price,
            "size": size,
            "side": side,
            "time": f"2026-08-24T22:34:{13 + trade_id % 40:02d}.{trade_id:06d}Z",
        }
        for trade_id, price, size, side in reversed(trades)
    ]
    return json.dumps(
        {
            "channel": "market_trades",
            "client_id": "",
            "timestamp": "2026-08-24T22:34:14.0Z",
            "sequence_num": 0,
            "events": [{"type": kind, "trades": items}],
        }
    )


def _source(url: str, metrics: StreamMetrics, **kwargs) -> CoinbaseSource:
    options = {
        "url": url,
        "metrics": metrics,
        "idle_timeout": 1.0,
        "reconnect": FAST_RECONNECT,
        "ping_interval": None,
        "trade_backfill": None,
    }
    options.update(kwargs)
    return CoinbaseSource(["BTC-USD"], **options)


async def test_real_level2_capture_builds_the_book() -> None:
    metrics = StreamMetrics()
    server = CoinbaseServer(
        [Session(list(L2_REST))],
        l2_snapshot=L2_SNAPSHOT,
        expected_channels=("level2", "heartbeats"),
    )
    async with server:
        source = _source(server.url, metrics, channels=("level2",))
        updates = await take(source.events(), 1 + len(NON_EMPTY_UPDATES), kind=BookUpdate)
        await source.close()
    assert updates[0].is_snapshot and len(updates[0].bids) == 15 and len(updates[0].asks) == 15
    assert not any(u.is_snapshot for u in updates[1:])
    book, want = source.books["BTC-USD"], expected_book(CAPTURE)
    assert list(book.bids.items()) == list(want.bids.items())
    assert list(book.asks.items()) == list(want.asks.items())
    assert book.best_bid() == (Decimal("78856.05"), Decimal("0.04868904"))
    assert book.best_ask() == (Decimal("78856.06"), Decimal("0.08023149"))
    assert updates[-1].time_ns == 1787610854005584000  # 2026-08-24T22:34:14.005584Z
    assert metrics.total("sequence_gaps") == 0 and metrics.total("malformed_messages") == 0
    channels = [m["channel"] for m in server.received]
    assert channels == ["level2", "heartbeats"]
    assert server.received[0] == {
        "type": "subscribe",
        "product_ids": ["BTC-USD"],
        "channel": "level2",
    }


async def test_market_trades_take_the_opposite_of_the_makers_side() -> None:
    metrics = StreamMetrics()
    message = market_trades([(101, "78856.06", "0.01", "BUY"), (102, "78856.05", "0.5", "SELL")])
    server = CoinbaseServer([Session([message])], expected_channels=("market_trades", "heartbeats"))
    async with server:
        source = _source(server.url, metrics, channels=("market_trades",))
        trades = await take(source.events(), 2)
        await source.close()
    assert [(t.trade_id, t.side) for t in trades] == [(101, "sell"), (102, "buy")]  # in id order
    assert trades[0] == Trade(
        "coinbase", "BTC-USD", 101, trades[0].time_ns, Decimal("78856.06"), Decimal("0.01"), "sell"
    )


async def test_sequence_gap_resubscribes_level2_for_a_fresh_snapshot() -> None:
    steps = [
        L2_REST[0],
        L2_REST[1],
        SkipSequence(),
        L2_REST[4],
        WaitSubscribe("level2", 2),
        *L2_REST,
    ]
    metrics = StreamMetrics()
    server = CoinbaseServer(
        [Session(steps)], l2_snapshot=L2_SNAPSHOT, expected_channels=("level2", "heartbeats")
    )
    async with server:
        source = _source(server.url, metrics, channels=("level2",))
        # snapshot, update (line 2), [gap: line 5 dropped], fresh snapshot, every update again
        updates = await take(source.events(), 3 + len(NON_EMPTY_UPDATES), kind=BookUpdate)
        await source.close()
    assert [u.is_snapshot for u in updates[:3]] == [True, False, True]
    assert metrics.value("sequence_gaps", exchange="coinbase", symbol="*") == 1
    assert metrics.value("resubscribes", exchange="coinbase", reason="sequence_gap") == 1
    assert [(m["type"], m["channel"]) for m in server.received][2:] == [
        ("unsubscribe", "level2"),
        ("subscribe", "level2"),
    ]
    want = expected_book(CAPTURE)
    assert list(source.books["BTC-USD"].asks.items()) == list(want.asks.items())
    assert list(source.books["BTC-USD"].bids.items()) == list(want.bids.items())


async def test_missing_heartbeats_then_a_dropped_connection_reconnect_and_resubscribe() -> None:
    batch = lambda ids: market_trades(
        [(i, "78856.00", "0.1", "BUY" if i % 3 else "SELL") for i in ids]
    )
    sessions = [
        Session([batch(range(1, 11))], end="silence"),
        Session([batch(range(8, 21))], end="abort"),
        Session([batch(range(21, 31))]),
    ]
    metrics = StreamMetrics()
    server = CoinbaseServer(sessions, expected_channels=("market_trades", "heartbeats"))
    async with server:
        source = _source(server.url, metrics, channels=("market_trades",), idle_timeout=0.3)
        trades = await take(source.events(), 30)
        await source.close()
    assert [t.trade_id for t in trades] == list(range(1, 31))
    assert metrics.value("duplicate_trades", exchange="coinbase", symbol="BTC-USD") == 3
    assert metrics.value("reconnects", exchange="coinbase", reason="idle_timeout") == 1
    assert metrics.value("reconnects", exchange="coinbase", reason="closed") == 1
    assert server.connection_count == 3
    assert sum(1 for m in server.received if m["channel"] == "market_trades") == 3


async def test_kill_and_restart_resumes_the_stream() -> None:
    batch = lambda ids: market_trades([(i, "78856.00", "0.1", "BUY") for i in ids])
    metrics = StreamMetrics()
    server = CoinbaseServer(
        [Session([batch(range(1, 6))]), Session([batch(range(6, 11))])],
        expected_channels=("market_trades", "heartbeats"),
    )
    await server.start()
    source = _source(server.url, metrics, channels=("market_trades",))
    consumer = asyncio.create_task(take(source.events(), 10, timeout=10))
    await wait_for_value(
        lambda: metrics.value("trades_in", exchange="coinbase", symbol="BTC-USD") == 5
    )
    await server.kill()
    await asyncio.sleep(0.2)
    await server.start()
    trades = await consumer
    await source.close()
    await server.kill()
    assert [t.trade_id for t in trades] == list(range(1, 11))
    assert metrics.value("reconnects", exchange="coinbase", reason="connect_failed") >= 1


async def test_malformed_messages_are_counted_and_skipped() -> None:
    bad_side = json.loads(market_trades([(5, "1", "1", "MIDDLE")]))
    bad_id = json.loads(market_trades([(6, "1", "1", "BUY")]))
    bad_id["events"][0]["trades"][0]["trade_id"] = "abc-uuid"
    steps = [
        Verbatim("]]"),
        '{"channel":"candles","client_id":"","timestamp":"2026-08-24T22:34:14.0Z","sequence_num":0,"events":[]}',
        json.dumps(bad_side),
        json.dumps(bad_id),
        L2_REST[1],  # an l2 update before any snapshot
        Verbatim('{"channel":"heartbeats","sequence_num":0,"events":[]}'),  # goes backwards
        '{"channel":"market_trades","timestamp":"x","sequence_num":0,"events":[{"type":"update","trades":7}]}',
        market_trades([(9, "78856.00", "0.1", "BUY")]),
    ]
    metrics = StreamMetrics()
    server = CoinbaseServer([Session(steps)])
    async with server:
        source = _source(server.url, metrics)
        trades = await take(source.events(), 1)
        await source.close()
    assert trades[0].trade_id == 9
    count = lambda reason: metrics.value("malformed_messages", exchange="coinbase", reason=reason)
    assert count("bad_json") == 1
    assert count("unknown_channel") == 1
    assert (
        count("wrong_types") == 3
    )  # a side that is neither; a trade id that is not a number; trades: 7
    assert count("update_before_snapshot") == 1
    assert count("stale_sequence") == 1
    assert metrics.total("reconnects") == 0


def rest_trades_route(trades: list[tuple[int, str, str, str]]):
    """``GET /products/BTC-USD/trades?limit=&after=`` as Coinbase Exchange answers: newest first,
    ``after`` = only trades older than that id, the ``CB-AFTER`` cursor in a header (not modelled:
    the client falls back to the oldest id of the page)."""

    def route(query: dict) -> tuple[int, bytes]:
        limit = int(query.get("limit", ["1000"])[0])
        after = int(query["after"][0]) if "after" in query else None
        rows = [{"time": f"2026-08-24T22:34:{13 + i % 40:02d}.{i:06d}Z", "trade_id": i, "price": price,
                 "size": size, "side": side.lower()} for i, price, size, side in reversed(trades)
                if after is None or i < after]
        return 200, json.dumps(rows[:limit]).encode()

    return route


async def test_a_reconnect_catches_up_from_the_rest_trades_endpoint_before_live_trades() -> None:
    trades = [(i, "78856.00", "0.1", "BUY" if i % 3 else "SELL") for i in range(1, 41)]
    metrics = StreamMetrics()
    server = CoinbaseServer(
        [Session([market_trades(trades[:10])], end="abort"), Session([market_trades(trades[30:])])],
        expected_channels=("market_trades", "heartbeats"),
    )
    with LocalHttpServer({"/products/BTC-USD/trades": rest_trades_route(trades)}) as rest:
        async with server:
            source = _source(server.url, metrics, channels=("market_trades",), trade_backfill="default",
                             rest_url=rest.url)
            got = await take(source.events(), 40, timeout=10)
            await source.close()
    assert [t.trade_id for t in got] == list(range(1, 41))
    assert [t.side for t in got[10:13]] == ["sell", "buy", "sell"]  # the taker's side: the maker's opposite
    assert got[20].time_ns == got[20].time_ns // 1_000_000_000 * 1_000_000_000 + 21_000
    assert metrics.value("trades_backfilled", exchange="coinbase", symbol="BTC-USD") == 30
    assert metrics.value("gaps_unfilled", exchange="coinbase", symbol="BTC-USD") == 0
    assert rest.requests and all(path == "/products/BTC-USD/trades" for path, _ in rest.requests)
