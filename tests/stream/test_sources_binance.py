"""Binance source against a local server speaking Binance's combined-stream protocol, with the
real Binance.US depth capture spliced onto its real REST snapshot (served over local HTTP)."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

from rtml_core.book import OrderBook
from rtml_core.schemas import BookLevel, BookUpdate, Trade
from rtml_stream.metrics import StreamMetrics
from rtml_stream.sources.binance import BinanceSource
from tests.conftest import FIXTURES
from tests.stream.helpers import FAST_RECONNECT, take, wait_for_value
from tests.stream.wsservers import BinanceServer, LocalHttpServer, Session, Verbatim

DIFFS = (FIXTURES / "binance_us_depth.jsonl").read_text().splitlines()
SNAPSHOT_TEXT = (FIXTURES / "binance_us_snapshot.json").read_text()
SNAPSHOT = json.loads(SNAPSHOT_TEXT)
LAST_UPDATE_ID = SNAPSHOT["lastUpdateId"]  # 3297892542, inside the diff range


def _pairs(rows: list[list[str]]) -> list[BookLevel]:
    return [BookLevel(Decimal(p), Decimal(q)) for p, q in rows]


def expected_book(diffs: list[str], snapshot: dict) -> OrderBook:
    """Binance's splice written the plain way: the snapshot, then every diff with u > lastUpdateId."""
    book = OrderBook()
    book.apply_snapshot(_pairs(snapshot["bids"]), _pairs(snapshot["asks"]))
    for line in diffs:
        diff = json.loads(line)
        if diff["u"] > snapshot["lastUpdateId"]:
            book.apply_update(_pairs(diff["b"]), _pairs(diff["a"]))
    return book


def snapshot_route(bodies: list[str]):
    """Serve ``bodies`` in turn (the last one repeats)."""
    served = {"n": 0}

    def route(query: dict) -> tuple[int, bytes]:
        body = bodies[min(served["n"], len(bodies) - 1)]
        served["n"] += 1
        return 200, body.encode()

    return route


def trade_message(trade_id: int, price: str, qty: str, buyer_is_maker: bool, time_ms: int) -> str:
    """A ``<symbol>@trade`` payload in Binance's documented shape."""
    return json.dumps(
        {
            "e": "trade",
            "E": time_ms + 1,
            "s": "BTCUSDT",
            "t": trade_id,
            "p": price,
            "q": qty,
            "T": time_ms,
            "m": buyer_is_maker,
            "M": True,
        }
    )


def _source(url: str, rest_url: str, metrics: StreamMetrics, **kwargs) -> BinanceSource:
    options = {
        "url": url,
        "rest_url": rest_url,
        "metrics": metrics,
        "idle_timeout": 1.0,
        "reconnect": FAST_RECONNECT,
        "ping_interval": None,
    }
    options.update(kwargs)
    return BinanceSource(["BTC-USDT"], **options)


async def test_real_capture_splices_onto_the_real_snapshot() -> None:
    metrics = StreamMetrics()
    applied = [line for line in DIFFS if json.loads(line)["u"] > LAST_UPDATE_ID]
    assert (
        json.loads(applied[0])["U"] <= LAST_UPDATE_ID + 1 <= json.loads(applied[0])["u"]
    )  # it straddles
    with LocalHttpServer({"/api/v3/depth": snapshot_route([SNAPSHOT_TEXT])}) as rest:
        async with BinanceServer([Session(list(DIFFS))]) as server:
            source = _source(server.url, rest.url, metrics, channels=("depth",))
            updates = await take(source.events(), 1 + len(applied), kind=BookUpdate)
            await source.close()
    assert updates[0].is_snapshot and updates[0].sequence == LAST_UPDATE_ID
    assert len(updates[0].bids) == 1000 and updates[0].symbol == "BTC-USDT"
    assert [u.sequence for u in updates[1:]] == [json.loads(line)["u"] for line in applied]
    book = source.books["BTC-USDT"]
    want = expected_book(DIFFS, SNAPSHOT)
    assert list(book.bids.items()) == list(want.bids.items())
    assert list(book.asks.items()) == list(want.asks.items())
    assert not book.is_crossed()
    assert metrics.value("sequence_gaps", exchange="binance", symbol="BTC-USDT") == 0
    assert rest.requests == [("/api/v3/depth", {"symbol": ["BTCUSDT"], "limit": ["1000"]})]
    assert server.received[0] == {"method": "SUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 1}


async def test_missing_diff_resyncs_from_a_fresh_snapshot() -> None:
    dropped = 15  # a diff after the splice goes missing
    diffs = DIFFS[:dropped] + DIFFS[dropped + 1 :]
    later = expected_book(DIFFS[: dropped + 2], SNAPSHOT)
    fresh = {
        "lastUpdateId": json.loads(DIFFS[dropped + 1])["u"],
        "bids": [[str(p), str(q)] for p, q in later.bids.items()],
        "asks": [[str(p), str(q)] for p, q in later.asks.items()],
    }
    metrics = StreamMetrics()
    with LocalHttpServer(
        {"/api/v3/depth": snapshot_route([SNAPSHOT_TEXT, json.dumps(fresh)])}
    ) as rest:
        async with BinanceServer([Session(diffs)]) as server:
            source = _source(server.url, rest.url, metrics, channels=("depth",))
            last_u = json.loads(DIFFS[-1])["u"]
            await take(source.events(), 100, kind=BookUpdate, until=lambda u: u.sequence == last_u)
            await source.close()
    assert metrics.value("sequence_gaps", exchange="binance", symbol="BTC-USDT") == 1
    assert len(rest.requests) == 2
    want = expected_book(DIFFS, SNAPSHOT)
    assert list(source.books["BTC-USDT"].bids.items()) == list(want.bids.items())
    assert list(source.books["BTC-USDT"].asks.items()) == list(want.asks.items())


async def test_snapshot_older_than_the_first_diff_is_fetched_again() -> None:
    stale = json.dumps({**SNAPSHOT, "lastUpdateId": json.loads(DIFFS[0])["U"] - 5})
    metrics = StreamMetrics()
    with LocalHttpServer({"/api/v3/depth": snapshot_route([stale, SNAPSHOT_TEXT])}) as rest:
        async with BinanceServer([Session(list(DIFFS))]) as server:
            source = _source(server.url, rest.url, metrics, channels=("depth",))
            updates = await take(source.events(), 2, kind=BookUpdate)
            await source.close()
    assert updates[0].sequence == LAST_UPDATE_ID and len(rest.requests) == 2


async def test_trades_take_the_takers_side_from_m() -> None:
    messages = [
        trade_message(100, "78701.88", "0.01", True, 1787612486435),
        trade_message(101, "78702.10", "0.25", False, 1787612486436),
    ]
    metrics = StreamMetrics()
    async with BinanceServer([Session(messages)]) as server:
        source = _source(server.url, "http://127.0.0.1:9", metrics, channels=("trade",))
        trades = await take(source.events(), 2)
        await source.close()
    assert trades == [
        Trade(
            "binance",
            "BTC-USDT",
            100,
            1787612486435_000_000,
            Decimal("78701.88"),
            Decimal("0.01"),
            "sell",
        ),
        Trade(
            "binance",
            "BTC-USDT",
            101,
            1787612486436_000_000,
            Decimal("78702.10"),
            Decimal("0.25"),
            "buy",
        ),
    ]
    assert server.received[0]["params"] == ["btcusdt@trade"]


async def test_kill_and_restart_reconnects_resubscribes_and_resplices() -> None:
    first = [
        trade_message(i, "78700.00", "0.1", i % 2 == 0, 1787612486000 + i) for i in range(1, 31)
    ]
    second = [
        trade_message(i, "78700.00", "0.1", i % 2 == 0, 1787612486000 + i) for i in range(25, 61)
    ]
    metrics = StreamMetrics()
    with LocalHttpServer({"/api/v3/depth": snapshot_route([SNAPSHOT_TEXT])}) as rest:
        server = BinanceServer([Session(first + DIFFS[:12]), Session(second + DIFFS[9:])])
        await server.start()
        source = _source(server.url, rest.url, metrics)
        last_u = json.loads(DIFFS[-1])["u"]
        consumer = asyncio.create_task(
            take(
                source.events(),
                10_000,
                kind=object,
                timeout=10,
                until=lambda e: isinstance(e, BookUpdate) and e.sequence == last_u,
            )
        )
        await wait_for_value(
            lambda: metrics.value("book_updates_in", exchange="binance", symbol="BTC-USDT") >= 1
        )
        await server.kill()
        await asyncio.sleep(0.2)
        await server.start()
        trades = [e for e in await consumer if isinstance(e, Trade)]
        await source.close()
        await server.kill()
    assert [t.trade_id for t in trades] == list(range(1, 61))
    assert metrics.value("duplicate_trades", exchange="binance", symbol="BTC-USDT") == 6
    assert metrics.total("reconnects", exchange="binance") >= 1
    assert [m["method"] for m in server.received] == ["SUBSCRIBE", "SUBSCRIBE"]
    assert len(rest.requests) == 2  # a fresh snapshot for the new connection
    want = expected_book(DIFFS, SNAPSHOT)
    assert list(source.books["BTC-USDT"].bids.items()) == list(want.bids.items())


async def test_malformed_messages_are_counted_and_skipped() -> None:
    good = trade_message(7, "1.5", "2", False, 1787612486000)
    steps = [
        Verbatim("{oops"),
        Verbatim('{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1,"s":"BTCUSDT"}}'),
        Verbatim(
            '{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":"x","p":"1","q":"1",'
            '"T":1,"m":true}}'
        ),
        Verbatim(
            '{"stream":"dogeeur@trade","data":{"e":"trade","E":1,"s":"DOGEEUR","t":1,"p":"1","q":"1",'
            '"T":1,"m":true}}'
        ),
        Verbatim('{"hello":"world"}'),
        good,
    ]
    metrics = StreamMetrics()
    async with BinanceServer([Session(steps)]) as server:
        source = _source(server.url, "http://127.0.0.1:9", metrics, channels=("trade",))
        trades = await take(source.events(), 1)
        await source.close()
    assert trades[0].trade_id == 7
    count = lambda reason: metrics.value("malformed_messages", exchange="binance", reason=reason)
    assert count("bad_json") == 1
    assert count("wrong_types") == 2  # an unknown event type; a trade id that is not a number
    assert count("unknown_symbol") == 1
    assert count("unknown_message") == 1
    assert metrics.total("reconnects") == 0


def historical_trades_route(trades: list[dict]):
    """``GET /api/v3/historicalTrades?symbol=&fromId=&limit=`` in Binance's documented shape."""

    def route(query: dict) -> tuple[int, bytes]:
        from_id, limit = int(query["fromId"][0]), int(query.get("limit", ["500"])[0])
        rows = [t for t in trades if t["id"] >= from_id][:limit]
        return 200, json.dumps(rows).encode()

    return route


async def test_trade_id_gap_is_backfilled_from_rest_historical_trades() -> None:
    payloads = [
        json.loads(trade_message(i, f"78700.{i:02d}", "0.1", i % 2 == 0, 1787612486000 + i))
        for i in range(1, 41)
    ]
    rest_rows = [
        {
            "id": p["t"],
            "price": p["p"],
            "qty": p["q"],
            "quoteQty": "0",
            "time": p["T"],
            "isBuyerMaker": p["m"],
            "isBestMatch": True,
        }
        for p in payloads
    ]
    metrics = StreamMetrics()
    with LocalHttpServer({"/api/v3/historicalTrades": historical_trades_route(rest_rows)}) as rest:
        server = BinanceServer(
            [
                Session([json.dumps(p) for p in payloads[:20]]),
                Session([json.dumps(p) for p in payloads[30:]]),
            ]
        )
        await server.start()
        source = _source(server.url, rest.url, metrics, channels=("trade",))
        consumer = asyncio.create_task(take(source.events(), 40, timeout=10))
        await wait_for_value(
            lambda: metrics.value("trades_in", exchange="binance", symbol="BTC-USDT") == 20
        )
        await server.kill()
        await asyncio.sleep(0.1)
        await server.start()
        trades = await consumer
        await source.close()
        await server.kill()
    assert [t.trade_id for t in trades] == list(range(1, 41))
    assert [t.side for t in trades[20:30]] == [
        "sell" if i % 2 == 0 else "buy" for i in range(21, 31)
    ]
    assert (
        trades[25].price == Decimal("78700.26")
        and trades[25].time_ns == (1787612486000 + 26) * 1_000_000
    )
    assert metrics.value("gaps_backfilled", exchange="binance", symbol="BTC-USDT") == 1
    # caught up on reconnect, before any live trade: everything after id 20 the REST server has
    assert metrics.value("trades_backfilled", exchange="binance", symbol="BTC-USDT") == 20
    assert rest.requests == [
        ("/api/v3/historicalTrades", {"symbol": ["BTCUSDT"], "fromId": ["21"], "limit": ["1000"]})
    ]
