"""Kraken WebSocket v2 source against a local server speaking Kraken's protocol, with the real
book capture (checksums) and real REST trades (ids 10218208-10219207) for the gap backfill."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import pytest
import structlog.testing

from rtml_core.book import OrderBook
from rtml_core.schemas import BookLevel, BookUpdate, Trade
from rtml_stream.metrics import StreamMetrics
from rtml_stream.sources.base import ReconnectPolicy, SubscriptionError
from rtml_stream.sources.kraken import KrakenSource, kraken_checksum
from tests.conftest import DATA, FIXTURES
from tests.stream.helpers import FAST_RECONNECT, take, trade_key, wait_for_value
from tests.stream.wsservers import (
    KrakenServer,
    LocalHttpServer,
    Pause,
    Session,
    Verbatim,
    WaitSubscribe,
    kraken_rest_trades,
    kraken_trades_route,
    kraken_ws_trade_message,
)

BOOK_CAPTURE = FIXTURES / "kraken_book_v2_capture.jsonl"
REST_TRADES = DATA / "kraken_xbtusdt_trades_rest.json"
CAPTURE_LINES = BOOK_CAPTURE.read_text().splitlines()
SNAPSHOT, UPDATES = CAPTURE_LINES[2], CAPTURE_LINES[5:8]
PAIR, ROWS = kraken_rest_trades(REST_TRADES)


def _trade_messages(rows: list, per_message: int = 50) -> list[str]:
    return [
        kraken_ws_trade_message(rows[i : i + per_message], "BTC/USDT")
        for i in range(0, len(rows), per_message)
    ]


def _source(url: str, metrics: StreamMetrics, **kwargs) -> KrakenSource:
    options = {
        "url": url,
        "metrics": metrics,
        "channels": ("trade",),
        "backfill": None,
        "idle_timeout": 1.0,
        "reconnect": FAST_RECONNECT,
        "ping_interval": None,
    }
    options.update(kwargs)
    return KrakenSource(["BTC-USDT"], **options)


def test_capture_checksums_verify_line_by_line() -> None:
    import msgspec

    book = OrderBook(depth=10)
    verified = 0
    for line in CAPTURE_LINES:
        message = msgspec.json.Decoder(float_hook=Decimal).decode(line)
        if message.get("channel") != "book":
            continue
        (data,) = message["data"]
        bids = [BookLevel(lv["price"], lv["qty"]) for lv in data["bids"]]
        asks = [BookLevel(lv["price"], lv["qty"]) for lv in data["asks"]]
        if message["type"] == "snapshot":
            book.apply_snapshot(bids, asks)
        else:
            book.apply_update(bids, asks)
        assert len(book.bids) == 10 and len(book.asks) == 10
        assert kraken_checksum(book) == data["checksum"], line[:120]
        verified += 1
    assert verified == 4


def test_checksum_changes_when_a_quantity_differs() -> None:
    snapshot = json.loads(SNAPSHOT, parse_float=Decimal)["data"][0]
    book = OrderBook(depth=10)
    book.apply_snapshot(
        [BookLevel(lv["price"], lv["qty"]) for lv in snapshot["bids"]],
        [BookLevel(lv["price"], lv["qty"]) for lv in snapshot["asks"]],
    )
    assert kraken_checksum(book) == snapshot["checksum"]
    best_bid_price = book.best_bid()[0]
    book.apply_update([BookLevel(best_bid_price, Decimal("0.01266504"))], [])
    assert kraken_checksum(book) != snapshot["checksum"]


async def test_book_capture_over_websocket_verifies_every_message() -> None:
    metrics = StreamMetrics()
    server = KrakenServer(
        [Session(list(UPDATES))], book_snapshots={"BTC/USD": SNAPSHOT}, expected_channels=("book",)
    )
    async with server:
        source = KrakenSource(
            ["BTC-USD"],
            url=server.url,
            channels=("book",),
            depth=10,
            metrics=metrics,
            backfill=None,
            idle_timeout=1.0,
            reconnect=FAST_RECONNECT,
            ping_interval=None,
        )
        updates = await take(source.events(), 4, kind=BookUpdate)
        await source.close()
    assert [u.is_snapshot for u in updates] == [True, False, False, False]
    assert [u.checksum for u in updates] == [
        json.loads(line)["data"][0]["checksum"] for line in [SNAPSHOT, *UPDATES]
    ]
    assert updates[0].symbol == "BTC-USD" and len(updates[0].bids) == 10
    assert kraken_checksum(source.books["BTC-USD"]) == updates[-1].checksum
    assert metrics.value("checksum_failures", exchange="kraken", symbol="BTC-USD") == 0
    assert metrics.value("book_updates_in", exchange="kraken", symbol="BTC-USD") == 4
    assert metrics.total("malformed_messages") == 0
    subscribe = next(m for m in server.received if m["method"] == "subscribe")
    assert subscribe["params"] == {
        "channel": "book",
        "symbol": ["BTC/USD"],
        "depth": 10,
        "snapshot": True,
    }


async def test_checksum_mismatch_resubscribes_for_a_fresh_snapshot() -> None:
    corrupted = json.loads(UPDATES[1])
    corrupted["data"][0]["bids"][0]["qty"] = (
        0.01378632  # one satoshi off: our book no longer matches
    )
    steps = [UPDATES[0], json.dumps(corrupted), WaitSubscribe("book", 2), *UPDATES]
    metrics = StreamMetrics()
    server = KrakenServer(
        [Session(steps)], book_snapshots={"BTC/USD": SNAPSHOT}, expected_channels=("book",)
    )
    async with server:
        source = KrakenSource(
            ["BTC-USD"],
            url=server.url,
            channels=("book",),
            metrics=metrics,
            backfill=None,
            idle_timeout=1.0,
            reconnect=FAST_RECONNECT,
            ping_interval=None,
        )
        updates = await take(source.events(), 6, kind=BookUpdate)
        await source.close()
    checksums = [json.loads(line)["data"][0]["checksum"] for line in [SNAPSHOT, *UPDATES]]
    # snapshot, update 1, (corrupted update dropped), fresh snapshot, updates 1-3
    assert [u.checksum for u in updates] == [
        checksums[0],
        checksums[1],
        checksums[0],
        *checksums[1:],
    ]
    assert [u.is_snapshot for u in updates] == [True, False, True, False, False, False]
    assert metrics.value("checksum_failures", exchange="kraken", symbol="BTC-USD") == 1
    assert metrics.value("resubscribes", exchange="kraken", reason="checksum_mismatch") == 1
    methods = [(m["method"], m["params"]["channel"]) for m in server.received]
    assert methods == [("subscribe", "book"), ("unsubscribe", "book"), ("subscribe", "book")]
    assert kraken_checksum(source.books["BTC-USD"]) == checksums[-1]


async def test_trades_are_normalized_with_the_takers_side() -> None:
    metrics = StreamMetrics()
    server = KrakenServer([Session(_trade_messages(ROWS[:20], per_message=7))])
    async with server:
        source = _source(server.url, metrics)
        trades = await take(source.events(), 20)
        await source.close()
    first = ROWS[0]
    assert trades[0].symbol == "BTC-USDT" and trades[0].exchange == "kraken"
    assert trades[0].trade_id == first[6] == 10218208
    assert str(trades[0].price) == "105433.60000" and str(trades[0].size) == "0.00027625"
    assert [t.side for t in trades] == ["buy" if r[3] == "b" else "sell" for r in ROWS[:20]]
    assert trades[0].time_ns == 1762795433971744000  # v2 timestamps carry microseconds
    assert [t.trade_id for t in trades] == list(range(10218208, 10218228))
    assert metrics.value("trades_in", exchange="kraken", symbol="BTC-USDT") == 20


def _rest_backfill(base_url: str):
    from rtml_core.ingest.backfill import KrakenRestClient

    return KrakenRestClient(
        base_url=base_url, min_interval_s=0.0, max_attempts=2, backoff_s=0.01
    ).trades_between_ids


async def _all_trades_without_disconnect() -> list[Trade]:
    server = KrakenServer([Session(_trade_messages(ROWS))])
    async with server:
        source = _source(server.url, StreamMetrics())
        trades = await take(source.events(), len(ROWS))
        await source.close()
    return trades


async def test_kill_and_restart_backfills_the_trade_id_gap() -> None:
    """Kill the server after 300 trades; it comes back 200 trades later. The source reconnects
    with backoff, resubscribes, catches up from REST first (every trade after id 299 the REST
    server has: the 700 up to its present), skips the live trades it already has, and the
    sequence out equals the sequence with no disconnect."""
    expected = await _all_trades_without_disconnect()
    metrics = StreamMetrics()
    before, after = _trade_messages(ROWS[:300]), _trade_messages(ROWS[500:])
    with LocalHttpServer({"/0/public/Trades": kraken_trades_route(PAIR, ROWS)}) as rest:
        server = KrakenServer([Session(before), Session(after)])
        await server.start()
        source = _source(server.url, metrics, backfill=_rest_backfill(rest.url))
        consumer = asyncio.create_task(take(source.events(), 1000, timeout=10))
        await wait_for_value(
            lambda: metrics.value("trades_in", exchange="kraken", symbol="BTC-USDT") == 300
        )
        await server.kill()
        await asyncio.sleep(
            0.3
        )  # the consumer keeps reading: the source retries against a closed port
        await server.start()
        got = await consumer
        await source.close()
        await server.kill()
    assert [trade_key(t) for t in got] == [trade_key(t) for t in expected]
    assert all(
        abs(a.time_ns - b.time_ns) < 1_000 for a, b in zip(got, expected)
    )  # REST vs WS time rounding
    assert metrics.value("gaps_backfilled", exchange="kraken", symbol="BTC-USDT") == 1
    assert metrics.value("trades_backfilled", exchange="kraken", symbol="BTC-USDT") == 700
    assert metrics.value("trades_in", exchange="kraken", symbol="BTC-USDT") == 1000
    assert metrics.total("reconnects", exchange="kraken") >= 2  # the drop, then refused attempts
    assert metrics.value("reconnects", exchange="kraken", reason="connect_failed") >= 1
    assert len([m for m in server.received if m["method"] == "subscribe"]) == 2
    delays = list(source.reconnect_delays)
    assert all(0 <= d <= FAST_RECONNECT.maximum for d in delays)
    assert any(path == "/0/public/Trades" for path, _ in rest.requests)


async def test_missing_heartbeats_trigger_reconnect_and_resubscribe() -> None:
    metrics = StreamMetrics()
    server = KrakenServer(
        [
            Session(_trade_messages(ROWS[:100]), end="silence"),
            Session(_trade_messages(ROWS[100:200])),
        ]
    )
    async with server:
        source = _source(server.url, metrics, idle_timeout=0.3)
        trades = await take(source.events(), 200)
        await source.close()
    assert [t.trade_id for t in trades] == [r[6] for r in ROWS[:200]]
    assert metrics.value("reconnects", exchange="kraken", reason="idle_timeout") == 1
    assert server.connection_count == 2
    assert metrics.total("gaps_unfilled") == 0


async def test_duplicates_after_reconnect_are_skipped() -> None:
    metrics = StreamMetrics()
    server = KrakenServer(
        [Session(_trade_messages(ROWS[:60]), end="close"), Session(_trade_messages(ROWS[40:100]))]
    )
    async with server:
        source = _source(server.url, metrics)
        trades = await take(source.events(), 100)
        await source.close()
    assert [t.trade_id for t in trades] == [r[6] for r in ROWS[:100]]
    assert metrics.value("duplicate_trades", exchange="kraken", symbol="BTC-USDT") == 20
    assert metrics.value("reconnects", exchange="kraken", reason="closed") == 1


async def test_gap_without_backfill_is_counted_not_invented() -> None:
    metrics = StreamMetrics()
    server = KrakenServer([Session(_trade_messages(ROWS[:10]) + _trade_messages(ROWS[15:20]))])
    async with server:
        source = _source(server.url, metrics)
        trades = await take(source.events(), 15)
        await source.close()
    assert [t.trade_id for t in trades] == [r[6] for r in ROWS[:10] + ROWS[15:20]]
    assert metrics.value("gaps_unfilled", exchange="kraken", symbol="BTC-USDT") == 1


async def test_malformed_messages_are_counted_logged_and_skipped() -> None:
    good = _trade_messages(ROWS[:10], per_message=5)
    bad_types = json.loads(good[0])
    bad_types["data"][0]["price"] = "not a price"
    update_before_snapshot = UPDATES[0].replace("BTC/USD", "BTC/USDT")
    steps = [
        Verbatim("this is not json"),
        good[0],
        Verbatim('{"channel":"ohlc","type":"update","data":[]}'),
        Verbatim(json.dumps(bad_types)),
        Verbatim("[1, 2, 3]"),
        Verbatim(update_before_snapshot),
        Verbatim(
            '{"channel":"trade","type":"update","data":[{"symbol":"DOGE/EUR","side":"buy","price":1,'
            '"qty":1,"ord_type":"limit","trade_id":1,"timestamp":"2024-07-27T21:16:00.512060Z"}]}'
        ),
        Verbatim(
            '{"channel":"trade","type":"update","data":[{"symbol":"BTC/USDT","side":"buy","price":1,'
            '"qty":1,"ord_type":"limit","trade_id":1,"timestamp":"yesterday"}]}'
        ),
        Pause(0.01),
        good[1],
    ]
    metrics = StreamMetrics()
    server = KrakenServer([Session(steps)])
    async with server:
        source = _source(server.url, metrics, channels=("trade", "book"))
        with structlog.testing.capture_logs() as logs:
            trades = await take(source.events(), 10)
        await source.close()
    assert [t.trade_id for t in trades] == [r[6] for r in ROWS[:10]]
    logged = {entry["reason"]: entry for entry in logs if entry["event"] == "malformed_message"}
    assert logged["bad_json"]["sample"] == "this is not json"
    assert logged["unknown_channel"]["sample"].startswith('{"channel":"ohlc"')
    count = lambda reason: metrics.value("malformed_messages", exchange="kraken", reason=reason)
    assert count("bad_json") == 1
    assert count("unknown_channel") == 1
    assert count("wrong_types") == 2  # a price that is not a number; an array instead of an object
    assert count("update_before_snapshot") == 1
    assert count("unknown_symbol") == 1
    assert count("bad_timestamp") == 1
    assert metrics.total("reconnects") == 0  # input never kills the connection


async def test_rejected_subscription_fails_loudly() -> None:
    server = KrakenServer([Session([])], known_symbols=("BTC/USD",))
    async with server:
        source = KrakenSource(
            ["DOGE-XYZ"],
            url=server.url,
            channels=("trade",),
            backfill=None,
            reconnect=FAST_RECONNECT,
            ping_interval=None,
        )
        with pytest.raises(SubscriptionError, match="Currency pair not supported DOGE/XYZ"):
            await take(source.events(), 1)


def test_constructor_validates_depth_and_channels() -> None:
    with pytest.raises(ValueError, match="depth"):
        KrakenSource(["BTC-USD"], depth=7, backfill=None)
    with pytest.raises(ValueError, match="channels"):
        KrakenSource(["BTC-USD"], channels=("ohlc",), backfill=None)


def test_reconnect_policy_grows_exponentially_with_full_jitter() -> None:
    plain = ReconnectPolicy(initial=0.1, maximum=1.0, factor=2.0, jitter=False).delays()
    assert [round(next(plain), 6) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    jittered = ReconnectPolicy(initial=0.1, maximum=1.0, factor=2.0).delays()
    bounds = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    samples = [next(jittered) for _ in bounds]
    assert all(0.0 <= s <= b for s, b in zip(samples, bounds))
    many = [next(ReconnectPolicy(initial=1.0, maximum=1.0).delays()) for _ in range(200)]
    assert len(set(many)) > 150  # jittered, not a constant


def test_make_source_builds_each_exchange_with_a_url_override() -> None:
    from rtml_stream.sources import make_source
    from rtml_stream.sources.binance import BinanceSource
    from rtml_stream.sources.coinbase import CoinbaseSource

    kraken = make_source("kraken", ["BTC-USD"], url="ws://127.0.0.1:1", backfill=None)
    assert isinstance(kraken, KrakenSource) and kraken.url == "ws://127.0.0.1:1"
    assert isinstance(make_source("binance", ["BTC-USDT"]), BinanceSource)
    assert make_source("coinbase", ["ETH-USD"]).url == "wss://advanced-trade-ws.coinbase.com"
    assert isinstance(make_source("coinbase", ["ETH-USD"]), CoinbaseSource)
    with pytest.raises(ValueError, match="unknown exchange"):
        make_source("mtgox", ["BTC-USD"])


async def test_resume_after_a_restart_backfills_from_the_last_processed_trade() -> None:
    """A restarted process seeds the last trade it processed; the live feed starts 100 ids
    later; the missing trades (every one the REST server has after it) come from REST before
    any live one."""
    metrics = StreamMetrics()
    last_done = ROWS[199]
    with LocalHttpServer({"/0/public/Trades": kraken_trades_route(PAIR, ROWS)}) as rest:
        async with KrakenServer([Session(_trade_messages(ROWS[300:400]))]) as server:
            source = _source(server.url, metrics, backfill=_rest_backfill(rest.url))
            source.resume("BTC-USDT", last_done[6], int(Decimal(str(last_done[2])) * 1_000_000_000))
            trades = await take(source.events(), 200)
            await source.close()
    assert [t.trade_id for t in trades] == [r[6] for r in ROWS[200:400]]
    # recorded trades (from 2025) are beyond the backfill bound of a catch-up timed by the machine's
    # clock: the first live trade (its id and the feed's own time) has the gap filled instead
    assert metrics.value("trades_backfilled", exchange="kraken", symbol="BTC-USDT") == 100
    with pytest.raises(ValueError, match="not one of"):
        source.resume("ETH-USD", 1, 1)


async def test_close_ends_the_event_stream_while_connected_and_while_backing_off() -> None:
    async with KrakenServer([Session(_trade_messages(ROWS[:5]))]) as server:
        source = _source(server.url, StreamMetrics())
        events = []

        async def consume() -> None:
            async for event in source.events():
                events.append(event)

        task = asyncio.create_task(consume())
        await wait_for_value(lambda: len(events) == 5)
        await source.close()
        await asyncio.wait_for(task, 2)  # events() returned: no reconnect after close
    assert source.connections == 1
    # nothing listening: the source is backing off between refused connects when closed
    source = _source(
        server.url, StreamMetrics(), reconnect=ReconnectPolicy(initial=5.0, maximum=5.0)
    )
    task = asyncio.create_task(consume_all(source))
    await asyncio.sleep(0.1)
    await source.close()
    assert await asyncio.wait_for(task, 2) == []


async def consume_all(source: KrakenSource) -> list:
    return [event async for event in source.events()]


def independent_checksum(bids: dict[Decimal, Decimal], asks: dict[Decimal, Decimal]) -> int:
    """Kraken's checksum written the plain way (dicts, sorted here), to cross-check ours."""
    import zlib

    def text(value: Decimal) -> str:
        return f"{value:f}".replace(".", "").lstrip("0")

    top = sorted(asks.items())[:10] + sorted(bids.items(), reverse=True)[:10]
    return zlib.crc32("".join(text(p) + text(q) for p, q in top).encode())


async def test_levels_pushed_out_by_truncation_are_sent_as_deletions() -> None:
    """A new level inside the top 10 pushes the 10th out of Kraken's depth-10 book without a
    message for it; the yielded update carries it as a size-0 level, so a consumer's unbounded
    book stays equal to the source's truncated one."""
    snapshot = json.loads(SNAPSHOT, parse_float=Decimal)["data"][0]
    bids = {lv["price"]: lv["qty"] for lv in snapshot["bids"]}
    asks = {lv["price"]: lv["qty"] for lv in snapshot["asks"]}
    assert independent_checksum(bids, asks) == snapshot["checksum"]
    bids[Decimal("78870.0")] = Decimal("0.50000000")
    del bids[min(bids)]  # Kraken's view: depth 10, the worst bid has gone
    update = {
        "channel": "book",
        "type": "update",
        "data": [
            {
                "symbol": "BTC/USD",
                "bids": [{"price": 78870.0, "qty": 0.50000000}],
                "asks": [],
                "checksum": independent_checksum(bids, asks),
                "timestamp": "2026-08-24T22:21:58.400000Z",
            }
        ],
    }
    text = json.dumps(update).replace('"qty": 0.5}', '"qty": 0.50000000}')
    metrics = StreamMetrics()
    server = KrakenServer(
        [Session([text])], book_snapshots={"BTC/USD": SNAPSHOT}, expected_channels=("book",)
    )
    async with server:
        source = KrakenSource(
            ["BTC-USD"],
            url=server.url,
            channels=("book",),
            metrics=metrics,
            backfill=None,
            idle_timeout=1.0,
            reconnect=FAST_RECONNECT,
            ping_interval=None,
        )
        updates = await take(source.events(), 2, kind=BookUpdate)
        await source.close()
    assert metrics.value("checksum_failures", exchange="kraken", symbol="BTC-USD") == 0
    assert updates[1].bids == (
        BookLevel(Decimal("78870.0"), Decimal("0.50000000")),
        BookLevel(Decimal("78858.8"), Decimal(0)),
    )
    consumer = OrderBook()  # no depth limit
    for update in updates:
        consumer.apply(update)
    assert consumer.top_bids(100) == source.books["BTC-USD"].top_bids(100)
    assert len(consumer.bids) == 10
